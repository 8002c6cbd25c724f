//! `berth up`: start a detached environment and print its id.

use std::process::ExitCode;

use anyhow::Context;
use berth_runner::{lifecycle, spec};
use serde_json::json;

use super::{env_options, Ctx};
use crate::args::UpArgs;
use crate::progress::{self, Mode};

pub async fn up(ctx: &Ctx, args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config();
    let (spec, pool) = match super::pool::for_env(ctx, &args.env).await? {
        Some((spec, pool)) => (spec, Some(pool)),
        None => (
            spec::environment_spec(config, &env_options(&args.env)?)?,
            None,
        ),
    };
    let session = spec.session.clone();
    let limits = spec::limits(config);
    if limits.unlimited && pool.is_none() {
        eprintln!("berth: note: this environment has {}", limits.note);
    }
    let engine = ctx.engine().await?;
    let (progress, spinner) = progress::start(Mode::for_start(ctx.json, true));
    let started = lifecycle::up_from(engine, spec, pool, config.runner.pull_policy, &progress)
        .await
        .with_context(|| format!("failed to start an environment for session {session}"))?;
    drop(spinner);
    if ctx.json {
        ctx.print_json(
            &json!({"id": started.id, "session": started.session, "name": started.name}),
        );
    } else {
        println!("{}", started.id);
    }
    Ok(ExitCode::SUCCESS)
}
