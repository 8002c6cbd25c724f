//! Conformance cases: stateful shells ([`Shell`]) over the backend's `exec_streaming`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cases::run;
use super::cases_exec::resident_bytes;
use super::Fixture;
use crate::{
    EnvironmentId, ErrorKind, ExecOutput, ExecRequest, OutputChunk, Shell, ShellCommand,
    ShellOptions,
};

const MIB: usize = 1024 * 1024;

async fn open(fx: &Fixture, env: &EnvironmentId) -> Shell {
    Shell::open(fx.engine.clone(), env, ShellOptions::default())
        .await
        .unwrap_or_else(|e| panic!("opening a shell failed: {e} ({e:?})"))
}

async fn sh(shell: &mut Shell, command: ShellCommand) -> ExecOutput {
    let what = command.script.clone();
    shell
        .run(command)
        .await
        .unwrap_or_else(|e| panic!("shell command {what:?} failed: {e} ({e:?})"))
}

async fn line(shell: &mut Shell, script: &str) -> String {
    sh(shell, ShellCommand::new(script)).await.stdout_lossy()
}

/// The working directory, exported and plain variables, functions and aliases persist from
/// one command to the next; the spec's env and the options' workdir apply at open; a second
/// shell in the same environment has its own state; a reopened shell starts fresh.
pub async fn shell_keeps_its_state_between_commands(fx: &Fixture) {
    let spec = fx.spec().with_env("FROM_SPEC", "spec-value");
    fx.with_env(&spec, |env| async move {
        let options = ShellOptions::default().with_workdir("/tmp").with_env("OPT", "o");
        let mut shell = Shell::open(fx.engine.clone(), &env, options)
            .await
            .expect("open");
        assert_eq!(line(&mut shell, "pwd; echo $FROM_SPEC $OPT").await, "/tmp\nspec-value o\n");
        sh(
            &mut shell,
            ShellCommand::new("mkdir -p /workspace/sub && cd /workspace/sub\nexport A=1; B=2\ngreet() { echo \"hello $1\"; }\nalias ll='echo aliased'"),
        )
        .await;
        assert_eq!(line(&mut shell, "pwd").await, "/workspace/sub\n");
        assert_eq!(line(&mut shell, "sh -c 'echo $A'; echo $B").await, "1\n2\n");
        assert_eq!(line(&mut shell, "greet you").await, "hello you\n");
        assert_eq!(line(&mut shell, "ll").await, "aliased\n");
        assert_eq!(line(&mut shell, "if true\nthen echo multi\nfi").await, "multi\n");
        let syntax = sh(&mut shell, ShellCommand::new("if then")).await;
        assert_ne!(syntax.status.code(), 0, "a syntax error is a failed command");
        assert_eq!(line(&mut shell, "echo $B").await, "2\n", "the shell survived it");

        let mut other = open(fx, &env).await;
        assert_eq!(line(&mut other, "pwd; echo \"[$B]\"").await, "/\n[]\n");
        assert_eq!(line(&mut shell, "pwd").await, "/workspace/sub\n");
        other.close().await.expect("close");
        shell.close().await.expect("close");
        let mut fresh = open(fx, &env).await;
        assert_eq!(line(&mut fresh, "echo \"[$A]\"; pwd").await, "[]\n/\n");
    })
    .await;
}

/// Exit codes 0, 1 and 255 are data; stdout and stderr are kept apart.
pub async fn shell_exit_codes_and_streams(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        for code in [0, 1, 255] {
            let out = sh(
                &mut shell,
                ShellCommand::new(format!("echo out; echo err >&2; (exit {code})")),
            )
            .await;
            assert_eq!(out.status.code(), code);
            assert_eq!(out.stdout_lossy(), "out\n");
            assert_eq!(out.stderr_lossy(), "err\n");
        }
        let out = sh(&mut shell, ShellCommand::new("false")).await;
        assert_eq!(out.status.code(), 1);
    })
    .await;
}

/// A command reading stdin gets exactly its own bytes (binary, 300 KiB) or end of file, never
/// the text of the next command.
pub async fn shell_stdin_is_isolated(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let input: Bytes = (0..300 * 1024).map(|i| (i % 256) as u8).collect();
        let out = sh(
            &mut shell,
            ShellCommand::new("cat").with_stdin(input.clone()),
        )
        .await;
        assert!(
            out.stdout == input,
            "stdin bytes differ ({} of {})",
            out.stdout.len(),
            input.len()
        );
        let out = sh(&mut shell, ShellCommand::new("cat; echo eof")).await;
        assert_eq!(out.stdout_lossy(), "eof\n", "no stdin is end of file");
        let out = sh(
            &mut shell,
            ShellCommand::new("read -r x; echo \"got[$x] $?\""),
        )
        .await;
        assert_eq!(out.stdout_lossy(), "got[] 1\n", "read saw end of file");
        assert_eq!(line(&mut shell, "echo next").await, "next\n");
        let out = sh(
            &mut shell,
            ShellCommand::new("read -r x; echo \"got[$x]\"; cat").with_stdin("one\ntwo"),
        )
        .await;
        assert_eq!(out.stdout_lossy(), "got[one]\ntwo");
    })
    .await;
}

