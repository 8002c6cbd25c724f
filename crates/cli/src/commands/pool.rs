//! `berth pool fill|ls|drain`, and the pool `up --pool` and `run --pool` claim from.

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use berth_engine_core::EnvironmentSpec;
use berth_runner::config::BerthConfig;
use berth_runner::pool::{self, Pool};
use serde_json::json;

use super::{env_options, Ctx};
use crate::args::{EnvArgs, PoolDrainArgs, PoolFillArgs};

/// The configured pool `name` on the configured engine.
pub async fn configured(ctx: &Ctx, name: &str) -> anyhow::Result<Pool> {
    let config = ctx.config();
    let spec = pool_spec(config, name)?;
    let concurrency = config.pools[name].start_concurrency();
    Ok(Pool::new(ctx.engine().await?, spec, concurrency))
}

fn pool_spec(config: &BerthConfig, name: &str) -> anyhow::Result<berth_engine_core::PoolSpec> {
    config
        .pool_spec(name)
        .map_err(|(key, reason)| anyhow!("invalid {key}: {reason}"))
}

/// With `--pool`: the session template from the pool's spec (`--session`, `--name`) and the
/// pool to claim from.
pub async fn for_env(ctx: &Ctx, args: &EnvArgs) -> anyhow::Result<Option<(EnvironmentSpec, Pool)>> {
    let Some(name) = &args.pool else {
        return Ok(None);
    };
    let pool = configured(ctx, name).await?;
    let options = env_options(args)?;
    let spec = pool::session_spec(pool.spec(), options.session, &options.name)?;
    Ok(Some((spec, pool)))
}

pub async fn fill(ctx: &Ctx, args: PoolFillArgs) -> anyhow::Result<ExitCode> {
    let pool = configured(ctx, &args.name).await?;
    if let Some(size) = args.size {
        if size > pool.spec().max {
            eprintln!(
                "berth: note: pool {} holds at most {} (pools.{}.max); filling to that",
                args.name,
                pool.spec().max,
                args.name
            );
        }
    }
    let report = pool
        .fill(args.size)
        .await
        .with_context(|| format!("failed to fill pool {}", args.name))?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?);
    } else {
        for id in &report.replaced {
            println!("replaced {id}");
        }
        for id in &report.started {
            println!("started {id}");
        }
        for failure in &report.failures {
            eprintln!("berth: a member failed to start: {failure}");
        }
        println!("pool {}: {} ready", args.name, report.ready);
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn ls(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let config = ctx.config();
    let engine = ctx.engine().await?;
    let mut rows = Vec::new();
    for name in config.pools.keys() {
        let spec = pool_spec(config, name)?;
        let pool = Pool::new(engine.clone(), spec, config.pools[name].start_concurrency());
        rows.push(pool.status().await?);
    }
    if ctx.json {
        ctx.print_json(&json!(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no pools configured (pools: in the config)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>6} {:>6} {:>10} {:>4} {:>9}",
        "POOL", "READY", "OTHER", "MIN_READY", "MAX", "IDLE_TTL"
    );
    for r in rows {
        println!(
            "{:<20} {:>6} {:>6} {:>10} {:>4} {:>8}s",
            r.name, r.ready, r.other, r.min_ready, r.max, r.idle_ttl_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn drain(ctx: &Ctx, args: PoolDrainArgs) -> anyhow::Result<ExitCode> {
    let pool = configured(ctx, &args.name).await?;
    let stopped = pool
        .drain()
        .await
        .with_context(|| format!("failed to drain pool {}", args.name))?;
    if ctx.json {
        ctx.print_json(&json!({"pool": args.name, "stopped": stopped}));
    } else {
        for id in &stopped {
            println!("stopped {id}");
        }
        println!("pool {}: drained ({} stopped)", args.name, stopped.len());
    }
    Ok(ExitCode::SUCCESS)
}
