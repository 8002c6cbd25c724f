//! Warm pools for every front end: [`Pool`] fills a pool (a limit on concurrent starts,
//! never above `max`), claims from it (a cold start, with a log line, when it is empty),
//! replaces members idle past `idle_ttl`, drains it, and refills it in the background in a
//! long-lived process ([`Pool::refill_in_background`]).
//!
//! The members live in the engine, labelled with the pool's name and spec hash, so several
//! processes share one pool: the engine's claim is atomic across them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::backend::now_unix;
use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, EnvironmentState, EnvironmentStatus,
    ErrorKind, PoolClaim, PoolSpec, SessionId, LABEL_POOL_SPEC,
};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::error::Result;

/// A pool on an engine.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{ContainerEngine, EnvironmentSpec, ImageRef, PoolSpec, SessionId};
/// use berth_runner::pool::Pool;
///
/// async fn demo(engine: Arc<dyn ContainerEngine>) -> berth_runner::Result<()> {
///     let spec = EnvironmentSpec::new(ImageRef::new("busybox:1.36")?, SessionId::generate());
///     let pool = Pool::new(engine, PoolSpec::new("py", spec).with_min_ready(2), 2);
///     pool.fill(None).await?;
///     let claimed = pool.claim(SessionId::generate(), "main", Default::default()).await?;
///     println!("{} (warm: {})", claimed.id, claimed.warm);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Pool {
    engine: Arc<dyn ContainerEngine>,
    spec: PoolSpec,
    start_concurrency: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.spec.name)
            .field("start_concurrency", &self.start_concurrency)
            .finish_non_exhaustive()
    }
}

/// An environment handed out by [`Pool::claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Claimed {
    /// The environment.
    pub id: EnvironmentId,
    /// Whether it came from the pool (false: the pool was empty and it was started cold).
    pub warm: bool,
}

/// What [`Pool::fill`] or [`Pool::refill`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FillReport {
    /// Members started.
    pub started: Vec<EnvironmentId>,
    /// Members removed: idle past `idle_ttl`, exited, or of another spec.
    pub replaced: Vec<EnvironmentId>,
    /// Ready members afterwards.
    pub ready: usize,
    /// Start failures, as text (the first few).
    pub failures: Vec<String>,
}

/// One pool as `berth pool ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Its spec hash.
    pub spec_hash: String,
    /// Ready members (running, of the current spec, not idle past `idle_ttl`).
    pub ready: usize,
    /// Other unclaimed members (starting, stale, of an older spec).
    pub other: usize,
    /// `min_ready`.
    pub min_ready: usize,
    /// `max`.
    pub max: usize,
    /// `idle_ttl` in seconds.
    pub idle_ttl_secs: u64,
    /// The members.
    pub members: Vec<EnvironmentId>,
}

impl Pool {
    /// The pool `spec` on `engine`, starting at most `start_concurrency` members at once.
    #[must_use]
    pub fn new(engine: Arc<dyn ContainerEngine>, spec: PoolSpec, start_concurrency: usize) -> Self {
        Self {
            engine,
            spec,
            start_concurrency: start_concurrency.max(1),
        }
    }

    /// The pool's spec.
    #[must_use]
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// Whether `member` is ready to claim: running, of the current spec hash, not idle past
    /// `idle_ttl`.
    fn is_ready(&self, member: &EnvironmentStatus, now: u64) -> bool {
        member.state == EnvironmentState::Running
            && member.labels.get(LABEL_POOL_SPEC) == Some(&self.spec.spec_hash())
            && !self.is_stale(member, now)
    }

    /// Whether `member` should be replaced: exited, of another spec, or idle past `idle_ttl`.
    fn is_stale(&self, member: &EnvironmentStatus, now: u64) -> bool {
        let idle = member
            .created_unix_secs
            .is_some_and(|c| now.saturating_sub(c) > self.spec.idle_ttl.as_secs());
        idle || member.state == EnvironmentState::Exited
            || member.labels.get(LABEL_POOL_SPEC) != Some(&self.spec.spec_hash())
    }

    /// The pool as it is now.
    ///
    /// # Errors
    /// The engine's error when listing fails.
    pub async fn status(&self) -> Result<PoolStatus> {
        let members = self.engine.list_pool_members(&self.spec.name).await?;
        let now = now_unix();
        let ready = members.iter().filter(|m| self.is_ready(m, now)).count();
        Ok(PoolStatus {
            name: self.spec.name.clone(),
            spec_hash: self.spec.spec_hash(),
            ready,
            other: members.len() - ready,
            min_ready: self.spec.min_ready,
            max: self.spec.max,
            idle_ttl_secs: self.spec.idle_ttl.as_secs(),
            members: members.into_iter().map(|m| m.id).collect(),
        })
    }

