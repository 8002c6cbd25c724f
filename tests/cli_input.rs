//! The `berth` binary given bad input, foreign objects, signals, and what a new user meets
//! following the README; against the real Docker daemon where an environment is involved.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_engine_core::testkit::TEST_IMAGE;
use berth_engine_core::SessionId;

mod common;

use common::{assert_stderr_has, containers_of, docker, test_image, text};

/// The binary with a state directory of this test file's own and the test image configured.
fn berth(args: &[&str]) -> Command {
    let mut cmd = common::berth_with_state("berth-state-input", args);
    cmd.env("BERTH_RUNNER__IMAGE", TEST_IMAGE);
    cmd
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out: Output = cmd.output().expect("run berth");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Removes a session's containers (berth's, by label) and any named containers when a test
/// ends, pass or fail.
struct Cleanup {
    session: String,
    names: Vec<String>,
}

impl Cleanup {
    fn session(session: &str) -> Self {
        Self {
            session: session.to_owned(),
            names: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=berth.dev/session={}", self.session);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        for id in ids.lines().chain(self.names.iter().map(String::as_str)) {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
    }
}

/// A detached environment in a fresh session (`berth up`), removed when the guard drops.
async fn fresh_environment() -> (String, Cleanup, String) {
    test_image().await;
    let session = SessionId::generate().to_string();
    let cleanup = Cleanup::session(&session);
    let (code, stdout, stderr) = output(&mut berth(&["up", "--session", &session]));
    assert_eq!(code, Some(0), "{stderr}");
    (session, cleanup, stdout.trim().to_owned())
}

#[test]
fn usage_errors_exit_125_with_usage() {
    let cases: &[&[&str]] = &[
        &["run", "--timeout", "abc", "--", "true"],
        &["run", "--timeout", "-1", "--", "true"],
        &["run", "--timeout", "1.5", "--", "true"],
        &["run"],
        &["exec", "some-env"],
        &["run", "--session", "s", "--bogusflag", "--", "pwd"],
        // The README once listed --image among the global flags; it belongs to subcommands.
        &["--image", TEST_IMAGE, "run", "--", "true"],
        &["no-such-subcommand"],
    ];
    for args in cases {
        let (code, _, stderr) = output(&mut berth(args));
        assert_eq!(code, Some(125), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error:") && stderr.contains("--help"),
            "clap's usage error: {args:?}: {stderr}"
        );
    }
}

#[test]
fn help_opens_with_what_berth_is_for() {
    let (code, stdout, _) = output(&mut berth(&["--help"]));
    assert_eq!(code, Some(0));
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("isolated") && first.contains("AI agents"),
        "{first}"
    );
    assert!(!stdout.contains("session runner: config"), "{stdout}");
}

#[test]
fn config_errors_are_precise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_string_lossy().into_owned();
    let (code, _, stderr) = output(&mut berth(&["--config", &dir_path, "ls"]));
    assert_eq!(code, Some(125));
    assert!(stderr.contains("is a directory"), "{stderr}");

    let (code, _, stderr) = output(berth(&["ls"]).env("BERTH_RUNNER__MAX_LIFETIME", "soon"));
    assert_eq!(code, Some(125));
    assert!(
        stderr.contains("environment variable BERTH_RUNNER__MAX_LIFETIME"),
        "names the variable: {stderr}"
    );
    assert!(!stderr.contains("in defaults"), "{stderr}");

    let (code, _, stderr) = output(berth(&["ls"]).env("BERTH_RUNER__IMAGE", "x"));
    assert_eq!(code, Some(125));
    assert!(
        stderr.contains("BERTH_RUNER__IMAGE; did you mean BERTH_RUNNER__IMAGE?"),
        "{stderr}"
    );

    let file = dir.path().join("kc.yaml");
    std::fs::write(
        &file,
        "runner:\n  backend: kubernetes\nkubernetes:\n  kubeconfig: /nonexistent/kc\n",
    )
    .expect("write");
    let (code, _, stderr) = output(&mut berth(&["--config", &file.to_string_lossy(), "ls"]));
    assert_eq!(code, Some(125));
    assert!(stderr.contains("/nonexistent/kc"), "{stderr}");
    assert!(
        !stderr.contains("'\"/nonexistent"),
        "doubled quotes: {stderr}"
    );

    let file = dir.path().join("backend.yaml");
    std::fs::write(&file, "runner:\n  backend: dokcer\n").expect("write");
    let (code, _, stderr) = output(&mut berth(&["--config", &file.to_string_lossy(), "ls"]));
    assert_eq!(code, Some(125));
    assert_eq!(stderr.matches("runner.backend").count(), 1, "{stderr}");

    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, "runner:\n  workspace: {hostpath: /tmp}\n").expect("write");
    let (code, _, stderr) = output(&mut berth(&["--config", &file.to_string_lossy(), "ls"]));
    assert_eq!(code, Some(125));
    assert!(stderr.contains("did you mean host_path?"), "{stderr}");
    assert!(!stderr.contains("WorkspaceConfig"), "{stderr}");
}

