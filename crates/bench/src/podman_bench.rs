//! berth on Podman's Docker-compatible API against berth on Docker: exec latency and
//! throughput, alternating between the two daemons in one run, as ratios. The Podman socket is
//! `$BERTH_PODMAN_HOST` (default `unix:///tmp/berth-podman.sock`, where `.ci/podman` starts
//! the service).

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::{busybox_build_context, busybox_path};
use berth_engine_core::{
    tar_stream_from_bytes, BuildSpec, ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest,
    ImageRef, Progress, PullPolicy, SessionId,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::Docker;

use crate::docker_bench::raw_docker_exec;
use crate::{shell_bench, stats, Scenario};

/// Where the Podman service listens unless `BERTH_PODMAN_HOST` says otherwise.
const DEFAULT_PODMAN_HOST: &str = "unix:///tmp/berth-podman.sock";

/// The test image on `engine`, built there when missing (Podman keeps its own images).
async fn image_on(engine: &DockerEngine, image: &ImageRef) -> anyhow::Result<()> {
    match engine
        .ensure_image(image, PullPolicy::Never, &Progress::none())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::ImageNotFound => {
            let context = busybox_build_context(&busybox_path())?;
            engine
                .build_image(
                    BuildSpec::new(image.clone(), tar_stream_from_bytes(context)),
                    &Progress::none(),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Both scenarios; `docker` is the bench's engine on the Docker daemon.
pub(crate) async fn scenarios(
    docker: Arc<DockerEngine>,
    image: &ImageRef,
    session: &SessionId,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let host = std::env::var("BERTH_PODMAN_HOST").unwrap_or_else(|_| DEFAULT_PODMAN_HOST.into());
    let podman = DockerEngine::connect(&DockerConfig::with_host(&host)).await?;
    anyhow::ensure!(
        podman.is_podman(),
        "{host} is not Podman (set BERTH_PODMAN_HOST)"
    );
    anyhow::ensure!(!docker.is_podman(), "the Docker daemon answers as Podman");
    image_on(&podman, image).await?;
    let raw_podman = Docker::connect_with_host(&host)?
        .negotiate_version()
        .await?;
    let spec = EnvironmentSpec::new(image.clone(), session.clone())
        .with_max_lifetime(Duration::from_secs(3600));
    let on_docker = docker.start(&spec).await?;
    let on_podman = match podman.start(&spec).await {
        Ok(env) => env,
        Err(e) => {
            let _ = docker.stop(&on_docker).await;
            return Err(e.into());
        }
    };
    let result = async {
        // Latency: `echo hi`, alternating.
        let iterations = if smoke { 5 } else { 200 };
        let (mut p, mut d, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t = Instant::now();
            let out = podman
                .exec(&on_podman, ExecRequest::new(["echo", "hi"]))
                .await?;
            p.push(t.elapsed());
            anyhow::ensure!(out.stdout_lossy() == "hi\n", "berth exec output on Podman");
            let t = Instant::now();
            let out = docker
                .exec(&on_docker, ExecRequest::new(["echo", "hi"]))
                .await?;
            d.push(t.elapsed());
            anyhow::ensure!(out.stdout_lossy() == "hi\n", "berth exec output on Docker");
            let t = Instant::now();
            raw_docker_exec(&raw_podman, on_podman.as_str(), &["echo", "hi"]).await?;
            raw.push(t.elapsed());
        }
        let latency = Scenario::timed(
            "P1. exec `echo hi` latency, Podman vs Docker",
            &format!("{iterations} sequential execs, alternating daemons; `berth / this` on the Docker row is Podman's latency over Docker's (above 1: Podman is slower). The raw bollard exec on Podman is Podman's own floor."),
            vec![
                ("berth exec on Podman", p),
                ("berth exec on Docker", d),
                ("raw bollard exec on Podman (floor)", raw),
            ],
        );
        // Throughput: a large stream counted, median of a few rounds.
        let total: u64 = if smoke { 16 << 20 } else { 512 << 20 };
        let rounds = if smoke { 1 } else { 3 };
        let count = total.to_string();
        let argv = ["head", "-c", count.as_str(), "/dev/zero"];
        let (mut p, mut d) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let got =
                shell_bench::stream_counting(&podman, &on_podman, ExecRequest::new(argv)).await?;
            p.push(t.elapsed());
            anyhow::ensure!(got == total, "Podman streamed {got} of {total} bytes");
            let t = Instant::now();
            let got = shell_bench::stream_counting(docker.as_ref(), &on_docker, ExecRequest::new(argv))
                .await?;
            d.push(t.elapsed());
            anyhow::ensure!(got == total, "Docker streamed {got} of {total} bytes");
        }
        let mib = total as f64 / f64::from(1 << 20);
        let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
        let throughput = Scenario::values(
            "P2. exec throughput, Podman vs Docker",
            &format!("`head -c {total} /dev/zero` through berth's exec_streaming, median of {rounds}; `berth / this` on the Docker row is Podman's rate over Docker's (below 1: Podman is slower)."),
            "MiB/s",
            vec![
                ("berth exec_streaming on Podman", rate(&p)),
                ("berth exec_streaming on Docker", rate(&d)),
            ],
        );
        anyhow::Ok(vec![latency, throughput])
    }
    .await;
    let _ = podman.stop(&on_podman).await;
    let _ = docker.stop(&on_docker).await;
    result
}
