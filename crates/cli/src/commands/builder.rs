//! `berth builder ls`: the named builders of the config, probed.

use std::process::ExitCode;

use berth_runner::builders;

use super::Ctx;

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / f64::from(1u32 << 30);
    format!("{gib:.1}GiB")
}

pub async fn ls(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let statuses = builders::list(ctx.config()).await;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    if statuses.is_empty() {
        eprintln!("no builders are configured (add them under builders: in the config)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<32} {:<5} {:<10} {:<12} {:<5} {:<9} {:<10} LABELS",
        "NAME", "ADDRESS", "UP", "DOCKER", "PLATFORM", "CPUS", "MEMORY", "FREE DISK"
    );
    for s in &statuses {
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        match &s.daemon {
            Some(d) => println!(
                "{:<14} {:<32} {:<5} {:<10} {:<12} {:<5} {:<9} {:<10} {labels}",
                s.name,
                s.address,
                "yes",
                d.server_version,
                d.platform(),
                d.cpus,
                gib(d.memory_bytes),
                d.free_disk_bytes
                    .map_or_else(|| "unreported".to_owned(), gib),
            ),
            None => println!(
                "{:<14} {:<32} {:<5} {}",
                s.name,
                s.address,
                "no",
                s.error.as_deref().unwrap_or("unreachable")
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
