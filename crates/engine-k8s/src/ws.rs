//! The pod exec websocket with berth's own message loop.
//!
//! kube-client 5's `AttachedProcess` loop returns on a websocket error without shutting its
//! stdout/stderr pipes, so a reader waiting for end of file waits for ever when the API server
//! dies; and it pings only every 60 s without ever checking for an answer, so a connection
//! whose peer went silent (a half-open TCP connection) is never noticed. This loop always ends
//! the pipes, reports how the stream ended ([`End`]), and pings every [`PING_EVERY`], giving up
//! after [`SILENCE_LIMIT`] without a frame from the server.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as ApiStatus;
use kube::api::{AttachParams, TerminalSize};
use kube::Resource;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, SimplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How often the loop pings the server.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(1000);

/// How long the server may stay silent (no output, no pong) before the connection counts as
/// lost: three missed pings. Time spent waiting for our own reader does not count.
pub(crate) const SILENCE_LIMIT: Duration = Duration::from_millis(3000);

/// How long one frame may take to leave: a peer that stopped reading fills the socket buffer,
/// and a send would otherwise wait for ever.
const SEND_LIMIT: Duration = Duration::from_secs(10);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How an exec stream ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The server sent the final status on the error channel.
    Status(Box<ApiStatus>),
    /// The connection broke, or the server closed it without a status, or went silent: the
    /// command's outcome is unknown.
    Lost(String),
}

