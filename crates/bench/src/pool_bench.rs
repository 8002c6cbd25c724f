//! Warm pools: time to first command (claim + `echo hi`) from a warm pool against a cold
//! start (start + `echo hi`), the claim alone, and the refill rate, on Docker and on the
//! simulator. `berth-bench pools` runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, LabelSelector, PoolSpec, SessionId,
    Workspace,
};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use berth_k8s_sim::Sim;
use berth_runner::pool::Pool;

use crate::Scenario;

/// How many members start at once when the bench fills a pool.
const FILL_CONCURRENCY: usize = 4;

/// The pool scenarios on `engine` (called `backend` in their names).
async fn on(
    engine: Arc<dyn ContainerEngine>,
    image: &ImageRef,
    backend: &str,
    runs: usize,
) -> anyhow::Result<Vec<Scenario>> {
    let name = format!("b{}", &SessionId::generate().as_str()[..10]);
    let spec = EnvironmentSpec::new(image.clone(), SessionId::generate())
        .with_workspace(Workspace::Ephemeral)
        .with_max_lifetime(Duration::from_secs(1800));
    let pool_spec = PoolSpec::new(name.clone(), spec.clone())
        .with_max(runs)
        .with_min_ready(runs)
        .with_idle_ttl(Duration::from_secs(1800));
    let pool = Pool::new(engine.clone(), pool_spec, FILL_CONCURRENCY);
    let session = SessionId::generate();
    let result = async {
        let filled_at = Instant::now();
        let filled = pool.fill(Some(runs)).await?;
        let fill_time = filled_at.elapsed();
        anyhow::ensure!(
            filled.ready == runs,
            "the pool filled to {} of {runs}: {:?}",
            filled.ready,
            filled.failures
        );
        let mut warm = Vec::new();
        let mut claim_only = Vec::new();
        let mut cold = Vec::new();
        let echo = || ExecRequest::new(["echo", "hi"]);
        for i in 0..runs {
            let env_name = format!("w{i}");
            let t0 = Instant::now();
            let claimed = pool
                .claim(session.clone(), &env_name, Default::default())
                .await?;
            let claimed_at = t0.elapsed();
            anyhow::ensure!(claimed.warm, "run {i} found the pool empty");
            let out = engine.exec(&claimed.id, echo()).await?;
            warm.push(t0.elapsed());
            claim_only.push(claimed_at);
            anyhow::ensure!(out.stdout_lossy() == "hi\n", "{out:?}");
            engine.stop(&claimed.id).await?;

            let mut cold_spec = spec.clone().with_name(format!("c{i}"));
            cold_spec.session = session.clone();
            let t0 = Instant::now();
            let env = engine.start(&cold_spec).await?;
            let out = engine.exec(&env, echo()).await?;
            cold.push(t0.elapsed());
            anyhow::ensure!(out.stdout_lossy() == "hi\n", "{out:?}");
            engine.stop(&env).await?;
        }
        let rate = runs as f64 / fill_time.as_secs_f64();
        anyhow::Ok(vec![
            Scenario::timed(
                &format!("11. Time to first command, warm pool vs cold ({backend})"),
                &format!(
                    "Claim a member of a filled pool and run `echo hi` in it, against starting an environment cold and running `echo hi`; {runs} runs each, alternating. The claim alone is the third row (goal: ≤ 10 ms p50). Anchors: Daytona 0.11 s and E2B 0.44 s create-to-first-command (median), kubernetes-sigs/agent-sandbox 50–64 ms p50 warm claims."
                ),
                vec![
                    ("berth: claim + echo (warm pool)", warm),
                    ("berth: start + echo (cold)", cold),
                    ("berth: claim only", claim_only),
                ],
            ),
            Scenario::values(
                &format!("12. Pool refill rate ({backend})"),
                &format!(
                    "Members started per second filling an empty pool of {runs}, {FILL_CONCURRENCY} starts at once (each ready: Docker running, Kubernetes pod Running)."
                ),
                "members/s",
                vec![("berth: pool fill", rate)],
            ),
        ])
    }
    .await;
    // Whatever happened, remove the pool and what was claimed from it.
    let _ = pool.drain().await;
    for env in engine
        .list(&LabelSelector::session(&session))
        .await
        .unwrap_or_default()
    {
        let _ = engine.stop(&env.id).await;
    }
    result
}

/// The pool scenarios on Docker (`docker`) and on a simulator started here.
pub(crate) async fn scenarios(
    docker: Arc<dyn ContainerEngine>,
    image: &ImageRef,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let mut out = on(docker, image, "Docker", if smoke { 2 } else { 30 }).await?;
    let sim = Sim::start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("berth-bench-pools-{}", SessionId::generate()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig);
    let result = async {
        let engine: Arc<dyn ContainerEngine> = Arc::new(
            KubernetesEngine::connect(config)
                .await
                .context("connect to the simulator")?,
        );
        on(engine, image, "simulator", if smoke { 2 } else { 15 }).await
    }
    .await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    out.extend(result?);
    Ok(out)
}
