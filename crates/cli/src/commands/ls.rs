//! `berth ls`: environments, or workspace volumes, as a table or JSON.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_engine_core::{LabelSelector, LABEL_NAME, LABEL_RUN};

use super::{session_id, Ctx};
use crate::args::LsArgs;

/// How long ago `created` (seconds since the epoch) was, in one unit.
pub(super) fn age(created: Option<u64>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(c) = created else {
        return "?".into();
    };
    match now.saturating_sub(c) {
        s @ 0..=119 => format!("{s}s"),
        s @ 120..=7199 => format!("{}m", s / 60),
        s @ 7200..=172_799 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub async fn ls(ctx: &Ctx, args: LsArgs) -> anyhow::Result<ExitCode> {
    let selector = match &args.session {
        Some(s) => LabelSelector::session(&session_id(s)?),
        None => LabelSelector::all(),
    };
    let engine = ctx.engine().await?;
    if args.volumes {
        let volumes = engine.list_volumes(&selector).await?;
        if ctx.json {
            ctx.print_json(&serde_json::to_value(&volumes)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<40} {:<14} {:<7} AGE", "VOLUME", "SESSION", "IN USE");
        for v in &volumes {
            println!(
                "{:<40} {:<14} {:<7} {}",
                v.name,
                v.session.as_ref().map_or("-", |s| s.as_str()),
                if v.in_use { "yes" } else { "no" },
                age(v.created_unix_secs),
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.runs {
        let runs = engine.list_runs(&selector).await?;
        if ctx.json {
            ctx.print_json(&serde_json::to_value(&runs)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<44} {:<14} {:<10} {:<18} {:<5} {:<6} IMAGE",
            "RUN", "SESSION", "NAME", "STATE", "EXIT", "AGE"
        );
        for r in &runs {
            let state = match &r.schedule {
                Some(s) => format!("{} {s}", r.state),
                None => r.state.to_string(),
            };
            println!(
                "{:<44} {:<14} {:<10} {:<18} {:<5} {:<6} {}",
                r.id,
                r.session.as_ref().map_or("-", |s| s.as_str()),
                r.labels.get(LABEL_NAME).map_or("-", String::as_str),
                state,
                r.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                age(r.created_unix_secs),
                r.image
            );
            for last in r.runs.iter().take(3) {
                println!("  last run: {last}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Batch runs are listed with --runs.
    let envs: Vec<_> = engine
        .list(&selector)
        .await?
        .into_iter()
        .filter(|e| !e.labels.contains_key(LABEL_RUN))
        .collect();
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&envs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<14} {:<10} {:<8} {:<6} IMAGE",
        "ID", "SESSION", "NAME", "STATE", "AGE"
    );
    for e in &envs {
        let state = serde_json::to_value(e.state)?;
        println!(
            "{:<40} {:<14} {:<10} {:<8} {:<6} {}",
            e.id,
            e.session.as_ref().map_or("-", |s| s.as_str()),
            e.labels.get(LABEL_NAME).map_or("-", String::as_str),
            state.as_str().unwrap_or("?"),
            age(e.created_unix_secs),
            e.image
        );
    }
    Ok(ExitCode::SUCCESS)
}
