//! `berth network`: change what a running environment may reach.

use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_engine_core::{EgressAllow, Network};
use serde_json::json;

use super::{env_id, Ctx};
use crate::args::NetworkArgs;

/// The policy the flags ask for, checked before any I/O.
fn policy(args: &NetworkArgs) -> anyhow::Result<Network> {
    Ok(if args.none {
        Network::None
    } else if args.full {
        Network::Full
    } else if !args.allow.is_empty() || args.dns {
        Network::Allow(EgressAllow::parse(&args.allow, args.dns)?)
    } else {
        bail!("say what the environment may reach: --allow DEST (repeatable) and/or --dns, --none, or --full")
    })
}

pub async fn network(ctx: &Ctx, args: NetworkArgs) -> anyhow::Result<ExitCode> {
    let network = policy(&args)?;
    let env = env_id(&args.environment)?;
    let engine = ctx.engine().await?;
    engine
        .set_network(&env, &network)
        .await
        .with_context(|| format!("cannot change the network policy of {env}"))?;
    if ctx.json {
        ctx.print_json(&json!({"id": env, "network": network}));
    } else {
        println!("{env}: network {}", network.describe());
    }
    Ok(ExitCode::SUCCESS)
}
