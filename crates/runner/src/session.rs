//! A [`Session`]: one engine and any number of named environments (multi-agent), all stopped
//! together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_engine_core::{
    ContainerEngine, DetachedCommands, EnvironmentId, EnvironmentSpec, ExecOutput, ExecRequest,
    SessionId, Shell, ShellOptions, StopOutcome,
};
use futures_util::future::join_all;

use crate::error::{Result, RunnerError};
use crate::owner::Owner;

/// One engine and the environments a session started on it.
///
/// Every environment carries the session id, a creation time and this process as its owner in
/// its labels. [`Session::shutdown`] stops them all and reports every failure; dropping the
/// session stops them too (inside a multi-thread Tokio runtime, before the drop returns; see
/// the `Drop` impl for why that waits), unless [`Session::detach`] handed them over.
///
/// A name is reserved when its start begins: a second start of the same name fails at once,
/// and an environment whose start was still running when the session shut down is stopped
/// as soon as it is up, so none escapes.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
/// use berth_runner::session::Session;
///
/// async fn agents(engine: Arc<dyn ContainerEngine>) -> berth_runner::Result<()> {
///     let template = EnvironmentSpec::new(ImageRef::new("busybox:1.36")?, SessionId::generate());
///     let session = Session::new(engine, template);
///     session.start_many(&["planner", "coder", "tester"]).await?;
///     let out = session.exec("coder", ExecRequest::shell("echo hi")).await?;
///     assert_eq!(out.stdout_lossy(), "hi\n");
///     session.shutdown().await
/// }
/// ```
pub struct Session {
    engine: Arc<dyn ContainerEngine>,
    template: EnvironmentSpec,
    envs: Mutex<Envs>,
    /// Where starts claim their environments from, if anywhere.
    pool: Option<crate::pool::Pool>,
}

/// The session's names: reserved while starting, then bound to an environment.
#[derive(Debug, Default)]
struct Envs {
    slots: BTreeMap<String, Slot>,
    /// Bumped by every shutdown and detach, so a start that began before one knows its
    /// reservation was cleared.
    epoch: u64,
}

#[derive(Debug, Clone)]
enum Slot {
    Starting { epoch: u64 },
    Running(EnvironmentId),
}

impl Envs {
    /// Takes every running environment and clears every reservation.
    fn take_running(&mut self) -> BTreeMap<String, EnvironmentId> {
        self.epoch += 1;
        std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Running(id) => Some((name, id)),
                Slot::Starting { .. } => None,
            })
            .collect()
    }
}

