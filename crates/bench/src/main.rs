//! berth's benchmark: each scenario runs berth and its baselines (raw bollard written here,
//! the docker CLI) in the same run, alternating, and reports medians, spread and the ratio
//! berth/baseline. Run: `cargo run --release -p berth-bench -- docker`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, ExecRequest, ImageRef, SessionId,
    LABEL_MANAGED_BY, LABEL_SESSION, MANAGED_BY_VALUE,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde::Serialize;

mod docker_bench;
mod kube_bench;
mod podman_bench;
mod pool_bench;
mod remote_bench;
mod server_bench;
mod shell_bench;

pub(crate) use docker_bench::raw_docker_exec;
use docker_bench::Bench;

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Suite {
    /// Every Docker scenario.
    Docker,
    /// Every Kubernetes scenario, on the simulator.
    Kubernetes,
    /// Both.
    All,
    /// Only the shell and detached-command scenarios, on Docker and the simulator.
    Shells,
    /// Only the job agent (`berth serve`) against the library, on Docker.
    Server,
    /// Exec over ssh:// (an sshd on 127.0.0.1 started by the bench; needs root and
    /// openssh-server) against the local socket.
    Remote,
    /// Kubernetes API requests per start, exec and stop at 1, 100 and 1,000 live
    /// environments, on the simulator's virtual pods (issue 18).
    Budget,
    /// Exec latency and throughput on Podman's Docker API against Docker
    /// (`$BERTH_PODMAN_HOST`, default `unix:///tmp/berth-podman.sock`).
    Podman,
    /// Warm pools: claim + first command against a cold start, and the refill rate, on
    /// Docker and the simulator (also part of `all`).
    Pools,
    /// Only the cold `berth run true` against `docker run --rm` (needs the berth binary).
    ColdRun,
}

#[derive(Debug, Parser)]
#[command(about = "berth against raw bollard and the docker CLI, as ratios in one run")]
struct Args {
    /// What to run.
    suite: Suite,
    /// A few iterations of everything, to check the benchmark still works (CI).
    #[arg(long)]
    smoke: bool,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

/// Distribution of a set of samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
}

pub(crate) fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms[i.min(ms.len() - 1)]
    };
    Stats {
        n: ms.len(),
        p50: pick(0.5),
        p90: pick(0.9),
        p99: pick(0.99),
        min: ms.first().copied().unwrap_or(f64::NAN),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

/// One row of a scenario table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    subject: String,
    stats: Option<Stats>,
    /// A single figure where percentiles make no sense (MiB/s, wall time, RSS).
    value: Option<f64>,
    unit: String,
    /// berth / this row, on p50 or value.
    ratio_berth_over_this: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    name: String,
    note: String,
    rows: Vec<Row>,
}

impl Scenario {
    pub(crate) fn timed(name: &str, note: &str, subjects: Vec<(&str, Vec<Duration>)>) -> Self {
        let berth = stats(&subjects[0].1).p50;
        let rows = subjects
            .into_iter()
            .map(|(subject, samples)| {
                let s = stats(&samples);
                Row {
                    subject: subject.into(),
                    ratio_berth_over_this: Some(berth / s.p50),
                    stats: Some(s),
                    value: None,
                    unit: "ms".into(),
                }
            })
            .collect();
        Self {
            name: name.into(),
            note: note.into(),
            rows,
        }
    }

    pub(crate) fn values(name: &str, note: &str, unit: &str, subjects: Vec<(&str, f64)>) -> Self {
        let berth = subjects[0].1;
        let rows = subjects
            .into_iter()
            .map(|(subject, v)| Row {
                subject: subject.into(),
                stats: None,
                value: Some(v),
                unit: unit.into(),
                ratio_berth_over_this: Some(berth / v),
            })
            .collect();
        Self {
            name: name.into(),
            note: note.into(),
            rows,
        }
    }

