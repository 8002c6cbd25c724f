//! One async function per behaviour every backend must show. Each panics (with a message
//! saying what differed) when the behaviour is broken, and stops what it started either way.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

pub use super::cases_detached::*;
pub use super::cases_detached_cmd::*;
pub use super::cases_foreign::*;
use super::Fixture;
use crate::{
    collect_tar_stream, tar_stream_from_bytes, BuildSpec, EnvironmentId, EnvironmentState,
    ErrorKind, ExecRequest, ImageRef, LabelSelector, OutputChunk, Progress, PullPolicy, Resources,
    SessionId, Stdin, StopOutcome, TtySize, Workspace,
};

pub use super::cases_kill::*;
pub use super::cases_outcomes::*;
pub use super::cases_shell::*;
pub use super::cases_zombies::no_zombie_is_left_behind;

const MIB: usize = 1024 * 1024;

pub(super) async fn run(fx: &Fixture, env: &EnvironmentId, req: ExecRequest) -> crate::ExecOutput {
    let what = format!("{:?}", req.argv);
    fx.engine
        .exec(env, req)
        .await
        .unwrap_or_else(|e| panic!("exec {what} failed: {e} ({e:?})"))
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

/// Exit codes 0, 1, 42 and 255 come back as data.
pub async fn exit_codes(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        for code in [0, 1, 42, 255] {
            let out = run(fx, &env, ExecRequest::shell(format!("exit {code}"))).await;
            assert_eq!(out.status.code(), code, "exit {code}");
            assert_eq!(out.status.success(), code == 0);
        }
    })
    .await;
}

/// Stdout and stderr are kept apart.
pub async fn stdout_and_stderr_are_kept_apart(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let out = run(
            fx,
            &env,
            ExecRequest::shell("echo out; echo err >&2; echo out2; exit 3"),
        )
        .await;
        assert_eq!(out.stdout_lossy(), "out\nout2\n");
        assert_eq!(out.stderr_lossy(), "err\n");
        assert_eq!(out.status.code(), 3);
        assert!(!out.stdout_truncated && !out.stderr_truncated);
    })
    .await;
}

/// 1 MiB given as stdin bytes comes back exactly through `cat`, which sees end of file.
pub async fn stdin_bytes_are_echoed_exactly(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let input = pattern(MIB);
        let out = run(
            fx,
            &env,
            ExecRequest::new(["cat"]).with_stdin(Stdin::Bytes(input.clone())),
        )
        .await;
        assert!(out.status.success(), "cat failed: {}", out.stderr_lossy());
        assert_eq!(out.stdout.len(), input.len(), "byte count differs");
        assert!(out.stdout == input, "bytes differ");
    })
    .await;
}

/// A piped stdin written in pieces while output is read, then closed, reaches the command as
/// end of file; the command's output is complete.
pub async fn stdin_piped_and_closed_reaches_eof(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let input = pattern(MIB);
        let req = ExecRequest::shell("cat; echo done >&2").with_stdin(Stdin::Piped);
        let mut process = fx.engine.exec_streaming(&env, req).await.expect("exec");
        let mut stdin = process.take_stdin().expect("stdin is piped");
        let mut output = process.take_output().expect("output");
        let writer = {
            let input = input.clone();
            async move {
                for piece in input.chunks(64 * 1024) {
                    stdin.write_all(piece).await.expect("write stdin");
                }
                stdin.close().await.expect("close stdin");
            }
        };
        let reader = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(chunk) = output.next_chunk().await {
                match chunk {
                    OutputChunk::Stdout(b) => out.extend_from_slice(&b),
                    OutputChunk::Stderr(b) => err.extend_from_slice(&b),
                }
            }
            (out, err)
        };
        let ((), (out, err)) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("cat did not see end of file within 60 s");
        let status = process.wait().await.expect("wait");
        assert!(status.success());
        assert_eq!(out.len(), input.len());
        assert!(out == input, "bytes differ");
        assert_eq!(err, b"done\n");
    })
    .await;
}

