//! `berth down`: stop environments by id or by session.

use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_engine_core::{EnvironmentId, RunId, RunState, StopOutcome};
use berth_runner::lifecycle;
use berth_runner::state::StateDir;
use serde_json::json;

use super::{env_id, session_id, Ctx};
use crate::args::DownArgs;

pub async fn down(ctx: &Ctx, args: DownArgs) -> anyhow::Result<ExitCode> {
    let named: Vec<EnvironmentId> = args
        .environments
        .iter()
        .map(|e| env_id(e))
        .collect::<anyhow::Result<_>>()?;
    let session = args.session.as_deref().map(session_id).transpose()?;
    if named.is_empty() && session.is_none() {
        bail!("nothing to stop: name environments, or pass --session");
    }
    let engine = ctx.engine().await?;
    // Named batch runs are cancelled (and kept for `berth status`), schedules removed; the
    // rest are environments.
    let mut environments = Vec::new();
    let mut cancelled = Vec::new();
    for env in named {
        let run = RunId::new(env.as_str())?;
        match engine.run_status(&run).await {
            Ok(status) => {
                engine
                    .cancel_run(&run)
                    .await
                    .with_context(|| format!("failed to cancel run {run}"))?;
                cancelled.push((run, status.state == RunState::Scheduled));
            }
            Err(e) if e.is_not_found() || e.is_unsupported() => environments.push(env),
            Err(e) => return Err(e.into()),
        }
    }
    let named = environments;
    let none_named = named.is_empty() && cancelled.is_empty();
    // One list, runs first: `--json` prints it as one array of {id, outcome}.
    let mut done: Vec<(String, &'static str, &'static str)> = cancelled
        .iter()
        .map(|(run, schedule)| {
            let what = if *schedule {
                "schedule removed"
            } else {
                "cancelled"
            };
            (run.to_string(), what, what)
        })
        .collect();
    if named.is_empty() && session.is_none() {
        print_outcomes(ctx, &done);
        return Ok(ExitCode::SUCCESS);
    }
    let report = lifecycle::down(
        engine.as_ref(),
        named,
        session.as_ref(),
        &StateDir::from_env(),
    )
    .await?;
    if let (Some(s), true, true) = (&session, report.session_empty, none_named) {
        // Nothing to stop is success: the session is as asked, without environments.
        eprintln!("berth: session {s} has no environments; nothing to stop");
    }
    done.extend(report.stopped.iter().map(|(id, outcome)| {
        let (what, json) = match outcome {
            StopOutcome::Stopped => ("stopped", "stopped"),
            StopOutcome::AlreadyGone => ("already gone", "already_gone"),
        };
        (id.to_string(), what, json)
    }));
    print_outcomes(ctx, &done);
    // Every failure is said; the last one is the error.
    let mut failures: Vec<anyhow::Error> = report
        .failures
        .into_iter()
        .map(anyhow::Error::from)
        .collect();
    let last = failures.pop();
    for failure in &failures {
        eprintln!("berth: {failure:#}");
    }
    match last {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// What `down` did to each name: `NAME: OUTCOME` lines, or with `--json` one array of
/// `{id, outcome}` (runs and environments alike). Each entry: the name, the outcome in text
/// and in JSON.
fn print_outcomes(ctx: &Ctx, done: &[(String, &'static str, &'static str)]) {
    if ctx.json {
        let list: Vec<_> = done
            .iter()
            .map(|(id, _, outcome)| json!({"id": id, "outcome": outcome}))
            .collect();
        ctx.print_json(&json!(list));
    } else {
        for (id, what, _) in done {
            println!("{id}: {what}");
        }
    }
}
