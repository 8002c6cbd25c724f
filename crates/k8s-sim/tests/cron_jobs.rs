//! The simulator's CronJob controller, checked with the real kubectl 1.32: finished Jobs
//! beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are removed oldest first,
//! `status.active` lists the unfinished ones and `lastSuccessfulTime` the last success, and
//! `concurrencyPolicy: Replace` removes the active Job when the next one starts.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

const IMAGE: &str = berth_engine_core::testkit::TEST_IMAGE;

/// kubectl 1.32, else `kubectl` on PATH.
fn kubectl_binary() -> PathBuf {
    [
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
        "/usr/local/bin/kubectl.1.32",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("kubectl"))
}

struct Kubectl(support::Started);

impl Kubectl {
    fn run(&self, args: &[&str]) -> Value {
        let out = Command::new(kubectl_binary())
            .env("KUBECONFIG", self.0.kubeconfig())
            .env("HOME", self.0.dir.path())
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn create(&self, object: &Value) -> Value {
        let file = self.0.dir.path().join("object.json");
        std::fs::write(&file, object.to_string()).expect("write");
        self.run(&["create", "-o", "json", "-f", file.to_str().expect("utf-8")])
    }

    fn get(&self, what: &str) -> Value {
        self.run(&["get", what, "-o", "json"])
    }

    /// The names of the Jobs owned by the CronJob with `uid`, sorted.
    fn jobs_of(&self, uid: &str) -> Vec<String> {
        let mut names: Vec<String> = self.get("jobs")["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|j| j["metadata"]["ownerReferences"][0]["uid"] == uid)
            .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Polls `probe` until it returns `Some`, failing with `what` after `secs` seconds.
    fn wait<T>(&self, secs: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what} after {secs} s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn pod_template(script: &str) -> Value {
    json!({"spec": {"restartPolicy": "Never", "containers": [{
        "name": "c", "image": IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", script]}]}})
}

fn cron_job(name: &str, schedule: &str, policy: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"schedule": schedule, "concurrencyPolicy": policy,
            "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": pod_template("true")}}}})
}

/// A Job owned by the CronJob `cron` (as its controller makes them), scheduled at minute
/// `minute`, running `script`.
fn owned_job(cron: &Value, name: &str, minute: i64, script: &str) -> Value {
    let md = &cron["metadata"];
    let scheduled = format!("2026-01-01T00:{minute:02}:00Z");
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default",
            "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": scheduled},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                "name": md["name"], "uid": md["uid"], "controller": true}]},
        "spec": {"backoffLimit": 0, "template": pod_template(script)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limits_active_and_last_success_are_kept() {
    let k = Kubectl(support::start_sim().await);
    let cron = k.create(&cron_job("hist", "0 4 * * *", "Allow"));
    let uid = cron["metadata"]["uid"].as_str().expect("uid").to_owned();
    for (name, minute, script) in [
        ("hist-a", 1, "true"),
        ("hist-b", 2, "true"),
        ("hist-c", 3, "true"),
        ("hist-fa", 4, "exit 1"),
        ("hist-fb", 5, "exit 1"),
    ] {
        k.create(&owned_job(&cron, name, minute, script));
    }
    // The newest success and the newest failure stay.
    let kept = k.wait(90, "history not trimmed", || {
        let jobs = k.jobs_of(&uid);
        (jobs == ["hist-c", "hist-fb"]).then_some(jobs)
    });
    assert_eq!(kept, ["hist-c", "hist-fb"]);
    let status = k.get("cronjob/hist")["status"].clone();
    assert!(status["lastSuccessfulTime"].is_string(), "{status}");
    assert!(status["active"].is_null(), "{status}");

    // An unfinished Job is listed as active, and not once it ended.
    k.create(&owned_job(&cron, "hist-run", 6, "sleep 2"));
    k.wait(60, "not active", || {
        let status = k.get("cronjob/hist")["status"].clone();
        (status["active"][0]["name"] == "hist-run" && status["active"][0]["kind"] == "Job")
            .then_some(())
    });
    k.wait(60, "still active", || {
        let status = k.get("cronjob/hist")["status"].clone();
        status["active"].is_null().then_some(())
    });
    // It succeeded: the older success is gone.
    k.wait(60, "history not trimmed", || {
        let jobs = k.jobs_of(&uid);
        (jobs == ["hist-fb", "hist-run"]).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_removes_the_active_job_when_the_next_starts() {
    let k = Kubectl(support::start_sim().await);
    // Every minute: the next minute's Job replaces the one still running.
    let cron = k.create(&cron_job("repl", "* * * * *", "Replace"));
    let uid = cron["metadata"]["uid"].as_str().expect("uid").to_owned();
    k.create(&owned_job(&cron, "repl-old", 0, "sleep 600"));
    let jobs = k.wait(90, "never replaced", || {
        let jobs = k.jobs_of(&uid);
        (!jobs.contains(&"repl-old".to_owned()) && !jobs.is_empty()).then_some(jobs)
    });
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].starts_with("repl-"), "{jobs:?}");
    let status = k.get("cronjob/repl")["status"].clone();
    assert!(status["lastScheduleTime"].is_string(), "{status}");
}
