//! 200 jobs from 50 concurrent clients against 4 slots and 64 queue places: every submission
//! gets a result or a 429, no job is lost or run twice, nothing is left behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_engine_core::testkit::TEST_IMAGE;
use serde_json::{json, Value};

mod support;

use support::{config, TestServer};

const JOBS: usize = 200;
const CLIENTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_from_fifty_clients() {
    let shared = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "runner: {{image: '{TEST_IMAGE}', network: false, workspace: {{host_path: '{}'}}}}\nserver: {{max_concurrent_jobs: 4, max_queued_jobs: 64}}\n",
        shared.path().display()
    ));
    let s = Arc::new(TestServer::start(cfg).await);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let s = s.clone();
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for n in (c..JOBS).step_by(CLIENTS) {
                // Each job records that it ran, in the workspace all jobs share.
                let body =
                    json!({"job_id": n, "script": format!("echo {n} >> /workspace/ran; echo {n}")});
                let r = s.post("/jobs/execute", &body).await;
                let status = r.status().as_u16();
                let answer: Value = r.json().await.expect("JSON answer");
                results.push((n, status, answer));
            }
            results
        }));
    }
    let mut by_job = BTreeMap::new();
    for c in clients {
        for (n, status, answer) in c.await.unwrap() {
            by_job.insert(n, (status, answer));
        }
    }
    assert_eq!(by_job.len(), JOBS, "every submission was answered");
    let mut ran = Vec::new();
    let mut refused = 0;
    for (n, (status, answer)) in &by_job {
        match status {
            200 => {
                assert_eq!(answer["exit_code"], 0, "{answer}");
                assert_eq!(answer["stdout"], format!("{n}\n"), "{answer}");
                ran.push(*n);
            }
            429 => refused += 1,
            other => panic!("job {n}: {other} {answer}"),
        }
    }
    let recorded = std::fs::read_to_string(shared.path().join("ran")).unwrap();
    let mut recorded: Vec<usize> = recorded.lines().map(|l| l.parse().unwrap()).collect();
    recorded.sort_unstable();
    assert_eq!(
        recorded, ran,
        "each accepted job ran exactly once, no refused one ran"
    );
    assert_eq!(ran.len() + refused, JOBS);
    let health = s.get_json("/health").await;
    assert_eq!(health["jobs_running"], 0);
    assert_eq!(health["jobs_queued"], 0);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "berth_jobs_total{{outcome=\"succeeded\"}} {}",
            ran.len()
        )),
        "{metrics}"
    );
    let s = Arc::into_inner(s).expect("the only owner");
    s.stop().await;
}
