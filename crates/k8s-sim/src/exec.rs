//! `pods/exec` over websocket, subprotocols `v5.channel.k8s.io` and `v4.channel.k8s.io`,
//! backed by Docker exec.
//!
//! Every message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (the
//! final `metav1.Status`), 4 resize. v5 adds 255, "close": its payload byte names the channel
//! the client is done with; closing stdin (0) shuts down the exec's stdin, so the process sees
//! EOF. Like the API server (which reads every frame as bytes), text frames are read the same
//! as binary ones: the Python client sends `write_stdin("...")` as text.

use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api::{full, Body, Params};
use crate::errors::ApiError;
use crate::kubelet;
use crate::store::Res;
use crate::Inner;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The final status message, as the kubelet writes it on the error channel.
fn exit_status(code: i64) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command in container: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    }
}

/// A boolean query parameter as the API server converts one: absent is false, and any value
/// but `0` or `false` (any case) is true.
fn query_bool(params: &Params, key: &str) -> bool {
    params
        .get(key)
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The plain-text 400 the kubelet answers (and the API server passes on) when an exec asks
/// for none of the streams.
fn no_streams() -> Response<Body> {
    let mut resp = Response::new(full("you must specify at least 1 of stdin, stdout, stderr"));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Handles `GET|POST .../pods/NAME/exec`.
pub(crate) async fn exec(
    inner: &Arc<Inner>,
    ns: &str,
    name: &str,
    params: &Params,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pod = inner
        .store
        .get(Res::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Res::Pod, name))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let container_id = kubelet::container_id(&pod, params.get("container"))?;
    let command = params.all("command");
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let upgrade = header(&req, "upgrade").unwrap_or("").to_ascii_lowercase();
    if upgrade != "websocket" {
        return Err(ApiError::bad_request(format!(
            "Upgrade request required: the simulator serves exec over websocket ({V5}, {V4}) only, not {upgrade:?}"
        )));
    }
    let key = header(&req, "sec-websocket-key")
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?
        .to_owned();
    let offered: Vec<String> = header(&req, "sec-websocket-protocol")
        .unwrap_or("")
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    let protocol = offered
        .iter()
        .find(|p| *p == V5 || *p == V4)
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "none of the offered subprotocols {offered:?} is supported: use {V5} or {V4}"
            ))
        })?;
    let stdin = query_bool(params, "stdin");
    let tty = query_bool(params, "tty");
    let stdout = query_bool(params, "stdout");
    // With a terminal, stderr is merged into stdout (the kubelet drops the stream).
    let stderr = query_bool(params, "stderr") && !tty;
    if !stdin && !stdout && !stderr {
        return Ok(no_streams());
    }
    let created = inner
        .docker
        .create_exec(
            &container_id,
            CreateExecOptions {
                attach_stdin: Some(stdin),
                attach_stdout: Some(stdout),
                attach_stderr: Some(stderr),
                tty: Some(tty),
                cmd: Some(command),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ApiError::internal(format!("creating the exec: {e}")))?;
    let docker = inner.docker.clone();
    let v5 = protocol == V5;
    let cut_by = inner.clone();
    tokio::spawn(async move {
        // Registered before anything can block, so a fault never misses a connection.
        let cut = cut_by.exec_cut.notified();
        tokio::pin!(cut);
        cut.as_mut().enable();
        let upgraded = match hyper::upgrade::on(&mut req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // On the fault the session is dropped: its tasks are aborted with it and the socket
        // closes with no close frame and no status.
        tokio::select! {
            () = session(docker, created.id, ws, v5, tty) => {}
            () = cut => tracing::debug!("exec connection dropped by the fault hook"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    let val = |s: &str| hyper::header::HeaderValue::from_str(s).ok();
    if let (Some(a), Some(p)) = (val(&accept), val(&protocol)) {
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        h.insert("sec-websocket-accept", a);
        h.insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

/// Aborts a session's task when the session is dropped (the fault hook drops sessions).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.put_slice(data);
    Message::Binary(b.freeze())
}

async fn session<S>(
    docker: bollard::Docker,
    exec_id: String,
    ws: WebSocketStream<S>,
    v5: bool,
    tty: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await;
    let (mut output, input) = match started {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) | Err(_) => {
            let status = json!({"metadata": {}, "status": "Failure",
                "message": "starting the exec failed", "reason": "InternalError"});
            let _ = sink
                .send(frame(
                    ERROR,
                    &serde_json::to_vec(&status).unwrap_or_default(),
                ))
                .await;
            let _ = sink.close().await;
            return;
        }
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(32);
    // The websocket reader: stdin, resize and close signals; pings are answered by tungstenite.
    let reader_docker = docker.clone();
    let reader_exec = exec_id.clone();
    let reader = tokio::spawn(async move {
        let mut input = Some(input);
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(data) => data,
                Message::Text(text) => Bytes::from(text.as_bytes().to_vec()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = input.as_mut() {
                        if w.write_all(payload).await.is_err() {
                            input = None;
                        }
                    }
                }
                RESIZE => {
                    if let Ok(size) = serde_json::from_slice::<Value>(payload) {
                        let dim = |k: &str| {
                            size[k]
                                .as_u64()
                                .and_then(|v| u16::try_from(v).ok())
                                .unwrap_or(0)
                        };
                        let _ = reader_docker
                            .resize_exec(
                                &reader_exec,
                                ResizeExecOptions {
                                    height: dim("Height"),
                                    width: dim("Width"),
                                },
                            )
                            .await;
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    if let Some(mut w) = input.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        // Client gone (or done sending): end the exec's stdin.
        if let Some(mut w) = input.take() {
            let _ = w.shutdown().await;
        }
    });
    let _reader_guard = AbortOnDrop(reader.abort_handle());
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.flush().await;
    });
    let _writer_guard = AbortOnDrop(writer.abort_handle());
    while let Some(item) = output.next().await {
        let msg = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                frame(STDOUT, &message)
            }
            Ok(LogOutput::StdErr { message }) => frame(STDERR, &message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(_) => break,
        };
        if out_tx.send(msg).await.is_err() {
            break;
        }
    }
    let mut code = None;
    for _ in 0..200 {
        match docker.inspect_exec(&exec_id).await {
            Ok(i) if i.running != Some(true) && i.exit_code.is_some() => {
                code = i.exit_code;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    let status = match code {
        Some(c) => exit_status(c),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the exit code of the command could not be learned"}),
    };
    let _ = out_tx
        .send(frame(
            ERROR,
            &serde_json::to_vec(&status).unwrap_or_default(),
        ))
        .await;
    drop(out_tx);
    let _ = writer.await;
    // Give the client a moment to answer the close handshake before dropping the reader.
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
}
