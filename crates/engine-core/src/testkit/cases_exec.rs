//! Conformance cases: running commands. Exit codes, stdout and stderr apart, stdin,
//! terminals, users, large and binary output, output caps, and timeouts that kill.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::cases::{pattern, process_lines, run, MIB};
use super::Fixture;
use crate::{ErrorKind, ExecRequest, OutputChunk, Stdin, TtySize};

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
            if chunks.is_multiple_of(512) {
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
