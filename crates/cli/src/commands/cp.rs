//! `berth cp`: copy into an environment or out of one.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use berth_engine_core::EnvironmentId;
use berth_runner::archive;
use berth_runner::config::parse_memory_bytes;
use berth_runner::copy::{self, ExtractOptions};
use serde_json::json;

use super::Ctx;
use crate::args::CpArgs;

/// `ENV:PATH` → (env, path); anything else is local.
fn remote(spec: &str) -> Option<(EnvironmentId, String)> {
    let (env, path) = spec.split_once(':')?;
    if env.contains('/') || env.starts_with('.') {
        return None;
    }
    Some((EnvironmentId::new(env).ok()?, path.to_owned()))
}

/// The extraction options: the config's limits, overridden by flags.
fn extract_options(ctx: &Ctx, args: &CpArgs) -> anyhow::Result<ExtractOptions> {
    let mut limits = ctx.config().copy.limits();
    if let Some(size) = &args.max_bytes {
        limits.max_bytes =
            parse_memory_bytes(size).map_err(|e| anyhow!("invalid --max-bytes: {e}"))?;
    }
    limits.max_entries = args.max_entries.unwrap_or(limits.max_entries);
    limits.max_path_bytes = args.max_path_bytes.unwrap_or(limits.max_path_bytes);
    Ok(ExtractOptions::default()
        .limits(limits)
        .preserve_mode(args.preserve_mode)
        .allow_control_characters(args.allow_control_characters))
}

pub async fn cp(ctx: &Ctx, args: CpArgs) -> anyhow::Result<ExitCode> {
    let engine = ctx.engine().await?;
    match (remote(&args.source), remote(&args.destination)) {
        (None, Some((env, dir))) => {
            let tar = archive::pack_path(Path::new(&args.source))?;
            engine
                .copy_in(&env, &dir, tar)
                .await
                .with_context(|| format!("failed to copy {} into {env}:{dir}", args.source))?;
        }
        (Some((env, path)), None) => {
            let options = extract_options(ctx, &args)?;
            let stream = engine.copy_out(&env, &path).await?;
            archive::copy_out_to(
                stream,
                Path::new(&args.destination),
                copy::source_name(&path),
                &options,
            )
            .await
            .with_context(|| format!("failed to copy {env}:{path} to {}", args.destination))?;
        }
        (Some(_), Some(_)) => {
            bail!("copying between two environments is not supported: copy out, then in")
        }
        (None, None) => bail!("one of SOURCE and DESTINATION must be ENV:PATH"),
    }
    if ctx.json {
        ctx.print_json(
            &json!({"copied": true, "source": args.source, "destination": args.destination}),
        );
    }
    Ok(ExitCode::SUCCESS)
}
