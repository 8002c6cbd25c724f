//! End-to-end tests of the `berth` binary against the real Docker daemon.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use berth_engine_core::testkit::TEST_IMAGE;
use berth_engine_core::SessionId;

mod common;

use common::{
    assert_stderr_has, containers_of, fresh_session, json_of, kill9, test_image, text, volumes_of,
};

/// The binary, with one state directory for every test of this file, as one user's machine
/// would have.
fn berth(args: &[&str]) -> Command {
    common::berth_with_state("berth-state", args)
}

/// One state directory for every test of this binary, as one user's machine would have.
fn state_dir() -> String {
    format!("{}/berth-state", env!("CARGO_TARGET_TMPDIR"))
}

#[tokio::test]
async fn run_forwards_streams_and_exit_code_and_leaves_nothing() {
    test_image().await;
    let session = SessionId::generate().to_string();
    let out: Output = berth(&[
        "run",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])
    .output()
    .expect("run berth");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert!(containers_of(&session).is_empty(), "left behind");
}

#[tokio::test]
async fn run_passes_stdin_env_workdir_and_user() {
    test_image().await;
    let out = common::output_with_stdin(
        &mut berth(&[
            "run",
            "--image",
            TEST_IMAGE,
            "-i",
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "-u",
            "1000",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; cat",
        ]),
        b"from stdin\n",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi there\n/tmp\n1000\nfrom stdin\n");
}

#[tokio::test]
async fn run_timeout_exits_124() {
    test_image().await;
    let out = berth(&[
        "run",
        "--image",
        TEST_IMAGE,
        "--timeout",
        "1",
        "--",
        "sleep",
        "600",
    ])
    .output()
    .expect("run berth");
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_stderr_has(&out, "timed out");
}

/// `berth run --timeout` ends its whole environment: nothing runs after the deadline (no
/// `done`), a daemon that escaped the in-environment kill ends with it, and no warning about
/// a failed kill is printed when nothing survived.
#[tokio::test]
async fn run_timeout_ends_the_environment_without_a_spurious_warning() {
    let (session, _cleanup) = fresh_session().await;
    let out = berth(&[
        "run",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "(env -u BERTH_EXEC_ID setsid sleep 1003 &); sleep 30; echo done",
    ])
    .output()
    .expect("run berth");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert!(
        !text(&out.stdout).contains("done"),
        "ran after the deadline"
    );
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(stderr.contains("ended the environment"), "{stderr}");
    assert!(!stderr.contains("killing an exec"), "{stderr}");
    assert!(!stderr.contains("may have escaped"), "{stderr}");
    assert!(
        containers_of(&session).is_empty(),
        "the environment is left"
    );
}

#[test]
fn missing_image_exits_125_naming_it() {
    let out = berth(&["run", "--image", "berth-test/absent:0", "--", "true"])
        .env("BERTH_RUNNER__PULL_POLICY", "never")
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(125));
    assert_stderr_has(&out, "berth-test/absent:0");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--image", "Bad Image!", "--", "true"], "image"),
        (
            &["run", "--image", TEST_IMAGE, "-e", "NOEQUALS", "--", "true"],
            "--env",
        ),
        (
            &["run", "--image", TEST_IMAGE, "-e", "=x", "--", "true"],
            "env",
        ),
        (&["run", "--image", TEST_IMAGE, "--", ""], "argv"),
        (
            &[
                "run",
                "--image",
                TEST_IMAGE,
                "--session",
                "Not_Valid",
                "--",
                "true",
            ],
            "session",
        ),
    ];
    for (args, needle) in cases {
        let out = berth(args).output().expect("run berth");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write config");
        path.to_string_lossy().into_owned()
    };
    let cases = [
        (
            write("backend.yaml", "runner:\n  backend: dockr\n"),
            "runner.backend",
            "expected docker or kubernetes",
        ),
        (
            write("memory.yaml", "runner:\n  resources:\n    memory: 4 gigs\n"),
            "runner.resources.memory",
            "4 gigs",
        ),
        (
            write("zero.yaml", "runner:\n  resources:\n    memory: \"0\"\n"),
            "runner.resources.memory",
            "positive",
        ),
        (
            write("unknown.yaml", "runner:\n  imgae: x\n"),
            "imgae",
            "image",
        ),
    ];
    for (path, key, expected) in &cases {
        let out = berth(&["--config", path, "run", "--image", TEST_IMAGE, "--", "true"])
            .output()
            .expect("run berth");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(path.as_str()), "names the file: {stderr}");
        assert!(stderr.contains(key), "names {key}: {stderr}");
        assert!(stderr.contains(expected), "says {expected}: {stderr}");
    }
    let out = berth(&["--config", "/no/such.yaml", "run", "--", "true"])
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("/no/such.yaml"));
}