    /// Removes stale members (see [`Pool::status`]), then starts members until `size` are
    /// ready (default `min_ready`), never more than `max` unclaimed members in all, at most
    /// `start_concurrency` at once.
    ///
    /// # Errors
    /// The engine's error when listing fails, or when every start failed; single failures
    /// are in the report.
    pub async fn fill(&self, size: Option<usize>) -> Result<FillReport> {
        let target = size.unwrap_or(self.spec.min_ready).min(self.spec.max);
        let mut report = FillReport::default();
        let now = now_unix();
        let members = self.engine.list_pool_members(&self.spec.name).await?;
        let mut live = 0;
        let mut ready = 0;
        for member in members {
            if self.is_stale(&member, now) {
                // Stale members are only stopped, never claimed: a claim takes running
                // members of the current hash, and an idle one is retired here first.
                if self.engine.stop(&member.id).await.is_ok() {
                    report.replaced.push(member.id);
                }
            } else {
                live += 1;
                if self.is_ready(&member, now) {
                    ready += 1;
                }
            }
        }
        let room = self.spec.max.saturating_sub(live);
        let wanted = target.saturating_sub(ready).min(room);
        let started: Vec<_> = stream::iter(0..wanted)
            .map(|_| self.engine.start_pool_member(&self.spec))
            .buffer_unordered(self.start_concurrency)
            .collect()
            .await;
        let mut first_error = None;
        for result in started {
            match result {
                Ok(id) => report.started.push(id),
                Err(e) => {
                    if report.failures.len() < 5 {
                        report.failures.push(e.to_string());
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if report.started.is_empty() {
            if let Some(e) = first_error {
                return Err(e.into());
            }
        }
        report.ready = ready + report.started.len();
        Ok(report)
    }

    /// [`Pool::fill`] to `min_ready`.
    ///
    /// # Errors
    /// As [`Pool::fill`].
    pub async fn refill(&self) -> Result<FillReport> {
        self.fill(None).await
    }

    /// Claims a member for `session`'s environment `name`, with `labels` (owner, detached
    /// marker...) and the pool spec's lifetime counted from now; when the pool has none (or
    /// the engine keeps no pools), logs it and starts one cold from the pool's spec.
    ///
    /// # Errors
    /// The engine's error from the claim or the cold start.
    pub async fn claim(
        &self,
        session: SessionId,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Claimed> {
        let mut claim: PoolClaim = self.spec.claim_for(session.clone(), name);
        claim.labels.extend(labels.clone());
        let begun = Instant::now();
        match self.engine.claim_pool_member(&claim).await {
            Ok(Some(id)) => {
                tracing::debug!(pool = %self.spec.name, env = %id, elapsed = ?begun.elapsed(), "claimed a warm member");
                return Ok(Claimed { id, warm: true });
            }
            Ok(None) => tracing::warn!(
                pool = %self.spec.name,
                "pool {} is empty: starting cold",
                self.spec.name
            ),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                tracing::warn!(pool = %self.spec.name, error = %e, "no warm pool on this engine: starting cold");
            }
            Err(e) => return Err(e.into()),
        }
        let mut spec: EnvironmentSpec = self.spec.spec.clone().with_name(name);
        spec.session = session;
        spec.labels.extend(labels);
        let id = self.engine.start(&spec).await?;
        Ok(Claimed { id, warm: false })
    }

    /// Stops every unclaimed member (claimed ones belong to their sessions).
    ///
    /// # Errors
    /// The engine's error when listing fails; a failed stop is logged and counted out.
    pub async fn drain(&self) -> Result<Vec<EnvironmentId>> {
        let members = self.engine.list_pool_members(&self.spec.name).await?;
        let mut stopped = Vec::new();
        for member in members {
            match self.engine.stop(&member.id).await {
                Ok(_) => stopped.push(member.id),
                Err(e) => {
                    tracing::warn!(env = %member.id, error = %e, "could not stop a pool member")
                }
            }
        }
        Ok(stopped)
    }

    /// Refills the pool every `every` (and replaces idle members) until the handle drops:
    /// what a long-lived process (`berth serve`, an embedding program) runs.
    #[must_use]
    pub fn refill_in_background(&self, every: Duration) -> Refiller {
        let pool = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match pool.refill().await {
                    Ok(report) if !report.started.is_empty() || !report.replaced.is_empty() => {
                        tracing::debug!(pool = %pool.spec.name, started = report.started.len(), replaced = report.replaced.len(), "refilled");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(pool = %pool.spec.name, error = %e, "refilling the pool failed")
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Refiller { task }
    }
}

/// The template of a session whose environments come from `pool`: the pool's spec, with
/// `session` (a fresh one when `None`) and the environment's `name`.
///
/// # Errors
/// The engine's `InvalidSpec` for a bad name.
pub fn session_spec(
    pool: &PoolSpec,
    session: Option<SessionId>,
    name: &str,
) -> Result<EnvironmentSpec> {
    let mut spec = pool.spec.clone().with_name(name);
    spec.session = session.unwrap_or_else(SessionId::generate);
    spec.validate()?;
    Ok(spec)
}

/// The background refiller of a pool; dropping it stops refilling (the members stay).
#[derive(Debug)]
pub struct Refiller {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Refiller {
    fn drop(&mut self) {
        self.task.abort();
    }
}
