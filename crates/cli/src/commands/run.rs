//! `berth run`: one command in a fresh environment, which ends with it.
//!
//! The command runs through [`ContainerEngine::run_once`](berth_engine_core::ContainerEngine::run_once):
//! on Docker it is the container's own process (no keepalive, probe or exec), elsewhere the
//! environment is started and the command exec'd into it. Either way the session stops the
//! environment afterwards, so nothing the command started outlives it.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::Error;
use berth_runner::session::Session;
use berth_runner::{lifecycle, spec, RunnerError};

use super::exec::exec_request;
use super::{env_options, Ctx};
use crate::args::RunArgs;
use crate::output;
use crate::progress::{self, Mode};

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config();
    let pooled = super::pool::for_env(ctx, &args.env).await?;
    let spec = match &pooled {
        Some((spec, _)) => spec.clone(),
        None => spec::environment_spec(config, &env_options(&args.env)?)?,
    };
    let mut req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    let name = spec.name.clone();
    let mut session = Session::new(engine.clone(), spec);
    if let Some((_, pool)) = pooled {
        session = session.with_pool(pool);
    }
    // Our stderr carries the command's: progress only on a terminal, cleared before it runs.
    let (progress, spinner) = progress::start(Mode::for_start(ctx.json, false));
    let body = async {
        output::stdin_for(ctx.json, args.cmd.interactive, &mut req).await?;
        let limit = req.output_limit;
        let started =
            lifecycle::run_once(&session, &name, req, config.runner.pull_policy, &progress).await;
        drop(spinner);
        let (env, process) = match started {
            Ok(started) => started,
            // A missing command gets one clear line instead of the runtime's.
            Err(missing @ RunnerError::CommandNotFound { .. }) => return Err(missing.into()),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "failed to start an environment for session {}",
                    session.id()
                )))
            }
        };
        // Where the command is the environment's own process, a missing program is known
        // only when it ends.
        output::drive(ctx.json, process, limit).await.map_err(|e| {
            match e
                .downcast_ref::<Error>()
                .and_then(|e| lifecycle::not_found_in(e, &env))
            {
                Some(missing) => missing.into(),
                None => e,
            }
        })
    };
    let (outcome, stopped) = output::in_session(&session, body).await;
    // `run` owns its environment: a timeout ends all of it, so processes that escaped the
    // in-environment kill ended with it and the outcome is a plain timeout.
    let outcome = match outcome {
        Err(e) if stopped.is_ok() => Err(ended_escapes(e)),
        other => other,
    };
    let code = outcome?;
    stopped.context("failed to stop the environment")?;
    Ok(code)
}

/// A timeout, once its environment has been removed: whatever escaped the kill ended too.
fn ended_escapes(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<Error>() {
        Ok(
            Error::TimeoutLeftProcesses {
                operation, after, ..
            }
            | Error::Timeout { operation, after },
        ) => anyhow::Error::new(Error::Timeout { operation, after })
            .context("ended the environment with everything the command started"),
        Ok(other) => other.into(),
        Err(e) => e,
    }
}
