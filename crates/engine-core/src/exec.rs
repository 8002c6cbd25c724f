//! Running commands in an environment: requests, captured output and streaming processes.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::spec::{validate_env, validate_user};

/// Default per-stream cap of captured output in [`ExecRequest::output_limit`]: 16 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// How many output chunks an [`ExecProcess`] buffers before it stops reading from the engine.
/// With chunks of at most a few tens of KiB this bounds memory whatever the command prints.
pub const OUTPUT_CHANNEL_CHUNKS: usize = 16;

/// Backends put this variable, with a value unique to the exec, in every exec's environment.
/// Children inherit it, so a timeout can find the process tree from inside the environment
/// (with parentage, sessions and process groups: a child may clear it) and kill it: neither
/// Docker nor Kubernetes kills an exec when its stream is abandoned.
pub const EXEC_MARKER_VAR: &str = "BERTH_EXEC_ID";

/// What the command reads on its standard input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stdin {
    /// Nothing: stdin is not attached (reads see EOF or block, as the engine decides).
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Bytes),
    /// A writer handed out by [`ExecProcess::take_stdin`]; only for
    /// [`ContainerEngine::exec_streaming`](crate::ContainerEngine::exec_streaming).
    Piped,
}

/// A command to run in an environment.
///
/// The command is an argv, never a shell string; use [`ExecRequest::shell`] to ask for `sh -c`.
///
/// ```
/// use std::time::Duration;
/// use berth_engine_core::ExecRequest;
///
/// let req = ExecRequest::new(["make", "test"])
///     .with_workdir("/workspace")
///     .with_env("CI", "1")
///     .with_timeout(Duration::from_secs(600));
/// req.validate().unwrap();
/// assert!(ExecRequest::new(Vec::<String>::new()).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables, on top of the environment's.
    pub env: BTreeMap<String, String>,
    /// Working directory, default the environment's.
    pub workdir: Option<String>,
    /// User (`uid`, `uid:gid`, `name`), default the environment's.
    pub user: Option<String>,
    /// Standard input.
    pub stdin: Stdin,
    /// Kill the command (its whole process tree) after this long; `None` waits for ever. The
    /// command then runs under a watchdog in the environment (see
    /// [`watchdog_argv`](crate::watchdog_argv)), which needs `sh` and `sleep` in the image.
    pub timeout: Option<Duration>,
    /// Per-stream cap of the output [`ContainerEngine::exec`](crate::ContainerEngine::exec)
    /// keeps; the rest is read and dropped, and [`ExecOutput`] says it was truncated.
    pub output_limit: usize,
    /// Run under a terminal of this size: stdout and stderr then arrive merged as
    /// [`OutputChunk::Stdout`], and [`ExecProcess::resize`] changes the size.
    pub tty: Option<TtySize>,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows (height).
    pub rows: u16,
    /// Columns (width).
    pub cols: u16,
}

/// Changes the terminal size of a running exec; provided by backends that support TTYs.
pub type Resizer =
    Box<dyn Fn(TtySize) -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync>;

