//! `berth port-forward`: forward a local port to a port inside an environment until
//! interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::{ErrorKind, ExecRequest, PortForward};

use super::{env_id, Ctx};
use crate::args::PortForwardArgs;
use crate::output;

pub async fn port_forward(ctx: &Ctx, args: PortForwardArgs) -> anyhow::Result<ExitCode> {
    let (local, remote) = parse_ports(&args.ports)?;
    let env = env_id(&args.environment)?;
    let engine = ctx.engine().await?;
    // Refuse a missing (or foreign) environment now rather than at the first client.
    engine
        .exec(&env, ExecRequest::new(["true"]))
        .await
        .with_context(|| format!("cannot forward to {env}"))?;
    let mut forward = PortForward::start(
        engine,
        env.clone(),
        SocketAddr::new(args.address, local),
        remote,
    )
    .await?;
    let address = forward.local_addr();
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "address": address.to_string(),
            "remote_port": remote,
        }));
    } else {
        println!("forwarding {address} to port {remote} in {env} (Ctrl-C stops)");
    }
    let interrupted = output::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            signal = &mut interrupted => return Ok(ExitCode::from(signal.exit_code())),
            error = forward.next_error() => match error {
                // The environment is gone: no client can be served any more.
                Some(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::EnvironmentGone) => {
                    return Err(anyhow::Error::new(e).context(format!("stopped forwarding to {env}")));
                }
                // One client's failure; the forward serves the others.
                Some(e) => eprintln!("berth: {e}"),
                None => anyhow::bail!("the forward on {address} stopped accepting clients"),
            },
        }
    }
}

/// `[LOCAL:]REMOTE` as (local, remote); a LOCAL of 0 or none picks a free port.
fn parse_ports(text: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || {
        anyhow::anyhow!(
            "invalid [LOCAL:]REMOTE argument {text:?}: expected one or two ports from 1 to 65535 (LOCAL 0 or absent picks a free port), e.g. 8080 or 9000:8080"
        )
    };
    let (local, remote) = match text.split_once(':') {
        Some((local, remote)) => (local.parse::<u16>().map_err(|_| bad())?, remote),
        None => (0, text),
    };
    match remote.parse::<u16>() {
        Ok(remote) if remote > 0 => Ok((local, remote)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ports;

    #[test]
    fn ports_are_local_and_remote() {
        assert_eq!(parse_ports("8080").unwrap(), (0, 8080));
        assert_eq!(parse_ports("9000:8080").unwrap(), (9000, 8080));
        assert_eq!(parse_ports("0:80").unwrap(), (0, 80));
        for bad in ["", "0", "x", "80:", ":80", "70000", "1:2:3", "-1", "8080:0"] {
            let err = parse_ports(bad).unwrap_err().to_string();
            assert!(
                err.contains("invalid [LOCAL:]REMOTE argument"),
                "{bad}: {err}"
            );
        }
    }
}
