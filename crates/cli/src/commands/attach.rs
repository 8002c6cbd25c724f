//! `berth attach`: follow a detached command's output to its end.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::{AttachFrom, CommandState, DEFAULT_OUTPUT_LIMIT};

use super::{detached_command, exit_code, Ctx};
use crate::args::AttachArgs;
use crate::output;

pub async fn attach(ctx: &Ctx, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (commands, id) = detached_command(ctx, &args.command).await?;
    let from = AttachFrom {
        stdout: args.stdout_offset,
        stderr: args.stderr_offset,
    };
    let mut process = commands.attach(&id, from).await?;
    let status = if ctx.json {
        let out = process.collect(DEFAULT_OUTPUT_LIMIT).await?;
        ctx.print_json(&output::output_json(&out));
        out.status
    } else {
        let output = process
            .take_output()
            .context("the attach's output was already taken")?;
        output::forward_output(output).await?;
        process.wait().await?
    };
    // The attach ends with 125 both for a command that exited 125 and for one whose
    // supervisor vanished; only the latter is recorded as lost.
    if status.code() == i32::from(crate::EXIT_BERTH_FAILED)
        && commands.status(&id).await?.state == CommandState::Lost
    {
        anyhow::bail!(
            "detached command {id} was lost: its supervisor is gone without recording an exit \
             code (killed from outside the command); the output above is all it kept"
        );
    }
    Ok(exit_code(status.code()))
}