/// Reads output into `seen` until it holds `needle`, the output ends, or 30 s pass.
async fn read_until(needle: &str, seen: &mut String, output: &mut crate::OutputStream) -> bool {
    let fut = async {
        while !seen.contains(needle) {
            match output.next_chunk().await {
                Some(OutputChunk::Stdout(b) | OutputChunk::Stderr(b)) => {
                    seen.push_str(&String::from_utf8_lossy(&b));
                }
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), fut).await;
    seen.contains(needle)
}

/// A TTY exec sees a terminal of the requested size, and `resize` changes it while it runs.
pub async fn tty_exec_has_a_resizable_terminal(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let size = TtySize {
            rows: 30,
            cols: 100,
        };
        // The command waits for a first line so that the size it reports is the one the
        // backend set up before exec_streaming returned.
        let req = ExecRequest::shell(
            "test -t 0 && echo is-a-tty; while read line && [ \"$line\" != q ]; do stty size; done",
        )
        .with_tty(size)
        .with_stdin(Stdin::Piped);
        let mut process = fx.engine.exec_streaming(&env, req).await.expect("exec");
        let mut stdin = process.take_stdin().expect("stdin");
        let mut output = process.take_output().expect("output");
        let mut seen = String::new();
        // A size travels beside stdin (on Kubernetes, on its own channel), not in order with
        // it: ask until it shows.
        for (rows_cols, resize) in [
            ("30 100", None),
            (
                "40 120",
                Some(TtySize {
                    rows: 40,
                    cols: 120,
                }),
            ),
        ] {
            if let Some(new_size) = resize {
                process.resize(new_size).await.expect("resize");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !seen.contains(rows_cols) && Instant::now() < deadline {
                stdin.write_all(b"size\r").await.expect("write");
                let mut more = String::new();
                let _ = tokio::time::timeout(
                    Duration::from_millis(300),
                    read_until(rows_cols, &mut more, &mut output),
                )
                .await;
                seen.push_str(&more);
            }
            assert!(seen.contains(rows_cols), "want {rows_cols}: {seen:?}");
        }
        assert!(seen.contains("is-a-tty"), "{seen:?}");
        stdin.write_all(b"q\r").await.expect("write");
        drop(output);
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
            .await
            .expect("exit within 30 s")
            .expect("wait");
        assert!(status.success(), "{status}");
        let plain = fx
            .engine
            .exec_streaming(&env, ExecRequest::new(["true"]))
            .await
            .expect("exec");
        let err = plain.resize(size).await.expect_err("resize without a tty");
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    })
    .await;
}

/// Environment variables of the spec and the request, and the working directory, apply; the
/// request's value wins over the spec's.
pub async fn env_and_workdir(fx: &Fixture) {
    let spec = fx
        .spec()
        .with_env("FROM_SPEC", "spec")
        .with_env("OVERRIDDEN", "spec");
    fx.with_env(&spec, |env| async move {
        let out = run(
            fx,
            &env,
            ExecRequest::shell("echo \"$FROM_SPEC $FROM_REQ $OVERRIDDEN\"; pwd")
                .with_env("FROM_REQ", "req value")
                .with_env("OVERRIDDEN", "req")
                .with_workdir("/tmp"),
        )
        .await;
        assert_eq!(out.stdout_lossy(), "spec req value req\n/tmp\n");
        let out = run(fx, &env, ExecRequest::new(["pwd"]).with_workdir("/etc")).await;
        assert_eq!(out.stdout_lossy(), "/etc\n");
    })
    .await;
}

/// `exec_as_user` runs as uid 1000 (and uid:gid), while a plain exec runs as root.
pub async fn exec_as_uid_1000(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let out = fx
            .engine
            .exec_as_user(&env, "1000", ExecRequest::new(["id", "-u"]))
            .await;
        let out = match out {
            Err(e) if e.is_unsupported() => {
                assert!(e.to_string().len() > 40, "Unsupported needs a reason: {e}");
                return;
            }
            other => other.expect("exec as 1000"),
        };
        assert_eq!(
            out.stdout_lossy(),
            "1000\n",
            "stderr: {}",
            out.stderr_lossy()
        );
        let out = fx
            .engine
            .exec_as_user(&env, "1000:1000", ExecRequest::shell("id -u; id -g"))
            .await
            .expect("exec as 1000:1000");
        assert_eq!(out.stdout_lossy(), "1000\n1000\n");
        let out = run(fx, &env, ExecRequest::new(["id", "-u"])).await;
        assert_eq!(out.stdout_lossy(), "0\n");
    })
    .await;
}

