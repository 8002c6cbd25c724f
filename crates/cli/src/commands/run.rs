//! `berth run`: start an environment, run one command, stop it.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::Error;
use berth_runner::session::Session;
use berth_runner::{lifecycle, spec};

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
    let req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    let name = spec.name.clone();
    let mut session = Session::new(engine.clone(), spec);
    if let Some((_, pool)) = pooled {
        session = session.with_pool(pool);
    }
    // Our stderr carries the command's: progress only on a terminal, cleared before it runs.
    let (progress, spinner) = progress::start(Mode::for_start(ctx.json, false));
    let body = async {
        let env = lifecycle::start(&session, &name, config.runner.pull_policy, &progress)
            .await
            .with_context(|| {
                format!(
                    "failed to start an environment for session {}",
                    session.id()
                )
            })?;
        drop(spinner);
        // Next to starting an environment the question costs little, and a missing
        // command then gets one clear line instead of the runtime's.
        if let Some(missing) = lifecycle::command_missing(engine.as_ref(), &env, &req).await {
            return Err(missing.into());
        }
        output::exec_in(ctx.json, engine.as_ref(), &env, req, args.cmd.interactive).await
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

/// A timeout that left processes behind, once their environment has been removed.
fn ended_escapes(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<Error>() {
        Ok(Error::TimeoutLeftProcesses {
            operation, after, ..
        }) => anyhow::Error::new(Error::Timeout { operation, after })
            .context("ended the environment with everything the command started"),
        Ok(other) => other.into(),
        Err(e) => e,
    }
}
