//! The server's error type, and how each error answers over HTTP: a status and the JSON body
//! `{"error": "...", "field": "..."}` (`field` only where one field is to blame).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What went wrong, in the server or in a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No API key, or one that is not configured (one message for both, on purpose).
    #[error("a valid API key is needed: send it as X-API-Key: KEY or Authorization: Bearer KEY")]
    Unauthorized,
    /// The request is malformed: `field` names the culprit.
    #[error("invalid {field}: {reason}")]
    BadRequest {
        /// The field (`body` for the body as a whole).
        field: String,
        /// What was expected.
        reason: String,
    },
    /// A limit the request asks for is above the server's maximum.
    #[error("{field} {asked} is above the server's maximum {maximum} ({setting})")]
    OverLimit {
        /// The request field.
        field: &'static str,
        /// What the request asked for.
        asked: String,
        /// The server's maximum.
        maximum: String,
        /// The config key holding the maximum.
        setting: &'static str,
    },
    /// The request body is larger than `server.max_request_bytes`.
    #[error("the request body is larger than the server's maximum of {max} bytes (server.max_request_bytes)")]
    BodyTooLarge {
        /// The maximum in bytes.
        max: u64,
    },
    /// Every slot and every queue place is taken.
    #[error("the job queue is full ({queued} waiting, server.max_queued_jobs); retry after {retry_after}s")]
    QueueFull {
        /// Jobs waiting.
        queued: u64,
        /// Seconds to wait before retrying (the `Retry-After` header).
        retry_after: u64,
    },
    /// The server is draining for shutdown.
    #[error("the server is shutting down and takes no new jobs")]
    Draining,
    /// No job of that id (never one, or its record expired after `server.job_retention`).
    #[error("no job {id} (unknown, or its record expired after server.job_retention)")]
    JobNotFound {
        /// The id asked for.
        id: String,
    },
    /// No route of that method and path.
    #[error("no route {method} {path}; see GET /health and the /v1/jobs routes")]
    NoRoute {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// A known path asked with a method it does not take.
    #[error("{path} does not take {method}")]
    WrongMethod {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// A non-loopback listen address with no API key configured.
    #[error("refusing to listen on {addr} without API keys: anyone who can reach it could run jobs. Configure server.api_keys_file (--api-keys-file) or BERTH_SERVER_API_KEYS, or listen on a loopback address (server.listen / --listen 127.0.0.1:8080)")]
    NoKeysOnPublicAddress {
        /// The address.
        addr: SocketAddr,
    },
    /// The API keys file could not be read.
    #[error("cannot read the API keys file {path} (server.api_keys_file)")]
    ReadKeys {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("cannot use the TLS {what} {path} (server.tls): {reason}")]
    Tls {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Serving failed (the listener broke).
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

impl ServerError {
    /// A 400 naming `field`.
    pub(crate) fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The HTTP status this error answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::WrongMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::OverLimit { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::JobNotFound { .. } | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The request field to blame, if one is.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. } => Some(field),
            Self::OverLimit { field, .. } => Some(field),
            Self::BodyTooLarge { .. } => Some("body"),
            _ => None,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Some(field) = self.field() {
            body["field"] = field.into();
        }
        if let Self::OverLimit { maximum, .. } = &self {
            body["maximum"] = maximum.clone().into();
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Self::BodyTooLarge { .. } = self {
            // The rest of the body was never read: the connection cannot carry another
            // request, and a client that reused it would fail writing (a broken pipe).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::QueueFull { retry_after, .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}
