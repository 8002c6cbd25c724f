//! Starting and stopping environments as every front end does: the image made present where
//! the backend needs it, progress reported while a start waits ([`StartPhase`]), `up`
//! (detached, recorded on the environment), `down`, and the "command not found" probe.

use std::fmt;
use std::sync::Arc;

use berth_engine_core::{
    missing_command, probe_command_missing, BackendKind, ContainerEngine, EnvironmentId,
    EnvironmentSpec, EnvironmentState, ErrorKind, ExecProcess, ExecRequest, ImageRef,
    LabelSelector, Progress, ProgressEvent, PullPolicy, SessionId, StopOutcome, DETACHED_REQUESTED,
    LABEL_DETACHED, LABEL_NAME,
};

use crate::error::{Result, RunnerError};
use crate::image;
use crate::session::Session;
use crate::state::StateDir;

/// A phase of making an environment, as reported while a start waits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPhase {
    /// Making the image present before the start (Docker pulls first); `event` is the
    /// engine's pull progress.
    Pulling {
        /// The image.
        image: ImageRef,
        /// The engine's latest report.
        event: ProgressEvent,
    },
    /// Asked the engine to start; waiting until the environment takes commands.
    Starting {
        /// The backend, which says what is awaited.
        backend: BackendKind,
    },
    /// The start waits for something in particular (on Kubernetes: the Job controller, a
    /// node with room, a scale-up, a claim to bind, a pull retry, the container), said
    /// each time it changes.
    Waiting {
        /// What is awaited, in words.
        what: String,
    },
    /// The environment takes commands.
    Ready {
        /// Its id.
        id: EnvironmentId,
    },
}

impl fmt::Display for StartPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPhase::Pulling { image, event } => {
                write!(f, "pulling {image}: ")?;
                if let Some(id) = &event.id {
                    write!(f, "{id}: ")?;
                }
                f.write_str(&event.status)?;
                if let (Some(c), Some(t)) = (event.current, event.total) {
                    if t > 0 {
                        write!(f, " {}/{} MiB", c >> 20, t >> 20)?;
                    }
                }
                Ok(())
            }
            StartPhase::Starting {
                backend: BackendKind::Docker,
            } => f.write_str("starting: waiting for the container"),
            StartPhase::Starting {
                backend: BackendKind::Kubernetes,
            } => f.write_str("starting: waiting for the pod to be scheduled and running"),
            StartPhase::Waiting { what } => write!(f, "starting: waiting for {what}"),
            StartPhase::Ready { id } => write!(f, "ready: {id}"),
        }
    }
}

/// Where start progress goes: a callback, or nowhere.
#[derive(Clone, Default)]
pub struct StartProgress(Option<OnPhase>);

/// The callback of a [`StartProgress`].
type OnPhase = Arc<dyn Fn(&StartPhase) + Send + Sync>;

impl fmt::Debug for StartProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "StartProgress(callback)"
        } else {
            "StartProgress(none)"
        })
    }
}

impl StartProgress {
    /// Reports nothing.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Calls `f` for every phase.
    pub fn new(f: impl Fn(&StartPhase) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Reports `phase`.
    pub fn report(&self, phase: &StartPhase) {
        if let Some(f) = &self.0 {
            f(phase);
        }
    }

    /// The engine's pull progress for `image`, reported as [`StartPhase::Pulling`].
    #[must_use]
    pub fn pulls(&self, image: &ImageRef) -> Progress {
        let Some(f) = self.0.clone() else {
            return Progress::none();
        };
        let image = image.clone();
        Progress::new(move |event: &ProgressEvent| {
            f(&StartPhase::Pulling {
                image: image.clone(),
                event: event.clone(),
            });
        })
    }
}

/// Starts the session's environment `name`: the image made present first where the backend
/// needs it (as `policy` says), then the start, each phase reported to `progress`.
///
/// # Errors
/// [`RunnerError::ImageMissing`] when the image cannot be had; the session's or engine's
/// error from the start.
pub async fn start(
    session: &Session,
    name: &str,
    policy: PullPolicy,
    progress: &StartProgress,
) -> Result<EnvironmentId> {
    let engine = session.engine();
    let image = &session.template().image;
    image::prepare(engine.as_ref(), image, policy, &progress.pulls(image)).await?;
    progress.report(&StartPhase::Starting {
        backend: engine.backend(),
    });
    let id = match &progress.0 {
        // A backend that can say what it waits for (Kubernetes) says it here.
        Some(f) => {
            let f = f.clone();
            let on_wait = move |what: &str| {
                f(&StartPhase::Waiting {
                    what: what.to_owned(),
                });
            };
            berth_engine_k8s::progress::report_waits(on_wait, session.start(name)).await?
        }
        None => session.start(name).await?,
    };
    progress.report(&StartPhase::Ready { id: id.clone() });
    Ok(id)
}

/// Refuses a name already held by a live environment of the spec's session: names pick
/// environments within a session, so two of one name would be ambiguous.
async fn refuse_duplicate_name(engine: &dyn ContainerEngine, spec: &EnvironmentSpec) -> Result<()> {
    let existing = engine.list(&LabelSelector::session(&spec.session)).await?;
    match existing.into_iter().find(|e| {
        e.labels.get(LABEL_NAME) == Some(&spec.name) && e.state != EnvironmentState::Exited
    }) {
        Some(same) => Err(RunnerError::NameTaken {
            session: spec.session.clone(),
            name: spec.name.clone(),
            existing: same.id,
        }),
        None => Ok(()),
    }
}

/// An environment `up` started and handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Started {
    /// Its id.
    pub id: EnvironmentId,
    /// Its session.
    pub session: SessionId,
    /// Its name in the session.
    pub name: String,
}

