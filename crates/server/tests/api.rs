//! The HTTP API end to end: a real server on a real socket running jobs on the real Docker
//! daemon with the test image, driven by reqwest.

use std::time::Duration;

use serde_json::{json, Value};

mod support;

use support::{docker_config, TestServer, KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_key_and_jobs_need_a_valid_one() {
    let s = TestServer::start(docker_config("")).await;
    let health = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["backend"], "docker");
    assert_eq!(health["engine_reachable"], true);
    assert_eq!(health["jobs_running"], 0);
    assert_eq!(health["jobs_queued"], 0);
    assert!(health["version"].is_string());

    let missing = s.client.get(s.url("/v1/jobs")).send().await.unwrap();
    let wrong = s
        .client
        .get(s.url("/v1/jobs"))
        .header("X-API-Key", "not-the-key")
        .send()
        .await
        .unwrap();
    let prefix = s
        .client
        .get(s.url("/v1/jobs"))
        .header("X-API-Key", &KEY[..KEY.len() - 1])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(wrong.status(), 401);
    assert_eq!(prefix.status(), 401);
    let (missing, wrong, prefix) = (
        missing.text().await.unwrap(),
        wrong.text().await.unwrap(),
        prefix.text().await.unwrap(),
    );
    assert_eq!(missing, wrong, "one body for a missing and a wrong key");
    assert_eq!(missing, prefix);
    assert!(
        !wrong.contains("not-the-key"),
        "keys are never echoed: {wrong}"
    );

    let bearer = s
        .client
        .get(s.url("/v1/jobs"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let metrics = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401, "metrics need the key");
    // Unknown routes answer 404 in JSON (the routes are documented: no secret in which exist).
    let nowhere = s.get("/v2/nowhere").await;
    assert_eq!(nowhere.status(), 404);
    let nowhere: Value = nowhere.json().await.unwrap();
    assert!(
        nowhere["error"].as_str().unwrap().contains("/v2/nowhere"),
        "{nowhere}"
    );
    let wrong_method = s.client.put(s.url("/health")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.json::<Value>().await.unwrap()["error"].is_string());
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("berth_jobs_queued"), "{metrics}");
    assert!(metrics.contains("berth_engine_errors_total"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_keeps_the_seed_contract() {
    let s = TestServer::start(docker_config("")).await;
    let answer = s
        .post(
            "/jobs/execute",
            &json!({
                "job_id": 123,
                "script": "echo out; echo err >&2; echo \"$FOO\"; exit 3",
                "env_vars": {"FOO": "bar"},
                "cpu_limit": "1.0",
                "memory_limit": "256m",
            }),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["job_id"], 123, "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(answer["exit_code"], 3);
    assert_eq!(answer["stdout"], "out\nbar\n");
    assert_eq!(answer["stderr"], "err\n");
    assert_eq!(answer["state"], "failed");
    let took = answer["duration_seconds"].as_f64().expect("duration");
    assert!(took > 0.0 && took < 60.0, "{answer}");
    let (started, completed) = (
        answer["started_at"].as_str().expect("started_at"),
        answer["completed_at"].as_str().expect("completed_at"),
    );
    assert!(started.ends_with('Z') && started.len() == 24, "{started}");
    assert!(completed >= started, "{started} .. {completed}");

    // An argv runs as given, without a shell.
    let answer: Value = s
        .post(
            "/jobs/execute",
            &json!({"command": ["echo", "a  b", "$HOME"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["stdout"], "a  b $HOME\n", "{answer}");
    assert_eq!(answer["success"], true);

    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("berth_jobs_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_jobs_total{outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// The NDJSON lines of a logs response.
async fn lines(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stdout_of(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["data"].as_str().expect("data"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_job_streams_its_logs_resumably_and_pages() {
    let s = TestServer::start(docker_config("")).await;
    let created = s
        .post(
            "/v1/jobs",
            &json!({"script": "for i in 1 2 3; do echo line$i; sleep 0.3; done; printf '\\377' >&2"}),
        )
        .await;
    assert_eq!(created.status(), 202);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert!(matches!(
        created["state"].as_str(),
        Some("queued" | "running")
    ));

    let followed = lines(s.get(&format!("/v1/jobs/{id}/logs?follow=true")).await).await;
    assert_eq!(stdout_of(&followed), "line1\nline2\nline3\n");
    let binary = followed
        .iter()
        .find(|l| l["stream"] == "stderr")
        .expect("stderr line");
    assert_eq!(
        binary["data_base64"], "/w==",
        "invalid UTF-8 comes as base64: {binary}"
    );
    let end = followed.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(end["exit_code"], 0);
    assert_eq!(end["next_offset"], 19);

    // Resumed from an offset inside the output: the rest, byte for byte.
    let resumed = lines(s.get(&format!("/v1/jobs/{id}/logs?offset=8")).await).await;
    assert_eq!(resumed[0]["offset"], 8);
    assert_eq!(stdout_of(&resumed), "ne2\nline3\n");

    let job = s.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["exit_code"], 0);
    assert_eq!(job["stdout_truncated"], false);
    assert!(job["duration_seconds"].as_f64().unwrap() >= 0.9, "{job}");

    // A second job, then the list in pages of one.
    let second: Value = s
        .post("/jobs/execute", &json!({"script": "true"}))
        .await
        .json()
        .await
        .unwrap();
    let page = s.get_json("/v1/jobs?limit=1").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], id.as_str());
    assert_eq!(page["next"], id.as_str());
    let page = s.get_json(&format!("/v1/jobs?limit=1&after={id}")).await;
    assert_eq!(page["jobs"][0]["id"], second["id"]);
    assert_eq!(page["next"], Value::Null);
    let unknown = s.get("/v1/jobs/nosuchjob").await;
    assert_eq!(unknown.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_end_honestly() {
    let s = TestServer::start(docker_config("")).await;
    let created: Value = s
        .post("/v1/jobs", &json!({"script": "echo started; sleep 60"}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_job(&id, |j| j["output_bytes"].as_u64() > Some(0))
        .await;
    assert_eq!(
        s.leftovers().await,
        1,
        "the job runs in its own environment"
    );
    let cancelled = s
        .client
        .delete(s.url(&format!("/v1/jobs/{id}")))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["exit_code"], Value::Null);
    assert_eq!(
        s.leftovers().await,
        0,
        "a cancelled job's environment is removed"
    );

    let timed_out: Value = s
        .post(
            "/jobs/execute",
            &json!({"script": "echo before; sleep 30", "timeout_seconds": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(timed_out["state"], "timed_out", "{timed_out}");
    assert_eq!(timed_out["exit_code"], Value::Null, "no fake exit code");
    assert_eq!(timed_out["success"], false);
    assert_eq!(timed_out["stdout"], "before\n");
    assert!(timed_out["duration_seconds"].as_f64().unwrap() < 20.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_limits_name_the_maximum() {
    let s = TestServer::start(docker_config("max_request_bytes: 64Ki, max_cpu: '2'")).await;
    let over = s
        .post("/jobs/execute", &json!({"script": "true", "cpu_limit": 8}))
        .await;
    assert_eq!(over.status(), 422);
    let over: Value = over.json().await.unwrap();
    assert_eq!(over["field"], "cpu_limit");
    assert_eq!(over["maximum"], "2");
    assert!(
        over["error"].as_str().unwrap().contains("server.max_cpu"),
        "{over}"
    );

    let unknown = s
        .post("/v1/jobs", &json!({"script": "true", "pipeline_b65": "x"}))
        .await;
    assert_eq!(unknown.status(), 400);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["field"], "pipeline_b65", "{unknown}");

    let big = "x".repeat(128 * 1024);
    let too_big = s.post("/v1/jobs", &json!({"script": big})).await;
    assert_eq!(too_big.status(), 413);
    let too_big: Value = too_big.json().await.unwrap();
    assert_eq!(too_big["field"], "body", "{too_big}");
    assert!(
        too_big["error"].as_str().unwrap().contains("65536"),
        "{too_big}"
    );

    // Chunked (no Content-Length): the same answer when the limit cuts the stream.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 32 * 1024])));
    let chunked = s
        .client
        .post(s.url("/v1/jobs"))
        .header("X-API-Key", KEY)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    // The unread rest makes the connection unusable: the answer says so, so the client's pool
    // does not send the next request on it.
    assert_eq!(chunked.headers()["connection"], "close");
    let text = chunked.text().await.unwrap();
    let chunked: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(chunked["field"], "body");
    assert_eq!(
        s.get_json("/v1/jobs").await["jobs"],
        json!([]),
        "nothing ran"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_drain_cancels_the_queued() {
    let s = TestServer::start(docker_config(
        "max_concurrent_jobs: 1, max_queued_jobs: 2, drain_timeout: 60s",
    ))
    .await;
    let mut ids = Vec::new();
    for script in ["sleep 3; echo done", "sleep 30", "sleep 30"] {
        let r = s.post("/v1/jobs", &json!({"script": script})).await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let full = s.post("/v1/jobs", &json!({"script": "true"})).await;
    assert_eq!(full.status(), 429);
    let retry: u64 = full.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        full.json::<Value>().await.unwrap()["error"]
            .as_str()
            .map(|e| e.contains("max_queued_jobs")),
        Some(true)
    );
    let health = s.get_json("/health").await;
    assert_eq!(health["jobs_queued"], 2, "{health}");

    s.wait_job(&ids[0], |j| j["state"] == "running").await;
    // Followers of every job, open across the drain: each stream ends with the job's end.
    let mut followers = Vec::new();
    for id in &ids {
        let logs = s.get(&format!("/v1/jobs/{id}/logs?follow=true")).await;
        followers.push(tokio::spawn(lines(logs)));
    }
    s.handle.begin_drain();
    // Draining: new jobs get 503, the running one finishes, the queued ones are cancelled.
    let refused = s.post("/v1/jobs", &json!({"script": "true"})).await;
    assert_eq!(refused.status(), 503);
    let mut ends = Vec::new();
    for f in followers {
        let lines = f.await.unwrap();
        ends.push(lines.last().unwrap().clone());
    }
    assert_eq!(ends[0]["state"], "succeeded", "{:?}", ends[0]);
    for end in &ends[1..] {
        assert_eq!(end["state"], "cancelled", "{end}");
        assert!(
            end["error"].as_str().unwrap().contains("shut down"),
            "{end}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_flagged_and_still_streams_to_followers() {
    let s = TestServer::start(docker_config("max_output_bytes: 1Ki")).await;
    let created: Value = s
        .post(
            "/v1/jobs",
            &json!({"script": "sleep 1; i=0; while [ $i -lt 100 ]; do echo 0123456789abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let followed = lines(s.get(&format!("/v1/jobs/{id}/logs?follow=true")).await).await;
    assert_eq!(
        stdout_of(&followed).len(),
        3700,
        "a follower gets all of it"
    );
    let job = s.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["stdout_truncated"], true, "{job}");
    let kept = lines(s.get(&format!("/v1/jobs/{id}/logs")).await).await;
    assert_eq!(stdout_of(&kept).len(), 1024, "the server keeps the cap");
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_kill_says_so() {
    let s = TestServer::start(docker_config("")).await;
    // `tail` keeps the last line whole, and /dev/zero has no line ends. On this machine's
    // kernel (cgroup v1, no swap) a cgroup at its limit reclaims for 2 to 40 s before the kill
    // when another process sleeps in it (the timeout's watchdog does), longer under load: the
    // timeout leaves room for that, the assertion is about what is reported.
    let answer: Value = s
        .post(
            "/jobs/execute",
            &json!({"script": "head -c 512m /dev/zero | tail > /dev/null", "memory_limit": "32m", "timeout_seconds": 600}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["state"], "failed", "{answer}");
    assert_eq!(answer["oom_killed"], true, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("out of memory"),
        "{answer}"
    );
    s.stop().await;
}

/// A proxy to the Docker socket that can be cut: an engine that was there and went away.
struct CuttableDocker {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableDocker {
    fn start(dir: &std::path::Path) -> Self {
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut daemon = tokio::net::UnixStream::connect("/var/run/docker.sock")
                        .await
                        .expect("the Docker socket");
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                });
            }
        });
        Self { path, task }
    }

    /// Closes the socket and every connection through it.
    fn cut(&self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_engine_is_reported_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = CuttableDocker::start(dir.path());
    let cfg = support::config(&format!(
        "runner: {{image: '{}'}}\ndocker: {{host: 'unix://{}'}}\n",
        berth_engine_core::testkit::TEST_IMAGE,
        proxy.path.display()
    ));
    let mut s = TestServer::start(cfg).await;
    let health = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    proxy.cut();
    let health = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["engine_reachable"], false);
    let answer: Value = s
        .post("/jobs/execute", &json!({"script": "true"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["state"], "failed", "{answer}");
    assert_eq!(answer["exit_code"], Value::Null, "no fake exit code");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("could not start"),
        "{answer}"
    );
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("berth_engine_errors_total 0"),
        "{metrics}"
    );
    let task = s.task.take();
    s.handle.begin_drain();
    if let Some(task) = task {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_expire_after_the_retention() {
    let s = TestServer::start(docker_config("job_retention: 2s")).await;
    let answer: Value = s
        .post("/jobs/execute", &json!({"script": "echo kept"}))
        .await
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/jobs/{id}")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gone = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(gone.status(), 404);
    let gone: Value = gone.json().await.unwrap();
    assert!(
        gone["error"].as_str().unwrap().contains("job_retention"),
        "{gone}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_start_in_the_order_they_came() {
    let s = TestServer::start(docker_config("max_concurrent_jobs: 1")).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let script = if n == 0 { "sleep 1" } else { "true" };
        let created: Value = s
            .post("/v1/jobs", &json!({"script": script}))
            .await
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut started = Vec::new();
    for id in &ids {
        let job = s.wait_job(id, |j| j["state"] == "succeeded").await;
        started.push(job["started_at"].as_str().unwrap().to_owned());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "first in, first out");
    s.stop().await;
}
