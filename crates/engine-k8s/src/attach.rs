//! Attaching to a pod over the exec websocket, and reading what comes back: capped
//! output, and the exit status from the status channel (its absence is a lost connection).

use berth_engine_core::backend::OutputSink;
use berth_engine_core::{EnvironmentId, Error, ExitStatus, OutputChunk, Result};
use bytes::Bytes;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::errors::{self, BACKEND};
use crate::manifest::CONTAINER;
use crate::ws::{self, End};
use crate::KubernetesEngine;

/// Pipe size between kube's websocket task and our reader: large enough for throughput.
pub(crate) const PIPE: usize = 256 * 1024;

pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Exit code our wrappers use for "the thing berth needs is missing".
pub(crate) const EXIT_BERTH_MISSING: i32 = 44;

pub(crate) fn attach_error(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    e: kube::Error,
) -> Error {
    let text = e.to_string();
    if errors::is_not_found(&e)
        || text.contains("not found")
        || text.contains("not running")
        || text.contains("container not found")
    {
        engine.forget_pod(env);
        return Error::NotFound {
            what: "running environment",
            name: env.to_string(),
        };
    }
    errors::api(&engine.address, "exec in pod", e)
}

pub(crate) async fn attach(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    pod: &str,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
) -> Result<ws::Exec> {
    let mut params = AttachParams::default()
        .container(CONTAINER)
        .stdin(stdin)
        .stdout(true)
        .stderr(!tty)
        .tty(tty);
    params.max_stdin_buf_size = Some(PIPE);
    params.max_stdout_buf_size = Some(PIPE);
    params.max_stderr_buf_size = Some(PIPE);
    ws::exec(
        &engine.client,
        &engine.config.namespace,
        pod,
        argv,
        &params,
        PIPE,
    )
    .await
    .map_err(|e| attach_error(engine, env, e))
}

/// What a stream was carrying, for the error when its connection is lost.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Carrying<'a> {
    /// A command.
    Command,
    /// An archive into (`true`) or out of the path.
    Copy(bool, &'a str),
}

/// The exit status from the status channel; a stream that ended without one (the connection
/// broke, or went silent) is [`Error::ConnectionLost`]: the command may still be running.
pub(crate) fn exit_status(
    end: End,
    address: &str,
    env: &EnvironmentId,
    carrying: Carrying<'_>,
) -> Result<ExitStatus> {
    let status = match end {
        End::Status(status) => *status,
        End::Lost(why) => {
            return Err(match carrying {
                Carrying::Command => {
                    Error::connection_lost_in_exec(BACKEND, address, env.as_str(), Some(why.into()))
                }
                Carrying::Copy(inward, path) => Error::connection_lost_in_copy(
                    BACKEND,
                    address,
                    env.as_str(),
                    if inward {
                        format!("copy into {env}:{path}")
                    } else {
                        format!("copy out of {env}:{path}")
                    },
                    Some(why.into()),
                ),
            })
        }
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(ExitStatus(0));
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return Ok(ExitStatus(code));
        }
    }
    let message = status.message.unwrap_or_default();
    if message.contains("executable file not found") || message.contains("no such file") {
        return Ok(ExitStatus(127));
    }
    Err(Error::backend(
        BACKEND,
        "exec in pod",
        format!("the exec in {env} failed: {message}"),
    ))
}

/// Runs `argv` to completion without wrapping; returns (status, stdout, stderr), capped.
pub(crate) async fn run_raw(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    pod: &str,
    argv: Vec<String>,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    let mut attached = attach(engine, env, pod, argv, false, false).await?;
    let end = attached.take_end().expect("the end is taken once");
    let out = read_capped(attached.stdout(), 1 << 20);
    let err = read_capped(attached.stderr(), 1 << 20);
    let (out, err, end) = tokio::join!(out, err, end);
    Ok((
        exit_status(end, &engine.address, env, Carrying::Command)?,
        out,
        err,
    ))
}

pub(crate) async fn read_capped(reader: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = reader {
        let mut chunk = vec![0u8; READ_CHUNK];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            if buf.len() < cap {
                buf.extend_from_slice(&chunk[..n.min(cap - buf.len())]);
            }
        }
    }
    buf
}

pub(crate) async fn pump(reader: Option<impl AsyncRead + Unpin>, sink: &OutputSink, stderr: bool) {
    let Some(mut r) = reader else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(&chunk[..n]);
                sink.send(if stderr {
                    OutputChunk::Stderr(bytes)
                } else {
                    OutputChunk::Stdout(bytes)
                })
                .await;
            }
        }
    }
}
