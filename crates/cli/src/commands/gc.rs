//! `berth gc`: remove what berth left behind, and say what.

use std::process::ExitCode;

use anyhow::anyhow;
use berth_runner::config::parse_duration;
use berth_runner::gc::{collect_garbage, GcOptions, PoolRule};
use berth_runner::state::StateDir;

use super::{session_id, Ctx};
use crate::args::GcArgs;

pub async fn gc(ctx: &Ctx, args: GcArgs) -> anyhow::Result<ExitCode> {
    let mut options = GcOptions::default();
    options.dry_run = args.dry_run;
    options.older_than = args
        .older_than
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| anyhow!("invalid --older-than: {e}"))?;
    options.session = args.session.as_deref().map(session_id).transpose()?;
    options.volumes = args.volumes;
    options.pools = Some(
        ctx.config()
            .pools
            .keys()
            .map(|name| {
                let rule = PoolRule {
                    spec_hash: ctx.config().pool_spec(name).ok().map(|p| p.spec_hash()),
                    idle_ttl: ctx.config().pools[name].idle_ttl.get(),
                };
                (name.clone(), rule)
            })
            .collect(),
    );
    let engine = ctx.engine().await?;
    let report = collect_garbage(engine.as_ref(), &StateDir::from_env(), &options).await?;
    let all_removed =
        report.garbage.iter().all(|i| i.removed) && report.volumes.iter().all(|i| i.removed);
    let code = if all_removed || args.dry_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?);
        return Ok(code);
    }
    let verb = |removed: bool| match (removed, args.dry_run) {
        (true, _) => "removed",
        (false, true) => "would remove",
        (false, false) => "FAILED to remove",
    };
    for item in &report.garbage {
        println!("{} {}: {}", verb(item.removed), item.id, item.reason);
    }
    for item in &report.volumes {
        println!(
            "{} volume {}: {}",
            verb(item.removed),
            item.name,
            item.reason
        );
    }
    println!(
        "{} garbage, {} kept; volumes: {} garbage, {} kept{}{}",
        report.garbage.len(),
        report.kept,
        report.volumes.len(),
        report.volumes_kept,
        if args.volumes || report.volumes_kept == 0 {
            ""
        } else {
            " (--volumes removes unused ones)"
        },
        if args.dry_run { " (dry run)" } else { "" }
    );
    Ok(code)
}
