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

/// CPU time (user + system) of this process's threads named `k8s-sim` (the simulator's
/// runtime: its API server, controllers and pod workers), from `/proc/self/task/*/stat`.
fn sim_cpu() -> Duration {
    let mut ticks = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... : comm may hold spaces, so split after its closing paren.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(k8s-sim") {
            continue;
        }
        let fields: Vec<&str> = tail.split_whitespace().collect();
        // After the comm: state is field 0, utime field 11, stime field 12.
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// This process's resident set, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `n` environments, at most 50 at once.
async fn start_many(
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
    n: usize,
) -> anyhow::Result<Vec<EnvironmentId>> {
    use futures_util::StreamExt;
    let started: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| engine.start(spec))
        .buffer_unordered(50)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(n);
    let mut first_error = None;
    for r in started {
        match r {
            Ok(id) => ids.push(id),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        stop_many(engine, &ids).await;
        bail!("{} of {n} starts failed, first: {e}", n - ids.len());
    }
    Ok(ids)
}

/// Stops every environment of `ids`, at most 50 at once, errors ignored.
async fn stop_many(engine: &KubernetesEngine, ids: &[EnvironmentId]) {
    use futures_util::StreamExt;
    futures_util::stream::iter(ids)
        .map(|id| engine.stop(id))
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
}

/// The requests of `delta`, divided by `per`, as `verb resource=count` pairs.
fn per_op(delta: &berth_k8s_sim::Requests, per: u64) -> (f64, String) {
    let total = delta.total() as f64 / per as f64;
    let detail = delta
        .iter()
        .map(|(v, r, n)| {
            let each = n as f64 / per as f64;
            if each.fract() == 0.0 {
                format!("{v} {r}={each}")
            } else {
                format!("{v} {r}={each:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    (total, detail)
}

/// Issue 18's budget: API requests per start, exec and stop by verb at 1, 100 and 1,000 live
/// environments (virtual pods), start latency of 200 concurrent starts, the simulator's CPU
/// time, and the process's memory per live environment.
pub(crate) async fn budget(image: &ImageRef, smoke: bool) -> anyhow::Result<Vec<Scenario>> {
    let sim = Sim::start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    sim.virtual_pods(image.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", SessionId::generate()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig);
    let engine = KubernetesEngine::connect(config).await?;
    let session = SessionId::generate();
    let spec = EnvironmentSpec::new(image.clone(), session.clone())
        .with_max_lifetime(Duration::from_secs(3600));
    let mut live: Vec<EnvironmentId> = Vec::new();
    let result = budget_measured(&sim, &engine, &spec, smoke, &mut live).await;
    // A thousand stops take the (debug) simulator minutes: past a hundred, the environments go
    // with the simulator, which holds them in memory only (its one Docker object, the shared
    // container, is removed by its shutdown).
    if live.len() <= 100 {
        stop_many(&engine, &live).await;
        let leftovers = engine
            .list(&berth_engine_core::LabelSelector::session(&session))
            .await
            .unwrap_or_default();
        for env in leftovers {
            let _ = engine.stop(&env.id).await;
        }
    }
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn budget_measured(
    sim: &Sim,
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
    smoke: bool,
    live: &mut Vec<EnvironmentId>,
) -> anyhow::Result<Vec<Scenario>> {
    let levels: &[usize] = if smoke { &[1, 3] } else { &[1, 100, 1000] };
    let reps: u64 = if smoke { 1 } else { 3 };
    let execs: u64 = if smoke { 2 } else { 10 };
    let mut rows = Vec::new();
    let value_row = |subject: String, value: f64, unit: &str| Row {
        subject,
        stats: None,
        value: Some(value),
        unit: unit.into(),
        ratio_berth_over_this: None,
    };
    let mut rss_at_one = None;
    for &level in levels {
        // `level - 1` environments stay up while one more is started, used and stopped.
        let want = level - 1;
        if live.len() < want {
            let more = start_many(engine, spec, want - live.len()).await?;
            live.extend(more);
        }
        if level == levels[0] {
            rss_at_one = Some(rss_kib());
        }
        // Let the start-up settle before counting: what runs now is steady state.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut start_d, mut exec_d, mut stop_d) = (
            berth_k8s_sim::Requests::default(),
            berth_k8s_sim::Requests::default(),
            berth_k8s_sim::Requests::default(),
        );
        let add = |acc: &mut berth_k8s_sim::Requests, d: &berth_k8s_sim::Requests| {
            *acc = acc.plus(d);
        };
        for _ in 0..reps {
            let before = sim.requests();
            let env = engine.start(spec).await?;
            let after_start = sim.requests();
            add(&mut start_d, &after_start.since(&before));
            for _ in 0..execs {
                let out = engine.exec(&env, ExecRequest::new(["echo", "hi"])).await;
                let out = match out {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = engine.stop(&env).await;
                        return Err(e.into());
                    }
                };
                anyhow::ensure!(out.stdout_lossy() == "hi\n", "exec output {out:?}");
            }
            let after_exec = sim.requests();
            add(&mut exec_d, &after_exec.since(&after_start));
            engine.stop(&env).await?;
            add(&mut stop_d, &sim.requests().since(&after_exec));
        }
        for (what, delta, per) in [
            ("start", &start_d, reps),
            ("exec", &exec_d, reps * execs),
            ("stop", &stop_d, reps),
        ] {
            let (total, detail) = per_op(delta, per);
            let row = value_row(
                format!("per {what}, {level} live: {detail}"),
                total,
                "requests",
            );
            eprintln!("budget: {} = {:?}", row.subject, row.value);
            rows.push(row);
        }
        // After the second level: 200 starts at once (they stay live, toward the next level).
        if levels.len() > 1 && level == levels[1] {
            let concurrent = if smoke { 3 } else { 200 };
            for row in concurrent_starts(sim, engine, spec, concurrent, live).await? {
                eprintln!("budget: {} = {:?} {:?}", row.subject, row.value, row.stats);
                rows.push(row);
            }
        }
    }
    // Memory and the simulator's idle cost at the top level, all environments live.
    let top = *levels.last().unwrap_or(&1);
    let rss_top = rss_kib();
    if let Some(rss1) = rss_at_one {
        if top > 1 {
            let per_env = (rss_top.saturating_sub(rss1)) as f64 / (top - 1) as f64;
            rows.push(value_row(
                format!(
                    "process RSS growth per live environment, 1 → {top} (berth AND the in-process simulator)"
                ),
                per_env,
                "KiB",
            ));
        }
    }
    let idle = if smoke { 1 } else { 10 };
    let (cpu0, req0) = (sim_cpu(), sim.requests());
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (cpu1, req1) = (sim_cpu(), sim.requests());
    rows.push(value_row(
        format!(
            "simulator CPU while {} environments sit idle, per second ({} requests in {idle} s)",
            live.len(),
            req1.since(&req0).total()
        ),
        (cpu1 - cpu0).as_secs_f64() * 1000.0 / idle as f64,
        "ms CPU/s",
    ));
    for r in rows.iter().rev().take(2) {
        eprintln!("budget: {} = {:?}", r.subject, r.value);
    }
    Ok(vec![Scenario {
        name: "14. Kubernetes API budget (simulator, virtual pods)".into(),
        note: format!(
            "Issue 18. API requests the simulator served per start, per exec (`echo hi`) and per stop, by verb and resource, at {levels:?} live environments in one process (KubernetesEngine against the simulator with virtual pods: one shared container); mean of {reps} starts/stops and {} execs per level. Goal: 0 requests per exec beyond the exec itself, ≤3 per start, ≤2 per stop, whatever the number of environments. Simulator CPU is the user+system time of its runtime threads (`k8s-sim`: API server, controllers, pod workers), from /proc/self/task.",
            reps * execs
        ),
        rows,
    }])
}

/// Starts `concurrent` environments at once (they stay live) and times each start; the rows
/// say the latency and the simulator's CPU meanwhile.
async fn concurrent_starts(
    sim: &Sim,
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
    concurrent: usize,
    live: &mut Vec<EnvironmentId>,
) -> anyhow::Result<Vec<Row>> {
    let already = live.len();
    let (cpu0, req0) = (sim_cpu(), sim.requests());
    let t = Instant::now();
    let timed = futures_util::future::join_all((0..concurrent).map(|_| async {
        let t = Instant::now();
        engine.start(spec).await.map(|id| (id, t.elapsed()))
    }))
    .await;
    let wall = t.elapsed();
    let (cpu1, req1) = (sim_cpu(), sim.requests());
    let mut lat = Vec::new();
    let mut first_error = None;
    for r in timed {
        match r {
            Ok((id, d)) => {
                live.push(id);
                lat.push(d);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let started = req1.since(&req0);
    let failed = concurrent - lat.len();
    if failed == concurrent {
        if let Some(e) = first_error {
            bail!("all {concurrent} concurrent starts failed, first: {e}");
        }
    }
    Ok(vec![
        Row {
            subject: format!(
                "{concurrent} concurrent starts: failed{}",
                first_error.map_or_else(String::new, |e| format!(" (first: {e})"))
            ),
            stats: None,
            value: Some(failed as f64),
            unit: "errors".into(),
            ratio_berth_over_this: None,
        },
        Row {
            subject: format!(
                "{concurrent} concurrent starts ({already} already live): latency of those that started"
            ),
            stats: Some(stats(&lat)),
            value: None,
            unit: "ms".into(),
            ratio_berth_over_this: None,
        },
        Row {
            subject: format!(
                "{concurrent} concurrent starts: simulator CPU ({} requests: {started}; wall {:.1} s)",
                started.total(),
                wall.as_secs_f64()
            ),
            stats: None,
            value: Some((cpu1 - cpu0).as_secs_f64() * 1000.0),
            unit: "ms CPU".into(),
            ratio_berth_over_this: None,
        },
    ])
}
