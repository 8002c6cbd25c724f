//! The job agent: a job's round trip through `berth serve` (HTTP, auth, queue, JSON) against
//! the same job through the library directly (spec, session, start, exec, remove), and jobs
//! per second at the concurrency limit, both ways, in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_engine_core::{ContainerEngine, ExecRequest, ImageRef, SessionId};
use berth_runner::config::BerthConfig;
use berth_runner::lifecycle::{self, StartProgress};
use berth_runner::session::Session;
use berth_runner::spec::{self, EnvOptions};
use berth_server::{ApiKeys, Server};

use crate::Scenario;

const KEY: &str = "bench-key-0123456789";
const CONCURRENCY: usize = 4;

/// One job through the library, as the server runs one.
async fn library_job(
    engine: &Arc<dyn ContainerEngine>,
    config: &BerthConfig,
    image: &ImageRef,
) -> anyhow::Result<()> {
    let options = EnvOptions::named("job")
        .with_image(Some(image.clone()))
        .with_session(Some(SessionId::generate()));
    let session = Session::new(engine.clone(), spec::environment_spec(config, &options)?);
    lifecycle::start(
        &session,
        "job",
        config.runner.pull_policy,
        &StartProgress::none(),
    )
    .await?;
    let out = session.exec("job", ExecRequest::shell("true")).await;
    session.shutdown().await?;
    ensure!(out?.status.code() == 0, "the library job failed");
    Ok(())
}

/// One job through the server's seed contract.
async fn server_job(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("X-API-Key", KEY)
        .header("Content-Type", "application/json")
        .body(r#"{"script": "true"}"#)
        .send()
        .await?;
    ensure!(response.status() == 200, "status {}", response.status());
    let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    ensure!(answer["exit_code"] == 0, "answer {answer}");
    Ok(())
}

/// The job agent's scenarios on `engine` with `image`.
pub(crate) async fn scenarios(
    engine: Arc<dyn ContainerEngine>,
    image: &ImageRef,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let config = BerthConfig::from_yaml_str(&format!(
        "runner: {{image: '{image}'}}\nserver: {{max_concurrent_jobs: {CONCURRENCY}, max_queued_jobs: 256}}\n"
    ))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = ApiKeys::load(None, Some(KEY)).context("keys")?;
    let server = Server::with_keys(config.clone(), engine.clone(), keys);
    let handle = server.shutdown_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jobs/execute", listener.local_addr()?);
    let task = tokio::spawn(server.serve(listener, std::future::pending()));
    let client = reqwest::Client::builder().build()?;

    // The server's fixed cost alone: a job refused by validation (auth, body, parse, 422)
    // touches no engine.
    let (mut refused, refused_rounds) = (Vec::new(), if smoke { 20 } else { 2000 });
    for _ in 0..refused_rounds {
        let t = Instant::now();
        let response = client
            .post(&url)
            .header("X-API-Key", KEY)
            .header("Content-Type", "application/json")
            .body(r#"{"script": "true", "cpu_limit": "1000"}"#)
            .send()
            .await?;
        ensure!(response.status() == 422, "status {}", response.status());
        response.bytes().await?;
        refused.push(t.elapsed());
    }
    let fixed = Scenario::timed(
        "9a. the server's fixed cost: a job refused before it runs",
        "`POST /jobs/execute` with a CPU limit above the maximum, answered 422: one HTTP \
         round trip on loopback with the API key checked, the body read and parsed, and a \
         JSON error written, no engine call. Subjects are the same; the row is the cost itself.",
        vec![("berth serve (422)", refused)],
    );

    let rounds = if smoke { 3 } else { 40 };
    let (mut through_server, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        server_job(&client, &url).await?;
        through_server.push(t.elapsed());
        let t = Instant::now();
        library_job(&engine, &config, image).await?;
        direct.push(t.elapsed());
    }
    let overhead = Scenario::timed(
        "9. a job's round trip: berth serve vs the library",
        "`POST /jobs/execute {\"script\": \"true\"}` over HTTP on loopback (auth, parse, queue, \
         a fresh environment, the command, removal, JSON answer) against the same steps called \
         on the library directly, alternating. The difference of the p50s is the server's \
         overhead.",
        vec![
            ("berth serve", through_server),
            ("library (runner::Session)", direct),
        ],
    );

    let jobs = if smoke { CONCURRENCY } else { 10 * CONCURRENCY };
    let t = Instant::now();
    let submissions: Vec<_> = (0..jobs)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { server_job(&client, &url).await })
        })
        .collect();
    for s in submissions {
        s.await??;
    }
    let served = jobs as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (engine, config, image) = (engine.clone(), config.clone(), image.clone());
            tokio::spawn(async move {
                for _ in 0..jobs / CONCURRENCY {
                    library_job(&engine, &config, &image).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let library = jobs as f64 / t.elapsed().as_secs_f64();
    let throughput = Scenario::values(
        "10. jobs per second at the concurrency limit",
        &format!(
            "{jobs} jobs (`true`), {CONCURRENCY} at a time: submitted at once to the server \
             (max_concurrent_jobs {CONCURRENCY}, the rest queued) against {CONCURRENCY} library \
             workers. Higher is better, so berth / this above 1 means the server is faster."
        ),
        "jobs/s",
        vec![
            ("berth serve", served),
            ("library (runner::Session)", library),
        ],
    );
    handle.cancel_now();
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
    Ok(vec![fixed, overhead, throughput])
}