#[test]
fn kubernetes_without_a_cluster_is_a_clear_error() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = berth(&["run", "--image", TEST_IMAGE, "--", "true"])
        .env("BERTH_RUNNER__BACKEND", "kubernetes")
        .env("HOME", home.path())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run berth");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("kubernetes engine unavailable"), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/kubeconfig"),
        "names what it tried: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn up_exec_ls_cp_down_with_json() {
    let (session, _cleanup) = fresh_session().await;
    let out = berth(&[
        "--json",
        "up",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--name",
        "agent",
    ])
    .output()
    .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let up = json_of(&out);
    let id = up["id"].as_str().expect("id").to_owned();
    assert_eq!(up["session"], session.as_str());
    assert_eq!(up["name"], "agent");

    let out = berth(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        &id,
        "--",
        "sh",
        "-c",
        "echo $X; pwd; exit 5",
    ])
    .output()
    .expect("exec");
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "1\n/tmp\n");

    let out = berth(&[
        "--json",
        "exec",
        "-u",
        "1000",
        &id,
        "--",
        "sh",
        "-c",
        "id -u; echo e >&2",
    ])
    .output()
    .expect("exec --json");
    let result = json_of(&out);
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "1000\n");
    assert_eq!(result["stderr"], "e\n");

    let out = berth(&["--json", "ls", "--session", &session])
        .output()
        .expect("ls");
    let listed = json_of(&out);
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");
    let out = berth(&["ls", "--session", &session]).output().expect("ls");
    assert!(text(&out.stdout).contains(&id));

    // cp in: a tree with a symlink and an executable; then out again.
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("tree");
    std::fs::create_dir_all(src.join("empty")).expect("mkdir");
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho ran\n").expect("write");
    std::fs::set_permissions(
        src.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("run.sh", src.join("link")).expect("symlink");
    let dest = format!("{id}:/tmp");
    let out = berth(&["cp", src.to_str().expect("utf8"), &dest])
        .output()
        .expect("cp in");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = berth(&["exec", &id, "--", "/tmp/tree/link"])
        .output()
        .expect("run copied");
    assert_eq!(text(&out.stdout), "ran\n");
    let back = local.path().join("back");
    std::fs::create_dir(&back).expect("mkdir");
    let from = format!("{id}:/tmp/tree");
    let out = berth(&["cp", &from, back.to_str().expect("utf8")])
        .output()
        .expect("cp out");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_link(back.join("tree/link")).expect("symlink kept"),
        std::path::PathBuf::from("run.sh")
    );
    assert!(back.join("tree/empty").is_dir());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(back.join("tree/run.sh"))
            .expect("meta")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    let out = berth(&[
        "cp",
        &format!("{id}:/no/such"),
        back.to_str().expect("utf8"),
    ])
    .output()
    .expect("cp missing");
    assert_eq!(out.status.code(), Some(125));
    assert_stderr_has(&out, "/no/such");

    let out = berth(&["--json", "down", &id]).output().expect("down");
    assert_eq!(json_of(&out)[0]["outcome"], "stopped");
    // A second `down` names nothing any more: an error, not a silent success.
    let out = berth(&["down", &id]).output().expect("down again");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("no berth environment"));
    assert!(containers_of(&session).is_empty());
}