#[tokio::test]
async fn timeout_takes_a_duration() {
    test_image().await;
    let session = SessionId::generate().to_string();
    let _cleanup = Cleanup::session(&session);
    let started = Instant::now();
    let (code, _, stderr) = output(&mut berth(&[
        "run",
        "--session",
        &session,
        "--timeout",
        "2s",
        "--",
        "sleep",
        "30",
    ]));
    assert_eq!(code, Some(124), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the timeout did not apply"
    );
}

#[tokio::test]
async fn down_is_truthful_about_nothing() {
    test_image().await;
    let session = SessionId::generate().to_string();
    let (code, _, stderr) = output(&mut berth(&["down", "--session", &session]));
    assert_eq!(code, Some(0), "nothing to stop is success: {stderr}");
    assert!(stderr.contains("nothing to stop"), "{stderr}");
    let (code, _, stderr) = output(&mut berth(&["down", "berth-no-such-env-12345"]));
    assert_eq!(
        code,
        Some(125),
        "an id naming nothing is an error: {stderr}"
    );
    assert!(stderr.contains("no berth environment"), "{stderr}");
}

#[tokio::test]
async fn a_container_berth_did_not_create_is_refused_untouched() {
    test_image().await;
    let name = format!("foreign-{}", SessionId::generate());
    let cleanup = Cleanup {
        session: SessionId::generate().to_string(),
        names: vec![name.clone()],
    };
    let id = docker(&["run", "-d", "--name", &name, TEST_IMAGE, "sleep", "600"]);
    assert_eq!(id.len(), 64, "docker run: {id}");
    for given in [name.as_str(), &id, &id[..6]] {
        for args in [
            &["exec", given, "--", "touch", "/tmp/pwned"][..],
            &["down", given],
            &[
                "cp",
                &format!("{given}:/etc/passwd"),
                env!("CARGO_TARGET_TMPDIR"),
            ],
        ] {
            let (code, _, stderr) = output(&mut berth(args));
            assert_eq!(code, Some(125), "{args:?}: {stderr}");
            assert!(
                stderr.contains("not a berth environment"),
                "{args:?}: {stderr}"
            );
        }
        assert_eq!(
            docker(&["inspect", "-f", "{{.State.Running}}", &name]),
            "true",
            "berth touched {name} via {given}"
        );
    }
    let probe = Command::new("docker")
        .args(["exec", &name, "test", "-e", "/tmp/pwned"])
        .status()
        .expect("docker exec");
    assert!(!probe.success(), "berth ran a command in {name}");
    drop(cleanup);
}

#[tokio::test]
async fn shell_refuses_a_pipe_and_leaves_no_orphan() {
    let (_session, _cleanup, env) = fresh_environment().await;
    for _ in 0..3 {
        let mut child = berth(&["shell", &env])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shell");
        use std::io::Write;
        let _ = child.stdin.take().expect("stdin").write_all(b"echo hi\n");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        assert_stderr_has(&out, "stdin is not a terminal; use `berth exec -i");
    }
    let top = docker(&["top", &env, "-o", "pid,args"]);
    assert!(
        !top.lines().any(|l| l.trim_end().ends_with(" sh")),
        "an orphan sh runs in {env}:\n{top}"
    );
    let (code, _, stderr) = output(&mut berth(&["down", &env]));
    assert_eq!(code, Some(0), "{stderr}");
}

