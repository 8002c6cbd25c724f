//! What a command produced: its exit status, captured output, and the bounded stream of
//! output chunks a running [`ExecProcess`](crate::ExecProcess) hands out.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::OutputChunks;
use crate::error::Error;

/// How a command ended. A non-zero code is data, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExitStatus(pub i32);

impl ExitStatus {
    /// The exit code; 128+N when the process died of signal N.
    #[must_use]
    pub fn code(self) -> i32 {
        self.0
    }

    /// Whether the code is 0.
    #[must_use]
    pub fn success(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

/// The out-of-memory killer ended the command: the environment's memory ran out. The exit code
/// (137) alone cannot say this; a command that kills itself with SIGKILL ends the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OomKill {
    /// The environment's memory limit in bytes, where the engine reports one.
    pub limit_bytes: Option<u64>,
}

impl OomKill {
    /// An out-of-memory kill under `limit_bytes`.
    #[must_use]
    pub fn new(limit_bytes: Option<u64>) -> Self {
        Self { limit_bytes }
    }

    /// What to tell a user: `killed: out of memory (limit 64Mi)`.
    ///
    /// ```
    /// use berth_engine_core::OomKill;
    ///
    /// assert_eq!(OomKill::new(Some(64 << 20)).message(), "killed: out of memory (limit 64Mi)");
    /// assert_eq!(OomKill::new(None).message(), "killed: out of memory");
    /// ```
    #[must_use]
    pub fn message(&self) -> String {
        match self.limit_bytes {
            Some(limit) => format!("killed: out of memory (limit {})", binary_quantity(limit)),
            None => "killed: out of memory".to_owned(),
        }
    }
}

/// Bytes as a Kubernetes binary quantity (`64Mi`, `2Gi`), or plain bytes when no unit divides.
fn binary_quantity(bytes: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// How a command ended: its exit status and, where the engine says so, that the
/// out-of-memory killer ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecOutcome {
    /// The exit status.
    pub status: ExitStatus,
    /// Set when the environment ran out of memory and the kernel killed the command.
    pub oom: Option<OomKill>,
}

/// The captured result of [`ContainerEngine::exec`](crate::ContainerEngine::exec).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecOutput {
    /// How the command ended.
    pub status: ExitStatus,
    /// Standard output, at most [`ExecRequest::output_limit`](crate::ExecRequest::output_limit) bytes.
    pub stdout: Bytes,
    /// Standard error, at most [`ExecRequest::output_limit`](crate::ExecRequest::output_limit) bytes.
    pub stderr: Bytes,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Wall time from the start of the exec until its status was known.
    pub duration: Duration,
    /// Set when the environment ran out of memory and the kernel killed the command.
    pub oom: Option<OomKill>,
}

impl ExecOutput {
    /// Whether the out-of-memory killer ended the command.
    #[must_use]
    pub fn oom_killed(&self) -> bool {
        self.oom.is_some()
    }

    /// Stdout as text, with invalid UTF-8 replaced.
    #[must_use]
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text, with invalid UTF-8 replaced.
    #[must_use]
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One piece of a running command's output, in the order the engine delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    /// Bytes from standard output.
    Stdout(Bytes),
    /// Bytes from standard error.
    Stderr(Bytes),
}

/// Where a read failure of a direct output stream is kept for [`ExecProcess::wait`](crate::ExecProcess::wait).
pub(crate) type FailureSlot = Arc<Mutex<Option<Error>>>;

/// Where a direct output stream dropped before its end is handed back, so that
/// [`ExecProcess::wait`](crate::ExecProcess::wait) can drain it instead of closing the backend's connection (which, on
/// Docker, makes the daemon signal the command and report exit code 126).
pub(crate) type LeftoverSlot = Arc<Mutex<Option<OutputChunks>>>;

pub(crate) fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) enum Source {
    Channel(mpsc::Receiver<OutputChunk>),
    Direct {
        /// `None` once the stream has ended (or been handed back on drop).
        stream: Option<OutputChunks>,
        failure: FailureSlot,
        leftover: LeftoverSlot,
    },
}

/// The output of an [`ExecProcess`](crate::ExecProcess): a bounded stream of [`OutputChunk`]s.
pub struct OutputStream {
    pub(crate) source: Source,
}

impl fmt::Debug for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.source {
            Source::Channel(_) => "OutputStream(channel)",
            Source::Direct { .. } => "OutputStream(direct)",
        })
    }
}

impl OutputStream {
    /// The next chunk, or `None` when the command closed both streams (or reading failed:
    /// [`ExecProcess::wait`](crate::ExecProcess::wait) then reports the failure).
    pub async fn next_chunk(&mut self) -> Option<OutputChunk> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for OutputStream {
    type Item = OutputChunk;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OutputChunk>> {
        match &mut self.source {
            Source::Channel(rx) => rx.poll_recv(cx),
            Source::Direct {
                stream: slot,
                failure,
                ..
            } => {
                let Some(stream) = slot.as_mut() else {
                    return Poll::Ready(None);
                };
                match stream.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(chunk)),
                    Poll::Ready(Some(Err(e))) => {
                        *lock(failure) = Some(e);
                        *slot = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(None) => {
                        *slot = None;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        if let Source::Direct {
            stream, leftover, ..
        } = &mut self.source
        {
            if let Some(rest) = stream.take() {
                *lock(leftover) = Some(rest);
            }
        }
    }
}

pub(crate) struct CappedBuffer {
    pub(crate) buf: BytesMut,
    limit: usize,
    pub(crate) truncated: bool,
}

impl CappedBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            truncated: false,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}
