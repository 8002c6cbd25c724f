//! A job's `git_url`: checked out on the agent and copied into the job's workspace before the
//! command, over a real socket with a real repository made by the `git` binary.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

mod support;

use support::{docker_config, TestServer};

/// A repository with `hello.txt` on `main` and `branch.txt` on `other`.
fn repository(dir: &Path) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    std::fs::write(dir.join("hello.txt"), "hello from main\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "main"]);
    git(&["checkout", "-qb", "other"]);
    std::fs::write(dir.join("branch.txt"), "on other\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "other"]);
    git(&["checkout", "-q", "main"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_checkout_and_local_repositories_need_allowing() {
    let repo = tempfile::tempdir().unwrap();
    repository(repo.path());
    let url = format!("file://{}", repo.path().display());

    // By default a file:// URL is refused: it would read the agent's own disk into a job.
    let s = TestServer::start(docker_config("")).await;
    let refused = s
        .post("/jobs/execute", &json!({"git_url": url, "script": "true"}))
        .await;
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["field"], "git_url", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("allow_local_git"),
        "{refused}"
    );
    // An encrypted token without a key on the server is refused before anything runs.
    let no_key = s
        .post(
            "/jobs/execute",
            &json!({"git_url": "https://example.invalid/r.git", "github_token_encrypted": "x", "script": "true"}),
        )
        .await;
    assert_eq!(no_key.status(), 400);
    let no_key: Value = no_key.json().await.unwrap();
    assert_eq!(no_key["field"], "github_token_encrypted", "{no_key}");
    s.stop().await;

    let s = TestServer::start(docker_config("allow_local_git: true")).await;
    let main: Value = s
        .post(
            "/jobs/execute",
            &json!({"git_url": url, "script": "pwd; cat hello.txt; test ! -e branch.txt"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(main["exit_code"], 0, "{main}");
    assert!(
        main["stdout"]
            .as_str()
            .unwrap()
            .ends_with("hello from main\n"),
        "{main}"
    );
    let other: Value = s
        .post(
            "/jobs/execute",
            &json!({"git_url": url, "git_branch": "other", "script": "cat branch.txt"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["stdout"], "on other\n", "{other}");
    // A branch that does not exist fails the job and says so; no exit code is invented.
    let missing: Value = s
        .post(
            "/jobs/execute",
            &json!({"git_url": url, "git_branch": "nope", "script": "true"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(missing["success"], false, "{missing}");
    assert!(missing["exit_code"].is_null(), "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nope"),
        "{missing}"
    );
    s.stop().await;
}

/// A `git_url` is the caller's but the connection is the agent's: by default it may not reach
/// the agent's own network (loopback, private, link-local such as a cloud's metadata address),
/// and `server.git_hosts` narrows it to named hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_urls_into_the_agents_own_network_are_refused() {
    let s = TestServer::start(docker_config("git_hosts: [github.com]")).await;
    for (url, said) in [
        (
            "http://169.254.169.254/latest.git",
            "not one of the allowed git hosts",
        ),
        ("https://gitlab.com/a/b.git", "github.com"),
    ] {
        let refused = s
            .post("/jobs/execute", &json!({"git_url": url, "script": "true"}))
            .await;
        assert_eq!(refused.status(), 400, "{url}");
        let refused: Value = refused.json().await.unwrap();
        assert_eq!(refused["field"], "git_url", "{refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(said),
            "{url}: {refused}"
        );
    }
    s.stop().await;

    let s = TestServer::start(docker_config("")).await;
    for url in [
        "http://169.254.169.254/latest.git",
        "http://127.0.0.1:9/r.git",
        "http://[::1]:9/r.git",
        "http://10.0.0.1/r.git",
    ] {
        let refused = s
            .post("/jobs/execute", &json!({"git_url": url, "script": "true"}))
            .await;
        assert_eq!(refused.status(), 400, "{url}");
        let refused: Value = refused.json().await.unwrap();
        let error = refused["error"].as_str().unwrap();
        assert!(
            error.contains("allow_private_git_hosts") && error.contains("address"),
            "{url}: {refused}"
        );
    }
    // A name is resolved before the clone: localhost is refused when the job runs, and the
    // job says so; nothing was fetched and no exit code is invented.
    let named: Value = s
        .post(
            "/jobs/execute",
            &json!({"git_url": "http://localhost:9/r.git", "script": "true"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(named["success"], false, "{named}");
    assert!(named["exit_code"].is_null(), "{named}");
    assert!(
        named["error"]
            .as_str()
            .unwrap_or_default()
            .contains("loopback"),
        "{named}"
    );
    s.stop().await;
}

/// The job's timeout covers its checkout: a git server that accepts the connection and never
/// answers makes a timed-out job within the timeout, not a job that hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_never_ends_times_the_job_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            kept.push(conn); // read nothing, answer nothing
        }
    });
    let s = TestServer::start(docker_config("allow_private_git_hosts: true")).await;
    let started = std::time::Instant::now();
    let job: Value = s
        .post(
            "/jobs/execute",
            &json!({"git_url": format!("http://{addr}/r.git"), "script": "echo never", "timeout_seconds": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(job["success"], false, "{job}");
    assert!(job["exit_code"].is_null(), "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("checking out git_url"), "{job}");
    assert_eq!(job["state"], "timed_out", "{job}");
    assert!(
        !job["stdout"].as_str().unwrap_or_default().contains("never"),
        "{job}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    s.stop().await;
    held.abort();
}