/// Clears a start's reservation if the start ends without binding it (failure, or the start
/// future dropped).
struct Reservation<'a> {
    session: &'a Session,
    name: &'a str,
    epoch: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut envs = self.session.envs();
        if matches!(envs.slots.get(self.name), Some(Slot::Starting { epoch }) if *epoch == self.epoch)
        {
            envs.slots.remove(self.name);
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.template.session)
            .field("envs", &self.envs)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session on `engine`; environments are made from `template` (its session id is the
    /// session's) with the owner labels of this process added.
    #[must_use]
    pub fn new(engine: Arc<dyn ContainerEngine>, mut template: EnvironmentSpec) -> Self {
        template.labels.extend(Owner::current().labels());
        Self {
            engine,
            template,
            envs: Mutex::new(Envs::default()),
            pool: None,
        }
    }

    /// Claims every environment from `pool` (a cold start from the pool's spec when it is
    /// empty) instead of starting it from the template; the template's labels (the owner,
    /// a detached marker) go on the claimed environment. Make the template with
    /// [`crate::pool::session_spec`] so that what the session says it runs is what it gets.
    #[must_use]
    pub fn with_pool(mut self, pool: crate::pool::Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The session id.
    #[must_use]
    pub fn id(&self) -> &SessionId {
        &self.template.session
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Arc<dyn ContainerEngine> {
        &self.engine
    }

    /// The spec every environment of the session is made from (with its own name).
    #[must_use]
    pub fn template(&self) -> &EnvironmentSpec {
        &self.template
    }

    fn envs(&self) -> std::sync::MutexGuard<'_, Envs> {
        self.envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the environment `name`.
    ///
    /// # Errors
    /// [`RunnerError::NameInUse`] when the session already has (or is starting) an
    /// environment of that name; [`RunnerError::ShutDownWhileStarting`] when the session
    /// shut down (or detached) while this start ran, after stopping what it started; the
    /// engine's error otherwise.
    pub async fn start(&self, name: &str) -> Result<EnvironmentId> {
        let (id, ()) = self
            .bring_up(name, |spec| async move {
                let id = match &self.pool {
                    Some(pool) => {
                        pool.claim(self.id().clone(), name, self.template.labels.clone())
                            .await?
                            .id
                    }
                    None => self.engine.start(&spec).await?,
                };
                Ok((id, ()))
            })
            .await?;
        Ok(id)
    }

    /// Runs one command in a fresh environment `name` that nothing else will exec into
    /// ([`ContainerEngine::run_once`]): the environment belongs to the session until it is
    /// stopped (by [`Session::stop`] or [`Session::shutdown`], which the caller still calls once
    /// the command ended: on some backends it ended with the command already).
    ///
    /// # Errors
    /// As [`Session::start`]; the engine's [`command_not_found`](berth_engine_core::command_not_found)
    /// when the program is not there.
    pub async fn run_once(
        &self,
        name: &str,
        req: ExecRequest,
    ) -> Result<(EnvironmentId, berth_engine_core::ExecProcess)> {
        self.bring_up(name, |spec| async move {
            Ok(match &self.pool {
                // A pool member is already running: claimed, then the command exec'd into it.
                Some(pool) => {
                    let id = pool
                        .claim(self.id().clone(), name, self.template.labels.clone())
                        .await?
                        .id;
                    berth_engine_core::exec_in_started(self.engine.as_ref(), id, req).await?
                }
                None => self.engine.run_once(&spec, req).await?,
            })
        })
        .await
    }

    /// Reserves `name`, brings an environment up with `up` (given the session's spec named
    /// `name`) and binds it to the name; what `up` returns beside the id comes back with it.
    /// When the session shut down (or detached) meanwhile, that is dropped and the
    /// environment stopped, not escaped.
    async fn bring_up<T, F, Fut>(&self, name: &str, up: F) -> Result<(EnvironmentId, T)>
    where
        F: FnOnce(EnvironmentSpec) -> Fut,
        Fut: std::future::Future<Output = Result<(EnvironmentId, T)>>,
    {
        let epoch = {
            let mut envs = self.envs();
            if envs.slots.contains_key(name) {
                return Err(RunnerError::NameInUse {
                    session: self.id().clone(),
                    name: name.to_owned(),
                });
            }
            let epoch = envs.epoch;
            envs.slots.insert(name.to_owned(), Slot::Starting { epoch });
            epoch
        };
        let mut reservation = Reservation {
            session: self,
            name,
            epoch,
            armed: true,
        };
        let (id, value) = up(self.template.clone().with_name(name)).await?;
        let bound = {
            let mut envs = self.envs();
            let still_ours =
                envs.epoch == epoch && matches!(envs.slots.get(name), Some(Slot::Starting { .. }));
            if still_ours {
                envs.slots
                    .insert(name.to_owned(), Slot::Running(id.clone()));
            }
            still_ours
        };
        reservation.armed = false;
        if bound {
            return Ok((id, value));
        }
        drop(value);
        let stopped = self.engine.stop(&id).await;
        Err(RunnerError::ShutDownWhileStarting {
            session: self.id().clone(),
            name: name.to_owned(),
            stop_failed: stopped.err().map(Box::new),
        })
    }

    /// Starts several environments concurrently. Those that started stay in the session (and
    /// are stopped with it) even when another failed.
    ///
    /// # Errors
    /// The first failure.
    pub async fn start_many(&self, names: &[&str]) -> Result<Vec<EnvironmentId>> {
        join_all(names.iter().map(|n| self.start(n)))
            .await
            .into_iter()
            .collect()
    }

    /// The environment called `name`, once started.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<EnvironmentId> {
        match self.envs().slots.get(name) {
            Some(Slot::Running(id)) => Some(id.clone()),
            _ => None,
        }
    }

    /// Every started environment, by name.
    #[must_use]
    pub fn environments(&self) -> BTreeMap<String, EnvironmentId> {
        self.envs()
            .slots
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Running(id) => Some((name.clone(), id.clone())),
                Slot::Starting { .. } => None,
            })
            .collect()
    }

    /// Runs a command in the environment called `name`.
    ///
    /// # Errors
    /// [`RunnerError::UnknownName`] for a name the session has not started; the engine's
    /// error otherwise.
    pub async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecOutput> {
        let env = self.named(name)?;
        Ok(self.engine.exec(&env, req).await?)
    }

    fn named(&self, name: &str) -> Result<EnvironmentId> {
        self.get(name).ok_or_else(|| RunnerError::UnknownName {
            session: self.id().clone(),
            name: name.to_owned(),
        })
    }

    /// Opens a stateful shell in the environment called `name` (one per agent, as many as
    /// needed); it ends when dropped, closed, or when the environment stops.
    ///
    /// # Errors
    /// [`RunnerError::UnknownName`] for an unknown name; as [`Shell::open`] otherwise.
    pub async fn shell(&self, name: &str, options: ShellOptions) -> Result<Shell> {
        Ok(Shell::open(self.engine.clone(), &self.named(name)?, options).await?)
    }

    /// The detached commands of the environment called `name`.
    ///
    /// # Errors
    /// [`RunnerError::UnknownName`] for an unknown name.
    pub fn detached(&self, name: &str) -> Result<DetachedCommands> {
        Ok(DetachedCommands::new(
            self.engine.clone(),
            self.named(name)?,
        ))
    }

    /// Stops the environment called `name`.
    ///
    /// # Errors
    /// [`RunnerError::StopFailed`] with the engine's error.
    pub async fn stop(&self, name: &str) -> Result<StopOutcome> {
        let env = {
            let mut envs = self.envs();
            match envs.slots.remove(name) {
                Some(Slot::Running(id)) => id,
                Some(starting) => {
                    envs.slots.insert(name.to_owned(), starting);
                    return Ok(StopOutcome::AlreadyGone);
                }
                None => return Ok(StopOutcome::AlreadyGone),
            }
        };
        self.engine
            .stop(&env)
            .await
            .map_err(|source| RunnerError::StopFailed {
                env,
                source: Box::new(source),
            })
    }

    /// Stops every environment concurrently; starts still running stop theirs when they end.
    ///
    /// # Errors
    /// [`RunnerError::Shutdown`] listing every environment that did not stop (every stop is
    /// attempted).
    pub async fn shutdown(&self) -> Result<()> {
        let envs: Vec<EnvironmentId> = self.envs().take_running().into_values().collect();
        let results = join_all(envs.iter().map(|e| self.engine.stop(e))).await;
        let failures: Vec<_> = envs
            .into_iter()
            .zip(results)
            .filter_map(|(env, r)| r.err().map(|e| (env, e)))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RunnerError::Shutdown {
                session: self.id().clone(),
                failures,
            })
        }
    }

    /// Hands the started environments over to the caller: the session no longer stops them.
    /// A start still running is not handed over: it stops what it starts.
    #[must_use]
    pub fn detach(&self) -> BTreeMap<String, EnvironmentId> {
        self.envs().take_running()
    }
}