/// Dropping the output stream part way, then waiting, still gives the command's own exit
/// code: what is left of the output is drained, and the command is neither blocked nor
/// signalled. (Docker signals an exec whose attach connection closes and reports 126.)
pub async fn wait_after_dropping_output_gives_the_exit_code(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        // 4 MiB is more than every pipe and socket buffer between here and the command.
        let req = ExecRequest::shell("head -c 4194304 /dev/zero; sleep 0.3; echo end >&2; exit 7");
        let mut process = fx.engine.exec_streaming(&env, req).await.expect("exec");
        let mut output = process.take_output().expect("output");
        assert!(output.next_chunk().await.is_some(), "some output");
        drop(output);
        let status = tokio::time::timeout(Duration::from_secs(60), process.wait())
            .await
            .expect("wait within 60 s")
            .expect("wait");
        assert_eq!(status.code(), 7, "{status}");
    })
    .await;
}

/// All 256 byte values survive stdin, stdout and stderr.
pub async fn binary_output_round_trips(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let all: Bytes = (0..=255u8).cycle().take(256 * 4).collect();
        let out = run(
            fx,
            &env,
            ExecRequest::new(["cat"]).with_stdin(Stdin::Bytes(all.clone())),
        )
        .await;
        assert!(out.stdout == all, "stdout bytes differ");
        let out = run(
            fx,
            &env,
            ExecRequest::shell("cat >&2").with_stdin(Stdin::Bytes(all.clone())),
        )
        .await;
        assert!(out.stderr == all, "stderr bytes differ");
        assert!(out.stdout.is_empty());
    })
    .await;
}

pub(super) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// 256 MiB streamed through `exec_streaming` arrive complete while this process's resident
/// memory grows by far less: the consumer pauses first, so an unbounded buffer would fill.
pub async fn streaming_256_mib_keeps_memory_bounded(fx: &Fixture) {
    const TOTAL: u64 = 256 * MIB as u64;
    fx.with_env(&fx.spec(), |env| async move {
        let before = resident_bytes();
        let req = ExecRequest::new(["head", "-c", &TOTAL.to_string(), "/dev/zero"]);
        let mut process = fx.engine.exec_streaming(&env, req).await.expect("exec");
        let mut output = process.take_output().expect("output");
        let first = output.next_chunk().await.expect("some output");
        // Stall: an implementation that buffers without bound would take it all in now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut peak = resident_bytes();
        let mut total = match first {
            OutputChunk::Stdout(b) => b.len() as u64,
            OutputChunk::Stderr(b) => panic!("unexpected stderr {b:?}"),
        };
        let mut chunks = 0u64;
        while let Some(chunk) = output.next_chunk().await {
            match chunk {
                OutputChunk::Stdout(b) => total += b.len() as u64,
                OutputChunk::Stderr(b) => panic!("unexpected stderr {b:?}"),
            }
            chunks += 1;
            if chunks % 512 == 0 {
                peak = peak.max(resident_bytes());
            }
        }
        let status = process.wait().await.expect("wait");
        assert!(status.success());
        assert_eq!(total, TOTAL, "bytes streamed");
        if let (Some(before), Some(peak)) = (before, peak) {
            let growth = peak.saturating_sub(before);
            eprintln!(
                "streamed 256 MiB; resident memory grew by {} KiB",
                growth / 1024
            );
            assert!(
                growth < 96 * MIB as u64,
                "resident memory grew by {} MiB while streaming 256 MiB",
                growth / MIB as u64
            );
        }
    })
    .await;
}

/// Captured output stops at the cap, says so, and the exit status still arrives.
pub async fn captured_output_is_truncated_at_its_cap(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let out = run(
            fx,
            &env,
            ExecRequest::shell("head -c 3000000 /dev/zero; echo small >&2; exit 4")
                .with_output_limit(MIB),
        )
        .await;
        assert_eq!(out.stdout.len(), MIB);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr_lossy(), "small\n");
        assert!(!out.stderr_truncated);
        assert_eq!(out.status.code(), 4);
        let out = run(
            fx,
            &env,
            ExecRequest::new(["head", "-c", "1048576", "/dev/zero"]).with_output_limit(MIB),
        )
        .await;
        assert_eq!(out.stdout.len(), MIB);
        assert!(!out.stdout_truncated, "exactly the cap is not truncated");
    })
    .await;
}

pub(super) async fn process_lines(fx: &Fixture, env: &EnvironmentId) -> Vec<String> {
    let out = run(
        fx,
        env,
        ExecRequest::shell(
            "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < $f 2>/dev/null; echo; done",
        ),
    )
    .await;
    out.stdout_lossy().lines().map(str::to_owned).collect()
}

