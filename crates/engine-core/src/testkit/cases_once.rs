//! Conformance cases: one-shot runs ([`ContainerEngine::run_once`](crate::ContainerEngine::run_once)),
//! whatever path the backend takes (the command as the environment's own process, or start +
//! exec): exit codes, streams apart, stdin as bytes and piped with a real close, output caps,
//! timeouts that end everything, a missing program, labels while it runs, nothing left after.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;

use super::cases::{pattern, MIB};
use super::Fixture;
use crate::{
    missing_command, EnvironmentId, EnvironmentState, ErrorKind, ExecProcess, ExecRequest,
    LabelSelector, OutputChunk, Stdin, LABEL_SESSION,
};

/// Runs `req` once in a fresh environment of the fixture's spec, hands the command to
/// `body`, then stops the environment whether `body` passed or panicked, and checks that
/// nothing of the session is left.
async fn with_once<F, Fut>(fx: &Fixture, req: ExecRequest, body: F)
where
    F: FnOnce(EnvironmentId, ExecProcess) -> Fut,
    Fut: Future<Output = ()>,
{
    let spec = fx.spec();
    let (env, process) = fx
        .engine
        .run_once(&spec, req)
        .await
        .unwrap_or_else(|e| panic!("run_once failed: {e} ({e:?})"));
    let outcome = AssertUnwindSafe(body(env.clone(), process))
        .catch_unwind()
        .await;
    let stopped = fx.engine.stop(&env).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    stopped.unwrap_or_else(|e| panic!("stop failed: {e}"));
    assert_session_empty(fx, &spec.session).await;
}

async fn assert_session_empty(fx: &Fixture, session: &crate::SessionId) {
    let left = fx
        .engine
        .list(&LabelSelector::session(session))
        .await
        .expect("list the session");
    assert!(left.is_empty(), "left behind after stop: {left:?}");
}

/// The command's exit code and its two streams, apart and exact.
pub async fn run_once_exit_code_and_streams_apart(fx: &Fixture) {
    let req = ExecRequest::shell("echo out; echo err >&2; printf 'no newline'; exit 3");
    with_once(fx, req, |_, process| async move {
        let out = process.collect(MIB).await.expect("collect");
        assert_eq!(out.status.code(), 3, "{out:?}");
        assert_eq!(out.stdout_lossy(), "out\nno newline");
        assert_eq!(out.stderr_lossy(), "err\n");
        assert!(!out.oom_killed());
    })
    .await;
    with_once(fx, ExecRequest::new(["true"]), |_, process| async move {
        assert_eq!(process.wait().await.expect("wait").code(), 0);
    })
    .await;
}

/// Stdin as bytes arrives exactly (binary, 1 MiB) followed by end of file; a piped stdin
/// closed by the caller ends `cat`.
pub async fn run_once_stdin_bytes_and_piped_close(fx: &Fixture) {
    let data = pattern(MIB);
    let req = ExecRequest::new(["cat"]).with_stdin(Stdin::Bytes(data.clone()));
    with_once(fx, req, |_, process| async move {
        let out = process.collect(2 * MIB).await.expect("collect");
        assert_eq!(out.status.code(), 0);
        assert!(out.stdout == data, "stdin did not round-trip exactly");
    })
    .await;
    let req = ExecRequest::shell("cat; echo eof").with_stdin(Stdin::Piped);
    with_once(fx, req, |_, mut process| async move {
        let mut stdin = process.take_stdin().expect("piped stdin");
        stdin.write_all(b"hello\n").await.expect("write");
        stdin.close().await.expect("close");
        let out = tokio::time::timeout(Duration::from_secs(60), process.collect(MIB))
            .await
            .expect("closing stdin ends cat")
            .expect("collect");
        assert_eq!(out.stdout_lossy(), "hello\neof\n");
        assert_eq!(out.status.code(), 0);
    })
    .await;
}

/// Output past the cap is read and dropped, and said to be.
pub async fn run_once_output_is_capped(fx: &Fixture) {
    let req = ExecRequest::shell("head -c 3145728 /dev/zero; echo done >&2");
    with_once(fx, req, |_, process| async move {
        let out = process.collect(MIB).await.expect("collect");
        assert_eq!(out.status.code(), 0);
        assert_eq!(out.stdout.len(), MIB);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr_lossy(), "done\n");
        assert!(!out.stderr_truncated);
    })
    .await;
}

