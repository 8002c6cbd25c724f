//! `berth serve`: a job agent over HTTP on either backend (seed 003, kept compatible).
//!
//! A caller with an API key posts a job (an image, a command or script, variables, CPU and
//! memory limits, a timeout); the job runs in an environment of its own on the configured
//! backend, and the caller gets its exit code, output and timings, either waiting
//! (`POST /jobs/execute`, the seed's contract) or later (`POST /v1/jobs`, then
//! `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/logs?follow=true`, `DELETE /v1/jobs/{id}`).
//!
//! | route | key | what |
//! | --- | --- | --- |
//! | `GET /health` | no | status, version, backend, engine reachable, jobs running and queued; 503 when the engine is unreachable |
//! | `GET /metrics` | yes | Prometheus text: jobs by outcome, queue depth, durations, engine errors |
//! | `POST /jobs/execute` | yes | the seed's body and answer, waiting for the job |
//! | `POST /v1/jobs` | yes | 202 `{id, ...}` at once |
//! | `GET /v1/jobs?limit=&after=` | yes | jobs oldest first, `next` for the following page |
//! | `GET /v1/jobs/{id}` | yes | state (queued, running, succeeded, failed, cancelled, timed_out), exit code, timings, truncation |
//! | `GET /v1/jobs/{id}/logs?follow=&offset=` | yes | chunked NDJSON, resumable from an offset (see below) |
//! | `DELETE /v1/jobs/{id}` | yes | cancel: the process tree killed, the environment removed |
//!
//! Logs are one JSON object a line: `{"stream": "stdout", "offset": N, "data": "..."}`, where
//! `offset` counts the bytes of both streams before the line (so one number resumes both) and
//! output that is not valid UTF-8 comes as `data_base64`; the last line, without `stream`, is
//! the outcome (`state`, `exit_code`, `error`, truncation flags, `next_offset`).
//!
//! `/metrics` needs a key: it tells how busy the agent is and how its jobs end, which is the
//! operator's business, and Prometheus sends a bearer token as easily as none.
//!
//! Errors answer with a status and `{"error": "...", "field": "..."}` ([`ServerError`]).
//! Only `max_concurrent_jobs` jobs run at once; `max_queued_jobs` more wait in FIFO order;
//! beyond them `429` with `Retry-After`. On shutdown the server drains: new jobs get 503,
//! queued ones are cancelled, running ones may finish until `drain_timeout`, then every
//! environment is removed and [`Server::serve`] returns.
//!
//! ```no_run
//! use berth_runner::config::{BerthConfig, LoadOptions};
//! use berth_server::Server;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = BerthConfig::load(&LoadOptions::default())?.config;
//!     let engine = berth_runner::backend::connect(&config).await?;
//!     let server = Server::new(config, engine)?;
//!     let listener = tokio::net::TcpListener::bind(server.listen_address()).await?;
//!     server.check_listen(listener.local_addr()?)?;
//!     // A second Ctrl-C cancels the running jobs at once instead of letting them finish.
//!     let handle = server.shutdown_handle();
//!     let shutdown = async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         tokio::spawn(async move {
//!             let _ = tokio::signal::ctrl_c().await;
//!             handle.cancel_now();
//!         });
//!     };
//!     server.serve(listener, shutdown).await?;
//!     Ok(())
//! }
//! ```

mod auth;
mod clock;
mod error;
mod jobs;
mod metrics;
pub mod request;
mod routes;
pub mod source;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use berth_engine_core::{ContainerEngine, SessionId};
use berth_runner::config::BerthConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use auth::{ApiKeys, API_KEYS_ENV};
pub use error::ServerError;
pub use jobs::{JobState, LABEL_SERVER};
pub use tls::server_config as tls_config;

use jobs::Jobs;
use metrics::Metrics;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) config: Arc<BerthConfig>,
    pub(crate) engine: Arc<dyn ContainerEngine>,
    pub(crate) jobs: Arc<Jobs>,
}

/// The job agent: an engine, the config's `server:` section, and the jobs.
///
/// Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
    keys: Arc<ApiKeys>,
    instance: SessionId,
    drain: watch::Sender<Phase>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("instance", &self.instance)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    CancelNow,
}

/// Starts a drain, or cancels the running jobs of one at once (a second signal).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<Phase>);

impl ShutdownHandle {
    /// Starts draining, as the shutdown future given to [`Server::serve`] does.
    pub fn begin_drain(&self) {
        self.0.send_if_modified(|p| {
            let change = *p == Phase::Serving;
            if change {
                *p = Phase::Draining;
            }
            change
        });
    }

    /// Drains and cancels the running jobs now, without waiting for `drain_timeout`.
    pub fn cancel_now(&self) {
        self.0.send_replace(Phase::CancelNow);
    }
}