impl ExecRequest {
    /// A request to run `argv` with the defaults documented on each field.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            stdin: Stdin::Null,
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            tty: None,
        }
    }

    /// A request to run `script` with `sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["sh".to_owned(), "-c".to_owned(), script.into()])
    }

    /// Adds one environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn with_workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Sets the user.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets standard input.
    #[must_use]
    pub fn with_stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = stdin;
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the command under a terminal of `size`.
    #[must_use]
    pub fn with_tty(mut self, size: TtySize) -> Self {
        self.tty = Some(size);
        self
    }

    /// Sets the per-stream output cap.
    #[must_use]
    pub fn with_output_limit(mut self, limit: usize) -> Self {
        self.output_limit = limit;
        self
    }

    /// Checks the request before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `argv`, `env`, `workdir`, `user`, `timeout` or
    /// `output_limit`.
    pub fn validate(&self) -> Result<()> {
        match self.argv.first() {
            None => {
                return Err(Error::invalid_spec(
                    "argv",
                    "must name a program, got nothing",
                ))
            }
            Some(p) if p.is_empty() => {
                return Err(Error::invalid_spec("argv", "the program name is empty"))
            }
            _ => {}
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(Error::invalid_spec(
                "argv",
                format!("argument {i} contains a NUL byte"),
            ));
        }
        validate_env(&self.env)?;
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(Error::invalid_spec(
                    "workdir",
                    format!("must be an absolute path, got {dir:?}"),
                ));
            }
        }
        if let Some(user) = &self.user {
            validate_user("user", user)?;
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_spec(
                "timeout",
                "must be greater than zero (leave it unset to wait for ever)",
            ));
        }
        if self.tty.is_some_and(|t| t.rows == 0 || t.cols == 0) {
            return Err(Error::invalid_spec(
                "tty",
                "rows and columns must be greater than zero",
            ));
        }
        if self.output_limit == 0 {
            return Err(Error::invalid_spec(
                "output_limit",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

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
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Where a backend records, while an exec ends, that the out-of-memory killer ended it; see
/// [`ExecProcess::with_oom_report`].
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
    /// Standard output, at most [`ExecRequest::output_limit`] bytes.
    pub stdout: Bytes,
    /// Standard error, at most [`ExecRequest::output_limit`] bytes.
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

/// A backend's output read in place, on the consumer's task: see [`ExecProcess::direct`].
pub type OutputChunks = Pin<Box<dyn Stream<Item = Result<OutputChunk>> + Send>>;

/// Where a read failure of a direct output stream is kept for [`ExecProcess::wait`].
type FailureSlot = Arc<Mutex<Option<Error>>>;

/// Where a direct output stream dropped before its end is handed back, so that
/// [`ExecProcess::wait`] can drain it instead of closing the backend's connection (which, on
/// Docker, makes the daemon signal the command and report exit code 126).
type LeftoverSlot = Arc<Mutex<Option<OutputChunks>>>;

fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Source {
    Channel(mpsc::Receiver<OutputChunk>),
    Direct {
        /// `None` once the stream has ended (or been handed back on drop).
        stream: Option<OutputChunks>,
        failure: FailureSlot,
        leftover: LeftoverSlot,
    },
}

/// The output of an [`ExecProcess`]: a bounded stream of [`OutputChunk`]s.
pub struct OutputStream {
    source: Source,
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
    /// [`ExecProcess::wait`] then reports the failure).
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

/// Where a backend's I/O task sends output. Sending never fails: when the consumer has gone
/// away, the chunk is dropped and the backend keeps draining so the command is not blocked.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputChunk>,
}

impl OutputSink {
    /// Delivers one chunk, waiting while the consumer's buffer is full (this is the
    /// backpressure that keeps memory bounded).
    pub async fn send(&self, chunk: OutputChunk) {
        let _ = self.tx.send(chunk).await;
    }
}

/// The standard input of an [`ExecProcess`]: an [`AsyncWrite`] with a real close.
///
/// Closing (or dropping inside a Tokio runtime) delivers end of file to the command.
pub struct ExecStdin {
    inner: Option<Pin<Box<dyn AsyncWrite + Send>>>,
}

impl fmt::Debug for ExecStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStdin")
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl ExecStdin {
    /// Wraps a backend's writer.
    pub fn new(writer: Pin<Box<dyn AsyncWrite + Send>>) -> Self {
        Self {
            inner: Some(writer),
        }
    }

    /// Flushes and closes the stream: the command reads end of file.
    ///
    /// # Errors
    /// The transport's error when the flush or close fails.
    pub async fn close(&mut self) -> std::io::Result<()> {
        if let Some(mut w) = self.inner.take() {
            w.flush().await?;
            w.shutdown().await?;
        }
        Ok(())
    }
}

impl Drop for ExecStdin {
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = w.shutdown().await;
                });
            }
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin already closed")
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.inner.as_mut() {
            Some(w) => w.as_mut().poll_write(cx, buf),
            None => Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(w) => w.as_mut().poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(w) => {
                let r = w.as_mut().poll_shutdown(cx);
                if r.is_ready() {
                    self.inner = None;
                }
                r
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A running command: take-once stdin and output, and [`ExecProcess::wait`] for its status.
///
/// The process owns the backend's I/O task; dropping it aborts the task (the command itself
/// keeps running until it ends or its timeout kills it).
///
/// ```no_run
/// use berth_engine_core::{ContainerEngine, EnvironmentId, ExecRequest, OutputChunk, Stdin};
/// use tokio::io::AsyncWriteExt;
///
/// async fn demo(engine: &dyn ContainerEngine, env: &EnvironmentId) -> berth_engine_core::Result<()> {
///     let req = ExecRequest::new(["cat"]).with_stdin(Stdin::Piped);
///     let mut process = engine.exec_streaming(env, req).await?;
///     let mut stdin = process.take_stdin().expect("piped");
///     let mut output = process.take_output().expect("first take");
///     stdin.write_all(b"hello").await.unwrap();
///     stdin.close().await.unwrap();
///     while let Some(chunk) = output.next_chunk().await {
///         if let OutputChunk::Stdout(bytes) = chunk {
///             print!("{}", String::from_utf8_lossy(&bytes));
///         }
///     }
///     let status = process.wait().await?;
///     assert!(status.success());
///     Ok(())
/// }
/// ```
pub struct ExecProcess {
    stdin: Option<ExecStdin>,
    output: Option<OutputStream>,
    status: Option<Status>,
    task: Option<JoinHandle<()>>,
    failure: Option<FailureSlot>,
    leftover: Option<LeftoverSlot>,
    started: Instant,
    resizer: Option<Resizer>,
    /// Run (spawned) when the process is dropped before its outcome was learned.
    kill_on_drop: Option<futures_util::future::BoxFuture<'static, ()>>,
    /// Whether `wait` or `collect` learned the outcome.
    finished: bool,
    /// Where the backend records an out-of-memory kill.
    oom: Option<OomReport>,
}

enum Status {
    Task(oneshot::Receiver<Result<ExitStatus>>),
    Future(futures_util::future::BoxFuture<'static, Result<ExitStatus>>),
}

impl fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecProcess")
            .field("stdin", &self.stdin)
            .field("output_taken", &self.output.is_none())
            .finish()
    }
}

impl ExecProcess {
    /// For backends: spawns `io`, which streams the command's output into the [`OutputSink`]
    /// and resolves to its exit status (or to [`Error::Timeout`] after killing it).
    pub fn spawn<F, Fut>(stdin: Option<ExecStdin>, io: F) -> Self
    where
        F: FnOnce(OutputSink) -> Fut,
        Fut: Future<Output = Result<ExitStatus>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
        let (status_tx, status_rx) = oneshot::channel();
        let fut = io(OutputSink { tx });
        let task = tokio::spawn(async move {
            let _ = status_tx.send(fut.await);
        });
        Self {
            stdin,
            output: Some(OutputStream {
                source: Source::Channel(rx),
            }),
            status: Some(Status::Task(status_rx)),
            task: Some(task),
            failure: None,
            leftover: None,
            started: Instant::now(),
            resizer: None,
            kill_on_drop: None,
            finished: false,
            oom: None,
        }
    }

    /// For backends whose output can be read where it is consumed, without a task and a
    /// channel in between (the fast path): `output` is read by the consumer's own task;
    /// `finish` resolves to the exit status once the output has ended; `helper` (stdin
    /// feeding, a timeout watchdog) is aborted when the process is dropped.
    pub fn direct<F>(
        stdin: Option<ExecStdin>,
        output: OutputChunks,
        finish: F,
        helper: Option<JoinHandle<()>>,
    ) -> Self
    where
        F: Future<Output = Result<ExitStatus>> + Send + 'static,
    {
        let failure = FailureSlot::default();
        let leftover = LeftoverSlot::default();
        Self {
            stdin,
            output: Some(OutputStream {
                source: Source::Direct {
                    stream: Some(output),
                    failure: failure.clone(),
                    leftover: leftover.clone(),
                },
            }),
            status: Some(Status::Future(Box::pin(finish))),
            task: helper,
            failure: Some(failure),
            leftover: Some(leftover),
            started: Instant::now(),
            resizer: None,
            kill_on_drop: None,
            finished: false,
            oom: None,
        }
    }

    /// For backends: how [`ExecProcess::resize`] changes the terminal size.
    #[must_use]
    pub fn with_resizer(mut self, resizer: Resizer) -> Self {
        self.resizer = Some(resizer);
        self
    }

    /// For backends: what ends the command and its children when the process is dropped
    /// before [`ExecProcess::wait`] or [`ExecProcess::collect`] learned its outcome (a
    /// cancelled command must not keep running in a long-lived environment). It is spawned on
    /// the current Tokio runtime, if there is one.
    #[must_use]
    pub fn with_kill_on_drop(mut self, kill: impl Future<Output = ()> + Send + 'static) -> Self {
        self.kill_on_drop = Some(Box::pin(kill));
        self
    }

    /// For backends: where the backend's status future records that the out-of-memory killer
    /// ended the command; [`ExecProcess::wait_outcome`] and [`ExecProcess::collect`] report it.
    #[must_use]
    pub fn with_oom_report(mut self, report: OomReport) -> Self {
        self.oom = Some(report);
        self
    }

    /// Changes the terminal size of an exec started with [`ExecRequest::tty`].
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `tty` when the exec has no terminal; the backend's error
    /// when the resize fails.
    pub async fn resize(&self, size: TtySize) -> Result<()> {
        match &self.resizer {
            Some(resize) => resize(size).await,
            None => Err(Error::invalid_spec(
                "tty",
                "this exec was not started with a terminal, so it cannot be resized",
            )),
        }
    }

    /// The stdin writer, once, when the request asked for [`Stdin::Piped`].
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        self.stdin.take()
    }

    /// The output stream, once.
    pub fn take_output(&mut self) -> Option<OutputStream> {
        self.output.take()
    }

    /// Waits for the command to end. Output not taken, or taken and dropped before its end, is
    /// drained and discarded; stdin not taken is closed first.
    ///
    /// # Caveats
    /// While the output is held, keep reading it: a full output buffer pauses the command.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the request's timeout killed the command; a backend error when
    /// the outcome could not be learned.
    pub async fn wait(self) -> Result<ExitStatus> {
        Ok(self.wait_outcome().await?.status)
    }

    /// Like [`ExecProcess::wait`], and also says whether the out-of-memory killer ended the
    /// command.
    ///
    /// # Errors
    /// As [`ExecProcess::wait`].
    pub async fn wait_outcome(mut self) -> Result<ExecOutcome> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.close().await;
        }
        // A channel's task drains by itself once the receiver is gone; a direct stream is read
        // only by its consumer, so what is left of it is read here.
        drop(self.output.take());
        let rest = self.leftover.as_ref().and_then(|slot| lock(slot).take());
        if let (Some(rest), Some(failure)) = (rest, self.failure.clone()) {
            let mut output = OutputStream {
                source: Source::Direct {
                    stream: Some(rest),
                    failure,
                    leftover: LeftoverSlot::default(),
                },
            };
            while output.next_chunk().await.is_some() {}
        }
        let status = self.status_result().await?;
        Ok(ExecOutcome {
            status,
            oom: self.oom_kill(),
        })
    }

    fn oom_kill(&self) -> Option<OomKill> {
        self.oom.as_ref().and_then(OomReport::get)
    }

    async fn status_result(&mut self) -> Result<ExitStatus> {
        let failed = self.failure.as_ref().and_then(|slot| lock(slot).take());
        if let Some(e) = failed {
            self.finished = true;
            return Err(e);
        }
        let result = match self.status.take().expect("status is taken only here") {
            Status::Future(finish) => finish.await,
            Status::Task(rx) => match rx.await {
                Ok(result) => result,
                Err(_) => Err(Error::backend(
                    "core",
                    "learn the exit status of an exec",
                    "the exec I/O task ended without a status (it panicked or was aborted)",
                )),
            },
        };
        self.finished = true;
        result
    }

    /// Reads all output, keeping at most `limit` bytes of each stream, then waits.
    ///
    /// # Errors
    /// As [`ExecProcess::wait`].
    pub async fn collect(mut self, limit: usize) -> Result<ExecOutput> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.close().await;
        }
        let mut output = self.output.take().expect("collect needs the output stream");
        let mut stdout = CappedBuffer::new(limit);
        let mut stderr = CappedBuffer::new(limit);
        while let Some(chunk) = output.next_chunk().await {
            match chunk {
                OutputChunk::Stdout(b) => stdout.push(&b),
                OutputChunk::Stderr(b) => stderr.push(&b),
            }
        }
        let status = self.status_result().await?;
        Ok(ExecOutput {
            status,
            stdout: stdout.buf.freeze(),
            stderr: stderr.buf.freeze(),
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            duration: self.started.elapsed(),
            oom: self.oom_kill(),
        })
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let (false, Some(kill)) = (self.finished, self.kill_on_drop.take()) {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(kill);
            }
        }
    }
}

