//! Client-side flow control of one engine's API requests: at most
//! [`KubernetesConfig::max_concurrent_writes`](crate::KubernetesConfig::max_concurrent_writes)
//! creates and deletes in flight, and a server's "slow down" (429, with its `Retry-After`)
//! heard by every request of the engine, not only the one that was answered 429: while the
//! pause lasts, new requests wait before they are sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use kube::client::Body;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// A pause every request of one engine observes (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Pause {
    until: Mutex<Option<Instant>>,
}

impl Pause {
    /// Makes every request sent in the next `delay` wait until it is over (a longer pause
    /// already in force stays).
    pub(crate) fn hold(&self, delay: Duration) {
        let end = Instant::now() + delay;
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if until.is_none_or(|u| u < end) {
            *until = Some(end);
        }
    }

    /// When the pause in force ends, if one is.
    pub(crate) fn until(&self) -> Option<Instant> {
        let until = *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.filter(|u| *u > Instant::now())
    }
}

/// The flow control layer: `writes` permits and the shared `pause`.
#[derive(Debug, Clone)]
pub(crate) struct FlowLayer {
    writes: Arc<Semaphore>,
    pause: Arc<Pause>,
}

impl FlowLayer {
    pub(crate) fn new(max_writes: usize, pause: Arc<Pause>) -> Self {
        Self {
            writes: Arc::new(Semaphore::new(max_writes.max(1))),
            pause,
        }
    }
}

impl<S> Layer<S> for FlowLayer {
    type Service = Flow<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Flow {
            inner,
            writes: self.writes.clone(),
            pause: self.pause.clone(),
        }
    }
}

/// The service of [`FlowLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Flow<S> {
    inner: S,
    writes: Arc<Semaphore>,
    pause: Arc<Pause>,
}

/// Creates and deletes: what the semaphore bounds.
fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::DELETE)
}

impl<S> Service<Request<Body>> for Flow<S>
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per request, after the pause and the permit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let writes = self.writes.clone();
        let pause = self.pause.clone();
        Box::pin(async move {
            while let Some(until) = pause.until() {
                tokio::time::sleep_until(until).await;
            }
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = if is_write(req.method()) {
                writes.acquire_owned().await.ok()
            } else {
                None
            };
            inner.oneshot(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_lasts_its_longest_hold() {
        let pause = Pause::default();
        assert!(pause.until().is_none());
        pause.hold(Duration::from_millis(300));
        pause.hold(Duration::from_millis(10));
        let until = pause.until().expect("held");
        assert!(until >= Instant::now() + Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(pause.until().is_none());
    }

    /// Sends `n` requests of `method` at once through a flow of `max` writes; the most that
    /// were in flight together.
    async fn most_in_flight(method: Method, max: usize, n: usize) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (a, b) = (now.clone(), most.clone());
        let inner = tower::service_fn(move |_req: Request<Body>| {
            let (now, most) = (a.clone(), b.clone());
            async move {
                let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(in_flight, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let flow = FlowLayer::new(max, Arc::new(Pause::default())).layer(inner);
        let calls = (0..n).map(|_| {
            let req = Request::builder()
                .method(method.clone())
                .uri("/api/v1/namespaces/default/pods")
                .body(Body::empty())
                .expect("request");
            flow.clone().oneshot(req)
        });
        for r in futures_util::future::join_all(calls).await {
            r.expect("call");
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn writes_are_bounded_and_reads_are_not() {
        assert_eq!(most_in_flight(Method::POST, 3, 12).await, 3);
        assert_eq!(most_in_flight(Method::DELETE, 1, 5).await, 1);
        assert_eq!(most_in_flight(Method::GET, 1, 8).await, 8);
    }
}