/// A timed-out exec returns `Timeout`, and neither it nor its children run afterwards.
pub async fn timeout_kills_the_process_tree(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let started = Instant::now();
        let err = fx
            .engine
            .exec(
                &env,
                ExecRequest::shell("sleep 777 & sleep 778; echo never")
                    .with_timeout(Duration::from_secs(1)),
            )
            .await
            .expect_err("the exec must time out");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        let survivors: Vec<String> = process_lines(fx, &env)
            .await
            .into_iter()
            .filter(|l| l.contains("sleep 777") || l.contains("sleep 778"))
            .collect();
        assert!(
            survivors.is_empty(),
            "processes survived the timeout: {survivors:?}"
        );
    })
    .await;
}

/// Dropping an exec that was never waited for (a cancelled agent command) ends it and its
/// children: nothing keeps running in the long-lived environment.
pub async fn dropping_an_unfinished_exec_kills_its_process_tree(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let sleepers = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .filter(|l| l.contains("sleep 787") || l.contains("sleep 788"))
                .collect()
        };
        let process = fx
            .engine
            .exec_streaming(
                &env,
                ExecRequest::shell("sleep 787 & sleep 788; echo never"),
            )
            .await
            .expect("exec");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sleepers(process_lines(fx, &env).await).len() < 2 {
            assert!(Instant::now() < deadline, "the sleeps never started");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let survivors = sleepers(process_lines(fx, &env).await);
            if survivors.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still running 30 s after the drop: {survivors:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { mode: u32, data: Vec<u8> },
    Dir,
    Symlink(String),
}

fn tree_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        match link {
            Some(target) => b.append_link(&mut h, path, target).expect("link"),
            None => b.append_data(&mut h, path, data).expect("entry"),
        }
    };
    add("tree/", tar::EntryType::Directory, 0o755, b"", None);
    add(
        "tree/run.sh",
        tar::EntryType::Regular,
        0o755,
        b"#!/bin/sh\necho run\n",
        None,
    );
    add("tree/empty/", tar::EntryType::Directory, 0o755, b"", None);
    add("tree/sub/", tar::EntryType::Directory, 0o750, b"", None);
    add(
        "tree/sub/data.bin",
        tar::EntryType::Regular,
        0o644,
        &[0, 1, 2, 255],
        None,
    );
    add(
        "tree/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("run.sh"),
    );
    b.into_inner().expect("tar")
}

fn read_tree(archive: &[u8]) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut a = tar::Archive::new(archive);
    for entry in a.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let mode = entry.header().mode().expect("mode") & 0o7777;
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Symlink => Node::Symlink(
                entry
                    .link_name()
                    .expect("link")
                    .expect("link target")
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("data");
                Node::File { mode, data }
            }
        };
        nodes.insert(path, node);
    }
    nodes
}

/// A tree with a symlink, an empty directory and a 0755 file goes in and comes back out alike.
pub async fn copy_round_trip_keeps_symlinks_dirs_and_modes(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        fx.engine
            .copy_in(&env, "/tmp", tar_stream_from_bytes(tree_tar()))
            .await
            .expect("copy_in");
        let out = run(fx, &env, ExecRequest::new(["/tmp/tree/link"])).await;
        assert_eq!(
            out.stdout_lossy(),
            "run\n",
            "the 0755 file runs via the symlink"
        );
        let archive = collect_tar_stream(
            fx.engine
                .copy_out(&env, "/tmp/tree")
                .await
                .expect("copy_out"),
            64 * MIB,
        )
        .await
        .expect("read copy_out stream");
        let got = read_tree(&archive);
        let want = read_tree(&tree_tar());
        assert_eq!(got, want);
        // A single file comes out as one entry named after it.
        let archive = collect_tar_stream(
            fx.engine
                .copy_out(&env, "/tmp/tree/sub/data.bin")
                .await
                .expect("copy_out file"),
            MIB,
        )
        .await
        .expect("read");
        let got = read_tree(&archive);
        assert_eq!(
            got.get("data.bin"),
            Some(&Node::File {
                mode: 0o644,
                data: vec![0, 1, 2, 255]
            })
        );
    })
    .await;
}