/// Starts an environment that outlives the caller (`berth up`): refused when its session
/// already has one of that name; recorded as detached on the environment itself (asked for
/// at creation, confirmed once ready, so a caller killed in between leaves something gc
/// collects).
///
/// # Errors
/// [`RunnerError::NameTaken`], as [`start`] otherwise, and the engine's error when the
/// detachment cannot be recorded (the environment is stopped then).
pub async fn up(
    engine: Arc<dyn ContainerEngine>,
    spec: EnvironmentSpec,
    policy: PullPolicy,
    progress: &StartProgress,
) -> Result<Started> {
    up_from(engine, spec, None, policy, progress).await
}

/// [`up`], claiming the environment from `pool` when one is given (`berth up --pool`); the
/// spec is then [`crate::pool::session_spec`]'s.
///
/// # Errors
/// As [`up`].
pub async fn up_from(
    engine: Arc<dyn ContainerEngine>,
    mut spec: EnvironmentSpec,
    pool: Option<crate::pool::Pool>,
    policy: PullPolicy,
    progress: &StartProgress,
) -> Result<Started> {
    spec.labels
        .insert(LABEL_DETACHED.into(), DETACHED_REQUESTED.into());
    refuse_duplicate_name(engine.as_ref(), &spec).await?;
    let name = spec.name.clone();
    let mut session = Session::new(engine.clone(), spec);
    if let Some(pool) = pool {
        session = session.with_pool(pool);
    }
    let id = start(&session, &name, policy, progress).await?;
    if let Err(e) = engine.mark_detached(&id).await {
        if let Err(stop) = session.shutdown().await {
            tracing::warn!(error = %stop, "could not stop an environment whose detachment failed");
        }
        return Err(RunnerError::NotDetached {
            env: id,
            source: Box::new(e),
        });
    }
    let _ = session.detach();
    Ok(Started {
        id,
        session: session.id().clone(),
        name,
    })
}

/// What `down` did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct DownReport {
    /// Each environment stopped, with what stopping found.
    pub stopped: Vec<(EnvironmentId, StopOutcome)>,
    /// Each failure: a named environment that does not exist, or a stop that failed.
    pub failures: Vec<RunnerError>,
    /// The session asked for had no environments.
    pub session_empty: bool,
}

