//! A test switch: expire every open watch now ([`Sim::expire_watches`]), as the API server
//! does when etcd compacts past a watcher's resourceVersion: each open watch gets an `ERROR`
//! event with a 410 Expired status and ends, and a resume from an older resourceVersion is
//! refused the same way, so the client must list again.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Sim;

/// The expiry state of one simulator.
#[derive(Debug)]
pub(crate) struct Expiry {
    /// Resource versions older than this are compacted.
    before: AtomicU64,
    /// Bumped to end every open watch.
    cut: tokio::sync::watch::Sender<u64>,
}

impl Default for Expiry {
    fn default() -> Self {
        Self {
            before: AtomicU64::new(0),
            cut: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Expiry {
    /// Whether a watch resuming from `since` must be refused; `Some(oldest)` when so.
    pub(crate) fn refuses(&self, since: Option<u64>) -> Option<u64> {
        let before = self.before.load(Ordering::SeqCst);
        since.filter(|s| *s < before).map(|_| before)
    }

    /// Wakes when the open watches are to end.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cut.subscribe()
    }
}

impl Sim {
    /// Expires every open watch now with 410 Expired (see the module docs); resumes from a
    /// resourceVersion older than the current one are refused with 410 too.
    pub fn expire_watches(&self) {
        let now = *self.inner.store.subscribe_changes().borrow();
        self.inner.expiry.before.store(now, Ordering::SeqCst);
        self.inner.expiry.cut.send_modify(|n| *n += 1);
    }
}