#[tokio::test]
async fn down_by_session_stops_all_of_it() {
    let (session, _cleanup) = fresh_session().await;
    for name in ["a", "b"] {
        let out = berth(&[
            "up",
            "--image",
            TEST_IMAGE,
            "--session",
            &session,
            "--name",
            name,
        ])
        .output()
        .expect("up");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(containers_of(&session).len(), 2);
    let out = berth(&["down", "--session", &session])
        .output()
        .expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(containers_of(&session).is_empty());
}

#[tokio::test]
async fn shell_runs_under_a_pty() {
    test_image().await;
    // `script` gives berth a real pseudo-terminal, as a person's terminal would.
    let cmd = format!("{} shell --image {TEST_IMAGE}", env!("CARGO_BIN_EXE_berth"));
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("BERTH_STATE_DIR", state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(std::time::Duration::from_secs(2));
    stdin
        .write_all(b"test -t 0 && echo tty-$((6*7)); exit 7\r")
        .expect("type");
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let screen = text(&out.stdout);
    assert!(screen.contains("tty-42"), "{screen}");
    assert_eq!(out.status.code(), Some(7), "{screen} {}", text(&out.stderr));
}

fn wait_for_container(session: &str, child: &mut std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if !containers_of(session).is_empty() {
            return true;
        }
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

fn gc_session(session: &str) -> serde_json::Value {
    let out = berth(&["--json", "gc", "--session", session])
        .output()
        .expect("gc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    json_of(&out)
}

#[tokio::test]
async fn kill_9_of_run_then_gc_leaves_nothing() {
    let (session, _cleanup) = fresh_session().await;
    let mut child = berth(&[
        "run",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--",
        "sleep",
        "600",
    ])
    .env("BERTH_RUNNER__WORKSPACE", "ephemeral")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn run");
    assert!(
        wait_for_container(&session, &mut child),
        "run never started a container"
    );
    kill9(&mut child);
    assert_eq!(
        containers_of(&session).len(),
        1,
        "the crash leaves the container"
    );
    assert_eq!(
        volumes_of(&session).len(),
        1,
        "and its labelled workspace volume"
    );
    let report = gc_session(&session);
    assert_eq!(
        report["garbage"].as_array().expect("garbage").len(),
        1,
        "{report}"
    );
    assert!(
        report["garbage"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("is gone"),
        "{report}"
    );
    assert!(containers_of(&session).is_empty());
    assert!(volumes_of(&session).is_empty());
}

#[tokio::test]
async fn kill_9_of_up_then_gc_leaves_nothing_but_detached_ones_stay() {
    let (session, _cleanup) = fresh_session().await;
    // Kill `berth up` while it starts; if it finished first (it takes well under a second),
    // try again with a fresh environment name.
    let mut crashed = false;
    for attempt in 0..10 {
        let name = format!("try{attempt}");
        let mut child = berth(&[
            "up",
            "--image",
            TEST_IMAGE,
            "--session",
            &session,
            "--name",
            &name,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn up");
        let appeared = wait_for_container(&session, &mut child);
        if appeared && child.try_wait().expect("try_wait").is_none() {
            kill9(&mut child);
            crashed = true;
            break;
        }
        let _ = child.wait();
        let out = berth(&["down", "--session", &session])
            .output()
            .expect("down");
        assert!(out.status.success());
    }
    assert!(crashed, "never caught berth up mid-start in 10 tries");
    // A completed `up` in the same session is detached on purpose and must survive gc.
    let out = berth(&[
        "up",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--name",
        "kept",
    ])
    .output()
    .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept = text(&out.stdout).trim().to_owned();
    let report = gc_session(&session);
    let garbage = report["garbage"].as_array().expect("garbage");
    assert_eq!(garbage.len(), 1, "{report}");
    assert_eq!(report["kept"], 1, "{report}");
    assert_eq!(containers_of(&session).len(), 1);
    let out = berth(&["down", &kept]).output().expect("down");
    assert!(out.status.success());
    assert!(containers_of(&session).is_empty());
}

#[tokio::test]
async fn gc_older_than_and_dry_run() {
    let (session, _cleanup) = fresh_session().await;
    let out = berth(&["up", "--image", TEST_IMAGE, "--session", &session])
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = berth(&[
        "--json",
        "gc",
        "--session",
        &session,
        "--older-than",
        "1s",
        "--dry-run",
    ])
    .output()
    .expect("gc dry run");
    let report = json_of(&out);
    assert_eq!(report["garbage"][0]["removed"], false, "{report}");
    assert_eq!(
        containers_of(&session).len(),
        1,
        "a dry run removes nothing"
    );
    let out = berth(&["gc", "--session", &session, "--older-than", "1h"])
        .output()
        .expect("gc");
    assert!(
        text(&out.stdout).contains("0 garbage, 1 kept"),
        "{}",
        text(&out.stdout)
    );
    let out = berth(&["gc", "--session", &session, "--older-than", "1s"])
        .output()
        .expect("gc");
    assert!(
        text(&out.stdout).contains("removed"),
        "{}",
        text(&out.stdout)
    );
    assert!(containers_of(&session).is_empty());
}

#[tokio::test]
async fn gc_volumes_removes_unused_workspace_volumes_only_when_asked() {
    let (session, _cleanup) = fresh_session().await;
    let volume = format!("berth-test-{session}");
    let out = berth(&["up", "--image", TEST_IMAGE, "--session", &session])
        .env("BERTH_RUNNER__WORKSPACE__VOLUME", &volume)
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout).trim().to_owned();
    assert_eq!(volumes_of(&session), [volume.as_str()]);
    let out = berth(&["--json", "ls", "--volumes", "--session", &session])
        .output()
        .expect("ls --volumes");
    let listed = json_of(&out);
    assert_eq!(listed[0]["name"], volume.as_str(), "{listed}");
    assert_eq!(listed[0]["in_use"], true, "{listed}");
    assert_eq!(listed[0]["session"], session.as_str(), "{listed}");
    // In use: kept even when asked.
    let out = berth(&["--json", "gc", "--session", &session, "--volumes"])
        .output()
        .expect("gc");
    let report = json_of(&out);
    assert_eq!(report["volumes"], serde_json::json!([]), "{report}");
    assert_eq!(report["volumes_kept"], 1, "{report}");
    let out = berth(&["down", &env]).output().expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Unused, but not asked for: kept, and the summary says how to remove it.
    let out = berth(&["gc", "--session", &session]).output().expect("gc");
    assert!(
        text(&out.stdout).contains("--volumes removes unused ones"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(volumes_of(&session), [volume.as_str()]);
    let out = berth(&["ls", "--volumes", "--session", &session])
        .output()
        .expect("ls --volumes");
    let table = text(&out.stdout);
    let row = table.lines().find(|l| l.starts_with(&volume)).unwrap_or("");
    assert!(row.contains(" no "), "not in use once down: {table}");
    let out = berth(&[
        "--json",
        "gc",
        "--session",
        &session,
        "--volumes",
        "--dry-run",
    ])
    .output()
    .expect("gc dry run");
    let report = json_of(&out);
    assert_eq!(report["volumes"][0]["name"], volume.as_str(), "{report}");
    assert_eq!(report["volumes"][0]["removed"], false, "{report}");
    assert_eq!(
        volumes_of(&session),
        [volume.as_str()],
        "a dry run removes nothing"
    );
    let out = berth(&["gc", "--session", &session, "--volumes"])
        .output()
        .expect("gc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("removed volume {volume}")),
        "{}",
        text(&out.stdout)
    );
    assert!(volumes_of(&session).is_empty());
}

#[tokio::test]
async fn doctor_and_image_commands() {
    test_image().await;
    let out = berth(&["--json", "doctor", "--image", TEST_IMAGE])
        .output()
        .expect("doctor");
    let report = json_of(&out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(out.status.code(), Some(0));
    let out = berth(&["doctor", "--image", "berth-test/absent:0"])
        .output()
        .expect("doctor");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("FAIL image"),
        "{}",
        text(&out.stdout)
    );
    let out = berth(&["doctor", "--docker-host", "unix:///nonexistent.sock"])
        .output()
        .expect("doctor");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("/nonexistent.sock"),
        "{}",
        text(&out.stdout)
    );

    let out = berth(&["--json", "image", "ensure", TEST_IMAGE, "--pull", "never"])
        .output()
        .expect("ensure");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["reference"], TEST_IMAGE);
    let out = berth(&["image", "ensure", "berth-test/absent:0", "--pull", "never"])
        .output()
        .expect("ensure missing");
    assert_eq!(out.status.code(), Some(125));

    let context = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {TEST_IMAGE}\nARG WHO\nCOPY hello.txt /hello.txt\nRUN echo \"$WHO\" >> /hello.txt\n"),
    )
    .expect("dockerfile");
    std::fs::write(context.path().join("hello.txt"), "hello\n").expect("file");
    let out = berth(&[
        "--json",
        "image",
        "build",
        "-t",
        "berth-test/cli-build:1",
        "--build-arg",
        "WHO=cli",
        context.path().to_str().expect("utf8"),
    ])
    .output()
    .expect("build");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["reference"], "berth-test/cli-build:1");
    let out = berth(&[
        "run",
        "--image",
        "berth-test/cli-build:1",
        "--",
        "cat",
        "/hello.txt",
    ])
    .output()
    .expect("run built");
    assert_eq!(text(&out.stdout), "hello\ncli\n");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nRUN false\n",
    )
    .expect("write");
    let out = berth(&[
        "image",
        "build",
        "-t",
        "berth-test/cli-broken:1",
        context.path().to_str().expect("utf8"),
    ])
    .output()
    .expect("broken build");
    assert_eq!(out.status.code(), Some(125));
    assert_stderr_has(&out, "berth-test/cli-broken:1");
}

#[test]
fn config_layers_env_over_file_and_flag_over_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("berth.yaml");
    std::fs::write(&file, "docker:\n  host: unix:///from-file.sock\n").expect("write");
    let file = file.to_str().expect("utf8");
    // doctor reports the address it tried, which shows which layer won.
    let out = berth(&["--config", file, "doctor"])
        .output()
        .expect("doctor");
    assert!(
        text(&out.stdout).contains("/from-file.sock"),
        "{}",
        text(&out.stdout)
    );
    let out = berth(&["--config", file, "doctor"])
        .env("BERTH_DOCKER__HOST", "unix:///from-env.sock")
        .output()
        .expect("doctor");
    assert!(
        text(&out.stdout).contains("/from-env.sock"),
        "env wins over file: {}",
        text(&out.stdout)
    );
    let out = berth(&[
        "--config",
        file,
        "--docker-host",
        "unix:///from-flag.sock",
        "doctor",
    ])
    .env("BERTH_DOCKER__HOST", "unix:///from-env.sock")
    .output()
    .expect("doctor");
    assert!(
        text(&out.stdout).contains("/from-flag.sock"),
        "flag wins over env: {}",
        text(&out.stdout)
    );
    // A config file in the working directory is found without --config.
    let out = berth(&["doctor"])
        .current_dir(dir.path())
        .output()
        .expect("doctor");
    assert!(
        text(&out.stdout).contains("/from-file.sock"),
        "{}",
        text(&out.stdout)
    );
    // An unknown env key is named with its suggestion.
    let out = berth(&["doctor"])
        .env("BERTH_RUNNER__IMGAE", "x")
        .output()
        .expect("doctor");
    assert_eq!(out.status.code(), Some(125));
    assert_stderr_has(&out, "did you mean BERTH_RUNNER__IMAGE");
}

/// `berth up` with a 64Mi memory limit; the id of the environment.
fn up_with_memory_limit(session: &str) -> String {
    let out = berth(&["up", "--image", TEST_IMAGE, "--session", session])
        .env("BERTH_RUNNER__RESOURCES__MEMORY", "64Mi")
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn connloss_oom_kill_is_said_on_stderr_and_in_json() {
    let (session, _cleanup) = fresh_session().await;
    let id = up_with_memory_limit(&session);
    let hog = "head -c 200m /dev/zero | tail";
    let out = berth(&["exec", &id, "--", "sh", "-c", hog])
        .output()
        .expect("exec");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_stderr_has(&out, "killed: out of memory (limit 64Mi)");
    let out = berth(&["--json", "exec", &id, "--", "sh", "-c", hog])
        .output()
        .expect("exec --json");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let json = json_of(&out);
    assert_eq!(json["oom_killed"], true, "{json}");
    assert_eq!(json["exit_code"], 137, "{json}");
    // The command's own SIGKILL is not an out-of-memory kill.
    let out = berth(&["--json", "exec", &id, "--", "sh", "-c", "kill -9 $$"])
        .output()
        .expect("exec --json");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["oom_killed"], false);
    assert!(!text(&out.stderr).contains("out of memory"));
}

#[tokio::test]
async fn connloss_environment_removed_under_exec_exits_125_saying_so() {
    let (session, _cleanup) = fresh_session().await;
    let id = up_with_memory_limit(&session);
    let exec = berth(&["exec", &id, "--", "sleep", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = berth(&["down", &id]).output().expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = exec.wait_with_output().expect("exec ends");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert_stderr_has(&out, "stopped while the command ran");
}

#[tokio::test]
async fn up_reports_each_phase_on_stderr_and_json_stays_quiet() {
    let (session, _cleanup) = fresh_session().await;
    let out = berth(&["up", "--image", TEST_IMAGE, "--session", &session])
        .output()
        .expect("up");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: one plain line per phase, in order.
    let starting = stderr
        .find("berth: starting: waiting for the container")
        .unwrap_or_else(|| panic!("no starting line: {stderr}"));
    let ready = stderr
        .find(&format!("berth: ready: {}", text(&out.stdout).trim()))
        .unwrap_or_else(|| panic!("no ready line: {stderr}"));
    assert!(starting < ready, "{stderr}");
    let out = berth(&[
        "--json",
        "up",
        "--image",
        TEST_IMAGE,
        "--session",
        &session,
        "--name",
        "quiet",
    ])
    .output()
    .expect("up --json");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "--json prints no progress");
    let out = berth(&["down", "--session", &session])
        .output()
        .expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
}
