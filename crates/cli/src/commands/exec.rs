//! `berth exec`: run a command in a running environment.

use std::process::ExitCode;

use berth_engine_core::ExecRequest;
use berth_runner::lifecycle;

use super::{env_id, parse_pairs, Ctx};
use crate::args::{CommandArgs, ExecArgs};
use crate::output;

/// The request `args` describe for `command`, validated.
pub fn exec_request(args: &CommandArgs, command: Vec<String>) -> anyhow::Result<ExecRequest> {
    let mut req = ExecRequest::new(command);
    for (k, v) in parse_pairs("--env", &args.env)? {
        req = req.with_env(k, v);
    }
    if let Some(dir) = &args.workdir {
        req = req.with_workdir(dir.clone());
    }
    if let Some(user) = &args.user {
        req = req.with_user(user.clone());
    }
    if let Some(timeout) = args.timeout {
        req = req.with_timeout(timeout);
    }
    req.validate()?;
    Ok(req)
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let env = env_id(&args.environment)?;
    let req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    let code = output::exec_in(
        ctx.json,
        engine.as_ref(),
        &env,
        req.clone(),
        args.cmd.interactive,
    )
    .await?;
    // Only a failed exec pays for the question (the runtime's text is already out by then).
    if code == ExitCode::from(126) {
        if let Some(missing) = lifecycle::command_missing(engine.as_ref(), &env, &req).await {
            return Err(missing.into());
        }
    }
    Ok(code)
}
