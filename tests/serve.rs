//! `berth serve` as a user runs it: the real binary, driven with curl; SIGTERM drains,
//! kill -9 leaves what `berth gc` removes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_engine_core::testkit::TEST_IMAGE;
use serde_json::Value;

mod common;

use common::{docker, text};

const KEY: &str = "serve-test-key";

/// A running `berth serve` and where it listens.
struct Agent {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(flags: &[&str]) -> Self {
        ensure_image();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let mut child = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .env("BERTH_RUNNER__IMAGE", TEST_IMAGE)
            .env("BERTH_SERVER_API_KEYS", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stderr.read_line(&mut line).expect("read") == 0 {
                panic!("berth serve ended: {:?}", child.wait());
            }
            if let Some(addr) = line.trim().strip_prefix("berth serve: listening on ") {
                break addr.to_owned();
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Self { child, addr, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// curl with the key; the body as JSON when given.
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-H"])
            .arg(format!("X-API-Key: {KEY}"))
            .arg(self.url(path));
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", body]);
        }
        cmd
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let out = self.curl(method, path, body).output().expect("curl");
        parse(&out)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process (at most `limit`).
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "berth serve did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Value) -> bool) {
        for _ in 0..300 {
            if done(&self.json("GET", "/health", None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never: {what}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What a failed test left: removed by owner.
        for id in owned_by(self.child.id()) {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", &id])
                .output();
        }
    }
}

/// Builds the test image once if it is missing.
fn ensure_image() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let docker = berth_engine_docker::DockerEngine::connect(&Default::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
        berth_engine_core::testkit::ensure_test_image(&docker)
            .await
            .expect("test image");
    });
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {} / {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Containers owned by the process `pid`.
fn owned_by(pid: u32) -> Vec<String> {
    let filter = format!("label=berth.dev/owner-pid={pid}");
    docker(&["ps", "-a", "-q", "--filter", &filter])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn berth(dir: &Path, args: &[&str]) -> Output {
    common::berth_in(dir, &dir.join("state"), args)
        .output()
        .expect("berth")
}

#[test]
fn curl_health_and_execute() {
    let agent = Agent::start(&[]);
    let out = Command::new("curl")
        .args(["-sS", &agent.url("/health")])
        .output()
        .expect("curl");
    let health = parse(&out);
    assert_eq!(health["status"], "healthy", "{health}");
    let unauthorized = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &agent.url("/v1/jobs"),
        ])
        .output()
        .expect("curl");
    assert_eq!(text(&unauthorized.stdout), "401");
    let answer = agent.json(
        "POST",
        "/jobs/execute",
        Some(r#"{"job_id": 7, "script": "echo out; echo err >&2; exit 3"}"#),
    );
    assert_eq!(answer["exit_code"], 3, "{answer}");
    assert_eq!(answer["stdout"], "out\n");
    assert_eq!(answer["stderr"], "err\n");
    assert_eq!(answer["job_id"], 7);
    assert!(answer["duration_seconds"].as_f64().is_some());
}

#[test]
fn sigterm_lets_running_jobs_finish_cancels_the_queued_and_exits_0() {
    let mut agent = Agent::start(&["--max-concurrent-jobs", "3", "--drain-timeout", "60s"]);
    let mut ids = Vec::new();
    for script in ["sleep 3; echo ran"; 3].into_iter().chain(["sleep 30"; 5]) {
        let job = agent.json(
            "POST",
            "/v1/jobs",
            Some(&format!(r#"{{"script": "{script}"}}"#)),
        );
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    agent.wait_until("3 running and 5 queued", |h| {
        h["jobs_running"] == 3 && h["jobs_queued"] == 5
    });
    // Followers of every job, open across the drain: each ends with its job's outcome.
    let followers: Vec<Child> = ids
        .iter()
        .map(|id| {
            agent
                .curl("GET", &format!("/v1/jobs/{id}/logs?follow=true"), None)
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    agent.signal("-TERM");
    let status = agent.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "exits 0 after a drain");
    let ends: Vec<Value> = followers
        .into_iter()
        .map(|f| {
            let out = f.wait_with_output().expect("curl");
            let stdout = text(&out.stdout);
            let last = stdout.lines().last().unwrap_or_default().to_owned();
            serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        })
        .collect();
    for end in &ends[..3] {
        assert_eq!(end["state"], "succeeded", "{end}");
    }
    for end in &ends[3..] {
        assert_eq!(end["state"], "cancelled", "{end}");
        assert!(
            end["error"].as_str().unwrap().contains("shut down"),
            "{end}"
        );
    }
    assert_eq!(owned_by(agent.pid()), Vec::<String>::new(), "nothing left");
}

#[test]
fn kill_9_leaves_what_gc_removes() {
    let mut agent = Agent::start(&[]);
    for _ in 0..2 {
        agent.json("POST", "/v1/jobs", Some(r#"{"script": "sleep 60"}"#));
    }
    agent.wait_until("2 running", |h| h["jobs_running"] == 2);
    // Running means the environment is being started; wait until both exist.
    let pid = agent.pid();
    let start = Instant::now();
    while owned_by(pid).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "environments never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal("-KILL");
    agent.wait(Duration::from_secs(10));
    assert_eq!(owned_by(pid).len(), 2, "kill -9 leaves the environments");
    let out = berth(agent.dir.path(), &["gc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(owned_by(pid), Vec::<String>::new(), "gc removed them");
}

#[test]
fn sighup_reloads_the_keys_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "first-key\n").expect("keys");
    let agent = Agent::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let code = |key: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("X-API-Key: {key}"))
            .arg(agent.url("/v1/jobs"))
            .output()
            .expect("curl");
        text(&out.stdout)
    };
    assert_eq!(code("first-key"), "200");
    assert_eq!(code(KEY), "200", "BERTH_SERVER_API_KEYS adds keys");
    std::fs::write(&keys, "second-key\n").expect("keys");
    agent.signal("-HUP");
    let start = Instant::now();
    while code("second-key") != "200" {
        assert!(start.elapsed() < Duration::from_secs(10), "never reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        code("first-key"),
        "401",
        "a key taken out of the file is refused"
    );
}

#[test]
fn a_public_address_without_keys_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = common::berth_in(
        dir.path(),
        &dir.path().join("state"),
        &["serve", "--listen", "0.0.0.0:0"],
    )
    .env("BERTH_RUNNER__IMAGE", TEST_IMAGE)
    .env_remove("BERTH_SERVER_API_KEYS")
    .output()
    .expect("berth serve");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("without API keys") && stderr.contains("--listen"),
        "{stderr}"
    );
}

#[test]
fn a_second_sigterm_cancels_running_jobs_at_once() {
    let mut agent = Agent::start(&["--drain-timeout", "10m"]);
    let job = agent.json(
        "POST",
        "/v1/jobs",
        Some(r#"{"script": "echo started; sleep 120"}"#),
    );
    let id = job["id"].as_str().expect("id").to_owned();
    let start = Instant::now();
    while agent.json("GET", &format!("/v1/jobs/{id}"), None)["output_bytes"] == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let follower = agent
        .curl("GET", &format!("/v1/jobs/{id}/logs?follow=true"), None)
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    agent.signal("-TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "still draining"
    );
    agent.signal("-TERM");
    let status = agent.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let out = follower.wait_with_output().expect("curl");
    let stdout = text(&out.stdout);
    let end: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(end["state"], "cancelled", "{end}");
    assert!(
        end["error"].as_str().unwrap().contains("second signal"),
        "{end}"
    );
    assert_eq!(owned_by(agent.pid()), Vec::<String>::new(), "nothing left");
}
