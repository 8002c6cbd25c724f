//! Retrying idempotent daemon calls when the connection fails, as engine-k8s's `retry.rs`
//! does for the Kubernetes API.
//!
//! A remote daemon is reached through proxies, ssh transports and networks that drop
//! connections; a local daemon restarts. berth repeats a call when, and only when, both hold:
//! - the connection failed (refused, reset, aborted, broken pipe, or closed before the answer
//!   came), not the daemon answering with an error and not a timeout (a timed-out call may
//!   still be running, and waiting again would double a long wait);
//! - the call only reads (inspect, list, version, info, ping, logs, exec inspect): repeating
//!   it cannot change anything. Creates, starts, execs, uploads and removals are never
//!   repeated here, so a dropped connection never creates a second container or runs a
//!   command twice; they fail with [`berth_engine_core::Error::Unavailable`] instead.
//!
//! The delay doubles from [`FIRST_DELAY`] up to [`MAX_DELAY`], for at most [`MAX_RETRIES`]
//! retries (3.1 s of waiting in all), so a CLI user hears about a dead daemon within seconds.

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use bollard::errors::Error as BollardError;

/// At most this many retries of one call.
pub(crate) const MAX_RETRIES: u32 = 5;
/// The first back-off delay.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest back-off delay.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(4);

/// Whether `err` is the connection failing before or while the daemon answered (see the
/// module docs); a daemon's error answer, a timeout or a bad request is not.
pub(crate) fn is_connection_failure(err: &BollardError) -> bool {
    // bollard's variants are `#[error(transparent)]`: their `source()` skips the wrapped
    // error itself, so the chain starts at the wrapped error.
    let first: &(dyn std::error::Error + 'static) = match err {
        BollardError::HyperLegacyError { err } if err.is_connect() => return true,
        BollardError::HyperLegacyError { err } => err,
        BollardError::HyperResponseError { err } => err,
        BollardError::IOError { err } => err,
        _ => return false,
    };
    let mut source = Some(first);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::NotConnected
                    | ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            // "connection closed before message completed"
            if hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// The wait before retry number `attempt` (1-based).
pub(crate) fn delay(attempt: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

/// Runs the idempotent `call`, repeating it after a connection failure with back-off (see
/// the module docs). `step` names the call in the debug log. Only for calls that read.
pub(crate) async fn idempotent<T, F, Fut>(step: &str, mut call: F) -> Result<T, BollardError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BollardError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if attempt < MAX_RETRIES && is_connection_failure(&e) => {
                attempt += 1;
                let wait = delay(attempt);
                tracing::debug!(step, attempt, ?wait, error = %e, "retrying a Docker call after a connection failure");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn io(kind: ErrorKind) -> BollardError {
        BollardError::IOError {
            err: std::io::Error::new(kind, "test"),
        }
    }

    #[test]
    fn connection_failures_are_told_from_answers_and_timeouts() {
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(is_connection_failure(&io(kind)), "{kind:?}");
        }
        assert!(!is_connection_failure(&io(ErrorKind::PermissionDenied)));
        assert!(!is_connection_failure(&io(ErrorKind::NotFound)));
        assert!(!is_connection_failure(&BollardError::RequestTimeoutError));
        assert!(!is_connection_failure(
            &BollardError::DockerResponseServerError {
                status_code: 500,
                message: "connection reset by peer".into(),
            }
        ));
    }

    #[test]
    fn delays_double_up_to_a_cap() {
        let backoff: Vec<Duration> = (1..=6).map(delay).collect();
        assert_eq!(
            backoff,
            [100, 200, 400, 800, 1600, 3200].map(Duration::from_millis)
        );
        assert_eq!(delay(40), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_connection_failures_only_and_gives_up() {
        let calls = AtomicU32::new(0);
        let out = idempotent("test", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(io(ErrorKind::ConnectionReset))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 2);

        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = idempotent("test", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(io(ErrorKind::ConnectionRefused)) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), MAX_RETRIES + 1);

        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = idempotent("test", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(BollardError::DockerResponseServerError {
                    status_code: 404,
                    message: "no such container".into(),
                })
            }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