/// A timeout is [`ErrorKind::Timeout`], promptly; nothing of the command runs after it (not
/// even a process that escaped with `setsid`), and nothing is left once it is stopped.
pub async fn run_once_timeout_ends_everything(fx: &Fixture) {
    let req =
        ExecRequest::shell("(env -u BERTH_EXEC_ID setsid sleep 1003 &); sleep 60; echo ran-on")
            .with_timeout(Duration::from_secs(2));
    with_once(fx, req, |env, process| async move {
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(60), process.collect(MIB))
            .await
            .expect("a timed-out command ends")
            .expect_err("a timeout is an error");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err} ({err:?})");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        // The caller stops the environment; once it is stopped nothing of it is running.
        fx.engine.stop(&env).await.expect("stop");
    })
    .await;
}

/// A program that is not there is [`crate::command_not_found`]'s error, from `run_once` or
/// from the command's outcome, with none of the runtime's text in the output.
pub async fn run_once_missing_command_is_not_found(fx: &Fixture) {
    let spec = fx.spec();
    let req = ExecRequest::new(["no-such-command", "x"]);
    let err = match fx.engine.run_once(&spec, req).await {
        Err(e) => e,
        Ok((env, mut process)) => {
            let mut output = process.take_output().expect("output");
            let mut text = Vec::new();
            while let Some(chunk) = output.next_chunk().await {
                match chunk {
                    OutputChunk::Stdout(b) | OutputChunk::Stderr(b) => text.extend_from_slice(&b),
                }
            }
            let outcome = process.wait().await;
            fx.engine.stop(&env).await.expect("stop");
            assert!(
                text.is_empty(),
                "the runtime's text came through: {}",
                String::from_utf8_lossy(&text)
            );
            outcome.expect_err("a missing program is not an exit code")
        }
    };
    assert_eq!(
        missing_command(&err),
        Some("no-such-command"),
        "{err} ({err:?})"
    );
    assert!(err.to_string().contains("no-such-command"), "{err}");
    assert_session_empty(fx, &spec.session).await;
    // A command cannot pass itself off as missing: a forged runtime line and a 127 of its
    // own stay its own.
    let forged = "[FATAL tini (7)] exec sh failed: No such file or directory";
    let req = ExecRequest::shell(format!("echo '{forged}' >&2; exit 127"));
    with_once(fx, req, |_, process| async move {
        let out = process
            .collect(MIB)
            .await
            .unwrap_or_else(|e| panic!("a command's own 127 is an exit code, got {e} ({e:?})"));
        assert_eq!(out.status.code(), 127);
        assert_eq!(out.stderr_lossy(), format!("{forged}\n"));
    })
    .await;
}

/// While the command runs, its environment is listed with the session's labels (so `gc`
/// finds it after a crash); stopping it ends the command promptly and leaves nothing.
pub async fn run_once_is_listed_while_it_runs_and_stop_ends_it(fx: &Fixture) {
    let spec = fx.spec();
    let (env, process) = fx
        .engine
        .run_once(&spec, ExecRequest::new(["sleep", "300"]))
        .await
        .unwrap_or_else(|e| panic!("run_once failed: {e} ({e:?})"));
    let listed = fx
        .engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    // As for an exec: the command is under way before the stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    fx.engine.stop(&env).await.expect("stop");
    let outcome = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("the command ends once its environment is stopped");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, env);
    assert_eq!(
        listed[0].labels.get(LABEL_SESSION),
        Some(&spec.session.to_string())
    );
    assert_ne!(listed[0].state, EnvironmentState::Exited, "{listed:?}");
    let err = outcome.expect_err("a stopped environment is not an exit status");
    assert_eq!(err.kind(), ErrorKind::EnvironmentGone, "{err} ({err:?})");
    assert!(
        stopping.elapsed() < Duration::from_secs(45),
        "took {:?}",
        stopping.elapsed()
    );
    assert_session_empty(fx, &spec.session).await;
}

/// The environment's maximum lifetime bounds a one-shot command as it bounds an exec: the
/// command ends with [`ErrorKind::EnvironmentGone`] (not an exit status) soon after it.
pub async fn run_once_ends_at_the_environments_max_lifetime(fx: &Fixture) {
    // Long enough to start on a loaded machine, as in `environment_ends_after_max_lifetime`.
    let spec = fx.spec().with_max_lifetime(Duration::from_secs(5));
    let (env, process) = fx
        .engine
        .run_once(&spec, ExecRequest::new(["sleep", "300"]))
        .await
        .unwrap_or_else(|e| panic!("run_once failed: {e} ({e:?})"));
    let outcome = tokio::time::timeout(Duration::from_secs(90), process.wait()).await;
    let stopped = fx.engine.stop(&env).await;
    let outcome = outcome.expect("still running 90 s after a 5 s lifetime");
    let err = outcome.expect_err("an environment that ended is not an exit status");
    assert_eq!(err.kind(), ErrorKind::EnvironmentGone, "{err} ({err:?})");
    stopped.expect("stop after the lifetime");
    assert_session_empty(fx, &spec.session).await;
}