/// Copying into or out of a missing path is `NotFound` naming the path.
pub async fn copy_errors_name_the_path(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let err = fx
            .engine
            .copy_in(&env, "/no/such/dir", tar_stream_from_bytes(tree_tar()))
            .await
            .expect_err("copy into a missing directory");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
        let err = match fx.engine.copy_out(&env, "/no/such/file").await {
            Ok(stream) => collect_tar_stream(stream, MIB)
                .await
                .expect_err("copy out of a missing path"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/no/such/file"), "{err}");
    })
    .await;
}

/// A host-path workspace written by one environment is read by the next.
pub async fn host_path_workspace_persists_across_environments(fx: &Fixture) {
    let dir = std::env::temp_dir().join(format!("berth-ws-{}", SessionId::generate()));
    std::fs::create_dir_all(&dir).expect("create workspace dir");
    let workspace = Workspace::HostPath { path: dir.clone() };
    let first = fx.spec().with_workspace(workspace.clone());
    fx.with_env(&first, |env| async move {
        let out = run(fx, &env, ExecRequest::shell("echo kept > /workspace/note")).await;
        assert!(out.status.success(), "{}", out.stderr_lossy());
    })
    .await;
    let second = fx.spec().with_workspace(workspace);
    fx.with_env(&second, |env| async move {
        let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
        assert_eq!(out.stdout_lossy(), "kept\n");
    })
    .await;
    let on_host = std::fs::read_to_string(dir.join("note")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(on_host, "kept\n", "the file is on the host path");
}

/// A named volume workspace written by one environment is read by the next, and
/// `remove_volume` removes it (twice is fine).
pub async fn volume_workspace_persists_across_environments(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let workspace = Workspace::Volume {
        name: name.clone(),
        sub_path: None,
    };
    let first = fx.spec().with_workspace(workspace.clone());
    let second = fx.spec().with_workspace(workspace);
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        fx.with_env(&first, |env| async move {
            let out = run(fx, &env, ExecRequest::shell("echo kept > /workspace/note")).await;
            assert!(out.status.success(), "{}", out.stderr_lossy());
        })
        .await;
        fx.with_env(&second, |env| async move {
            let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
            assert_eq!(out.stdout_lossy(), "kept\n");
        })
        .await;
    }))
    .await;
    let removed = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(removed.expect("remove_volume"), StopOutcome::Stopped);
    assert_eq!(
        fx.engine.remove_volume(&name).await.expect("remove again"),
        StopOutcome::AlreadyGone
    );
}

/// A volume berth creates for a workspace carries the session's labels, so `list_volumes`
/// (and `berth gc --volumes`) finds it after its environments are gone, and stops listing it
/// once it is removed.
pub async fn list_volumes_finds_workspace_volumes_by_label(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let spec = fx.spec().with_workspace(Workspace::Volume {
        name: name.clone(),
        sub_path: None,
    });
    let selector = LabelSelector::session(&spec.session);
    let (selector, wanted) = (&selector, name.as_str());
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        fx.with_env(&spec, |_env| async move {
            let found = fx
                .engine
                .list_volumes(selector)
                .await
                .expect("list_volumes");
            let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, [wanted], "the session's volumes");
            assert!(
                found[0].in_use,
                "mounted by a running environment: {:?}",
                found[0]
            );
        })
        .await;
        // An environment being removed may hold its volume a moment longer.
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let found = fx
                .engine
                .list_volumes(selector)
                .await
                .expect("list_volumes");
            if found.iter().all(|v| !v.in_use) || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [wanted], "still listed once its environment is gone");
        assert!(
            !found[0].in_use,
            "no environment mounts it now: {:?}",
            found[0]
        );
        assert_eq!(found[0].session.as_ref(), Some(&spec.session));
        assert!(found[0].created_unix_secs.is_some(), "{:?}", found[0]);
        let other = LabelSelector::session(&SessionId::generate());
        let none = fx.engine.list_volumes(&other).await.expect("list_volumes");
        assert!(
            none.is_empty(),
            "another session's selector matched {none:?}"
        );
    }))
    .await;
    let removed = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(removed.expect("remove_volume"), StopOutcome::Stopped);
    let left = fx
        .engine
        .list_volumes(selector)
        .await
        .expect("list_volumes");
    assert!(left.is_empty(), "still listed after removal: {left:?}");
}