/// How long dropping a [`Session`] waits for its environments to stop.
const DROP_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for Session {
    /// Stops the environments before returning where it can, so that nothing outlives the
    /// session even when the runtime ends right after (a `main` returning).
    ///
    /// Why this waits: the stops need the engine's connections, which live on the caller's
    /// runtime, and a stop spawned in the background dies with that runtime. So inside a
    /// multi-thread Tokio runtime the drop waits in [`tokio::task::block_in_place`], which
    /// hands this worker's queued tasks to a fresh worker first: the runtime keeps its full
    /// capacity, and only the dropping task waits, for at most a minute (`DROP_STOP_LIMIT`). Call
    /// [`Session::shutdown`] to stop without waiting in a drop. On a current-thread runtime
    /// the stops can only be spawned; without a runtime nothing can be stopped. Either way
    /// `berth gc` finds what is left.
    fn drop(&mut self) {
        let envs: Vec<EnvironmentId> = self.envs().take_running().into_values().collect();
        if envs.is_empty() {
            return;
        }
        let session = self.id().clone();
        tracing::warn!(%session, count = envs.len(), "session dropped without shutdown; stopping its environments");
        let engine = self.engine.clone();
        let stop_all = async move {
            let stops = join_all(envs.iter().map(|e| engine.stop(e)));
            match tokio::time::timeout(DROP_STOP_LIMIT, stops).await {
                Ok(results) => {
                    for (env, result) in envs.iter().zip(results) {
                        if let Err(e) = result {
                            tracing::warn!(%env, error = %e, "could not stop a dropped session's environment; berth gc will find it");
                        }
                    }
                }
                Err(_) => tracing::warn!(
                    "a dropped session's environments did not stop within {DROP_STOP_LIMIT:?}; berth gc will find them"
                ),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(stop_all));
            }
            Ok(handle) => {
                tracing::warn!(%session, "on a current-thread runtime the stops run in the background; call Session::shutdown to wait for them");
                handle.spawn(stop_all);
            }
            Err(_) => {
                tracing::warn!(%session, "dropped outside a Tokio runtime: its environments keep running until berth gc")
            }
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