struct CappedBuffer {
    buf: BytesMut,
    limit: usize,
    truncated: bool,
}

impl CappedBuffer {
    fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    #[test]
    fn argv_validation() {
        assert!(ExecRequest::new(["true"]).validate().is_ok());
        let err = ExecRequest::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid argv"), "{err}");
        assert!(ExecRequest::new([""]).validate().is_err());
        assert!(ExecRequest::new(["echo", "a\0b"]).validate().is_err());
        assert!(ExecRequest::new(["x"])
            .with_workdir("rel")
            .validate()
            .is_err());
        assert!(ExecRequest::new(["x"])
            .with_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ExecRequest::new(["x"])
            .with_env("A=B", "1")
            .validate()
            .is_err());
    }

    #[tokio::test]
    async fn collect_caps_each_stream_and_flags_truncation() {
        let process = ExecProcess::spawn(None, |sink| async move {
            sink.send(OutputChunk::Stdout(Bytes::from_static(b"0123456789")))
                .await;
            sink.send(OutputChunk::Stderr(Bytes::from_static(b"ab")))
                .await;
            sink.send(OutputChunk::Stdout(Bytes::from_static(b"xyz")))
                .await;
            Ok(ExitStatus(7))
        });
        let out = process.collect(4).await.unwrap();
        assert_eq!(out.status.code(), 7);
        assert_eq!(&out.stdout[..], b"0123");
        assert!(out.stdout_truncated);
        assert_eq!(&out.stderr[..], b"ab");
        assert!(!out.stderr_truncated);
    }

