//! Kubernetes scenarios, on the simulator: berth against `kubectl exec` on the same pod, and
//! the simulator's own floor (a raw Docker exec into the pod's container) to show what the
//! simulator adds.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, ExecRequest, ImageRef, SessionId,
};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use berth_k8s_sim::Sim;
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;

use crate::{stats, Row, Scenario};

struct Ctx {
    engine: Arc<KubernetesEngine>,
    docker: Docker,
    kubeconfig: std::path::PathBuf,
    image: ImageRef,
    session: SessionId,
}

impl Ctx {
    fn spec(&self) -> EnvironmentSpec {
        EnvironmentSpec::new(self.image.clone(), self.session.clone())
            .with_max_lifetime(Duration::from_secs(3600))
    }

    async fn container_of(&self, env: &EnvironmentId) -> anyhow::Result<String> {
        let filters = [("label".to_owned(), vec![format!("job-name={env}")])]
            .into_iter()
            .collect();
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        let c = containers.first().context("the pod's container")?;
        Ok(c.id.clone().unwrap_or_default())
    }

    async fn kubectl_pod(&self, env: &EnvironmentId) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("kubectl")
            .args([
                "get",
                "pods",
                "-l",
                &format!("job-name={env}"),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await?;
        let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if name.is_empty() {
            bail!(
                "kubectl found no pod for {env}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(name)
    }

    async fn kubectl_exec(&self, pod: &str, argv: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        let status = tokio::process::Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("kubectl exec {argv:?} failed: {status}");
        }
        Ok(())
    }

    async fn docker_exec(&self, container: &str, argv: &[&str]) -> anyhow::Result<u64> {
        Ok(crate::raw_docker_exec(&self.docker, container, argv)
            .await?
            .1)
    }
}

pub(crate) async fn run(
    image: &ImageRef,
    smoke: bool,
    shells_only: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let sim = Sim::start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", SessionId::generate()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig.clone());
    let ctx = Ctx {
        engine: Arc::new(KubernetesEngine::connect(config).await?),
        docker: Docker::connect_with_defaults()?.negotiate_version().await?,
        kubeconfig,
        image: image.clone(),
        session: SessionId::generate(),
    };
    let result = if shells_only {
        shell_scenarios(&ctx, smoke).await
    } else {
        match scenarios(&ctx, smoke).await {
            Ok(mut all) => shell_scenarios(&ctx, smoke).await.map(|shells| {
                all.extend(shells);
                all
            }),
            Err(e) => Err(e),
        }
    };
    let leftovers = ctx
        .engine
        .list(&berth_engine_core::LabelSelector::session(&ctx.session))
        .await
        .unwrap_or_default();
    for env in leftovers {
        let _ = ctx.engine.stop(&env.id).await;
    }
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Shells and detached commands on the simulator; the floor is `docker exec -i sh` into the
/// pod's container.
async fn shell_scenarios(ctx: &Ctx, smoke: bool) -> anyhow::Result<Vec<Scenario>> {
    let env = ctx.engine.start(&ctx.spec()).await?;
    let measured = async {
        let container = ctx.container_of(&env).await?;
        let engine: Arc<dyn ContainerEngine> = ctx.engine.clone();
        crate::shell_bench::scenarios(engine, &env, "Kubernetes simulator", &container, smoke).await
    }
    .await;
    ctx.engine.stop(&env).await?;
    measured
}

async fn scenarios(ctx: &Ctx, smoke: bool) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let env = ctx.engine.start(&ctx.spec()).await?;
    let measured = async {
        let pod = ctx.kubectl_pod(&env).await?;
        let container = ctx.container_of(&env).await?;
        // 6. exec latency.
        let n = if smoke { 3 } else { 100 };
        let (mut b, mut k, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            let o = ctx.engine.exec(&env, ExecRequest::new(["echo", "hi"])).await?;
            b.push(t.elapsed());
            anyhow::ensure!(o.stdout_lossy() == "hi\n", "berth exec output {o:?}");
            let t = Instant::now();
            ctx.kubectl_exec(&pod, &["echo", "hi"]).await?;
            k.push(t.elapsed());
            let t = Instant::now();
            ctx.docker_exec(&container, &["echo", "hi"]).await?;
            d.push(t.elapsed());
        }
        out.push(Scenario::timed(
            "6. Kubernetes exec `echo hi` latency (simulator)",
            &format!("{n} sequential execs into one pod, alternating. The raw Docker exec into the pod's container is the simulator's floor: what any client pays before the API server's work."),
            vec![
                ("berth exec (websocket v5)", b),
                ("kubectl exec (CLI)", k),
                ("raw Docker exec into the pod's container (floor)", d),
            ],
        ));
        // 7. throughput.
        let total: u64 = if smoke { 8 << 20 } else { 512 << 20 };
        let count = total.to_string();
        let argv = ["head", "-c", count.as_str(), "/dev/zero"];
        let rounds = if smoke { 1 } else { 3 };
        let (mut b, mut k, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let got =
                crate::shell_bench::stream_counting(ctx.engine.as_ref(), &env, ExecRequest::new(argv))
                    .await?;
            b.push(t.elapsed());
            anyhow::ensure!(got == total, "berth streamed {got} of {total}");
            let t = Instant::now();
            ctx.kubectl_exec(&pod, &argv).await?;
            k.push(t.elapsed());
            let t = Instant::now();
            let got = ctx.docker_exec(&container, &argv).await?;
            d.push(t.elapsed());
            anyhow::ensure!(got == total, "docker streamed {got} of {total}");
        }
        let mib = total as f64 / f64::from(1 << 20);
        let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
        out.push(Scenario::values(
            "7. Kubernetes exec throughput (simulator)",
            &format!("`head -c {total} /dev/zero` through the exec websocket, median of {rounds}; higher is better."),
            "MiB/s",
            vec![
                ("berth exec_streaming", rate(&b)),
                ("kubectl exec > /dev/null (CLI)", rate(&k)),
                ("raw Docker exec into the pod's container (floor)", rate(&d)),
            ],
        ));
        anyhow::Ok(())
    }
    .await;
    ctx.engine.stop(&env).await?;
    measured?;

    // 8. start and stop, then 20 concurrent starts.
    let n = if smoke { 2 } else { 10 };
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let env = ctx.engine.start(&ctx.spec()).await?;
        up.push(t.elapsed());
        let t = Instant::now();
        ctx.engine.stop(&env).await?;
        down.push(t.elapsed());
    }
    let mut s = Scenario::timed(
        "8. Kubernetes start (Job created until the pod runs) and stop (simulator)",
        &format!("{n} environments one at a time, then 20 started concurrently."),
        vec![("berth start", up), ("berth stop", down)],
    );
    for r in &mut s.rows {
        r.ratio_berth_over_this = None;
    }
    let concurrent = if smoke { 3 } else { 20 };
    let specs: Vec<EnvironmentSpec> = (0..concurrent).map(|_| ctx.spec()).collect();
    let t = Instant::now();
    let started = futures_util::future::join_all(specs.iter().map(|sp| ctx.engine.start(sp))).await;
    let wall = t.elapsed();
    let errors = started.iter().filter(|r| r.is_err()).count();
    let first_error = started
        .iter()
        .find_map(|r| r.as_ref().err().map(ToString::to_string));
    for id in started.iter().filter_map(|r| r.as_ref().ok()) {
        ctx.engine.stop(id).await?;
    }
    s.rows.push(Row {
        subject: format!("{concurrent} concurrent starts, wall time"),
        stats: None,
        value: Some(wall.as_secs_f64() * 1000.0),
        unit: "ms".into(),
        ratio_berth_over_this: None,
    });
    s.rows.push(Row {
        subject: format!("{concurrent} concurrent starts, errors"),
        stats: None,
        value: Some(errors as f64),
        unit: "errors".into(),
        ratio_berth_over_this: None,
    });
    out.push(s);
    if let Some(e) = first_error {
        bail!("{errors} of {concurrent} concurrent starts failed, first: {e}");
    }
    Ok(out)
}