/// Output holding fake delimiters (the shell's marker shape), binary bytes, no trailing
/// newline, and a 2 MiB line comes through exactly.
pub async fn shell_output_is_exact_whatever_it_holds(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let fake = "berth0123456789abcdef0123456789abcdef E 1 0\nberthX S 2\n";
        let out = sh(
            &mut shell,
            ShellCommand::new(format!("printf '%s' '{fake}'; printf '{fake}' >&2")),
        )
        .await;
        assert_eq!(out.stdout_lossy(), fake);
        assert_eq!(out.stderr_lossy(), fake);
        let out = sh(
            &mut shell,
            ShellCommand::new(r"printf 'a\000b\377\nno newline'"),
        )
        .await;
        assert_eq!(&out.stdout[..], b"a\0b\xff\nno newline");
        let out = sh(
            &mut shell,
            ShellCommand::new("head -c 2097152 /dev/zero | tr '\\0' x; printf end"),
        )
        .await;
        assert_eq!(out.stdout.len(), 2 * MIB + 3);
        assert!(out.stdout[..2 * MIB].iter().all(|&b| b == b'x'));
        assert!(out.stdout.ends_with(b"end"));
        let out = sh(&mut shell, ShellCommand::new("echo $(( 6 * 7 ))")).await;
        assert_eq!(out.stdout_lossy(), "42\n");
    })
    .await;
}

/// 64 MiB through one command, streamed, keeps this process's memory bounded; captured, it
/// is cut at the cap and says so.
pub async fn shell_streams_64_mib_with_bounded_memory(fx: &Fixture) {
    const TOTAL: usize = 64 * MIB;
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let before = resident_bytes();
        let mut peak = before;
        let mut total = 0usize;
        let mut chunks = 0u64;
        let status = shell
            .run_streaming(
                ShellCommand::new(format!("head -c {TOTAL} /dev/zero")),
                |chunk| {
                    match chunk {
                        OutputChunk::Stdout(b) => total += b.len(),
                        OutputChunk::Stderr(b) => panic!("unexpected stderr {b:?}"),
                    }
                    chunks += 1;
                    if chunks.is_multiple_of(256) {
                        peak = peak.max(resident_bytes());
                    }
                },
            )
            .await
            .expect("run_streaming");
        assert!(status.success());
        assert_eq!(total, TOTAL, "bytes streamed");
        if let (Some(before), Some(peak)) = (before, peak) {
            let growth = peak.saturating_sub(before);
            assert!(
                growth < 48 * MIB as u64,
                "memory grew by {} MiB",
                growth / MIB as u64
            );
        }
        let out = sh(
            &mut shell,
            ShellCommand::new(format!("head -c {TOTAL} /dev/zero; echo done >&2"))
                .with_output_limit(MIB),
        )
        .await;
        assert_eq!(out.stdout.len(), MIB);
        assert!(out.stdout_truncated && !out.stderr_truncated);
        assert_eq!(out.stderr_lossy(), "done\n");
    })
    .await;
}

/// At its timeout the command's process tree is killed (a child in the background of the
/// command included), the command reports Timeout, and the shell, with its state, lives on.
pub async fn shell_timeout_kills_the_command_and_the_shell_lives_on(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        sh(&mut shell, ShellCommand::new("cd /tmp")).await;
        let started = Instant::now();
        let err = shell
            .run(
                ShellCommand::new("sleep 987011 & sleep 987012")
                    .with_timeout(Duration::from_secs(1)),
            )
            .await
            .expect_err("the command outlived its timeout");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(line(&mut shell, "pwd").await, "/tmp\n");
        let left = run(
            fx,
            &env,
            ExecRequest::shell("ps -o args | grep '[9]8701' || true"),
        )
        .await;
        assert_eq!(left.stdout_lossy(), "", "the command's tree survived");
        let out = sh(
            &mut shell,
            ShellCommand::new("echo quick").with_timeout(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(out.stdout_lossy(), "quick\n");
    })
    .await;
}