impl Server {
    /// A server running jobs on `engine` as `config` says, with the API keys of
    /// `server.api_keys_file` and `BERTH_SERVER_API_KEYS`.
    ///
    /// # Errors
    /// [`ServerError::ReadKeys`] when the keys file cannot be read.
    pub fn new(config: BerthConfig, engine: Arc<dyn ContainerEngine>) -> Result<Self, ServerError> {
        let env_keys = std::env::var(API_KEYS_ENV).ok();
        let keys = ApiKeys::load(config.server.api_keys_file.clone(), env_keys.as_deref())?;
        Ok(Self::with_keys(config, engine, keys))
    }

    /// A server with these keys (and no others).
    #[must_use]
    pub fn with_keys(config: BerthConfig, engine: Arc<dyn ContainerEngine>, keys: ApiKeys) -> Self {
        let config = Arc::new(config);
        let instance = SessionId::generate();
        let metrics = Arc::new(Metrics::new());
        let jobs = Arc::new(Jobs::new(
            config.clone(),
            engine.clone(),
            metrics,
            instance.to_string(),
        ));
        Self {
            state: Arc::new(AppState {
                config,
                engine,
                jobs,
            }),
            keys: Arc::new(keys),
            instance,
            drain: watch::channel(Phase::Serving).0,
        }
    }

    /// This server's id: the value of [`LABEL_SERVER`] on every environment it starts.
    #[must_use]
    pub fn instance(&self) -> &SessionId {
        &self.instance
    }

    /// `server.listen`.
    #[must_use]
    pub fn listen_address(&self) -> &str {
        &self.state.config.server.listen
    }

    /// Reads the keys file again (on SIGHUP); the old keys stay when it fails.
    ///
    /// # Errors
    /// [`ServerError::ReadKeys`].
    pub fn reload_keys(&self) -> Result<usize, ServerError> {
        self.keys.reload()
    }

    /// Refuses a non-loopback `addr` when no API key is configured.
    ///
    /// # Errors
    /// [`ServerError::NoKeysOnPublicAddress`].
    pub fn check_listen(&self, addr: SocketAddr) -> Result<(), ServerError> {
        if !addr.ip().is_loopback() && self.keys.is_empty() {
            return Err(ServerError::NoKeysOnPublicAddress { addr });
        }
        Ok(())
    }

    /// The handle that starts a drain or cancels at once.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.drain.clone())
    }

    /// The routes, with auth, the body limit and one log line per request.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let protected = Router::new()
            .route("/metrics", get(routes::metrics))
            .route("/jobs/execute", post(routes::execute))
            .route("/v1/jobs", post(routes::create).get(routes::list))
            .route("/v1/jobs/{id}", get(routes::show).delete(routes::cancel))
            .route("/v1/jobs/{id}/logs", get(routes::logs))
            .route_layer(axum::middleware::from_fn_with_state(
                self.keys.clone(),
                auth::require_key,
            ));
        let limit =
            usize::try_from(state.config.server.max_request_bytes.bytes()).unwrap_or(usize::MAX);
        Router::new()
            .route("/health", get(routes::health))
            .merge(protected)
            .fallback(routes::no_route)
            .method_not_allowed_fallback(routes::wrong_method)
            .layer(DefaultBodyLimit::disable())
            .layer(RequestBodyLimitLayer::new(limit))
            // Outside the limit, which answers an announced oversized body by itself.
            .layer(axum::middleware::map_response_with_state(
                state.clone(),
                routes::json_413,
            ))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .with_state(state)
    }

    /// Serves on `listener` (over TLS when `server.tls` is set) until `shutdown` resolves or
    /// [`ShutdownHandle::begin_drain`] is called, then drains: new jobs get 503, queued jobs
    /// are cancelled, running jobs may finish until `server.drain_timeout` (or
    /// [`ShutdownHandle::cancel_now`]), then are cancelled; once every job has ended and its
    /// environment is removed, open requests are answered and this returns.
    ///
    /// # Errors
    /// [`ServerError::NoKeysOnPublicAddress`] for a non-loopback listener without keys;
    /// [`ServerError::Tls`] when the certificate or key cannot be used;
    /// [`ServerError::Serve`] when the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        self.check_listen(addr)?;
        let tls = match (
            &self.state.config.server.tls.cert,
            &self.state.config.server.tls.key,
        ) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let handle = self.shutdown_handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.begin_drain();
        });
        let jobs = self.state.jobs.clone();
        let mut phase = self.drain.subscribe();
        let drained = async move {
            let _ = phase.wait_for(|p| *p != Phase::Serving).await;
            let cancel_now = {
                let (tx, rx) = watch::channel(*phase.borrow() == Phase::CancelNow);
                tokio::spawn(async move {
                    let _ = phase.wait_for(|p| *p == Phase::CancelNow).await;
                    let _ = tx.send(true);
                });
                rx
            };
            jobs.drain(cancel_now).await;
        };
        let app = self.router();
        tracing::info!(%addr, tls = tls.is_some(), "serving");
        match tls {
            Some(config) => {
                let listener =
                    tls::TlsListener::new(listener, config).map_err(ServerError::Serve)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(drained)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(drained)
                    .await
            }
        }
        .map_err(ServerError::Serve)
    }
}
