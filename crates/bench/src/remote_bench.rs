//! Remote Docker hosts: exec latency and throughput through `ssh://` (the system ssh and
//! `docker system dial-stdio`, to an sshd on 127.0.0.1 started here as the tests start it)
//! against the local socket, as ratios, in one run on one environment. Needs root and
//! `openssh-server`. TLS is not measured here (its proxy lives in the tests).

use std::time::{Duration, Instant};

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
use berth_engine_docker::{DockerConfig, DockerEngine};

#[path = "../../engine-docker/tests/support/sshd.rs"]
mod sshd;

use crate::{shell_bench, stats, Scenario};

/// The scenarios: latency of `echo hi`, then `head -c` throughput, ssh:// first in each pair.
pub(crate) async fn scenarios(
    local: &DockerEngine,
    image: &ImageRef,
    session: &SessionId,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let sshd = sshd::Sshd::start();
    let mut config = DockerConfig::with_host(sshd.address());
    config.ssh_config = Some(sshd.good_config());
    let remote = DockerEngine::connect(&config).await?;
    let spec = EnvironmentSpec::new(image.clone(), session.clone())
        .with_max_lifetime(Duration::from_secs(3600));
    let env = local.start(&spec).await?;
    let result = async {
        let iterations = if smoke { 5 } else { 200 };
        let (mut over_ssh, mut on_socket) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            for (engine, samples) in [(&remote, &mut over_ssh), (local, &mut on_socket)] {
                let t = Instant::now();
                let out = engine.exec(&env, ExecRequest::new(["echo", "hi"])).await?;
                samples.push(t.elapsed());
                anyhow::ensure!(out.stdout_lossy() == "hi\n", "exec output");
            }
        }
        let latency = Scenario::timed(
            "R1. exec `echo hi` latency over ssh://",
            &format!("{iterations} sequential execs in one environment, alternating: berth through ssh:// (sshd on 127.0.0.1, one ssh master, one `ssh … docker system dial-stdio` per API connection) against berth on the local socket; the ratio is the cost of the transport."),
            vec![("berth over ssh://", over_ssh), ("berth on the local socket", on_socket)],
        );
        let total: u64 = if smoke { 8 << 20 } else { 256 << 20 };
        let rounds = if smoke { 1 } else { 3 };
        let count = total.to_string();
        let argv = ["head", "-c", count.as_str(), "/dev/zero"];
        let (mut over_ssh, mut on_socket) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (engine, samples) in [(&remote, &mut over_ssh), (local, &mut on_socket)] {
                let t = Instant::now();
                let got =
                    shell_bench::stream_counting(engine, &env, ExecRequest::new(argv)).await?;
                samples.push(t.elapsed());
                anyhow::ensure!(got == total, "streamed {got} of {total} bytes");
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let mib = total as f64 / f64::from(1 << 20);
        let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
        let throughput = Scenario::values(
            "R2. exec throughput over ssh://",
            &format!("`head -c {total} /dev/zero` streamed and counted, median of {rounds}, ssh:// and the local socket alternating; higher is better, so berth/this below 1 is the ssh transport's slowdown."),
            "MiB/s",
            vec![
                ("berth over ssh://", rate(&over_ssh)),
                ("berth on the local socket", rate(&on_socket)),
            ],
        );
        anyhow::Ok(vec![latency, throughput])
    }
    .await;
    local.stop(&env).await?;
    drop(remote);
    drop(sshd);
    result
}