/// A volume workspace mounted at a sub-path keeps each sub-path apart (or the backend says
/// it cannot, with a reason).
pub async fn volume_sub_path_is_kept_apart_or_unsupported(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let at = |sub: &str| {
        fx.spec().with_workspace(Workspace::Volume {
            name: name.clone(),
            sub_path: Some(sub.to_owned()),
        })
    };
    let (a, b, a_again) = (at("agent-a"), at("agent-b"), at("agent-a"));
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        match fx.engine.start(&a).await {
            Err(e) if e.is_unsupported() => {
                assert!(e.to_string().len() > 40, "Unsupported needs a reason: {e}");
                return;
            }
            Err(e) => panic!("start at a sub-path: {e}"),
            Ok(env) => {
                let out = fx
                    .engine
                    .exec(&env, ExecRequest::shell("echo a > /workspace/note"))
                    .await;
                fx.engine.stop(&env).await.expect("stop");
                assert!(out.expect("write").status.success());
            }
        }
        fx.with_env(&b, |env| async move {
            let out = run(fx, &env, ExecRequest::shell("ls /workspace")).await;
            assert_eq!(out.stdout_lossy(), "", "agent-b sees agent-a's files");
        })
        .await;
        fx.with_env(&a_again, |env| async move {
            let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
            assert_eq!(out.stdout_lossy(), "a\n");
        })
        .await;
    }))
    .await;
    let _ = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Stopping twice is fine: the second time says the environment was already gone.
pub async fn stop_twice_is_fine(fx: &Fixture) {
    let env = fx.engine.start(&fx.spec()).await.expect("start");
    let started = Instant::now();
    let first = fx.engine.stop(&env).await.expect("first stop");
    let took = started.elapsed();
    assert_eq!(first, StopOutcome::Stopped);
    eprintln!("stop took {took:?}");
    assert_eq!(
        fx.engine.stop(&env).await.expect("second stop"),
        StopOutcome::AlreadyGone
    );
}

/// An exec in a stopped environment is `NotFound`.
pub async fn exec_in_stopped_environment_is_not_found(fx: &Fixture) {
    let env = fx.engine.start(&fx.spec()).await.expect("start");
    fx.engine.stop(&env).await.expect("stop");
    let err = fx
        .engine
        .exec(&env, ExecRequest::new(["true"]))
        .await
        .expect_err("exec after stop");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(env.as_str()), "{err}");
}

/// A missing image is `ImageNotFound` naming the reference, from start and from ensure_image.
pub async fn missing_image_is_image_not_found(fx: &Fixture) {
    let image = ImageRef::new(format!("berth-test/missing:{}", SessionId::generate())).unwrap();
    let mut spec = fx.spec();
    spec.image = image.clone();
    let session = spec.session.clone();
    let err = fx.engine.start(&spec).await.expect_err("start must fail");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
    assert!(err.to_string().contains(image.as_str()), "{err}");
    let left = fx
        .engine
        .list(&LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "a failed start left {left:?}");
    let err = fx
        .engine
        .ensure_image(&image, PullPolicy::Never, &Progress::none())
        .await
        .expect_err("ensure_image must fail");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
    assert!(err.to_string().contains(image.as_str()), "{err}");
}

