//! `berth kill`: kill a detached command's process tree.

use std::process::ExitCode;

use berth_engine_core::CommandState;

use super::ps::{state_text, status_json};
use super::{detached_command, Ctx};
use crate::args::KillArgs;

pub async fn kill(ctx: &Ctx, args: KillArgs) -> anyhow::Result<ExitCode> {
    let (commands, id) = detached_command(ctx, &args.command).await?;
    let report = commands.kill(&id).await?;
    let status = commands.status(&id).await?;
    if ctx.json {
        let mut row = status_json(&status);
        row["survivors"] = report.survivors.clone().into();
        ctx.print_json(&row);
    } else {
        println!("{id} {}", state_text(status.state));
    }
    for s in &report.survivors {
        eprintln!("berth: still alive after the kill (berth may not signal it): {s}");
    }
    if status.state == CommandState::Running {
        anyhow::bail!(
            "killed the process tree of detached command {id}, but it has not recorded its end \
             five seconds later; `berth ps` shows when it does"
        );
    }
    Ok(ExitCode::SUCCESS)
}