fn wait_for_running(session: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let filter = format!("label=berth.dev/session={session}");
    while Instant::now() < deadline {
        if !docker(&[
            "ps",
            "-q",
            "--filter",
            &filter,
            "--filter",
            "status=running",
        ])
        .is_empty()
        {
            // Give the exec a moment to start inside it.
            std::thread::sleep(Duration::from_millis(1500));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no running environment for session {session}");
}

#[tokio::test]
async fn sigterm_and_ctrl_c_exit_like_a_shell() {
    test_image().await;
    for (signal, expected) in [("-TERM", 143), ("-INT", 130)] {
        let session = SessionId::generate().to_string();
        let _cleanup = Cleanup::session(&session);
        let child = berth(&["run", "--session", &session, "--", "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        wait_for_running(&session);
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{signal}: {}",
            text(&out.stderr)
        );
        assert!(
            containers_of(&session).is_empty(),
            "{signal} left the environment"
        );
    }
}

#[tokio::test]
async fn a_name_is_used_once_per_session() {
    test_image().await;
    let session = SessionId::generate().to_string();
    let _cleanup = Cleanup::session(&session);
    let up = || {
        output(&mut berth(&[
            "up",
            "--session",
            &session,
            "--name",
            "agent",
        ]))
    };
    let (code, _, stderr) = up();
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = up();
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("already has an environment named agent"),
        "{stderr}"
    );
    assert_eq!(containers_of(&session).len(), 1);
}

#[tokio::test]
async fn a_detached_environment_survives_gc_from_another_state_dir() {
    let (session, _cleanup, env) = fresh_environment().await;
    let other = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr) = output(
        berth(&["--json", "gc", "--session", &session])
            .env("BERTH_STATE_DIR", other.path())
            .env("HOME", other.path()),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["kept"], 1, "{report}");
    assert_eq!(containers_of(&session).len(), 1, "gc removed {env}");
    let (code, _, stderr) = output(&mut berth(&["down", &env]));
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn environments_are_limited_by_default() {
    let (_session, _cleanup, env) = fresh_environment().await;
    let limits = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
        &env,
    ]);
    assert_eq!(limits, format!("{} {}", 4u64 << 30, 2_000_000_000u64));
    let (code, stdout, _) = output(&mut berth(&["doctor"]));
    assert!(
        stdout.contains("limits: 2 CPUs, 4096 MiB of memory"),
        "{code:?} {stdout}"
    );
    let (_, stdout, _) =
        output(berth(&["doctor"]).env("BERTH_RUNNER__RESOURCES__MEMORY", "unlimited"));
    assert!(stdout.contains("no memory limit"), "{stdout}");
}

#[tokio::test]
async fn a_missing_image_says_it_is_not_here_and_the_pull_failed() {
    test_image().await;
    let (code, _, stderr) = output(&mut berth(&[
        "run",
        "--image",
        "berth-test/absent:0",
        "--",
        "true",
    ]));
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("image berth-test/absent:0 is not present locally, and pulling it failed"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_missing_command_exits_127_with_one_line() {
    let (_session, _cleanup, env) = fresh_environment().await;
    let (code, stdout, stderr) = output(&mut berth(&["run", "--", "no-such-command", "x"]));
    assert_eq!(code, Some(127), "{stdout} {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no-such-command: command not found"),
        "{stderr}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("OCI runtime"),
        "{stdout} {stderr}"
    );
    let (code, _, stderr) = output(&mut berth(&["exec", &env, "--", "no-such-command"]));
    assert_eq!(code, Some(127), "{stderr}");
    assert!(
        stderr.contains("no-such-command: command not found"),
        "{stderr}"
    );
    // A command's own 127 and 126 stay its own.
    let (code, _, _) = output(&mut berth(&["exec", &env, "--", "sh", "-c", "exit 126"]));
    assert_eq!(code, Some(126));
    let (code, _, stderr) = output(&mut berth(&["down", &env]));
    assert_eq!(code, Some(0), "{stderr}");
}
