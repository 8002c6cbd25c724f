//! What only backends use: building an [`ExecProcess`] around a backend's I/O, the marker
//! and scripts that kill a command's process tree inside an environment, and small helpers
//! every backend needs (naming, path checks, the clock).
//!
//! Callers of [`ContainerEngine`](crate::ContainerEngine) never need this module.
//!
//! ```
//! use berth_engine_core::backend::{self, ExecProcessExt, OutputSink};
//! use berth_engine_core::{ExitStatus, OutputChunk};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let process = backend::spawn(None, |sink: OutputSink| async move {
//!     sink.send(OutputChunk::Stdout("hi\n".into())).await;
//!     Ok(ExitStatus(0))
//! })
//! .with_kill_on_drop(async {});
//! let out = process.collect(1024).await.unwrap();
//! assert_eq!(out.stdout_lossy(), "hi\n");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::exec::lock;
use crate::{
    EnvironmentSpec, Error, ExecProcess, ExecStdin, ExitStatus, OomKill, OutputChunk, TtySize,
};

pub use crate::kill::{sweep_argv, sweep_sparing_argv, watchdog_argv, SweepReport};
pub use crate::port::{connect_port_via_exec, relay_script};

/// How many output chunks an [`ExecProcess`] buffers before it stops reading from the engine.
/// With chunks of at most a few tens of KiB this bounds memory whatever the command prints.
pub const OUTPUT_CHANNEL_CHUNKS: usize = 16;

/// Backends put this variable, with a value unique to the exec, in every exec's environment.
/// Children inherit it, so a timeout can find the process tree from inside the environment
/// (with parentage, sessions and process groups: a child may clear it) and kill it: neither
/// Docker nor Kubernetes kills an exec when its stream is abandoned.
pub const EXEC_MARKER_VAR: &str = "BERTH_EXEC_ID";

/// Changes the terminal size of a running exec; provided by backends that support TTYs.
pub type Resizer =
    Box<dyn Fn(TtySize) -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// Where a backend records, while an exec ends, that the out-of-memory killer ended it; see
/// [`ExecProcessExt::with_oom_report`].
#[derive(Debug, Clone, Default)]
pub struct OomReport(Arc<Mutex<Option<OomKill>>>);

impl OomReport {
    /// Records the kill.
    pub fn set(&self, kill: OomKill) {
        *lock(&self.0) = Some(kill);
    }

    /// The kill, if one was recorded.
    #[must_use]
    pub fn get(&self) -> Option<OomKill> {
        *lock(&self.0)
    }
}

/// A backend's output read in place, on the consumer's task: see [`direct`].
pub type OutputChunks = Pin<Box<dyn Stream<Item = Result<OutputChunk>> + Send>>;

/// Where a backend's I/O task sends output. Sending never fails: when the consumer has gone
/// away, the chunk is dropped and the backend keeps draining so the command is not blocked.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputChunk>,
}

impl OutputSink {
    pub(crate) fn new(tx: mpsc::Sender<OutputChunk>) -> Self {
        Self { tx }
    }

    /// Delivers one chunk, waiting while the consumer's buffer is full (this is the
    /// backpressure that keeps memory bounded).
    pub async fn send(&self, chunk: OutputChunk) {
        let _ = self.tx.send(chunk).await;
    }
}

/// An [`ExecProcess`] whose I/O runs in a task of its own: `io` streams the command's output
/// into the [`OutputSink`] and resolves to its exit status (or to
/// [`Error::Timeout`] after killing it). Dropping the process aborts
/// the task.
pub fn spawn<F, Fut>(stdin: Option<ExecStdin>, io: F) -> ExecProcess
where
    F: FnOnce(OutputSink) -> Fut,
    Fut: Future<Output = Result<ExitStatus>> + Send + 'static,
{
    ExecProcess::spawn(stdin, io)
}

/// An [`ExecProcess`] whose output is read where it is consumed, without a task and a channel
/// in between (the fast path): `output` is read by the consumer's own task; `finish` resolves
/// to the exit status once the output has ended; `helper` (stdin feeding, a timeout watchdog)
/// is aborted when the process is dropped.
pub fn direct<F>(
    stdin: Option<ExecStdin>,
    output: OutputChunks,
    finish: F,
    helper: Option<JoinHandle<()>>,
) -> ExecProcess
where
    F: Future<Output = Result<ExitStatus>> + Send + 'static,
{
    ExecProcess::direct(stdin, output, finish, helper)
}

/// What a backend attaches to an [`ExecProcess`] it built with [`spawn`] or [`direct`].
pub trait ExecProcessExt: Sized {
    /// How [`ExecProcess::resize`] changes the terminal size.
    #[must_use]
    fn with_resizer(self, resizer: Resizer) -> Self;

    /// What ends the command and its children when the process is dropped before
    /// [`ExecProcess::wait`] or [`ExecProcess::collect`] learned its outcome (a cancelled
    /// command must not keep running in a long-lived environment). It is spawned on the
    /// current Tokio runtime, if there is one.
    #[must_use]
    fn with_kill_on_drop(self, kill: impl Future<Output = ()> + Send + 'static) -> Self;

    /// Where the backend's status future records that the out-of-memory killer ended the
    /// command; [`ExecProcess::wait_outcome`] and [`ExecProcess::collect`] report it.
    #[must_use]
    fn with_oom_report(self, report: OomReport) -> Self;
}

impl ExecProcessExt for ExecProcess {
    fn with_resizer(self, resizer: Resizer) -> Self {
        ExecProcess::with_resizer(self, resizer)
    }

    fn with_kill_on_drop(self, kill: impl Future<Output = ()> + Send + 'static) -> Self {
        ExecProcess::with_kill_on_drop(self, kill)
    }

    fn with_oom_report(self, report: OomReport) -> Self {
        ExecProcess::with_oom_report(self, report)
    }
}

/// Seconds since the Unix epoch now (0 if the clock is before it): the value of
/// [`LABEL_CREATED`](crate::LABEL_CREATED) on the objects a backend creates.
#[must_use]
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The name of the object that holds an environment: `<prefix>-<session>-<name>` cut to leave
/// room within `max_len` characters, then `-` and five random hex digits, so two starts of
/// one spec never collide. With `max_len` 63 it is a DNS label (Kubernetes object names).
///
/// ```
/// use berth_engine_core::{backend, EnvironmentSpec, ImageRef, SessionId};
///
/// let session = SessionId::new("s1").unwrap();
/// let spec = EnvironmentSpec::new(ImageRef::new("busybox").unwrap(), session);
/// let name = backend::object_name(&spec, 63);
/// assert!(name.starts_with(&format!("{}-s1-", spec.name_prefix)), "{name}");
/// assert_ne!(name, backend::object_name(&spec, 63));
/// ```
#[must_use]
pub fn object_name(spec: &EnvironmentSpec, max_len: usize) -> String {
    const SUFFIX: usize = 5;
    let mut base = format!("{}-{}-{}", spec.name_prefix, spec.session, spec.name);
    base.truncate(max_len.saturating_sub(SUFFIX + 1));
    let base = base.trim_end_matches('-');
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..SUFFIX];
    format!("{base}-{suffix}")
}

/// Checks that `path`, the argument named `field` of a copy in or out, is absolute: a copy
/// never depends on the environment's working directory.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `field`.
pub fn require_absolute(field: &str, path: &str) -> Result<()> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid_spec(
            field,
            format!("must be an absolute path, got {path:?}"),
        ))
    }
}
