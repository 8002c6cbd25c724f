//! Remote Docker hosts: exec latency and throughput through `ssh://` (the system ssh and
//! `docker system dial-stdio`, to an sshd on 127.0.0.1 started here as the tests start it)
//! and through `tcp://` with TLS (a tokio-rustls proxy requiring a client certificate, in
//! front of the local socket, as the tests make it) against the local socket, as ratios, in
//! one run on one environment. Needs root and `openssh-server`.

use std::time::{Duration, Instant};

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
use berth_engine_docker::{DockerConfig, DockerEngine};

#[path = "../../engine-docker/tests/support/sshd.rs"]
mod sshd;
#[path = "../../engine-docker/tests/support/tls.rs"]
mod tls;

use crate::{shell_bench, stats, Scenario};

/// The scenarios: latency of `echo hi`, then `head -c` throughput; in each, ssh://, TLS and
/// the local socket take turns.
pub(crate) async fn scenarios(
    local: &DockerEngine,
    image: &ImageRef,
    session: &SessionId,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sshd = sshd::Sshd::start();
    let mut config = DockerConfig::with_host(sshd.address());
    config.ssh_config = Some(sshd.good_config());
    let over_ssh = DockerEngine::connect(&config).await?;
    let pki = tls::Pki::new(false);
    let proxy = tls::TlsProxy::start(&pki).await;
    let mut config = DockerConfig::with_host(proxy.address());
    config.tls = Some(pki.client("ca.pem"));
    let over_tls = DockerEngine::connect(&config).await?;
    let engines = [&over_ssh, &over_tls, local];
    let spec = EnvironmentSpec::new(image.clone(), session.clone())
        .with_max_lifetime(Duration::from_secs(3600));
    let env = local.start(&spec).await?;
    let result = async {
        let iterations = if smoke { 5 } else { 200 };
        let mut samples: [Vec<Duration>; 3] = Default::default();
        for _ in 0..iterations {
            for (engine, samples) in engines.iter().zip(samples.iter_mut()) {
                let t = Instant::now();
                let out = engine.exec(&env, ExecRequest::new(["echo", "hi"])).await?;
                samples.push(t.elapsed());
                anyhow::ensure!(out.stdout_lossy() == "hi\n", "exec output");
            }
        }
        let [ssh, tls, socket] = samples;
        let latency = |over: &str, first: &str, samples: Vec<Duration>, socket: Vec<Duration>| {
            Scenario::timed(
                &format!("R1. exec `echo hi` latency over {over}"),
                &format!("{iterations} sequential execs in one environment, ssh://, tcp+TLS and the local socket taking turns (127.0.0.1; ssh: one master connection, one `ssh … docker system dial-stdio` per API connection; TLS: a tokio-rustls proxy to the socket). The ratio is the transport's cost."),
                vec![(first, samples), ("berth on the local socket", socket)],
            )
        };
        let mut out = vec![
            latency("ssh://", "berth over ssh://", ssh, socket.clone()),
            latency("tcp+TLS", "berth over tcp+TLS", tls, socket),
        ];
        let total: u64 = if smoke { 8 << 20 } else { 256 << 20 };
        let rounds = if smoke { 1 } else { 3 };
        let count = total.to_string();
        let argv = ["head", "-c", count.as_str(), "/dev/zero"];
        let mut samples: [Vec<Duration>; 3] = Default::default();
        for _ in 0..rounds {
            for (engine, samples) in engines.iter().zip(samples.iter_mut()) {
                let t = Instant::now();
                let got =
                    shell_bench::stream_counting(*engine, &env, ExecRequest::new(argv)).await?;
                samples.push(t.elapsed());
                anyhow::ensure!(got == total, "streamed {got} of {total} bytes");
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let mib = total as f64 / f64::from(1 << 20);
        let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
        for (over, i) in [("ssh://", 0), ("tcp+TLS", 1)] {
            let first = format!("berth over {over}");
            out.push(Scenario::values(
                &format!("R2. exec throughput over {over}"),
                &format!("`head -c {total} /dev/zero` streamed and counted, median of {rounds}, ssh://, tcp+TLS and the local socket taking turns; higher is better, so berth/this below 1 is the transport's slowdown."),
                "MiB/s",
                vec![(&first, rate(&samples[i])), ("berth on the local socket", rate(&samples[2]))],
            ));
        }
        anyhow::Ok(out)
    }
    .await;
    local.stop(&env).await?;
    drop((over_ssh, over_tls, proxy, pki, sshd));
    result
}
