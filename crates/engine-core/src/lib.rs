//! The berth contract: one [`ContainerEngine`] trait that every backend (Docker, Kubernetes)
//! implements, with the specs, ids, errors and exec I/O types it speaks in.
//!
//! This crate knows no backend and exposes no backend SDK type. What callers use is at the
//! root; what only backends use to implement the trait (building an [`ExecProcess`], the
//! in-environment kill scripts, object naming) is in [`backend`]. The conformance suite every
//! backend must pass lives in `testkit` behind the `testkit` feature. `Arc<E>` and `Box<E>`
//! of an engine are engines too, so a wrapper can hold either.
//!
//! ```no_run
//! use berth_engine_core::{
//!     ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, Progress, PullPolicy, SessionId,
//! };
//!
//! async fn run(engine: &dyn ContainerEngine) -> berth_engine_core::Result<()> {
//!     engine.init().await?;
//!     let image = ImageRef::new("busybox:1.36")?;
//!     engine.ensure_image(&image, PullPolicy::IfNotPresent, &Progress::none()).await?;
//!     let env = engine.start(&EnvironmentSpec::new(image, SessionId::generate())).await?;
//!     let out = engine.exec(&env, ExecRequest::shell("echo hello; exit 3")).await?;
//!     assert_eq!(out.status.code(), 3);
//!     assert_eq!(out.stdout_lossy(), "hello\n");
//!     engine.stop(&env).await?;
//!     Ok(())
//! }
//! ```
//!
//! A stateful shell runs many commands in one long-lived `sh` (sub-millisecond dispatch, state
//! kept between commands), and a detached command outlives the client that started it; both
//! are built here on [`ContainerEngine::exec_streaming`], so every backend has them:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use berth_engine_core::{
//!     AttachFrom, ContainerEngine, DetachedCommand, DetachedCommands, EnvironmentId, Shell,
//!     ShellCommand, ShellOptions,
//! };
//!
//! async fn agent(engine: Arc<dyn ContainerEngine>, env: EnvironmentId) -> berth_engine_core::Result<()> {
//!     let mut shell = Shell::open(engine.clone(), &env, ShellOptions::default()).await?;
//!     shell.run(ShellCommand::new("cd /workspace && export MODE=fast")).await?;
//!     let out = shell.run(ShellCommand::new("echo $MODE in $(pwd)")).await?;
//!     assert_eq!(out.stdout_lossy(), "fast in /workspace\n");
//!     let slow = ShellCommand::new("make test").with_timeout(Duration::from_secs(600));
//!     println!("tests: {}", shell.run(slow).await?.status);
//!
//!     let commands = DetachedCommands::new(engine, env);
//!     let id = commands.start(DetachedCommand::new("./long-job.sh")).await?;
//!     // Later, from this or any other process:
//!     let job = commands.attach(&id, AttachFrom::default()).await?;
//!     println!("job ended with {}", job.wait().await?);
//!     shell.close().await
//! }
//! ```