    #[tokio::test]
    async fn wait_without_reading_output_does_not_block() {
        let process = ExecProcess::spawn(None, |sink| async move {
            for _ in 0..(OUTPUT_CHANNEL_CHUNKS * 4) {
                sink.send(OutputChunk::Stdout(Bytes::from_static(b"x")))
                    .await;
            }
            Ok(ExitStatus(0))
        });
        assert!(process.wait().await.unwrap().success());
    }

    /// A direct stream dropped before its end goes back to the process, and `wait` reads it
    /// to the end before asking for the status (a backend whose connection closed early would
    /// report a signalled command instead).
    #[tokio::test]
    async fn wait_drains_a_direct_stream_dropped_part_way() {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = read.clone();
        let chunks = futures_util::stream::iter(0..10).map(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(OutputChunk::Stdout(Bytes::from_static(b"x")))
        });
        let seen = read.clone();
        let finish = async move {
            let n = seen.load(std::sync::atomic::Ordering::SeqCst);
            Ok(ExitStatus(if n == 10 { 0 } else { 100 + n as i32 }))
        };
        let mut process = ExecProcess::direct(None, Box::pin(chunks), finish, None);
        let mut output = process.take_output().unwrap();
        assert!(output.next_chunk().await.is_some());
        drop(output);
        assert_eq!(process.wait().await.unwrap().code(), 0);
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn kill_on_drop_runs_only_for_an_unfinished_process() {
        let (killed_tx, killed_rx) = oneshot::channel::<()>();
        let process = ExecProcess::spawn(None, |_sink| std::future::pending()).with_kill_on_drop(
            async move {
                let _ = killed_tx.send(());
            },
        );
        drop(process);
        tokio::time::timeout(Duration::from_secs(5), killed_rx)
            .await
            .expect("the kill ran")
            .expect("sent");

        let (killed_tx, mut killed_rx) = oneshot::channel::<()>();
        let process = ExecProcess::spawn(None, |_sink| async { Ok(ExitStatus(0)) })
            .with_kill_on_drop(async move {
                let _ = killed_tx.send(());
            });
        assert!(process.wait().await.unwrap().success());
        tokio::task::yield_now().await;
        assert!(
            matches!(
                killed_rx.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "a waited process is not killed"
        );
    }

    #[tokio::test]
    async fn a_failed_direct_read_is_reported_by_wait() {
        let chunks = futures_util::stream::iter([
            Ok(OutputChunk::Stdout(Bytes::from_static(b"x"))),
            Err(Error::backend("test", "read output", "connection reset")),
        ]);
        let process =
            ExecProcess::direct(None, Box::pin(chunks), async { Ok(ExitStatus(0)) }, None);
        let err = process.wait().await.unwrap_err();
        assert!(format!("{err:?}").contains("connection reset"), "{err:?}");
    }
}
