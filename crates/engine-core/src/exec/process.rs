//! A running command: [`ExecProcess`] and its [`ExecStdin`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::output::{lock, CappedBuffer, FailureSlot, LeftoverSlot, Source};
use super::{ExecOutcome, ExecOutput, ExitStatus, OomKill, OutputChunk, OutputStream, TtySize};
use crate::backend::{OomReport, OutputChunks, OutputSink, Resizer, OUTPUT_CHANNEL_CHUNKS};
use crate::error::{Error, Result};

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
    /// Spawns `io`, which streams the command's output into the [`OutputSink`] and resolves
    /// to its exit status (or to [`Error::Timeout`] after killing it); see
    /// [`backend::spawn`](crate::backend::spawn).
    pub(crate) fn spawn<F, Fut>(stdin: Option<ExecStdin>, io: F) -> Self
    where
        F: FnOnce(OutputSink) -> Fut,
        Fut: Future<Output = Result<ExitStatus>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
        let (status_tx, status_rx) = oneshot::channel();
        let fut = io(OutputSink::new(tx));
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

    /// See [`backend::direct`](crate::backend::direct).
    pub(crate) fn direct<F>(
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

    /// How [`ExecProcess::resize`] changes the terminal size.
    #[must_use]
    pub(crate) fn with_resizer(mut self, resizer: Resizer) -> Self {
        self.resizer = Some(resizer);
        self
    }

    /// What ends the command and its children when the process is dropped
    /// before [`ExecProcess::wait`] or [`ExecProcess::collect`] learned its outcome (a
    /// cancelled command must not keep running in a long-lived environment). It is spawned on
    /// the current Tokio runtime, if there is one.
    #[must_use]
    pub(crate) fn with_kill_on_drop(
        mut self,
        kill: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.kill_on_drop = Some(Box::pin(kill));
        self
    }

    /// Where the backend's status future records that the out-of-memory killer
    /// ended the command; [`ExecProcess::wait_outcome`] and [`ExecProcess::collect`] report it.
    #[must_use]
    pub(crate) fn with_oom_report(mut self, report: OomReport) -> Self {
        self.oom = Some(report);
        self
    }

    /// Changes the terminal size of an exec started with [`ExecRequest::tty`](crate::ExecRequest::tty).
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

    /// The stdin writer, once, when the request asked for [`Stdin::Piped`](crate::Stdin::Piped).
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
                Err(_) => Err(Error::Internal {
                    what: "exec I/O task".into(),
                }),
            },
        };
        self.finished = true;
        result
    }

    /// Reads all output, keeping at most `limit` bytes of each stream, then waits.
    ///
    /// # Errors
    /// As [`ExecProcess::wait`]; [`Error::InvalidSpec`] naming `output` when
    /// [`ExecProcess::take_output`] already took the output (read it yourself and call
    /// [`ExecProcess::wait`] instead). The command is then left to end by itself.
    pub async fn collect(mut self, limit: usize) -> Result<ExecOutput> {
        let Some(mut output) = self.output.take() else {
            return Err(Error::invalid_spec(
                "output",
                "collect reads the output, but take_output already took it; read the taken stream and call wait instead",
            ));
        };
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.close().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use std::sync::Arc;
    use std::time::Duration;

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
            Err(Error::backend(
                crate::BackendKind::Docker,
                "read output",
                "connection reset",
            )),
        ]);
        let process =
            ExecProcess::direct(None, Box::pin(chunks), async { Ok(ExitStatus(0)) }, None);
        let err = process.wait().await.unwrap_err();
        assert!(format!("{err:?}").contains("connection reset"), "{err:?}");
    }

    #[tokio::test]
    async fn collect_after_take_output_is_an_error_not_a_panic() {
        let mut process = ExecProcess::spawn(None, |_sink| async { Ok(ExitStatus(0)) });
        let _output = process.take_output().expect("first take");
        let err = process.collect(16).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidSpec);
        assert!(err.to_string().contains("take_output"), "{err}");
    }
}