/// Stops the environments `named` (each must exist) and every environment of `session`,
/// forgetting any old detach markers for them in `state`.
///
/// # Errors
/// The engine's error when the session's environments cannot be listed; per-environment
/// failures are in the report.
pub async fn down(
    engine: &dyn ContainerEngine,
    named: Vec<EnvironmentId>,
    session: Option<&SessionId>,
    state: &StateDir,
) -> Result<DownReport> {
    let mut report = DownReport::default();
    let mut targets: Vec<(EnvironmentId, bool)> = named.into_iter().map(|e| (e, true)).collect();
    if let Some(s) = session {
        let found = engine.list(&LabelSelector::session(s)).await?;
        report.session_empty = found.is_empty();
        targets.extend(found.into_iter().map(|e| (e.id, false)));
    }
    for (env, named) in targets {
        match engine.stop(&env).await {
            // An id the caller gave that names nothing is a mistake (a typo, another
            // machine's id), not a success.
            Ok(StopOutcome::AlreadyGone) if named => {
                report.failures.push(RunnerError::NoSuchEnvironment { env });
            }
            Ok(outcome) => report.stopped.push((env, outcome)),
            Err(source) => report.failures.push(RunnerError::StopFailed {
                env,
                source: Box::new(source),
            }),
        }
    }
    let state = state.clone();
    let forget: Vec<EnvironmentId> = report.stopped.iter().map(|(e, _)| e.clone()).collect();
    tokio::task::spawn_blocking(move || forget.iter().for_each(|e| state.forget(e)))
        .await
        .map_err(|e| RunnerError::Io {
            what: "cannot update the state directory".into(),
            source: std::io::Error::other(e),
        })?;
    Ok(report)
}

/// Whether `req`'s program, a bare name, is missing from the environment's PATH for a command
/// run as `req` says (its user, workdir and variables): [`RunnerError::CommandNotFound`] if
/// so. Asks the image's `sh` ([`probe_command_missing`]); without one (or on any failure to
/// ask) the answer is "not known to be missing", and the runtime speaks.
pub async fn command_missing(
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    req: &ExecRequest,
) -> Option<RunnerError> {
    let missing = probe_command_missing(engine, env, req).await?;
    not_found_in(&missing, env)
}

/// [`RunnerError::CommandNotFound`] in `env` when `e` is the engine's
/// [`command_not_found`](berth_engine_core::command_not_found).
#[must_use]
pub fn not_found_in(e: &berth_engine_core::Error, env: &EnvironmentId) -> Option<RunnerError> {
    missing_command(e).map(|command| RunnerError::CommandNotFound {
        command: command.to_owned(),
        env: env.clone(),
    })
}

/// Runs `req` once in a fresh environment `name` of the session
/// ([`Session::run_once`]): the image made present first where the backend needs it (as
/// `policy` says), each phase of the start reported to `progress`.
///
/// # Errors
/// As [`start`]; [`RunnerError::CommandNotFound`] when the program is not there.
pub async fn run_once(
    session: &Session,
    name: &str,
    req: ExecRequest,
    policy: PullPolicy,
    progress: &StartProgress,
) -> Result<(EnvironmentId, ExecProcess)> {
    let engine = session.engine();
    let image = &session.template().image;
    // Like `docker run`, a present image is not asked about first: the create says when it
    // is missing, and only then is it pulled (or said missing, as `policy` wants).
    let lazy = image::needs_pre_pull(engine.backend())
        && matches!(policy, PullPolicy::IfNotPresent | PullPolicy::Never);
    if !lazy {
        image::prepare(engine.as_ref(), image, policy, &progress.pulls(image)).await?;
    }
    progress.report(&StartPhase::Starting {
        backend: engine.backend(),
    });
    let attempt = |req: ExecRequest| async move {
        match &progress.0 {
            // A backend that can say what it waits for (Kubernetes) says it here.
            Some(f) => {
                let f = f.clone();
                let on_wait = move |what: &str| {
                    f(&StartPhase::Waiting {
                        what: what.to_owned(),
                    });
                };
                berth_engine_k8s::progress::report_waits(on_wait, session.run_once(name, req)).await
            }
            None => session.run_once(name, req).await,
        }
    };
    let ran = match attempt(req.clone()).await {
        Err(RunnerError::Engine(e)) if lazy && e.kind() == ErrorKind::ImageNotFound => {
            image::prepare(engine.as_ref(), image, policy, &progress.pulls(image)).await?;
            attempt(req).await
        }
        other => other,
    };
    let (id, process) = ran.map_err(|e| match e {
        RunnerError::Engine(engine) => {
            // The one-shot environment is gone already: named without its random suffix.
            let env = EnvironmentId::new(format!(
                "{}-{}-{name}",
                session.template().name_prefix,
                session.id()
            ));
            match env.ok().and_then(|env| not_found_in(&engine, &env)) {
                Some(missing) => missing,
                None => RunnerError::Engine(engine),
            }
        }
        other => other,
    })?;
    progress.report(&StartPhase::Ready { id: id.clone() });
    Ok((id, process))
}
