//! End-to-end tests of `berth exec --detach`, `attach`, `ps` and `kill` against the real
//! Docker daemon: a detached command outlives the `berth` process that follows it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_engine_core::testkit::TEST_IMAGE;
use berth_engine_core::SessionId;

mod common;

use common::{assert_stderr_has, json_of, kill9, test_image, text, Cleanup};

/// The binary, with one state directory for every test of this file.
fn berth(args: &[&str]) -> Command {
    common::berth_with_state("berth-state-detached", args)
}

fn run(args: &[&str]) -> Output {
    berth(args)
        .output()
        .unwrap_or_else(|e| panic!("berth {args:?}: {e}"))
}

/// Starts an environment for a fresh session; the guard removes it however the test ends.
fn up() -> (String, Cleanup) {
    let session = SessionId::generate().to_string();
    let cleanup = Cleanup(session.clone());
    let out = run(&["--json", "up", "--image", TEST_IMAGE, "--session", &session]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let env = json_of(&out)["id"].as_str().expect("id").to_owned();
    (env, cleanup)
}

/// `berth exec --detach ENV -- sh -c SCRIPT`: the id it printed, checked to exit at once.
fn detach(env: &str, script: &str) -> String {
    let started = Instant::now();
    let out = run(&["exec", "--detach", env, "--", "sh", "-c", script]);
    assert!(out.status.success(), "exec --detach: {}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exec --detach waited for the command"
    );
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 12, "not an id: {id:?}");
    id
}

/// The `berth --json ps ENV` row of command `id`.
fn ps_row(env: &str, id: &str) -> serde_json::Value {
    let out = run(&["--json", "ps", env]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    json_of(&out)
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {}", text(&out.stdout)))
        .clone()
}

/// Prints `out N` and `err N` for N in 1..=40, 0.1 s apart, then exits 7.
const STEPS: &str = r#"i=1
while [ $i -le 40 ]; do echo "out $i"; echo "err $i" >&2; i=$((i + 1)); sleep 0.1; done
exit 7"#;

fn steps(stream: &str) -> String {
    (1..=40).map(|i| format!("{stream} {i}\n")).collect()
}

#[tokio::test]
async fn reattach_after_kill_9_of_the_first_attach_gets_every_byte_and_the_code() {
    test_image().await;
    let (env, _cleanup) = up();
    let id = detach(&env, STEPS);
    assert_eq!(ps_row(&env, &id)["state"], "running");

    // The first follower dies mid-stream, with no chance to say goodbye.
    let mut first = berth(&["attach", &env, &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("attach");
    let mut line = String::new();
    BufReader::new(first.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert_eq!(line, "out 1\n");
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the first attach ended before the kill"
    );
    kill9(&mut first);
    assert_eq!(ps_row(&env, &id)["state"], "running", "the kill reached it");

    // Another process re-attaches and gets everything from the start, and the true code.
    let out = run(&["attach", &env, &id]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), steps("out"));
    assert_eq!(text(&out.stderr), steps("err"));

    let row = ps_row(&env, &id);
    assert_eq!(row["state"], "exited");
    assert_eq!(row["exit_code"], 7);
    assert_eq!(row["stdout_bytes"], steps("out").len());
    let out = run(&["ps", &env]);
    assert!(
        text(&out.stdout).contains(&format!("{id}  exited 7")),
        "{}",
        text(&out.stdout)
    );

    // From an offset: the rest of each stream, the same bytes again.
    let out = run(&[
        "attach",
        "--stdout-offset",
        "6",
        "--stderr-offset",
        &steps("err").len().to_string(),
        &env,
        &id,
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), steps("out")[6..]);
    assert_eq!(text(&out.stderr), "");
    let out = run(&["--json", "attach", &env, &id]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(json_of(&out)["stdout"], steps("out"));

    // Pruning removes the ended command: it is no longer attachable.
    let out = run(&["ps", "--prune", &env]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["--json", "ps", &env]);
    assert_eq!(json_of(&out), serde_json::json!([]));
    assert_eq!(run(&["attach", &env, &id]).status.code(), Some(125));
}

#[tokio::test]
async fn kill_ends_a_long_command_and_a_lost_supervisor_is_said() {
    test_image().await;
    let (env, _cleanup) = up();
    let long = detach(&env, "echo started; sleep 300; echo never");
    assert_eq!(ps_row(&env, &long)["state"], "running");
    let started = Instant::now();
    let out = run(&["kill", &env, &long]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("exited"),
        "{}",
        text(&out.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let row = ps_row(&env, &long);
    assert_eq!(row["state"], "exited");
    let code = row["exit_code"].as_i64().expect("a code");
    assert!(code > 128, "killed by a signal: {code}");
    let out = run(&["attach", &env, &long]);
    assert_eq!(out.status.code().map(i64::from), Some(code));
    assert_eq!(text(&out.stdout), "started\n");

    // The supervisor killed from outside: attach says so instead of inventing a code.
    let lost = detach(&env, "echo before; sleep 300");
    let spid = format!("/tmp/.berth/cmd/{lost}/spid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ps_row(&env, &lost)["stdout_bytes"] == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("docker")
        .args(["exec", &env, "sh", "-c", &format!("kill -9 $(cat {spid})")])
        .status()
        .expect("docker exec");
    assert!(killed.success());
    assert_eq!(ps_row(&env, &lost)["state"], "lost");
    let out = run(&["attach", &env, &lost]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\n");
    assert_stderr_has(&out, &format!("{lost} was lost"));
    // Its command outlived the supervisor; `berth kill` still ends it.
    let sleeping = || {
        let ps = Command::new("docker")
            .args(["exec", &env, "ps", "-o", "args"])
            .output()
            .expect("docker exec ps");
        text(&ps.stdout).contains("sleep 300")
    };
    assert!(sleeping(), "the lost command still runs before the kill");
    let out = run(&["kill", &env, &lost]);
    assert!(
        !sleeping(),
        "berth kill left a lost command running: {}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bad_ids_and_environments_exit_125_naming_them() {
    test_image().await;
    let (env, _cleanup) = up();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["attach", &env, "0123456789ab"], "0123456789ab"),
        (vec!["kill", &env, "0123456789ab"], "0123456789ab"),
        (
            vec!["attach", &env, "../../etc"],
            "ID argument \"../../etc\"",
        ),
        (vec!["kill", &env, "XYZ"], "ID argument \"XYZ\""),
        (vec!["ps", "no-such-env-cli12"], "no-such-env-cli12"),
        (
            vec!["attach", "no-such-env-cli12", "0123456789ab"],
            "no-such-env-cli12",
        ),
        (
            vec!["exec", "-d", "no-such-env-cli12", "--", "true"],
            "no-such-env-cli12",
        ),
        (
            vec!["exec", "-d", "-i", &env, "--", "true"],
            "--interactive",
        ),
        (
            vec!["exec", "-d", "--timeout", "5", &env, "--", "true"],
            "--timeout",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Nothing was started by the refused ones.
    assert_eq!(
        json_of(&run(&["--json", "ps", &env])),
        serde_json::json!([])
    );
}