pub mod backend;
mod detached;
mod error;
mod exec;
mod forward;
mod ids;
mod image;
mod kill;
mod network;
mod once;
mod pool;
pub(crate) mod port;
mod run;
mod shell;
mod spec;
mod status;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use detached::{
    AttachFrom, CommandId, CommandState, DetachedCommand, DetachedCommands, DetachedStatus,
    DETACHED_DIR, DETACHED_OUTPUT_CAP,
};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use exec::{
    ExecOutcome, ExecOutput, ExecProcess, ExecRequest, ExecStdin, ExitStatus, OomKill, OutputChunk,
    OutputStream, Stdin, TtySize, DEFAULT_OUTPUT_LIMIT,
};
pub use ids::{EnvironmentId, ImageRef, SessionId, MAX_SESSION_ID_LEN};
pub use image::{
    collect_tar_stream, tar_stream_from_bytes, BuildSpec, ImageInfo, Progress, ProgressEvent,
    PullPolicy, TarStream,
};
pub use network::{
    AllowEntry, Cidr, Destination, EgressAllow, Network, NETWORK_FIELD, NETWORK_FORMS,
};
pub use once::{
    command_not_found, exec_in_started, missing_command, probe_command_missing, start_then_exec,
    WHAT_COMMAND,
};
pub use pool::{
    spec_hash, PoolClaim, PoolSpec, LABEL_CLAIM_PENDING, LABEL_POOL, LABEL_POOL_MEMBER,
    LABEL_POOL_SPEC, MAX_POOL_NAME_LEN,
};
pub use port::{PortForward, PortIo, PortStream};
pub use run::{
    logs_connection_lost, resume_from, split_timestamp, validate_schedule, LogCursor, LogLine,
    LogOptions, LogSource, LogStream, LogTime, RunId, RunSource, RunSpec, RunState, RunStatus,
    LABEL_RUN, RUN_ONCE, RUN_SCHEDULED,
};
pub use shell::{Shell, ShellCommand, ShellInterrupter, ShellOptions, TIMEOUT_GRACE};
pub use spec::{
    validate_env, EnvironmentSpec, Resources, SecurityProfile, Workspace, HARDENED_CAPABILITIES,
    LABEL_CREATED, LABEL_MANAGED_BY, LABEL_NAME, LABEL_SESSION, MANAGED_BY_VALUE,
};
pub use spec::{DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED};
pub use status::{
    EnvironmentState, EnvironmentStatus, LabelSelector, RemoveOutcome, StopOutcome, VolumeStatus,
};

/// Which engine runs the environments.
///
/// ```
/// use berth_engine_core::BackendKind;
///
/// assert_eq!("kubernetes".parse::<BackendKind>().unwrap(), BackendKind::Kubernetes);
/// let err = "dockr".parse::<BackendKind>().unwrap_err();
/// assert!(err.to_string().contains("expected docker or kubernetes"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A Docker (or Docker-API-compatible) daemon.
    Docker,
    /// A Kubernetes cluster: each environment is a batch/v1 Job.
    Kubernetes,
}

impl BackendKind {
    /// The name used in config and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "docker" => Ok(BackendKind::Docker),
            "kubernetes" | "k8s" => Ok(BackendKind::Kubernetes),
            other => Err(Error::invalid_spec(
                "backend",
                format!("unknown backend {other:?}: expected docker or kubernetes"),
            )),
        }
    }
}

/// What [`ContainerEngine::init`] learned about the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EngineInfo {
    /// The backend.
    pub backend: BackendKind,
    /// The address connected to (socket, URL, kube context).
    pub endpoint: String,
    /// The server's version ("20.10.24", "v1.30.2").
    pub server_version: String,
    /// The API version negotiated, when the backend has one.
    pub api_version: Option<String>,
}

impl EngineInfo {
    /// Info about an engine reached at `endpoint`.
    #[must_use]
    pub fn new(
        backend: BackendKind,
        endpoint: impl Into<String>,
        server_version: impl Into<String>,
        api_version: Option<String>,
    ) -> Self {
        Self {
            backend,
            endpoint: endpoint.into(),
            server_version: server_version.into(),
            api_version,
        }
    }
}

