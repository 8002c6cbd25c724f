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
