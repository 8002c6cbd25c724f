//! `berth status`: where a batch run is, with its true exit code once it ended.

use std::process::ExitCode;

use super::{run_id, Ctx};
use crate::args::StatusArgs;

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let run = run_id(&args.run)?;
    let status = ctx.engine().await?.run_status(&run).await?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = format!("{}: {}", status.id, status.state);
    if let Some(code) = status.exit_code {
        line.push_str(&format!(" (exit code {code})"));
    }
    if let Some(schedule) = &status.schedule {
        line.push_str(&format!(" on {schedule:?}"));
    }
    if let Some(message) = &status.message {
        line.push_str(&format!(": {message}"));
    }
    println!("{line}");
    for r in &status.runs {
        println!("  run {r}");
    }
    Ok(ExitCode::SUCCESS)
}
