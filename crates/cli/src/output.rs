//! A command's I/O on our terminal: output streamed or captured as JSON, stdin forwarded,
//! out-of-memory kills said; and the signals that end `run` and `shell`.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::{
    ContainerEngine, EnvironmentId, ExecOutput, ExecRequest, OomKill, OutputChunk, OutputStream,
    Stdin,
};
use berth_runner::session::Session;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::commands::exit_code;

async fn read_all_stdin() -> anyhow::Result<bytes::Bytes> {
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
        .await
        .context("cannot read standard input")?;
    Ok(buf.into())
}

/// A command's captured output as `--json` prints it.
pub fn output_json(out: &ExecOutput) -> serde_json::Value {
    json!({
        "exit_code": out.status.code(),
        "stdout": out.stdout_lossy(),
        "stderr": out.stderr_lossy(),
        "stdout_truncated": out.stdout_truncated,
        "stderr_truncated": out.stderr_truncated,
        "duration_ms": u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
        "oom_killed": out.oom_killed(),
        "memory_limit_bytes": out.oom.and_then(|o| o.limit_bytes),
    })
}

/// Says on stderr that the out-of-memory killer, not the command, ended it: its 137 alone
/// looks like a command that killed itself. A lost connection or an environment stopped under
/// the command is an error (exit 125) with its own message, never an exit code.
fn report_oom(oom: Option<OomKill>) {
    if let Some(oom) = oom {
        eprintln!("{}", oom.message());
    }
}

/// Forwards our stdin to a piped command stdin, closing it at EOF.
pub fn forward_stdin(process: &mut berth_engine_core::ExecProcess) {
    if let Some(mut stdin) = process.take_stdin() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut stdin).await;
            let _ = stdin.close().await;
        });
    }
}

/// Runs `req` in `env`: with `json`, captured and printed as one object; otherwise streamed
/// to our stdout and stderr as it comes, with stdin forwarded when `interactive`.
pub async fn exec_in(
    json: bool,
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    mut req: ExecRequest,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        if interactive {
            req.stdin = Stdin::Bytes(read_all_stdin().await?);
        }
        let out = engine.exec(env, req).await?;
        println!("{}", output_json(&out));
        report_oom(out.oom);
        return Ok(exit_code(out.status.code()));
    }
    if interactive {
        req.stdin = Stdin::Piped;
    }
    let mut process = engine.exec_streaming(env, req).await?;
    forward_stdin(&mut process);
    let output = process
        .take_output()
        .context("the command's output was already taken")?;
    forward_output(output).await?;
    let outcome = process.wait_outcome().await?;
    report_oom(outcome.oom);
    Ok(exit_code(outcome.status.code()))
}

/// What a command started elsewhere (`run`'s one-shot) reads: with `interactive`, all of our
/// stdin as bytes for `json` (captured runs), else our stdin forwarded as it comes.
pub async fn stdin_for(json: bool, interactive: bool, req: &mut ExecRequest) -> anyhow::Result<()> {
    if interactive {
        req.stdin = if json {
            Stdin::Bytes(read_all_stdin().await?)
        } else {
            Stdin::Piped
        };
    }
    Ok(())
}

/// Drives a started command as [`exec_in`] does: with `json`, captured (at most `limit` bytes
/// of each stream) and printed as one object; otherwise streamed to our stdout and stderr,
/// with our stdin forwarded when it is piped.
pub async fn drive(
    json: bool,
    mut process: berth_engine_core::ExecProcess,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    if json {
        let out = process.collect(limit).await?;
        println!("{}", output_json(&out));
        report_oom(out.oom);
        return Ok(exit_code(out.status.code()));
    }
    forward_stdin(&mut process);
    let output = process
        .take_output()
        .context("the command's output was already taken")?;
    forward_output(output).await?;
    let outcome = process.wait_outcome().await?;
    report_oom(outcome.oom);
    Ok(exit_code(outcome.status.code()))
}

/// Copies a command's output to our stdout and stderr as it comes.
pub async fn forward_output(mut output: OutputStream) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(chunk) = output.next_chunk().await {
        match chunk {
            OutputChunk::Stdout(b) => {
                stdout.write_all(&b).await?;
                stdout.flush().await?;
            }
            OutputChunk::Stderr(b) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
        }
    }
    Ok(())
}

/// `run` or `shell` ended by a signal after stopping its environments; berth exits with
/// 128 + the signal's number, as a shell reports a command killed by it (130 for Ctrl-C, 143
/// for SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}; stopped the session's environments")]
pub struct Interrupted {
    name: &'static str,
    signal: u8,
}

impl Interrupted {
    /// 128 + the signal number.
    pub fn exit_code(&self) -> u8 {
        128 + self.signal
    }
}

async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The first of Ctrl-C, SIGTERM and SIGHUP.
pub async fn shutdown_signal() -> Interrupted {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let (name, signal) = tokio::select! {
        _ = tokio::signal::ctrl_c() => ("Ctrl-C", 2),
        () = recv(term.as_mut()) => ("SIGTERM", 15),
        () = recv(hup.as_mut()) => ("SIGHUP", 1),
    };
    Interrupted { name, signal }
}

/// Runs `body`, ended early by a signal; then stops the session's environments. Returns the
/// body's outcome and the shutdown's.
pub async fn in_session<F>(
    session: &Session,
    body: F,
) -> (anyhow::Result<ExitCode>, berth_runner::Result<()>)
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let outcome = tokio::select! {
        r = body => r,
        sig = shutdown_signal() => Err(sig.into()),
    };
    (outcome, session.shutdown().await)
}
