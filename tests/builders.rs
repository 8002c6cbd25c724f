//! Named remote builders end to end: `berth builder ls` and `berth image build --builder`
//! against a builder reached over the test sshd (root on 127.0.0.1, whose `docker system
//! dial-stdio` reaches the local daemon), an unreachable builder, and a builder whose ssh
//! transport is killed mid-build. Needs `openssh-server`, root and a running daemon.

mod common;
#[path = "../crates/engine-docker/tests/support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_stderr_has, berth_in, docker, json_of, test_image, text};
use sshd::{Sshd, TempDir};

/// Removes a tag from the local daemon when the test ends.
struct RemoveTag(String);

impl Drop for RemoveTag {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}{nanos}", std::process::id())
}

/// A config with builder `remote` at the sshd, `down` at a closed port, and `extra` YAML.
fn config(dir: &Path, sshd: Option<&Sshd>, extra: &str) -> PathBuf {
    let mut yaml = String::from("builders:\n");
    if let Some(sshd) = sshd {
        yaml.push_str(&format!(
            "  remote:\n    host: {}\n    ssh_config: {}\n    labels: {{site: test}}\n",
            sshd.address(),
            sshd.good_config().display()
        ));
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    yaml.push_str(&format!(
        "  down:\n    host: ssh://root@127.0.0.1:{closed}\n    ssh_config: /dev/null\n"
    ));
    yaml.push_str(extra);
    let path = dir.join("berth.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn berth(dir: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = berth_in(dir, &dir.join("state"), &["--config"]);
    cmd.arg(config).args(args);
    cmd
}

/// A context dir with `dockerfile`, a kept file and a file `.dockerignore` excludes.
fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("app")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(ctx.join(".dockerignore"), "secret.txt\n*.log\n").unwrap();
    std::fs::write(ctx.join("app/keep.txt"), "kept").unwrap();
    std::fs::write(ctx.join("secret.txt"), "do not send").unwrap();
    std::fs::write(ctx.join("build.log"), "noise").unwrap();
    ctx
}

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test]
async fn build_on_a_named_builder_over_ssh_honours_dockerignore() {
    test_image().await;
    let sshd = Sshd::start();
    let dir = TempDir::new("berth-builders");
    // `reg`: the same daemon, with a registry on a closed port.
    let reg = format!(
        "  reg:\n    host: {}\n    ssh_config: {}\n    registry: 127.0.0.1:1/team\n",
        sshd.address(),
        sshd.good_config().display()
    );
    let cfg = config(&dir.0, Some(&sshd), &reg);
    let tag = format!("berth-test/built:{}", unique("b"));
    let _cleanup = RemoveTag(tag.clone());
    let ctx = context(
        &dir.0,
        "FROM berth-test/busybox:2\nCOPY . /ctx/\nRUN test -e /ctx/app/keep.txt && test ! -e /ctx/secret.txt && test ! -e /ctx/build.log\n",
    );
    let out = berth(
        &dir.0,
        &cfg,
        &["image", "build", "--builder", "remote", "-t", &tag],
    )
    .arg(&ctx)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "build failed: {} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(stdout.trim(), format!("{tag} {id}"));

    // builder ls: the reachable one with its daemon's facts, the other with its error.
    let out = berth(&dir.0, &cfg, &["--json", "builder", "ls"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = json_of(&out);
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {list}"))
            .clone()
    };
    let remote = by_name("remote");
    assert_eq!(remote["reachable"], true, "{remote}");
    assert_eq!(
        remote["daemon"]["server_version"],
        docker(&["version", "--format", "{{.Server.Version}}"]).as_str()
    );
    assert_eq!(
        remote["daemon"]["cpus"].as_u64(),
        docker(&["info", "--format", "{{.NCPU}}"])
            .parse::<u64>()
            .ok()
    );
    assert!(remote["daemon"]["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(remote["labels"]["site"], "test");
    let down = by_name("down");
    assert_eq!(down["reachable"], false, "{down}");
    assert!(
        down["error"].as_str().unwrap().contains("127.0.0.1"),
        "{down}"
    );

    // --push to the builder's registry: built, then the push fails with the registry's answer.
    let pushed = format!("127.0.0.1:1/team/app:{}", unique("p"));
    let _cleanup_pushed = RemoveTag(pushed.clone());
    let out = berth(
        &dir.0,
        &cfg,
        &[
            "image",
            "build",
            "--builder",
            "reg",
            "--push",
            "-t",
            &pushed,
        ],
    )
    .arg(&ctx)
    .output()
    .unwrap();
    assert_eq!(exit_code(&out), Some(125), "{}", text(&out.stderr));
    assert_stderr_has(&out, "on builder reg");
    assert_stderr_has(&out, &format!("pushing {pushed} failed"));

    // doctor checks both.
    let out = berth(&dir.0, &cfg, &["doctor"]).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok   builder remote:"), "{stdout}");
    assert!(stdout.contains("FAIL builder down:"), "{stdout}");
    assert_eq!(exit_code(&out), Some(1), "{stdout}");
}

#[test]
fn an_unreachable_builder_fails_naming_it() {
    let dir = TempDir::new("berth-builders");
    let cfg = config(&dir.0, None, "");
    let ctx = context(&dir.0, "FROM berth-test/busybox:2\n");
    let build = |extra: &[&str]| {
        let out = berth(
            &dir.0,
            &cfg,
            &["image", "build", "-t", "berth-test/never:1"],
        )
        .args(extra)
        .arg(&ctx)
        .output()
        .unwrap();
        assert_eq!(exit_code(&out), Some(125), "{}", text(&out.stderr));
        out
    };
    let out = build(&["--builder", "down"]);
    assert_stderr_has(&out, "builder down (ssh://root@127.0.0.1:");
    assert_stderr_has(&out, "unreachable");

    let out = build(&["--builder", "nope"]);
    assert_stderr_has(&out, "unknown builder \"nope\": expected one of down");

    // --push without a registry: refused before anything is sent.
    let out = build(&["--builder", "down", "--push"]);
    assert_stderr_has(&out, "no registry is configured for builder down");
}

#[tokio::test]
async fn a_builder_lost_mid_build_fails_and_tags_nothing() {
    test_image().await;
    let mut sshd = Sshd::start();
    let dir = TempDir::new("berth-builders");
    let cfg = config(&dir.0, Some(&sshd), "");
    let tag = format!("berth-test/lost:{}", unique("l"));
    let _cleanup = RemoveTag(tag.clone());
    let marker = unique("m");
    let ctx = context(
        &dir.0,
        &format!("FROM berth-test/busybox:2\nRUN echo {marker} && sleep 60\n"),
    );
    let child = berth(
        &dir.0,
        &cfg,
        &["image", "build", "--builder", "remote", "-t", &tag],
    )
    .arg(&ctx)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait for the slow step's container, then kill sshd and its sessions (the transport).
    let running = || {
        docker(&["ps", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
            .lines()
            .any(|l| l.contains(&marker))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !running() {
        assert!(Instant::now() < deadline, "the build step never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    sshd.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(exit_code(&out), Some(125), "{}", text(&out.stderr));
    assert_stderr_has(&out, "builder remote (ssh://root@127.0.0.1:");
    assert_stderr_has(&out, "went away during the build");
    // The daemon cancels the build: its step's container goes, and no tag appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running() {
        assert!(
            Instant::now() < deadline,
            "the build step was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "{tag} was tagged");
}

#[test]
fn docker_context_flag_is_used_and_checked_by_doctor() {
    let dir = TempDir::new("berth-builders");
    let docker_config = dir.0.join("docker-config");
    let created = Command::new("docker")
        .env("DOCKER_CONFIG", &docker_config)
        .args([
            "context",
            "create",
            "far",
            "--docker",
            "host=unix:///var/run/docker.sock",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created.stderr));
    let cfg = dir.0.join("empty.yaml");
    std::fs::write(&cfg, "runner:\n  image: berth-test/busybox:2\n").unwrap();
    let doctor = |context: &str| {
        let out = berth(
            &dir.0,
            &cfg,
            &["--json", "--docker-context", context, "doctor"],
        )
        .env("DOCKER_CONFIG", &docker_config)
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
        let json = json_of(&out);
        let check = |name: &str| {
            json["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check"] == name)
                .unwrap_or_else(|| panic!("no {name} check: {json}"))
                .clone()
        };
        (check("docker endpoint"), check("engine"))
    };
    let (endpoint, engine) = doctor("far");
    assert_eq!(endpoint["ok"], true, "{endpoint}");
    let detail = endpoint["detail"].as_str().unwrap();
    assert!(
        detail.contains("unix:///var/run/docker.sock") && detail.contains("docker context far"),
        "{detail}"
    );
    assert_eq!(engine["ok"], true, "{engine}");

    let (endpoint, engine) = doctor("nope");
    assert_eq!(endpoint["ok"], false, "{endpoint}");
    assert!(
        endpoint["detail"].as_str().unwrap().contains("\"nope\""),
        "{endpoint}"
    );
    assert!(endpoint["fix"]
        .as_str()
        .unwrap()
        .contains("docker context ls"));
    assert_eq!(engine["ok"], false, "{engine}");
}
