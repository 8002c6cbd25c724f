//! `berth ps`: an environment's detached commands, as a table or JSON.

use std::process::ExitCode;

use berth_engine_core::{CommandState, DetachedStatus};
use serde_json::json;

use super::ls::age;
use super::{detached_commands, Ctx};
use crate::args::PsArgs;

/// `running`, `exited N` or `lost`.
pub fn state_text(state: CommandState) -> String {
    match state {
        CommandState::Running => "running".into(),
        CommandState::Exited(status) => format!("exited {}", status.code()),
        CommandState::Lost => "lost".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One command as `--json` prints it.
pub fn status_json(s: &DetachedStatus) -> serde_json::Value {
    let (state, code) = match s.state {
        CommandState::Exited(status) => ("exited".to_owned(), Some(status.code())),
        other => (state_text(other), None),
    };
    json!({
        "id": s.id.as_str(),
        "state": state,
        "exit_code": code,
        "stdout_bytes": s.stdout_bytes,
        "stderr_bytes": s.stderr_bytes,
        "started_unix": s.started_unix,
        "pid": s.pid,
    })
}

pub async fn ps(ctx: &Ctx, args: PsArgs) -> anyhow::Result<ExitCode> {
    let commands = detached_commands(ctx, &args.environment).await?;
    let list = commands.list().await?;
    let mut pruned = Vec::new();
    if args.prune {
        for s in list.iter().filter(|s| s.state != CommandState::Running) {
            commands.remove(&s.id).await?;
            pruned.push(s.id.clone());
        }
    }
    if ctx.json {
        let rows: Vec<_> = list
            .iter()
            .map(|s| {
                let mut row = status_json(s);
                row["pruned"] = pruned.contains(&s.id).into();
                row
            })
            .collect();
        ctx.print_json(&rows.into());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<10} {:<6} {:>12} {:>12} PID",
        "ID", "STATE", "AGE", "STDOUT", "STDERR"
    );
    for s in &list {
        println!(
            "{:<12}  {:<10} {:<6} {:>12} {:>12} {}",
            s.id,
            state_text(s.state),
            age(Some(s.started_unix)),
            s.stdout_bytes,
            s.stderr_bytes,
            s.pid.map_or("-".into(), |p| p.to_string()),
        );
    }
    if !pruned.is_empty() {
        eprintln!("removed {} ended command(s)", pruned.len());
    }
    Ok(ExitCode::SUCCESS)
}
