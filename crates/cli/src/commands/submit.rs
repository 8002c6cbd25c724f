//! `berth submit`: a batch run, detached; with --watch, followed to its true exit code.

use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_engine_core::RunState;
use berth_runner::runs;
use serde_json::json;

use super::{env_options, exit_code, print_log_line, Ctx};
use crate::args::{EnvArgs, SubmitArgs};

pub async fn submit(ctx: &Ctx, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config();
    let options = env_options(&EnvArgs {
        image: args.image.clone(),
        session: args.session.clone(),
        name: args.name.clone(),
        pool: None,
    })?;
    let mut spec = runs::run_spec(config, &options, args.command, args.schedule)?;
    if let Some(url) = args.git {
        let source = runs::git(url.clone(), args.branch);
        source
            .validate()
            .with_context(|| format!("cannot use --git {url}"))?;
        spec = spec.with_source(source);
    }
    let engine = ctx.engine().await?;
    let run = runs::submit_to(args.engine, config, engine.as_ref(), &spec)
        .await
        .with_context(|| format!("failed to submit a run for session {}", spec.env.session))?;
    if !args.watch {
        if ctx.json {
            ctx.print_json(
                &json!({"id": run, "session": spec.env.session, "schedule": spec.schedule, "engine": args.engine.as_str()}),
            );
        } else {
            println!("{run}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Stdout carries the run's output; its name goes to stderr at once.
    eprintln!("berth: submitted {run}; following its logs (Ctrl-C stops only the watching)");
    let status = runs::watch(engine.as_ref(), &run, print_log_line)
        .await
        .with_context(|| {
            format!("lost track of run {run} (it may still be running: berth status {run})")
        })?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&status)?);
    }
    match (status.state, status.exit_code) {
        (RunState::DeadlineExceeded, _) => {
            eprintln!("berth: run {run} was ended at its deadline (runner.max_lifetime)");
            Ok(ExitCode::from(124))
        }
        (RunState::Cancelled, code) => {
            eprintln!("berth: run {run} was cancelled");
            Ok(code.map_or(ExitCode::from(125), exit_code))
        }
        (_, Some(code)) => Ok(exit_code(code)),
        // An Argo Workflow that succeeded has had its pod (and the exit code on it) removed
        // by its podGC: Succeeded means the command exited 0.
        (RunState::Succeeded, None) => Ok(ExitCode::SUCCESS),
        (state, None) => bail!(
            "run {run} ended {state} without an exit code{}",
            status.message.map(|m| format!(": {m}")).unwrap_or_default()
        ),
    }
}