/// A running exec: take-once pipes and the end of the stream; dropping it ends the loop.
pub(crate) struct Exec {
    stdin: Option<WriteHalf<SimplexStream>>,
    stdout: Option<ReadHalf<SimplexStream>>,
    stderr: Option<ReadHalf<SimplexStream>>,
    end: Option<oneshot::Receiver<End>>,
    resize: Option<mpsc::Sender<TerminalSize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exec {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exec {
    /// The stdin writer, once, when `stdin` was asked for.
    pub(crate) fn stdin(&mut self) -> Option<WriteHalf<SimplexStream>> {
        self.stdin.take()
    }

    /// The stdout reader, once; it reaches end of file however the stream ends.
    pub(crate) fn stdout(&mut self) -> Option<ReadHalf<SimplexStream>> {
        self.stdout.take()
    }

    /// The stderr reader, once; it reaches end of file however the stream ends.
    pub(crate) fn stderr(&mut self) -> Option<ReadHalf<SimplexStream>> {
        self.stderr.take()
    }

    /// Where terminal sizes go, once, when `tty` was asked for.
    pub(crate) fn terminal_size(&mut self) -> Option<mpsc::Sender<TerminalSize>> {
        self.resize.take()
    }

    /// How the stream ended, once. It resolves after the output pipes were ended.
    pub(crate) fn take_end(&mut self) -> Option<impl std::future::Future<Output = End> + use<>> {
        self.end.take().map(|rx| async move {
            rx.await.unwrap_or_else(|_| {
                End::Lost("the exec's connection task ended without a result".to_owned())
            })
        })
    }
}

/// Opens `pods/NAME/exec` for `argv` and starts the message loop.
pub(crate) async fn exec(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    argv: Vec<String>,
    params: &AttachParams,
    pipe_size: usize,
) -> kube::Result<Exec> {
    let url = Pod::url_path(&(), Some(namespace));
    let request = kube::core::Request::new(url)
        .exec(pod, argv, params)
        .map_err(kube::Error::BuildRequest)?;
    let connection = client.connect(request).await?;
    let (stdin_reader, stdin_writer) = tokio::io::simplex(pipe_size);
    let pipe = |wanted: bool| {
        if wanted {
            let (r, w) = tokio::io::simplex(pipe_size);
            (Some(r), Some(w))
        } else {
            (None, None)
        }
    };
    let (stdout_reader, stdout_writer) = pipe(params.stdout);
    let (stderr_reader, stderr_writer) = pipe(params.stderr);
    let (resize_tx, resize_rx) = if params.tty {
        let (tx, rx) = mpsc::channel(8);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (end_tx, end_rx) = oneshot::channel();
    let stdin = params.stdin.then_some(stdin_reader);
    let task = tokio::spawn(async move {
        let mut outputs = Outputs {
            stdout: stdout_writer,
            stderr: stderr_writer,
        };
        let end = message_loop(connection, stdin, &mut outputs, resize_rx).await;
        // Whatever ended the loop, the readers must see end of file.
        outputs.shutdown().await;
        let _ = end_tx.send(end);
    });
    Ok(Exec {
        stdin: params.stdin.then_some(stdin_writer),
        stdout: stdout_reader,
        stderr: stderr_reader,
        end: Some(end_rx),
        resize: resize_tx,
        task,
    })
}

struct Outputs {
    stdout: Option<WriteHalf<SimplexStream>>,
    stderr: Option<WriteHalf<SimplexStream>>,
}

impl Outputs {
    async fn write(&mut self, channel: u8, data: &[u8]) {
        let pipe = match channel {
            STDOUT => &mut self.stdout,
            _ => &mut self.stderr,
        };
        // A reader that went away is not an error of the stream: keep reading for the status.
        if let Some(w) = pipe {
            if w.write_all(data).await.is_err() {
                *pipe = None;
            }
        }
    }

    async fn shutdown(&mut self) {
        for w in [self.stdout.as_mut(), self.stderr.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = w.shutdown().await;
        }
    }
}

async fn send<S>(sink: &mut S, msg: Message, what: &str) -> Result<(), End>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    match tokio::time::timeout(SEND_LIMIT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Lost(format!("sending {what} failed: {e}"))),
        Err(_) => Err(End::Lost(format!(
            "sending {what} made no progress for {SEND_LIMIT:?}"
        ))),
    }
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

async fn message_loop(
    connection: kube::client::Connection,
    mut stdin: Option<ReadHalf<SimplexStream>>,
    outputs: &mut Outputs,
    mut resize: Option<mpsc::Receiver<TerminalSize>>,
) -> End {
    let stream_close = connection.supports_stream_close();
    let (mut tx, mut rx) = connection.into_stream().split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut heard = Instant::now();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let step: Result<(), End> = tokio::select! {
            _ = ping.tick() => {
                if heard.elapsed() >= SILENCE_LIMIT {
                    return End::Lost(format!(
                        "the API server sent nothing, not even a pong, for {:.1} s",
                        heard.elapsed().as_secs_f64()
                    ));
                }
                send(&mut tx, Message::Ping(Bytes::new()), "a ping").await
            }
            frame = rx.next() => match frame {
                None => return End::Lost(
                    "the API server closed the exec stream without an exit status".to_owned(),
                ),
                Some(Err(e)) => return End::Lost(format!("reading the exec stream failed: {e}")),
                Some(Ok(Message::Binary(data))) => {
                    match data.split_first() {
                        Some((&STATUS, body)) if !body.is_empty() => {
                            return match serde_json::from_slice::<ApiStatus>(body) {
                                Ok(status) => End::Status(Box::new(status)),
                                Err(e) => End::Lost(format!("the exit status did not parse: {e}")),
                            };
                        }
                        Some((&channel @ (STDOUT | STDERR), body)) if !body.is_empty() => {
                            outputs.write(channel, body).await;
                        }
                        _ => {}
                    }
                    // Measured after our own reader took the data: a slow reader is not a
                    // silent server.
                    heard = Instant::now();
                    Ok(())
                }
                Some(Ok(_)) => {
                    heard = Instant::now();
                    Ok(())
                }
            },
            read = async { stdin.as_mut().expect("guarded").read(&mut buf).await }, if stdin.is_some() => {
                match read {
                    Ok(n) if n > 0 => send(&mut tx, framed(STDIN, &buf[..n]), "stdin").await,
                    _ => {
                        stdin = None;
                        if stream_close {
                            send(&mut tx, framed(CLOSE, &[STDIN]), "the end of stdin").await
                        } else {
                            // v4 has no way to end stdin alone; closing our side is the end
                            // of file (the output still arrives).
                            match tokio::time::timeout(SEND_LIMIT, tx.close()).await {
                                Ok(Ok(())) => Ok(()),
                                _ => Err(End::Lost("closing the exec stream failed".to_owned())),
                            }
                        }
                    }
                }
            }
            size = async { resize.as_mut().expect("guarded").recv().await }, if resize.is_some() => {
                match size {
                    Some(size) => match serde_json::to_vec(&size) {
                        Ok(json) => send(&mut tx, framed(RESIZE, &json), "a terminal size").await,
                        Err(_) => Ok(()),
                    },
                    None => {
                        resize = None;
                        Ok(())
                    }
                }
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}
