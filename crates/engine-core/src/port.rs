//! Port forwarding: one connection to a TCP port inside an environment
//! ([`ContainerEngine::connect_port`]), and [`PortForward`], a local listener that opens one
//! such connection per client and relays both ways while it lives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    ContainerEngine, EnvironmentId, Error, ExecProcess, ExecRequest, ExecStdin, OutputChunk,
    OutputStream, Result, Stdin,
};

/// A bidirectional byte stream: what [`PortStream`] boxes.
pub trait PortIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PortIo for T {}

/// One connection to a TCP port inside an environment, from
/// [`ContainerEngine::connect_port`]. Shutting down its write side delivers end of file to
/// the server inside (half-close); dropping it closes the connection.
pub type PortStream = Box<dyn PortIo>;

/// How many per-client errors [`PortForward`] keeps for [`PortForward::next_error`] before it
/// drops new ones (a flood of refused clients must not grow memory).
const ERROR_BACKLOG: usize = 64;

/// A local TCP listener forwarding each accepted client to `remote_port` inside an
/// environment, through [`ContainerEngine::connect_port`]; it serves until dropped.
///
/// Each client gets its own connection inside, relayed both ways with half-close (a client
/// that shuts down its write side still reads the answer). A client whose connection inside
/// fails (nothing listens on the port: [`Error::PortClosed`]) is closed, the error is kept for
/// [`PortForward::next_error`], and the forward goes on serving the others.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{ContainerEngine, EnvironmentId, PortForward};
///
/// async fn serve(engine: Arc<dyn ContainerEngine>, env: EnvironmentId) -> berth_engine_core::Result<()> {
///     let mut forward = PortForward::start(engine, env, "127.0.0.1:0".parse().unwrap(), 8080).await?;
///     println!("http://{}/ reaches port 8080 inside", forward.local_addr());
///     while let Some(err) = forward.next_error().await {
///         eprintln!("a client failed: {err}");
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct PortForward {
    local: SocketAddr,
    remote_port: u16,
    errors: mpsc::Receiver<Error>,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Listens on `local` (port 0 picks a free one) and forwards each client to `remote_port`
    /// in `env`. Nothing is connected inside until a client arrives.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `remote_port` when it is 0; [`Error::Io`] when `local`
    /// cannot be bound (in use, not an address of this host).
    pub async fn start(
        engine: Arc<dyn ContainerEngine>,
        env: EnvironmentId,
        local: SocketAddr,
        remote_port: u16,
    ) -> Result<Self> {
        check_port("remote_port", remote_port)?;
        let listener = TcpListener::bind(local)
            .await
            .map_err(|e| Error::from_io(format!("listen on {local}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::from_io(format!("read the address bound for {local}"), e))?;
        let (errors_tx, errors) = mpsc::channel(ERROR_BACKLOG);
        let task = tokio::spawn(accept_loop(listener, engine, env, remote_port, errors_tx));
        Ok(Self {
            local,
            remote_port,
            errors,
            task,
        })
    }

    /// The address clients connect to (with the port picked when 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The port inside the environment.
    #[must_use]
    pub fn remote_port(&self) -> u16 {
        self.remote_port
    }

    /// The next error of a client's connection (a refused port, a relay that failed), in the
    /// order they happened; waits for one. `None` once the forward stopped accepting (the
    /// listener failed).
    pub async fn next_error(&mut self) -> Option<Error> {
        self.errors.recv().await
    }
}

impl Drop for PortForward {
    /// Stops listening and closes every client's connection.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    engine: Arc<dyn ContainerEngine>,
    env: EnvironmentId,
    port: u16,
    errors: mpsc::Sender<Error>,
) {
    // Dropping the set (when this task is aborted) aborts every client's relay.
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    clients.spawn(relay(client, engine.clone(), env.clone(), port, errors.clone()));
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    let _ = errors.try_send(Error::from_io("accept a client", e));
                    return;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

/// Accept errors that concern one connection (it was reset before accept, or the process is
/// out of descriptors for a moment), not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || e.raw_os_error() == Some(24)
}

async fn relay(
    mut client: TcpStream,
    engine: Arc<dyn ContainerEngine>,
    env: EnvironmentId,
    port: u16,
    errors: mpsc::Sender<Error>,
) {
    let _ = client.set_nodelay(true);
    let mut inside = match engine.connect_port(&env, port).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = errors.try_send(e);
            return;
        }
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut inside).await {
        let _ = errors.try_send(Error::from_io(
            format!("relay a client to port {port} in {env}"),
            e,
        ));
    }
}

/// The marker the relay script prints on stderr when the port listens, before it becomes `nc`.
const OPEN_MARKER: &str = "berth-port-open";
/// The marker it prints when nothing listens on the port.
const CLOSED_MARKER: &str = "berth-port-closed";
/// The marker it prints when the image lacks `awk` or `nc`.
const NO_TOOLS_MARKER: &str = "berth-port-no-tools";
/// How long a relay whose client left first waits for the server inside to close too before
/// it cancels the exec.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// How much of `nc`'s own stderr is kept for an error message.
const STDERR_KEPT: usize = 4096;

/// The script [`connect_port_via_exec`] runs: it looks for a listening socket on `port` in the
/// environment's network namespace (`/proc/net/tcp*`, state `0A`), says which on stderr, and
/// then becomes busybox `nc`, whose stdin and stdout are the connection. Looking first (rather
/// than letting `nc` fail) makes a closed port an error before any byte is relayed, without
/// opening a probe connection the server would see.
#[must_use]
pub fn relay_script(port: u16) -> String {
    format!(
        "command -v nc >/dev/null && command -v awk >/dev/null || {{ echo {NO_TOOLS_MARKER} >&2; exit 127; }}; \
         if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == \"0A\" && $2 ~ /:{port:04X}$/ {{ found = 1 }} END {{ exit !found }}'; \
         then echo {OPEN_MARKER} >&2; exec nc 127.0.0.1 {port}; fi; echo {CLOSED_MARKER} >&2; exit 1"
    )
}

/// [`ContainerEngine::connect_port`] for any backend with a streaming exec: an exec of
/// busybox `nc 127.0.0.1 PORT` (after [`relay_script`]'s check) whose stdin and stdout are the
/// connection. Works without any network set up for the environment (its loopback is enough)
/// and needs `sh`, `awk` and `nc` in the image.
///
/// # Errors
/// [`Error::PortClosed`] when nothing listens on `port`; [`Error::Unsupported`] when the image
/// lacks `nc` or `awk`; the exec's own errors otherwise.
pub async fn connect_port_via_exec<E: ContainerEngine + ?Sized>(
    engine: &E,
    env: &EnvironmentId,
    port: u16,
) -> Result<PortStream> {
    check_port("port", port)?;
    let req = ExecRequest::shell(relay_script(port)).with_stdin(Stdin::Piped);
    let mut process = engine.exec_streaming(env, req).await?;
    let stdin = process
        .take_stdin()
        .ok_or_else(|| internal("the relay exec's stdin"))?;
    let mut output = process
        .take_output()
        .ok_or_else(|| internal("the relay exec's output"))?;
    let mut stderr = Vec::new();
    let mut pending = Vec::new();
    loop {
        let Some(chunk) = output.next_chunk().await else {
            let status = process.wait().await?;
            let said = String::from_utf8_lossy(&stderr).into_owned();
            return Err(if said.contains(NO_TOOLS_MARKER) || status.code() == 127 {
                Error::Unsupported {
                    backend: engine.backend(),
                    operation: "connect_port",
                    reason: format!(
                        "{env} has no `nc` or `awk`: berth relays a forwarded port through busybox `nc 127.0.0.1 PORT` inside the environment; use an image with busybox"
                    ),
                }
            } else if said.contains(CLOSED_MARKER) {
                closed(env, port, "nothing listens on it")
            } else {
                closed(
                    env,
                    port,
                    format!("the relay exited with {status}: {}", said.trim()),
                )
            });
        };
        match chunk {
            OutputChunk::Stdout(b) => pending.extend_from_slice(&b),
            OutputChunk::Stderr(b) => keep(&mut stderr, &b),
        }
        let said = String::from_utf8_lossy(&stderr);
        if said.contains(OPEN_MARKER) {
            let rest = said
                .split_once(OPEN_MARKER)
                .map(|(_, r)| r.trim_start_matches('\n').as_bytes().to_vec())
                .unwrap_or_default();
            return Ok(Box::new(ExecPortStream {
                env: env.clone(),
                port,
                stdin: Some(stdin),
                output: Some(output),
                process: Some(process),
                ended: false,
                pending: Bytes::from(pending),
                stderr: rest,
            }));
        }
        if said.contains(CLOSED_MARKER) {
            return Err(closed(env, port, "nothing listens on it"));
        }
    }
}

/// A port of 0 is no port to connect to; `field` names the argument.
fn check_port(field: &str, port: u16) -> Result<()> {
    if port == 0 {
        return Err(Error::invalid_spec(
            field,
            "expected a TCP port from 1 to 65535, got 0",
        ));
    }
    Ok(())
}

fn internal(what: &str) -> Error {
    Error::Internal {
        what: what.to_owned(),
    }
}

fn closed(env: &EnvironmentId, port: u16, reason: impl Into<String>) -> Error {
    Error::PortClosed {
        env: env.to_string(),
        port,
        reason: reason.into(),
    }
}

fn keep(kept: &mut Vec<u8>, more: &[u8]) {
    let room = STDERR_KEPT.saturating_sub(kept.len());
    kept.extend_from_slice(&more[..more.len().min(room)]);
}

/// The connection of [`connect_port_via_exec`]: writes go to the exec's stdin, reads come from
/// its stdout; `nc`'s stderr is kept to explain a connection that failed after all (the
/// listener went away between the check and the connect, or listens only on another address).
struct ExecPortStream {
    env: EnvironmentId,
    port: u16,
    /// `None` only while dropping, as are `output` and `process`.
    stdin: Option<ExecStdin>,
    output: Option<OutputStream>,
    /// Owns the exec's I/O task for as long as the stream lives.
    process: Option<ExecProcess>,
    /// Whether the output ended (`nc` exited): then dropping the stream only collects the
    /// exit status; before that it first closes `nc`'s stdin and waits [`LINGER`] for it to
    /// end by itself, and only then cancels the exec (whose kill ends `nc`).
    ended: bool,
    pending: Bytes,
    stderr: Vec<u8>,
}

impl AsyncRead for ExecPortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            let Some(output) = self.output.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match Pin::new(output).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(OutputChunk::Stdout(b))) => self.pending = b,
                Poll::Ready(Some(OutputChunk::Stderr(b))) => {
                    let this = &mut *self;
                    keep(&mut this.stderr, &b);
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    let said = String::from_utf8_lossy(&self.stderr).trim().to_owned();
                    if said.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let err = closed(&self.env, self.port, format!("nc inside said: {said}"));
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        err,
                    )));
                }
            }
        }
    }
}

impl Drop for ExecPortStream {
    fn drop(&mut self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (Some(process), Some(mut stdin), Some(mut output)) =
            (self.process.take(), self.stdin.take(), self.output.take())
        else {
            return;
        };
        let ended = self.ended;
        handle.spawn(async move {
            if !ended {
                // The client left first: `nc` ends its sending side, and a server that then
                // closes its own lets the exec end by itself rather than by a kill.
                let _ = stdin.close().await;
                let drain = async { while output.next_chunk().await.is_some() {} };
                if tokio::time::timeout(LINGER, drain).await.is_err() {
                    return; // dropping the process cancels the exec
                }
            }
            drop(output);
            let _ = process.wait().await;
        });
    }
}

impl AsyncWrite for ExecPortStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_script_looks_for_the_port_in_hex() {
        let script = relay_script(8080);
        assert!(script.contains("/:1F90$/"), "{script}");
        assert!(script.contains("exec nc 127.0.0.1 8080"), "{script}");
        assert!(relay_script(1).contains("/:0001$/"));
    }
}
