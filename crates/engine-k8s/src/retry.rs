//! Which API requests are retried, and how long to wait: a `tower` retry policy installed in
//! place of kube's default one.
//!
//! kube's default retries only 429, 503 and 504, up to 15 times with a back-off that may grow
//! to 1000 s. berth retries every 5xx a server or proxy can answer while it is briefly
//! unhealthy, but only where repeating the request is harmless, and it gives up within
//! seconds, so a CLI user hears about a broken cluster instead of waiting on it:
//! - 429 and 503 for any method: the server says it did not process the request;
//! - 500, 502 and 504 only for GET, HEAD and DELETE: the request may have been processed, and
//!   repeating a POST could create a second Job;
//! - `Retry-After` (seconds) is honoured up to [`MAX_SERVER_DELAY`]; otherwise the delay
//!   doubles from [`FIRST_DELAY`] up to [`MAX_DELAY`], for at most [`MAX_RETRIES`] retries.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use tower::retry::Policy;
use tower::BoxError;

/// At most this many retries of one request.
pub(crate) const MAX_RETRIES: u32 = 5;
/// The first back-off delay.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest back-off delay.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(4);
/// The longest `Retry-After` honoured; a server asking for more is waited on this long.
pub(crate) const MAX_SERVER_DELAY: Duration = Duration::from_secs(30);

/// The retry policy of berth's Kubernetes client (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiRetry {
    attempt: u32,
    /// The engine's shared pause: a 429 holds it for its delay, so that the engine's other
    /// requests wait too instead of adding to the load.
    pause: Option<std::sync::Arc<crate::flow::Pause>>,
}

impl ApiRetry {
    /// The policy, telling `pause` about every 429.
    pub(crate) fn sharing(pause: std::sync::Arc<crate::flow::Pause>) -> Self {
        Self {
            attempt: 0,
            pause: Some(pause),
        }
    }

    /// Whether a response with `status` to a `method` request may be repeated.
    pub(crate) fn retryable(method: &Method, status: StatusCode) -> bool {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => true,
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT => {
                matches!(*method, Method::GET | Method::HEAD | Method::DELETE)
            }
            _ => false,
        }
    }

    /// The wait before retry number `attempt` (1-based), given the server's `Retry-After`.
    pub(crate) fn delay(attempt: u32, retry_after: Option<&str>) -> Duration {
        if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
            return Duration::from_secs(secs).min(MAX_SERVER_DELAY);
        }
        FIRST_DELAY
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(MAX_DELAY)
    }
}

impl<B> Policy<Request<Body>, Response<B>, BoxError> for ApiRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let response = result.as_ref().ok()?;
        if self.attempt >= MAX_RETRIES || !Self::retryable(req.method(), response.status()) {
            return None;
        }
        self.attempt += 1;
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        let delay = Self::delay(self.attempt, retry_after);
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            if let Some(pause) = &self.pause {
                pause.hold(delay);
            }
        }
        tracing::debug!(
            method = %req.method(),
            uri = %req.uri(),
            status = %response.status(),
            attempt = self.attempt,
            ?delay,
            "retrying a Kubernetes API request"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        // A streamed body cannot be replayed; such a request is simply not retried.
        let body = req.body().try_clone()?;
        let mut clone = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone())
            .version(req.version())
            .body(body)
            .ok()?;
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harmless_repeats_are_retried() {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::PATCH] {
            assert!(ApiRetry::retryable(&method, StatusCode::TOO_MANY_REQUESTS));
            assert!(ApiRetry::retryable(
                &method,
                StatusCode::SERVICE_UNAVAILABLE
            ));
            assert!(!ApiRetry::retryable(&method, StatusCode::NOT_FOUND));
            assert!(!ApiRetry::retryable(&method, StatusCode::FORBIDDEN));
            assert!(!ApiRetry::retryable(&method, StatusCode::CONFLICT));
        }
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
        ] {
            assert!(ApiRetry::retryable(&Method::GET, status));
            assert!(ApiRetry::retryable(&Method::DELETE, status));
            assert!(!ApiRetry::retryable(&Method::POST, status), "{status}");
            assert!(!ApiRetry::retryable(&Method::PATCH, status), "{status}");
        }
    }

    #[test]
    fn delays_double_up_to_a_cap_and_honour_retry_after() {
        let backoff: Vec<Duration> = (1..=6).map(|n| ApiRetry::delay(n, None)).collect();
        assert_eq!(
            backoff,
            [100, 200, 400, 800, 1600, 3200].map(Duration::from_millis)
        );
        assert_eq!(ApiRetry::delay(9, None), MAX_DELAY);
        assert_eq!(ApiRetry::delay(1, Some("2")), Duration::from_secs(2));
        assert_eq!(ApiRetry::delay(1, Some("86400")), MAX_SERVER_DELAY);
        // An HTTP date is not parsed: fall back to the back-off.
        assert_eq!(
            ApiRetry::delay(1, Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            FIRST_DELAY
        );
    }
}
