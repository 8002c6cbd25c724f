//! A start's waiting, told to the caller as it changes: the hook behind `berth up`'s progress.
//! Tracing hears the same (at info); this is for a caller that shows it to a person.

use std::future::Future;
use std::sync::Arc;

type OnWait = Arc<dyn Fn(&str) + Send + Sync>;

tokio::task_local! {
    static ON_WAIT: OnWait;
}

/// Runs `fut`, telling `on_wait` in words what a [`crate::KubernetesEngine`] start inside it
/// is waiting for each time that changes ("a scale-up (…)", "a volume claim to bind (…)").
/// Outside such a scope a start tells no one.
pub async fn report_waits<F: Future>(
    on_wait: impl Fn(&str) + Send + Sync + 'static,
    fut: F,
) -> F::Output {
    ON_WAIT.scope(Arc::new(on_wait), fut).await
}

/// Tells the caller's [`report_waits`], if any, what is awaited now.
pub(crate) fn waiting_for(what: &dyn std::fmt::Display) {
    // Outside a scope there is no one to tell.
    let _ = ON_WAIT.try_with(|f| f(&what.to_string()));
}