/// A container engine that runs isolated, long-lived environments.
///
/// Implementations are cheap to share (`Arc<dyn ContainerEngine>`) and safe to call
/// concurrently. Every object an implementation creates carries the labels of
/// [`EnvironmentSpec::object_labels`], so [`ContainerEngine::list`] (and `berth gc`) can find
/// it after a crash.
#[async_trait]
pub trait ContainerEngine: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// Checks connectivity and learns the server's version.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the address tried and what to do.
    async fn init(&self) -> Result<EngineInfo>;

    /// Makes sure `image` is available, pulling it as `policy` says, reporting to `progress`.
    ///
    /// # Errors
    /// [`Error::ImageNotFound`] when it exists nowhere it was looked for, [`Error::ImagePull`]
    /// when pulling failed otherwise, [`Error::Unsupported`] where the backend cannot check.
    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: &Progress,
    ) -> Result<ImageInfo>;

    /// Builds an image from a tar context.
    ///
    /// # Errors
    /// [`Error::Build`] with the builder's message, [`Error::Unsupported`] where the backend
    /// cannot build.
    async fn build_image(&self, build: BuildSpec, progress: &Progress) -> Result<ImageInfo>;

    /// Starts an environment and returns once it accepts execs.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] before any I/O when the spec is malformed;
    /// [`Error::ImageNotFound`] when the image is not there.
    async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId>;

    /// Starts a command and returns a handle streaming its I/O.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the environment does not exist or has stopped;
    /// [`Error::InvalidSpec`] when the request is malformed.
    async fn exec_streaming(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecProcess>;

    /// Runs one command in a fresh environment of `spec` that nothing else will exec into
    /// (`berth run`): returns the environment and the running command. Once the command has
    /// ended ([`ExecProcess::wait`] or [`ExecProcess::collect`] returned), the environment
    /// has ended with everything the command started; the caller still calls
    /// [`ContainerEngine::stop`] (idempotent: a backend may have removed it already), and
    /// stops it at once to end the command early. Timeouts, output caps, stdin and
    /// out-of-memory reports are as [`ContainerEngine::exec_streaming`] has them, except
    /// that a timeout may end the whole environment.
    ///
    /// The default is the general path, [`start_then_exec`]: [`ContainerEngine::start`],
    /// a probe for a missing program, then [`ContainerEngine::exec_streaming`]. A backend
    /// that can run the command as the environment's own process (Docker) saves the
    /// keepalive, the probe and the exec.
    ///
    /// # Errors
    /// As [`ContainerEngine::start`] and [`ContainerEngine::exec_streaming`];
    /// [`command_not_found`]'s [`Error::NotFound`] when `req`'s program (a bare name) is not
    /// on the environment's PATH. Nothing is left running when it fails.
    async fn run_once(
        &self,
        spec: &EnvironmentSpec,
        req: ExecRequest,
    ) -> Result<(EnvironmentId, ExecProcess)> {
        start_then_exec(self, spec, req).await
    }

    /// Runs a command to completion, capturing at most [`ExecRequest::output_limit`] bytes of
    /// each stream. A non-zero exit code is in the output, not an error.
    ///
    /// # Errors
    /// As [`ContainerEngine::exec_streaming`]; [`Error::Timeout`] after killing the command's
    /// whole process tree when its timeout elapsed, or [`Error::TimeoutLeftProcesses`] (of
    /// the same kind) when processes that may have come from it outlived the kill (see
    /// [`backend::watchdog_argv`] for how the kill works and its limits); [`Error::InvalidSpec`] for
    /// [`Stdin::Piped`], which needs `exec_streaming`.
    async fn exec(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecOutput> {
        if req.stdin == Stdin::Piped {
            return Err(Error::invalid_spec(
                "stdin",
                "Stdin::Piped needs exec_streaming; use Stdin::Bytes with exec",
            ));
        }
        let limit = req.output_limit;
        self.exec_streaming(env, req).await?.collect(limit).await
    }

    /// Runs a command as `user` (`uid`, `uid:gid` or a name); see [`ContainerEngine::exec`].
    ///
    /// # Errors
    /// As [`ContainerEngine::exec`]; [`Error::Unsupported`] when the backend cannot switch
    /// users in this image.
    async fn exec_as_user(
        &self,
        env: &EnvironmentId,
        user: &str,
        req: ExecRequest,
    ) -> Result<ExecOutput> {
        self.exec(env, req.with_user(user)).await
    }

    /// Extracts a tar archive into the directory `dest`, which must exist.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the environment or `dest`.
    async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()>;

    /// Streams `path` (a file or a directory, as one top-level entry) out as a tar archive.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the environment or `path`.
    async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream>;

    /// Stops and removes the environment at once (no grace period); idempotent.
    ///
    /// Like every call taking an environment, it acts only on objects berth created (labelled
    /// [`LABEL_MANAGED_BY`]`=berth`), named exactly (Docker also takes an id prefix unique among
    /// berth's containers).
    ///
    /// # Errors
    /// A backend error when removal failed; a missing environment is
    /// [`StopOutcome::AlreadyGone`], not an error; an object berth did not create is
    /// [`Error::not_a_berth_environment`] and is left alone.
    async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome>;

    /// Replaces the egress policy of a running environment with `network`. It acts before it
    /// returns: a connection the new policy refuses is refused from then on (connections
    /// already open may live on where the backend tracks them).
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing environment; [`Error::InvalidSpec`] naming
    /// `network.allow` for a destination the backend cannot express; [`Error::Unsupported`]
    /// (the default) with the reason where the backend cannot change it.
    async fn set_network(&self, env: &EnvironmentId, network: &Network) -> Result<()> {
        let _ = (env, network);
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "set_network",
            reason: "this backend cannot change the network policy of a running environment; stop it and start one with the policy".into(),
        })
    }

    /// Records on the environment itself that it was detached on purpose and is ready, so
    /// that [`ContainerEngine::list`] reports [`LABEL_DETACHED`]` = `[`DETACHED_YES`] on any
    /// host, and no `gc` takes its gone owner process for a crash. Call it once `start`
    /// returned; an environment started with [`LABEL_DETACHED`]` = `[`DETACHED_REQUESTED`]
    /// whose caller died before this call keeps that value.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the environment is missing or not berth's;
    /// [`Error::Unsupported`] (the default) when the backend cannot record it.
    async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "mark_detached",
            reason: format!(
                "this engine cannot record on {env} that it was detached; keep the owning process alive or stop the environment yourself"
            ),
        })
    }

    /// Starts a batch run: `spec.command` as the main process of a container or Job made
    /// like an environment of `spec.env`, detached from this client (it runs on when the
    /// caller goes away) and labelled [`LABEL_RUN`]. Returns its name at once, without
    /// waiting for it to start. With a schedule, creates a schedule (a CronJob) instead.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] before any I/O; [`Error::ImageNotFound`] where the engine
    /// knows at once; [`Error::Unsupported`] (the default) where the backend has no runs, or
    /// no schedules.
    async fn submit_run(&self, spec: &RunSpec) -> Result<RunId> {
        Err(self.runs_unsupported("submit_run", spec.env.image.as_str()))
    }

    /// The state of a run and, once it exited, its true exit code.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing name or an object that is not one of berth's runs.
    async fn run_status(&self, run: &RunId) -> Result<RunStatus> {
        Err(self.runs_unsupported("run_status", run.as_str()))
    }

    /// The run's output with the engine's timestamps, from the start or after
    /// `options.since`, followed until the run ends with `options.follow`. The end of this
    /// stream says nothing about how the run ended: ask [`ContainerEngine::run_status`].
    ///
    /// # Errors
    /// As [`ContainerEngine::run_status`].
    async fn run_logs(&self, run: &RunId, options: LogOptions) -> Result<LogStream> {
        let _ = options;
        Err(self.runs_unsupported("run_logs", run.as_str()))
    }

    /// The runs and schedules whose labels match `selector` (environments are not listed).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the engine cannot be reached.
    async fn list_runs(&self, selector: &LabelSelector) -> Result<Vec<RunStatus>> {
        let _ = selector;
        Err(self.runs_unsupported("list_runs", "runs"))
    }

    /// Ends a running run (its process killed) and keeps it, so that
    /// [`ContainerEngine::run_status`] says [`RunState::Cancelled`]; removes a schedule.
    /// Cancelling a finished run changes nothing. [`ContainerEngine::stop`] with
    /// [`RunId::as_environment`] removes a run altogether.
    ///
    /// # Errors
    /// As [`ContainerEngine::run_status`].
    async fn cancel_run(&self, run: &RunId) -> Result<()> {
        Err(self.runs_unsupported("cancel_run", run.as_str()))
    }

    /// Removes a run or a schedule altogether, whatever its state (what `berth gc` does to a
    /// finished run). The default is [`ContainerEngine::stop`] with [`RunId::as_environment`],
    /// right where a run is an environment's kind of object (a container, a Job); an engine
    /// with runs of other kinds (Argo Workflows) overrides it.
    ///
    /// # Errors
    /// As [`ContainerEngine::stop`].
    async fn remove_run(&self, run: &RunId) -> Result<StopOutcome> {
        self.stop(&run.as_environment()).await
    }

    #[doc(hidden)]
    fn runs_unsupported(&self, operation: &'static str, what: &str) -> Error {
        Error::Unsupported {
            backend: self.backend(),
            operation,
            reason: format!(
                "this engine has no batch runs ({what}); start an environment and exec the command instead"
            ),
        }
    }

    /// Lists the environments whose labels match `selector`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the engine cannot be reached.
    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>>;

    /// Lists the workspace volumes berth created (Docker volumes, Kubernetes claims) whose
    /// labels match `selector`. Volumes and claims berth did not create carry no berth labels
    /// and are never listed.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the engine cannot be reached.
    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>>;

    /// Removes a workspace volume (see [`Workspace::Volume`]); idempotent: a missing volume is
    /// [`RemoveOutcome::AlreadyGone`].
    ///
    /// # Errors
    /// [`Error::Conflict`] while an environment still uses it; [`Error::NotFound`]
    /// ([`Error::not_a_berth_volume`]) for a volume or claim berth did not create, which is
    /// left alone.
    async fn remove_volume(&self, name: &str) -> Result<RemoveOutcome>;

    /// Starts one member of `pool`: an environment of [`PoolSpec::member_spec`], labelled
    /// with the pool and its spec hash, ready to be claimed. Nothing runs in it but its
    /// keepalive, so a claimed member is as clean as a fresh environment.
    ///
    /// # Errors
    /// As [`ContainerEngine::start`]; [`Error::Unsupported`] (the default) where the backend
    /// cannot claim members atomically (a member nobody can claim safely is no use).
    async fn start_pool_member(&self, pool: &PoolSpec) -> Result<EnvironmentId> {
        Err(self.pools_unsupported("start_pool_member", &pool.name))
    }

    /// The unclaimed members of the pool called `pool` (any spec hash), oldest first. A
    /// claimed member is listed under its session, never here.
    ///
    /// # Errors
    /// As [`ContainerEngine::list`].
    async fn list_pool_members(&self, pool: &str) -> Result<Vec<EnvironmentStatus>> {
        let mut members = self
            .list(&LabelSelector::all().with(LABEL_POOL, pool))
            .await?;
        members.sort_by_key(|m| m.created_unix_secs);
        Ok(members)
    }

    /// Claims one running, unclaimed member of `claim.pool` started from a spec hashing to
    /// `claim.spec_hash`, atomically (two claimers in any processes never get the same
    /// member), and hands it to `claim.session`: from then on it is listed with the claim's
    /// labels only (its creation time is the claim's) and it ends `claim.lifetime` after the
    /// claim. `None` when the pool has no such member.
    ///
    /// ```no_run
    /// # async fn demo(engine: &dyn berth_engine_core::ContainerEngine, pool: &berth_engine_core::PoolSpec) -> berth_engine_core::Result<()> {
    /// use berth_engine_core::SessionId;
    ///
    /// let claim = pool.claim_for(SessionId::generate(), "main");
    /// let env = match engine.claim_pool_member(&claim).await? {
    ///     Some(env) => env,
    ///     None => engine.start(&pool.spec).await?, // the pool is empty: a cold start
    /// };
    /// # let _ = env; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a bad claim, before any I/O; [`Error::Unsupported`] (the
    /// default) where the backend has no atomic claim.
    async fn claim_pool_member(&self, claim: &PoolClaim) -> Result<Option<EnvironmentId>> {
        claim.validate()?;
        Err(self.pools_unsupported("claim_pool_member", &claim.pool))
    }

    #[doc(hidden)]
    fn pools_unsupported(&self, operation: &'static str, pool: &str) -> Error {
        Error::Unsupported {
            backend: self.backend(),
            operation,
            reason: format!(
                "this engine has no atomic claim, so it keeps no warm pool ({pool}); start environments cold"
            ),
        }
    }

    /// Opens one connection to TCP `port` on the environment's loopback and returns it as a
    /// byte stream; [`PortForward`] serves a local listener with it. Shutting down the
    /// stream's write side delivers end of file to the server inside.
    ///
    /// # Errors
    /// [`Error::PortClosed`] naming the port when nothing listens on it; [`Error::NotFound`]
    /// for a missing environment; [`Error::Unsupported`] (the default) where the backend
    /// cannot reach ports inside.
    async fn connect_port(&self, env: &EnvironmentId, port: u16) -> Result<PortStream> {
        Err(Error::Unsupported {
            backend: self.backend(),
            operation: "connect_port",
            reason: format!("this engine cannot connect to port {port} inside {env}"),
        })
    }
}