/// `list` finds exactly the session's environments by label, running; none after stop.
pub async fn list_finds_the_session_by_label(fx: &Fixture) {
    let spec_a = fx.spec().with_name("a").with_label("team", "blue");
    let session = spec_a.session.clone();
    let mut spec_b = fx.spec().with_name("b");
    spec_b.session = session.clone();
    let other = fx.spec();
    let (a, b, c) = tokio::join!(
        fx.engine.start(&spec_a),
        fx.engine.start(&spec_b),
        fx.engine.start(&other)
    );
    let started: Vec<EnvironmentId> = [&a, &b, &c]
        .into_iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let check = std::panic::AssertUnwindSafe(async {
        let (a, b) = (a.as_ref().expect("start a"), b.as_ref().expect("start b"));
        c.as_ref().expect("start other");
        let found = fx
            .engine
            .list(&LabelSelector::session(&session))
            .await
            .expect("list");
        let mut ids: Vec<_> = found.iter().map(|s| s.id.clone()).collect();
        ids.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(ids, want);
        for status in &found {
            assert_eq!(status.state, EnvironmentState::Running, "{status:?}");
            assert_eq!(status.session.as_ref(), Some(&session));
            assert!(status.created_unix_secs.is_some(), "{status:?}");
        }
        let blue = fx
            .engine
            .list(&LabelSelector::session(&session).with("team", "blue"))
            .await
            .expect("list blue");
        assert_eq!(blue.len(), 1);
        assert_eq!(&blue[0].id, a);
    });
    let outcome = futures_util::FutureExt::catch_unwind(check).await;
    for env in &started {
        fx.engine.stop(env).await.expect("stop");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let left = fx
        .engine
        .list(&LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "left after stop: {left:?}");
}

/// Malformed specs and requests are `InvalidSpec` naming the field, and create nothing.
pub async fn invalid_input_is_rejected_before_io(fx: &Fixture) {
    let spec = fx.spec().with_resources(Resources {
        memory_bytes: Some(0),
        ..Resources::default()
    });
    let err = fx.engine.start(&spec).await.expect_err("zero memory");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(err.to_string().contains("resources.memory"), "{err}");
    let spec = fx.spec().with_env("BAD=NAME", "x");
    let err = fx.engine.start(&spec).await.expect_err("env name with =");
    assert!(err.to_string().contains("env"), "{err}");
    let left = fx
        .engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    assert!(left.is_empty());
    fx.with_env(&fx.spec(), |env| async move {
        let err = fx
            .engine
            .exec(&env, ExecRequest::new(Vec::<String>::new()))
            .await
            .expect_err("empty argv");
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert!(err.to_string().contains("argv"), "{err}");
        let err = fx
            .engine
            .exec(&env, ExecRequest::new(["true"]).with_env("A\0B", "x"))
            .await
            .expect_err("env name with NUL");
        assert!(err.to_string().contains("env"), "{err}");
    })
    .await;
}

/// The environment ends by itself after its maximum lifetime; exec then says `NotFound`, and
/// stop still cleans up.
pub async fn environment_ends_after_max_lifetime(fx: &Fixture) {
    let spec = fx.spec().with_max_lifetime(Duration::from_secs(2));
    let env = fx.engine.start(&spec).await.expect("start");
    let selector = LabelSelector::session(&spec.session);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let found = fx.engine.list(&selector).await.expect("list");
        let running = found.iter().any(|s| s.state == EnvironmentState::Running);
        if !running || Instant::now() > deadline {
            break !running;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let exec = fx.engine.exec(&env, ExecRequest::new(["true"])).await;
    let stopped = fx.engine.stop(&env).await;
    assert!(ended, "still running 60 s after a 2 s lifetime");
    let err = exec.expect_err("exec after the lifetime");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    stopped.expect("stop after the lifetime");
    assert!(fx.engine.list(&selector).await.expect("list").is_empty());
}

/// `build_image` builds from a tar context (or is `Unsupported` with a reason), and the result
/// runs.
pub async fn build_image_or_unsupported(fx: &Fixture) {
    let tag = ImageRef::new("berth-test/conformance-build:1").unwrap();
    let dockerfile = format!(
        "FROM {}\nARG GREETING\nRUN echo \"$GREETING\" > /built\n",
        fx.image
    );
    let mut context = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(dockerfile.len() as u64);
    context
        .append_data(&mut h, "Dockerfile", dockerfile.as_bytes())
        .expect("tar");
    let context = context.into_inner().expect("tar");
    let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = events.clone();
    let progress = Progress::new(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let build = BuildSpec::new(tag.clone(), tar_stream_from_bytes(context))
        .with_build_arg("GREETING", "hello from build");
    match fx.engine.build_image(build, &progress).await {
        Err(e) if e.is_unsupported() => {
            assert!(e.to_string().len() > 40, "Unsupported needs a reason: {e}");
            return;
        }
        other => {
            other.expect("build");
        }
    }
    assert!(
        events.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no progress"
    );
    let mut spec = fx.spec();
    spec.image = tag;
    fx.with_env(&spec, |env| async move {
        let out = run(fx, &env, ExecRequest::new(["cat", "/built"])).await;
        assert_eq!(out.stdout_lossy(), "hello from build\n");
    })
    .await;
    let broken = "FROM scratch\nRUN false\n";
    let mut context = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(broken.len() as u64);
    context
        .append_data(&mut h, "Dockerfile", broken.as_bytes())
        .expect("tar");
    let err = fx
        .engine
        .build_image(
            BuildSpec::new(
                ImageRef::new("berth-test/conformance-broken:1").unwrap(),
                tar_stream_from_bytes(context.into_inner().expect("tar")),
            ),
            &Progress::none(),
        )
        .await
        .expect_err("a failing build");
    assert_eq!(err.kind(), ErrorKind::Build, "{err}");
}
