//! The HTTP handlers: thin over [`crate::jobs`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ServerError;
use crate::jobs::{Entry, Job, Stream};
use crate::request::JobRequest;
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// The body, or 413 when the body limit cut it.
fn body_of(body: Result<Bytes, BytesRejection>, state: &AppState) -> Result<Bytes, ServerError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::BodyTooLarge {
                max: state.config.server.max_request_bytes.bytes(),
            }
        } else {
            ServerError::bad("body", e.body_text())
        }
    })
}

fn submit(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Arc<Job>, ServerError> {
    let body = body_of(body, state)?;
    let req = JobRequest::parse(&body, &state.config.server)?;
    state.jobs.submit(req)
}

/// `POST /jobs/execute`: the seed's contract, waiting for the job.
pub(crate) async fn execute(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServerError> {
    let job = submit(&state, body)?;
    job.finished().await;
    Ok(Json(job.seed_answer()))
}

/// `POST /v1/jobs`: 202 with the job's id at once.
pub(crate) async fn create(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServerError> {
    let job = submit(&state, body)?;
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job.view())).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/jobs/{id}`.
pub(crate) async fn show(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    Ok(Json(state.jobs.get(&id)?.view()))
}

/// `DELETE /v1/jobs/{id}`: cancels, and answers once the job has ended and its environment
/// is gone (200), or after 30 s with where it is (202).
pub(crate) async fn cancel(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    let job = state.jobs.get(&id)?;
    job.cancel(&format!("cancelled by DELETE /v1/jobs/{id}"));
    let status = match tokio::time::timeout(Duration::from_secs(30), job.finished()).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::ACCEPTED,
    };
    Ok((status, Json(job.view())).into_response())
}

/// `GET /v1/jobs` paging parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/jobs?limit=&after=`: oldest first; `next` is the `after` of the next page.
pub(crate) async fn list(
    State(state): Shared,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ServerError> {
    let Query(q) = query.map_err(|e| ServerError::bad("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ServerError::bad("limit", "expected 1 to 1000"));
    }
    let (jobs, more) = state.jobs.page(q.after.as_deref(), limit)?;
    let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
    let jobs: Vec<Value> = jobs.iter().map(|j| j.view()).collect();
    Ok(Json(json!({ "jobs": jobs, "next": next })))
}

/// `GET /v1/jobs/{id}/logs` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    offset: u64,
}

/// One NDJSON line of output: UTF-8 text as `data`, anything else as `data_base64`.
fn output_line(e: &Entry) -> Bytes {
    let stream = match e.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let mut line = match std::str::from_utf8(&e.data) {
        Ok(text) => json!({ "stream": stream, "offset": e.offset, "data": text }),
        Err(_) => json!({
            "stream": stream,
            "offset": e.offset,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(&e.data),
        }),
    }
    .to_string();
    line.push('\n');
    Bytes::from(line)
}

fn json_line(v: &Value) -> Bytes {
    let mut line = v.to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `GET /v1/jobs/{id}/logs?follow=true&offset=N`: chunked NDJSON, one object a line.
///
/// Output lines are `{"stream": "stdout"|"stderr", "offset": N, "data": "..."}`; `offset`
/// counts the bytes of both streams before the line's (so one number resumes both), and
/// output that is not valid UTF-8 comes as `data_base64` instead of `data`, so every byte
/// arrives as it was. The last line has no `stream`: the job's `state`, `exit_code`,
/// `error`, truncation flags and `next_offset` to resume from. Without `follow`, the kept
/// output is sent and the stream ends; with it, the stream ends when the job does.
pub(crate) async fn logs(
    State(state): Shared,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ServerError> {
    let Query(q) = query.map_err(|e| ServerError::bad("query", e.body_text()))?;
    let job = state.jobs.get(&id)?;
    let (kept, live) = job.read_from(q.offset, q.follow);
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut next = q.offset;
        for e in kept {
            next = e.offset + e.data.len() as u64;
            if tx.send(output_line(&e)).await.is_err() {
                return;
            }
        }
        if let Some(mut live) = live {
            while let Some(e) = live.recv().await {
                let end = e.offset + e.data.len() as u64;
                if end <= next {
                    continue;
                }
                let skip = next.saturating_sub(e.offset) as usize;
                let e = Entry {
                    stream: e.stream,
                    offset: e.offset + skip as u64,
                    data: e.data.slice(skip..),
                };
                next = end;
                if tx.send(output_line(&e)).await.is_err() {
                    return;
                }
            }
            if !job.state().is_final() {
                let behind = json!({
                    "error": "this reader fell behind the job's output and was dropped; resume with offset=next_offset",
                    "next_offset": next,
                });
                let _ = tx.send(json_line(&behind)).await;
                return;
            }
        }
        let _ = tx.send(json_line(&job.end_line())).await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<Bytes, Infallible>))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// `GET /health`: no key needed; says nothing secret.
pub(crate) async fn health(State(state): Shared) -> Response {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(3), state.engine.init()).await,
        Ok(Ok(_))
    );
    if !reachable {
        state.jobs.metrics.engine_error();
    }
    let (running, queued) = state.jobs.counts();
    let draining = state.jobs.draining();
    let status = match (reachable, draining) {
        (false, _) => "unhealthy",
        (true, true) => "draining",
        (true, false) => "healthy",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.engine.backend().as_str(),
        "engine_reachable": reachable,
        "docker_available": reachable && state.engine.backend() == berth_engine_core::BackendKind::Docker,
        "jobs_running": running,
        "jobs_queued": queued,
    });
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) async fn metrics(State(state): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.jobs.metrics.render(),
    )
        .into_response()
}

/// Any other method or path: 404 in the server's JSON.
pub(crate) async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ServerError {
    ServerError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A known path with another method: 405 in the server's JSON.
pub(crate) async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ServerError {
    ServerError::WrongMethod {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Turns the body limit's plain 413 into the server's JSON error.
pub(crate) async fn json_413(State(state): Shared, response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ServerError::BodyTooLarge {
            max: state.config.server.max_request_bytes.bytes(),
        }
        .into_response();
    }
    response
}
