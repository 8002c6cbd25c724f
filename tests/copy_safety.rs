//! `berth cp` out of a hostile environment, end to end through the real binary: on Docker and
//! on Kubernetes (the simulator, whose pods are Docker containers). On Kubernetes the
//! environment's own `tar -cf` is replaced by a script, as hostile code in it could do.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_engine_core::testkit::{ensure_test_image, TEST_IMAGE};
use berth_engine_core::SessionId;
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_k8s_sim::Sim;

mod common;

use common::text;

/// What a hostile copy may add to berth's peak memory.
const MEMORY_BUDGET_KIB: u64 = 64 * 1024;

/// One environment on one backend, with a scratch directory as the working directory; stopped
/// (and on Docker removed by label) when dropped, pass or fail.
struct Env {
    sim: Option<Sim>,
    dir: tempfile::TempDir,
    session: String,
    id: String,
}

impl Env {
    async fn up(kubernetes: bool) -> Self {
        let docker = DockerEngine::connect(&DockerConfig::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
        ensure_test_image(&docker).await.expect("test image");
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = if kubernetes {
            let sim = Sim::start().await.expect("simulator");
            sim.write_kubeconfig(&dir.path().join("kubeconfig"))
                .expect("kubeconfig");
            Some(sim)
        } else {
            None
        };
        let mut env = Self {
            sim,
            dir,
            session: SessionId::generate().to_string(),
            id: String::new(),
        };
        let out = env
            .berth(&["--json", "up", "--session", &env.session.clone()])
            .output()
            .expect("up");
        assert!(out.status.success(), "up: {}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        env.id = json["id"].as_str().expect("id").to_owned();
        std::fs::create_dir(env.path("out")).expect("out");
        env
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn berth(&self, args: &[&str]) -> Command {
        let dir = self.dir.path();
        let mut cmd = common::berth_in(dir, &dir.join("state"), args);
        cmd.env("BERTH_RUNNER__IMAGE", TEST_IMAGE);
        if self.sim.is_some() {
            common::on_kubernetes(&mut cmd, &dir.join("kubeconfig"));
        }
        cmd
    }

    fn sh(&self, script: &str) {
        let out = self
            .berth(&["exec", &self.id, "--", "sh", "-c", script])
            .output()
            .expect("exec");
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    }

    fn sh_out(&self, script: &str) -> String {
        let out = self
            .berth(&["exec", &self.id, "--", "sh", "-c", script])
            .output()
            .expect("exec");
        text(&out.stdout)
    }

    fn cp(&self, args: &[&str]) -> Output {
        let mut all = vec!["cp"];
        all.extend_from_slice(args);
        self.berth(&all).output().expect("cp")
    }

    fn from(&self, path: &str) -> String {
        format!("{}:{path}", self.id)
    }

    /// Makes the environment answer a copy out of the directory `path` (`sh -c '... tar -cf
    /// ...' sh PATH` on Kubernetes) with `script`'s output; `payload` is copied in first as
    /// `/tmp/payload`. The image's busybox `sh` runs its own `tar` whatever PATH says, so the
    /// stand-in is an `sh` earlier in PATH, which the runtime finds when it starts the exec;
    /// every other command passes through to the real shell.
    fn hostile_tar(&self, path: &str, payload: &[u8], script: &str) {
        std::fs::write(self.path("payload"), payload).expect("write");
        let local = self.path("payload");
        let out = self.cp(&[local.to_str().expect("utf8"), &self.from("/tmp")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        self.sh(&format!(
            "mkdir -p {path} /usr/local/bin && printf '%s\\n' '#!/bin/sh' \
             'if [ \"$4\" = {path} ]; then {script}; fi' 'exec /bin/sh \"$@\"' \
             > /usr/local/bin/sh && chmod +x /usr/local/bin/sh"
        ));
    }

    /// Runs a copy out and samples the peak memory (VmHWM) of the `berth` process until it
    /// ends; panics when it runs past `deadline`.
    fn cp_measured(&self, args: &[&str], deadline: Duration) -> (Output, u64) {
        let mut all = vec!["cp"];
        all.extend_from_slice(args);
        let mut child = self
            .berth(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cp");
        let mut stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            s
        });
        let status_file = format!("/proc/{}/status", child.id());
        let started = Instant::now();
        let mut peak = 0;
        let status = loop {
            if let Some(kib) = std::fs::read_to_string(&status_file)
                .ok()
                .and_then(|s| vm_hwm_kib(&s))
            {
                peak = peak.max(kib);
            }
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth cp {args:?} still ran after {deadline:?} (peak {peak} KiB)");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stderr = reader.join().expect("stderr");
        (
            Output {
                status,
                stdout: Vec::new(),
                stderr,
            },
            peak,
        )
    }

    /// berth's peak memory for copying out a small file: the baseline growth is measured from.
    fn baseline_kib(&self) -> u64 {
        self.sh("echo small > /tmp/small");
        let (out, peak) = self.cp_measured(
            &[
                &self.from("/tmp/small"),
                self.path("base").to_str().expect("utf8"),
            ],
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        peak
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = self.berth(&["down", &self.id]).output();
        }
        if self.sim.is_none() {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=berth.dev/session={}", self.session),
                ])
                .output();
            for id in out.map(|o| text(&o.stdout)).unwrap_or_default().lines() {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            }
        }
        // Read-only directories a test copied out must not stop the tempdir's removal.
        let _ = Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(self.dir.path())
            .output();
    }
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// What is in `dir` (names only).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn setuid_is_stripped(kubernetes: bool) {
    let env = Env::up(kubernetes).await;
    env.sh(
        "cp /bin/busybox /tmp/esc && chmod 4755 /tmp/esc && mkdir /tmp/d && touch /tmp/d/f \
         && chmod 6777 /tmp/d/f && chmod 7777 /tmp/d",
    );
    let out_dir = env.path("out");
    let out = env.cp(&[&env.from("/tmp/esc"), out_dir.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&out_dir.join("esc")), 0o755 & !umask());
    let out = env.cp(&[&env.from("/tmp/d"), out_dir.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&out_dir.join("d")), 0o777 & !umask());
    assert_eq!(mode(&out_dir.join("d/f")), 0o777 & !umask());
    // --preserve-mode keeps the permission bits, never the s-bits.
    let kept = env.path("kept");
    let out = env.cp(&[
        "--preserve-mode",
        &env.from("/tmp/d"),
        kept.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&kept), 0o777);
    assert_eq!(mode(&kept.join("f")), 0o777);
}

#[tokio::test]
async fn archive_setuid_is_stripped_docker() {
    setuid_is_stripped(false).await;
}

#[tokio::test]
async fn archive_setuid_is_stripped_kubernetes() {
    setuid_is_stripped(true).await;
}

async fn hostile_name_fails_and_leaves_nothing(kubernetes: bool) {
    let env = Env::up(kubernetes).await;
    env.sh(
        "mkdir -p /tmp/x && echo ok > /tmp/x/a-fine && ln -s /outside /tmp/x/lnk \
         && touch \"$(printf '/tmp/x/z\\033[31mred')\"",
    );
    let out = env.cp(&[&env.from("/tmp/x"), env.path("out").to_str().expect("utf8")]);
    assert!(!out.status.success(), "a name with an escape was accepted");
    let err = text(&out.stderr);
    assert!(err.contains(r"z\u{1b}[31mred"), "{err}");
    assert!(err.contains("control characters"), "{err}");
    // Nothing left, neither the fine file nor the planted link nor the temporary directory.
    assert_eq!(listing(&env.path("out")), Vec::<String>::new());
    // Allowed on request.
    let out = env.cp(&[
        "--allow-control-characters",
        &env.from("/tmp/x"),
        env.path("out").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(listing(&env.path("out/x")).len(), 3);
}

#[tokio::test]
async fn archive_hostile_name_fails_and_leaves_nothing_docker() {
    hostile_name_fails_and_leaves_nothing(false).await;
}

#[tokio::test]
async fn archive_hostile_name_fails_and_leaves_nothing_kubernetes() {
    hostile_name_fails_and_leaves_nothing(true).await;
}

/// A tar member header with raw name bytes, as a hostile tar writes it.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_size(size);
    h.set_cksum();
    h
}

/// An archive of the directory `x/` and one file named `name` (raw: `..` allowed).
fn dir_and_file(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(raw_header(b"x/", tar::EntryType::Directory, 0).as_bytes());
    out.extend_from_slice(raw_header(name, tar::EntryType::Regular, data.len() as u64).as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[tokio::test]
async fn archive_dotdot_entry_fails_the_copy_kubernetes() {
    let env = Env::up(true).await;
    let evil = dir_and_file(b"x/../../evil", b"bad\n");
    env.hostile_tar("/tmp/x", &evil, "exec cat /tmp/payload");
    let out = env.cp(&[&env.from("/tmp/x"), env.path("out").to_str().expect("utf8")]);
    assert!(!out.status.success(), "a `..` entry was dropped silently");
    let err = text(&out.stderr);
    assert!(err.contains("x/../../evil"), "{err}");
    assert_eq!(listing(&env.path("out")), Vec::<String>::new());
    assert!(!env.dir.path().join("evil").exists());
    assert!(!env
        .dir
        .path()
        .parent()
        .expect("parent")
        .join("evil")
        .exists());
}

#[tokio::test]
async fn archive_late_tar_failure_fails_the_copy_kubernetes() {
    // busybox tar skips a file it cannot read and exits 1 after a complete-looking archive:
    // the copy must fail and place nothing.
    let env = Env::up(true).await;
    let payload = dir_and_file(b"x/partial", b"ok\n");
    env.hostile_tar(
        "/tmp/x",
        &payload,
        "cat /tmp/payload; echo tar: x/secret: Permission denied >&2; exit 1",
    );
    let out = env.cp(&[&env.from("/tmp/x"), env.path("out").to_str().expect("utf8")]);
    assert!(!out.status.success(), "a failed tar was reported as a copy");
    let err = text(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(listing(&env.path("out")), Vec::<String>::new());
}

fn assert_bounded(peak: u64, baseline: u64, what: &str) {
    eprintln!("{what}: berth peaked at {peak} KiB (baseline {baseline} KiB)");
    assert!(
        peak <= baseline + MEMORY_BUDGET_KIB,
        "{what}: berth peaked at {peak} KiB, {} KiB over the {baseline} KiB baseline",
        peak.saturating_sub(baseline)
    );
}

/// Copies `path` out with `flags`: the copy must fail within `deadline` saying every one of
/// `wants`, leave nothing behind, and keep berth's memory within budget.
fn refused_copy_out(env: &Env, flags: &[&str], path: &str, deadline: Duration, wants: &[&str]) {
    let baseline = env.baseline_kib();
    let from = env.from(path);
    let out_dir = env.path("out");
    let mut args = flags.to_vec();
    args.extend([from.as_str(), out_dir.to_str().expect("utf8")]);
    let (out, peak) = env.cp_measured(&args, deadline);
    assert!(!out.status.success(), "copying {path} out was accepted");
    let err = text(&out.stderr);
    for want in wants {
        assert!(err.contains(want), "{want} not in: {err}");
    }
    assert_eq!(listing(&out_dir), Vec::<String>::new());
    assert_bounded(peak, baseline, path);
}

/// A 1 TiB sparse file in the environment: the byte limit stops it, nothing is written.
fn terabyte_hits_the_byte_limit(env: &Env) {
    env.sh("truncate -s 1099511627776 /tmp/big");
    let wants = ["byte limit", "--max-bytes"];
    refused_copy_out(env, &[], "/tmp/big", Duration::from_secs(120), &wants);
}

#[tokio::test]
async fn archive_hostile_archives_keep_memory_bounded_docker() {
    let env = Env::up(false).await;
    // Docker's archive endpoint sends real files only, so "endless" is 2,500 real directories
    // against a limit of 2,000 (the container's fuse-overlayfs manages about 20 a second
    // under load); the simulator test below sends really endless ones.
    env.sh("mkdir /tmp/many && cd /tmp/many && seq 1 2500 | xargs mkdir");
    let wants = ["entry limit", "--max-entries"];
    let flags = ["--max-entries", "2000"];
    refused_copy_out(&env, &flags, "/tmp/many", Duration::from_secs(300), &wants);
    terabyte_hits_the_byte_limit(&env);
}

#[tokio::test]
async fn archive_hostile_archives_keep_memory_bounded_kubernetes() {
    let env = Env::up(true).await;
    // The same directory header forever, 2048 of them per `cat`.
    let header = raw_header(b"many/", tar::EntryType::Directory, 0);
    let block: Vec<u8> = header.as_bytes().repeat(2048);
    env.hostile_tar(
        "/tmp/many",
        &block,
        "while :; do cat /tmp/payload || exit 1; done",
    );
    let wants = ["entry limit", "1000000"];
    refused_copy_out(&env, &[], "/tmp/many", Duration::from_secs(400), &wants);
    // Back to the real tar for the sparse file.
    env.sh("rm /usr/local/bin/sh");
    terabyte_hits_the_byte_limit(&env);
}

#[tokio::test]
async fn archive_cp_follows_docker_cp_docker() {
    let env = Env::up(false).await;
    // A sparse local file copies in (Docker refused GNU sparse entries with a 500).
    std::fs::File::create(env.path("sp"))
        .expect("create")
        .set_len(10 * 1024 * 1024)
        .expect("truncate");
    let out = env.cp(&[env.path("sp").to_str().expect("utf8"), &env.from("/tmp")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.sh_out("wc -c < /tmp/sp").trim(), "10485760");
    // `berth cp . ENV:DIR` copies the working directory's contents.
    std::fs::create_dir(env.path("proj")).expect("mkdir");
    std::fs::write(env.path("proj/a.txt"), "a").expect("write");
    env.sh("mkdir /tmp/dot");
    let out = env
        .berth(&["cp", ".", &env.from("/tmp/dot")])
        .current_dir(env.path("proj"))
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.sh_out("cat /tmp/dot/a.txt"), "a");
    // An existing local file is overwritten by a file; a new name takes a directory's contents.
    std::fs::write(env.path("existing"), "old").expect("write");
    env.sh("echo new > /tmp/f");
    let existing = env.path("existing");
    let out = env.cp(&[&env.from("/tmp/f"), existing.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&existing).expect("read"), "new\n");
    let copy = env.path("copy");
    let out = env.cp(&[&env.from("/tmp/dot"), copy.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(copy.join("a.txt")).expect("read"),
        "a"
    );
}
