//! `berth serve`: the job agent. Flags over the config's `server:` section; SIGTERM or
//! SIGINT drains (a second one cancels at once), SIGHUP reloads the API keys.

use std::process::ExitCode;

use anyhow::Context;
use berth_runner::config::HumanDuration;
use berth_server::Server;
use tokio::signal::unix::{signal, SignalKind};

use super::Ctx;
use crate::args::ServeArgs;

/// How often `berth serve` tops its pools up (a claim by another process is seen then).
const POOL_REFILL_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(ctx: &Ctx, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = ctx.config().clone();
    let server = &mut config.server;
    if let Some(listen) = args.listen {
        server.listen = listen;
    }
    if let Some(file) = args.api_keys_file {
        server.api_keys_file = Some(file);
    }
    if let Some(n) = args.max_concurrent_jobs {
        server.max_concurrent_jobs = n;
    }
    if let Some(n) = args.max_queued_jobs {
        server.max_queued_jobs = n;
    }
    if let Some(d) = args.drain_timeout {
        server.drain_timeout = d
            .parse::<HumanDuration>()
            .with_context(|| format!("invalid --drain-timeout {d:?}"))?;
    }
    if args.tls_cert.is_some() {
        server.tls.cert = args.tls_cert;
        server.tls.key = args.tls_key;
    }
    config.validate("the flags of berth serve")?;
    let engine = ctx.engine().await?;
    // Each configured pool is kept at min_ready while the agent runs (dropped on return).
    let mut refillers = Vec::new();
    for name in config.pools.keys() {
        let spec = config
            .pool_spec(name)
            .map_err(|(key, reason)| anyhow::anyhow!("invalid {key}: {reason}"))?;
        let pool = berth_runner::pool::Pool::new(
            engine.clone(),
            spec,
            config.pools[name].start_concurrency(),
        );
        refillers.push(pool.refill_in_background(POOL_REFILL_EVERY));
    }
    let server = Server::new(config, engine)?;
    let listener = tokio::net::TcpListener::bind(server.listen_address())
        .await
        .with_context(|| format!("cannot listen on {}", server.listen_address()))?;
    let addr = listener.local_addr()?;
    server.check_listen(addr)?;

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let reloader = server.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reloader.reload_keys() {
                Ok(n) => tracing::warn!(keys = n, "API keys reloaded"),
                Err(e) => tracing::error!(error = %e, "API keys not reloaded; the old ones stay"),
            }
        }
    });
    let handle = server.shutdown_handle();
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!("draining: running jobs may finish; a second signal cancels them");
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            handle.cancel_now();
        });
    };
    eprintln!("berth serve: listening on {addr}");
    server.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
