//! The engine's shared view of berth's pods: one list and watch of the namespace's pods with
//! berth's label (kube's runtime watcher feeding a reflector store), started on first use,
//! read by exec (is the pod still running?) and by start (has it started yet?) instead of a
//! GET per exec and a watch per start.
//!
//! The view is used only while it is known to be current: from its first complete list until
//! the watch fails, and again after the watcher has listed anew (which it does after a 410
//! Gone, so no event is lost). Meanwhile, and for good when the account may not list or watch
//! pods (RBAC 403), callers fall back to asking the API server as before. A view that is
//! merely behind (a delete not yet seen) is caught by the exec itself: the API server answers
//! 404 to an exec in a deleted pod, mapped to the same "environment gone" error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_engine_core::{LABEL_MANAGED_BY, MANAGED_BY_VALUE};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::OnceCell;

use crate::KubernetesEngine;

/// How long the API server is asked to keep each watch of the view open; the watcher resumes
/// from the last resource version after it (and after `timeoutSeconds` plus a margin of
/// silence, which it takes for a dead connection).
const WATCH_SECONDS: u32 = 60;

/// How long the first list may take before callers stop waiting for it and ask the API
/// server themselves (the view keeps trying in the background).
const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);

/// The engine's view (see the module docs); empty until first used.
#[derive(Default)]
pub(crate) struct PodView {
    shared: OnceCell<Option<Arc<Shared>>>,
    /// Pod lookups so far (see [`KubernetesEngine::pod_view_for_lookup`]).
    lookups: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PodView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodView").finish_non_exhaustive()
    }
}

/// A running view.
pub(crate) struct Shared {
    store: Store<Pod>,
    /// Bumped on every change the watcher reports (and when it fails), for waiters.
    changed: tokio::sync::watch::Sender<u64>,
    /// True while the store reflects the cluster: after a complete list, until an error.
    current: AtomicBool,
    /// The account may not list or watch pods: the view is given up for good.
    forbidden: AtomicBool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for PodView {
    fn drop(&mut self) {
        if let Some(Some(shared)) = self.shared.get() {
            if let Some(task) = shared
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                task.abort();
            }
        }
    }
}

/// Whether a watcher error is the API server refusing the account (RBAC).
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => crate::errors::status(e).is_some_and(|s| s.code == 403),
        watcher::Error::WatchError(s) => s.code == 403,
        watcher::Error::NoResourceVersion => false,
    }
}

impl Shared {
    /// Whether the store may be trusted now.
    pub(crate) fn current(&self) -> bool {
        self.current.load(Ordering::Acquire) && !self.forbidden.load(Ordering::Acquire)
    }

    /// The cached pods whose labels include every `k=v` of `selector`.
    pub(crate) fn pods_matching(&self, selector: &str) -> Vec<Arc<Pod>> {
        let wanted: Vec<(&str, &str)> = selector
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        self.store.state_filter(|pod| {
            let empty = BTreeMap::new();
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            wanted
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The cached pod named `name`.
    pub(crate) fn pod(&self, name: &str, namespace: &str) -> Option<Arc<Pod>> {
        self.store
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// A receiver that sees every change of the view.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl KubernetesEngine {
    /// The shared view of berth's pods when it can be used now; `None` means ask the API
    /// server (the account may not watch, or the view is catching up).
    pub(crate) async fn pod_view(&self) -> Option<Arc<Shared>> {
        let shared = self
            .view
            .shared
            .get_or_init(|| async { self.start_view().await })
            .await
            .clone()?;
        shared.current().then_some(shared)
    }

    /// [`Self::pod_view`] for a pod lookup (exec, copy): the first lookup of an engine that
    /// has not started its view yet asks the API server instead, so that a one-shot process
    /// (a CLI command) does not list every pod of the namespace to run one command; from the
    /// second on, the view is started and read.
    pub(crate) async fn pod_view_for_lookup(&self) -> Option<Arc<Shared>> {
        if self.view.lookups.fetch_add(1, Ordering::Relaxed) == 0 && !self.view.shared.initialized()
        {
            return None;
        }
        self.pod_view().await
    }

    async fn start_view(&self) -> Option<Arc<Shared>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let (store, writer) = reflector::store();
        let config = watcher::Config::default()
            .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"))
            .timeout(WATCH_SECONDS);
        let shared = Arc::new(Shared {
            store: store.clone(),
            changed: tokio::sync::watch::Sender::new(0),
            current: AtomicBool::new(false),
            forbidden: AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        let namespace = self.config.namespace.clone();
        let task = tokio::spawn(async move {
            let stream = reflector::reflector(
                writer,
                watcher(api, config)
                    // A pod's status is what the view is for; the rest of its bulk is not.
                    .map(|e| {
                        e.map(|e| {
                            e.modify(|pod| {
                                pod.metadata.managed_fields = None;
                            })
                        })
                    })
                    .default_backoff(),
            );
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                match item {
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(_) => shared.current.store(true, Ordering::Release),
                    Err(e) if is_forbidden(&e) => {
                        tracing::debug!(
                            namespace,
                            error = %e,
                            "the account may not watch pods; asking the API server on every use instead"
                        );
                        shared.forbidden.store(true, Ordering::Release);
                        shared.changed.send_modify(|n| *n += 1);
                        return;
                    }
                    Err(e) => {
                        // Until the watcher has listed or watched again, ask the server.
                        tracing::debug!(namespace, error = %e, "the pod view's watch failed; resyncing");
                        shared.current.store(false, Ordering::Release);
                    }
                }
                shared.changed.send_modify(|n| *n += 1);
            }
        });
        *shared
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        let mut changed = shared.subscribe();
        let ready = async {
            loop {
                if shared.current() || shared.forbidden.load(Ordering::Acquire) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(FIRST_LIST_PATIENCE, ready).await;
        if shared.forbidden.load(Ordering::Acquire) {
            return None;
        }
        Some(shared)
    }
}