    fn print(&self) {
        println!("\n### {}\n\n{}\n", self.name, self.note);
        println!("| subject | p50 | p90 | p99 | min | max | value | berth / this |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &self.rows {
            let f = |v: f64| format!("{v:.2}");
            let (p50, p90, p99, min, max) = match &r.stats {
                Some(s) => (
                    format!("{} ms", f(s.p50)),
                    format!("{} ms", f(s.p90)),
                    format!("{} ms", f(s.p99)),
                    format!("{} ms", f(s.min)),
                    format!("{} ms", f(s.max)),
                ),
                None => Default::default(),
            };
            let value = r
                .value
                .map(|v| format!("{} {}", f(v), r.unit))
                .unwrap_or_default();
            let ratio = r
                .ratio_berth_over_this
                .map(|x| format!("{x:.3}"))
                .unwrap_or_default();
            println!(
                "| {} | {p50} | {p90} | {p99} | {min} | {max} | {value} | {ratio} |",
                r.subject
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engine = Arc::new(DockerEngine::connect(&DockerConfig::default()).await?);
    let image = ensure_test_image(engine.as_ref()).await?;
    let raw = Docker::connect_with_defaults()?.negotiate_version().await?;
    let info = engine.init().await?;
    let bench = Bench {
        engine,
        raw,
        image,
        smoke: args.smoke,
        session: SessionId::generate(),
    };
    let machine: BTreeMap<&str, String> = [
        (
            "cores",
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (
            "docker",
            format!(
                "{} (API {})",
                info.server_version,
                info.api_version.unwrap_or_default()
            ),
        ),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
        ),
    ]
    .into_iter()
    .collect();
    println!("## Machine\n");
    for (k, v) in &machine {
        println!("- {k}: {v}");
    }
    let docker = async {
        let mut scenarios = vec![bench.exec_latency().await?, bench.exec_throughput().await?];
        scenarios.extend(bench.start_stop().await?);
        scenarios.push(bench.cold_run().await?);
        scenarios.push(bench.concurrent(10).await?);
        scenarios.push(bench.concurrent(20).await?);
        scenarios.push(bench.memory_50().await?);
        scenarios.extend(bench.shells().await?);
        scenarios.extend(
            server_bench::scenarios(
                bench.engine.clone() as Arc<dyn ContainerEngine>,
                &bench.image,
                bench.smoke,
            )
            .await?,
        );
        anyhow::Ok(scenarios)
    };
    let pools = async {
        pool_bench::scenarios(
            bench.engine.clone() as Arc<dyn ContainerEngine>,
            &bench.image,
            bench.smoke,
        )
        .await
    };
    let shells_only = matches!(args.suite, Suite::Shells);
    let kubernetes = async { kube_bench::run(&bench.image, args.smoke, shells_only).await };
    let scenarios = match args.suite {
        Suite::Docker => docker.await,
        Suite::Kubernetes => match kubernetes.await {
            Ok(mut k) => kube_bench::budget(&bench.image, bench.smoke)
                .await
                .map(|b| {
                    k.extend(b);
                    k
                }),
            Err(e) => Err(e),
        },
        Suite::Budget => kube_bench::budget(&bench.image, bench.smoke).await,
        Suite::Server => {
            server_bench::scenarios(
                bench.engine.clone() as Arc<dyn ContainerEngine>,
                &bench.image,
                bench.smoke,
            )
            .await
        }
        Suite::ColdRun => bench.cold_run().await.map(|s| vec![s]),
        Suite::Remote => {
            remote_bench::scenarios(&bench.engine, &bench.image, &bench.session, bench.smoke).await
        }
        Suite::Podman => {
            podman_bench::scenarios(
                bench.engine.clone(),
                &bench.image,
                &bench.session,
                bench.smoke,
            )
            .await
        }
        Suite::Pools => pools.await,
        Suite::Shells | Suite::All => {
            let first = if shells_only {
                bench.shells().await
            } else {
                docker.await
            };
            let both = match first {
                Ok(mut d) => match kubernetes.await {
                    Ok(k) => {
                        d.extend(k);
                        if shells_only {
                            Ok(d)
                        } else {
                            kube_bench::budget(&bench.image, bench.smoke)
                                .await
                                .map(|b| {
                                    d.extend(b);
                                    d
                                })
                        }
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match both {
                Ok(mut d) if !shells_only => pools.await.map(|p| {
                    d.extend(p);
                    d
                }),
                other => other,
            }
        }
    };
    // Whatever happened, remove what the bench made.
    let leftovers = bench
        .engine
        .list(&berth_engine_core::LabelSelector::session(&bench.session))
        .await
        .unwrap_or_default();
    for env in leftovers {
        let _ = bench.engine.stop(&env.id).await;
    }
    let scenarios = scenarios?;
    for s in &scenarios {
        s.print();
    }
    if let Some(path) = args.json {
        let doc =
            serde_json::json!({"machine": machine, "smoke": args.smoke, "scenarios": scenarios});
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
