//! A [`Session`]: one engine and any number of named environments (multi-agent), all stopped
//! together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_engine_core::{
    ContainerEngine, DetachedCommands, EnvironmentId, EnvironmentSpec, Error, ExecOutput,
    ExecRequest, Result, SessionId, Shell, ShellOptions, StopOutcome,
};
use futures_util::future::join_all;

use crate::owner::Owner;

/// One engine and the environments a session started on it.
///
/// Every environment carries the session id, a creation time and this process as its owner in
/// its labels. [`Session::shutdown`] stops them all and reports the outcome; dropping the
/// session stops them too (inside a multi-thread Tokio runtime, before the drop returns),
/// unless [`Session::detach`] handed them over.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
/// use berth_runner::session::Session;
///
/// async fn agents(engine: Arc<dyn ContainerEngine>) -> berth_engine_core::Result<()> {
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
    envs: Mutex<BTreeMap<String, EnvironmentId>>,
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
            envs: Mutex::new(BTreeMap::new()),
        }
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

    fn envs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EnvironmentId>> {
        self.envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the environment `name`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the session already has an environment of that name; the
    /// engine's error otherwise.
    pub async fn start(&self, name: &str) -> Result<EnvironmentId> {
        if self.envs().contains_key(name) {
            return Err(Error::Conflict {
                what: "environment",
                name: name.to_owned(),
                reason: format!("session {} already has one of that name", self.id()),
            });
        }
        let spec = self.template.clone().with_name(name);
        let id = self.engine.start(&spec).await?;
        self.envs().insert(name.to_owned(), id.clone());
        Ok(id)
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

    /// The environment called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<EnvironmentId> {
        self.envs().get(name).cloned()
    }

    /// Every environment, by name.
    #[must_use]
    pub fn environments(&self) -> BTreeMap<String, EnvironmentId> {
        self.envs().clone()
    }

    /// Runs a command in the environment called `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown name; the engine's error otherwise.
    pub async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecOutput> {
        let env = self.named(name)?;
        self.engine.exec(&env, req).await
    }

    fn named(&self, name: &str) -> Result<EnvironmentId> {
        self.get(name).ok_or_else(|| Error::NotFound {
            what: "environment",
            name: format!("{name} in session {}", self.id()),
        })
    }

    /// Opens a stateful shell in the environment called `name` (one per agent, as many as
    /// needed); it ends when dropped, closed, or when the environment stops.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown name; as [`Shell::open`] otherwise.
    pub async fn shell(&self, name: &str, options: ShellOptions) -> Result<Shell> {
        Shell::open(self.engine.clone(), &self.named(name)?, options).await
    }

    /// The detached commands of the environment called `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown name.
    pub fn detached(&self, name: &str) -> Result<DetachedCommands> {
        Ok(DetachedCommands::new(
            self.engine.clone(),
            self.named(name)?,
        ))
    }

    /// Stops the environment called `name`.
    ///
    /// # Errors
    /// The engine's error.
    pub async fn stop(&self, name: &str) -> Result<StopOutcome> {
        let Some(env) = self.envs().remove(name) else {
            return Ok(StopOutcome::AlreadyGone);
        };
        self.engine.stop(&env).await
    }

    /// Stops every environment concurrently.
    ///
    /// # Errors
    /// The first failure (every stop is attempted).
    pub async fn shutdown(&self) -> Result<()> {
        let envs: Vec<EnvironmentId> = std::mem::take(&mut *self.envs()).into_values().collect();
        let results = join_all(envs.iter().map(|e| self.engine.stop(e))).await;
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Hands the environments over to the caller: the session no longer stops them.
    #[must_use]
    pub fn detach(&self) -> BTreeMap<String, EnvironmentId> {
        std::mem::take(&mut *self.envs())
    }
}

/// How long dropping a [`Session`] waits for its environments to stop.
const DROP_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for Session {
    /// Stops the environments before returning where it can: inside a multi-thread Tokio
    /// runtime it blocks this thread (not the runtime) until every stop is done or
    /// [`DROP_STOP_LIMIT`] passes, so nothing outlives the session even when the runtime
    /// ends right after. On a current-thread runtime it can only spawn the stops; without a
    /// runtime it cannot stop anything. Either way `berth gc` finds what is left.
    fn drop(&mut self) {
        let envs: Vec<EnvironmentId> = std::mem::take(&mut *self.envs()).into_values().collect();
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
