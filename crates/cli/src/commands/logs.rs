//! `berth logs`: a batch run's output, followed with -f across dropped connections.

use std::process::ExitCode;

use berth_runner::runs;

use super::{print_log_line, run_id, Ctx};
use crate::args::LogsArgs;

pub async fn logs(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let run = run_id(&args.run)?;
    let engine = ctx.engine().await?;
    if args.follow {
        runs::follow_logs(engine.as_ref(), &run, None, print_log_line).await?;
        return Ok(ExitCode::SUCCESS);
    }
    runs::read_logs(engine.as_ref(), &run, print_log_line).await?;
    Ok(ExitCode::SUCCESS)
}