/// An interrupt ends the running program with SIGINT (code 130) and the shell lives on.
pub async fn shell_interrupt_stops_the_command(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let interrupter = shell.interrupter();
        assert!(!interrupter.interrupt().await.expect("idle interrupt"));
        // Interrupt every half second until the command ends: the first may come before the
        // shell started `sleep` on a loaded machine.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let signal = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut hit = false;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    hit |= interrupter.interrupt().await.expect("interrupt");
                }
                hit
            })
        };
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            sh(&mut shell, ShellCommand::new("sleep 987021; echo after $?")),
        )
        .await
        .expect("the interrupt did not end the command within 60 s");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(signal.await.expect("join"), "a command was running");
        assert_eq!(out.stdout_lossy(), "after 130\n");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(line(&mut shell, "echo alive").await, "alive\n");
    })
    .await;
}

/// `cmd &` returns at once; its output written between commands does not reach the next
/// command's output.
pub async fn shell_background_job_returns_at_once(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let started = Instant::now();
        let out = sh(
            &mut shell,
            ShellCommand::new("(sleep 2; echo late; echo late >&2) & echo started"),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "waited for the job"
        );
        assert_eq!(out.stdout_lossy(), "started\n");
        tokio::time::sleep(Duration::from_millis(4000).saturating_sub(started.elapsed())).await;
        let out = sh(&mut shell, ShellCommand::new("echo next")).await;
        assert_eq!(out.stdout_lossy(), "next\n");
        assert_eq!(out.stderr_lossy(), "");
    })
    .await;
}

/// A shell killed from outside, `exit` and `exec` are ShellClosed on the command in flight,
/// never an exit status; the shell then refuses commands, and a new one works.
pub async fn shell_killed_or_exited_is_shell_closed(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let pid = line(&mut shell, "echo $$").await;
        let killer = {
            let engine = fx.engine.clone();
            let env = env.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                engine
                    .exec(&env, ExecRequest::shell(format!("kill -9 {}", pid.trim())))
                    .await
            })
        };
        let err = shell
            .run(ShellCommand::new("sleep 30; echo wrong"))
            .await
            .expect_err("the shell was killed");
        assert_eq!(err.kind(), ErrorKind::ShellClosed, "{err}");
        killer.await.expect("join").expect("kill");
        assert!(shell.is_closed());
        let again = shell
            .run(ShellCommand::new("true"))
            .await
            .expect_err("closed");
        assert_eq!(again.kind(), ErrorKind::ShellClosed, "{again}");

        for script in ["exit 3", "exec sh -c 'echo replaced'"] {
            let mut shell = open(fx, &env).await;
            let err = shell
                .run(ShellCommand::new(script))
                .await
                .expect_err(script);
            assert_eq!(err.kind(), ErrorKind::ShellClosed, "{script}: {err}");
        }
        let mut shell = open(fx, &env).await;
        assert_eq!(line(&mut shell, "echo fine").await, "fine\n");
    })
    .await;
}

/// A process a command starts cannot forge the command's result: it looks for the shell's
/// framing token wherever a process in the environment can read it (every process's command
/// line, its own environment, the names in `/tmp`) and prints an end marker with exit code 0
/// for every candidate, on both streams, then exits 3. The command reports 3, and the next
/// command is framed as usual.
pub async fn shell_output_cannot_forge_a_result(fx: &Fixture) {
    const FORGER: &str = r#"n=${BERTH_EXEC_ID%-c}; n=${n##*-}
for t in $(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n' | grep -E '^berth[0-9a-f]{32}$') \
         $(ls -a /tmp | sed -n 's/^\.berth-shell-\(.*\)\.in$/\1/p' | tr '-' '\n') \
         $(echo "$BERTH_EXEC_ID" | tr '-' '\n'); do
  printf '%s E %s 0\n' "$t" "$n"
  printf '%s E %s 0\n' "$t" "$n" >&2
done
exit 3"#;
    fx.with_env(&fx.spec(), |env| async move {
        let mut shell = open(fx, &env).await;
        let forger = ShellCommand::new(format!("sh -c '{}'", FORGER.replace('\'', r"'\''")))
            .with_stdin(Bytes::from_static(b"input\n"));
        let out = sh(&mut shell, forger).await;
        assert_eq!(
            out.status.code(),
            3,
            "a forged end marker was taken for the command's result; stdout {:?}",
            out.stdout_lossy()
        );
        assert_eq!(line(&mut shell, "echo next").await, "next\n");
        shell.close().await.expect("close");
    })
    .await;
}
