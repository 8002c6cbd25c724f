//! The berth contract: one [`ContainerEngine`] trait that every backend (Docker, Kubernetes)
//! implements, with the specs, ids, errors and exec I/O types it speaks in.
//!
//! This crate knows no backend and exposes no backend SDK type. The conformance suite every
//! backend must pass lives in [`testkit`] behind the `testkit` feature.
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

pub mod backend;
mod error;
mod exec;
mod ids;
mod image;
mod kill;
mod spec;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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
pub use spec::{
    validate_env, EnvironmentSpec, EnvironmentState, EnvironmentStatus, LabelSelector, Resources,
    SecurityProfile, StopOutcome, VolumeStatus, Workspace, HARDENED_CAPABILITIES, LABEL_CREATED,
    LABEL_MANAGED_BY, LABEL_NAME, LABEL_SESSION, MANAGED_BY_VALUE,
};
pub use spec::{DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED};

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
                "runner.backend",
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

    /// Removes a workspace volume (see [`Workspace::Volume`]); idempotent.
    ///
    /// # Errors
    /// [`Error::Conflict`] while an environment still uses it.
    async fn remove_volume(&self, name: &str) -> Result<StopOutcome>;
}

/// Forwards every method, defaults included, to the engine behind a pointer, so a wrapper
/// (logging, metrics, a fault injector) can hold `Arc<E>` or `Box<dyn ContainerEngine>` and
/// be an engine itself.
macro_rules! forward_container_engine {
    ($($pointer:ident),+) => {$(
        #[async_trait]
        impl<T: ContainerEngine + ?Sized> ContainerEngine for $pointer<T> {
            fn backend(&self) -> BackendKind {
                (**self).backend()
            }
            async fn init(&self) -> Result<EngineInfo> {
                (**self).init().await
            }
            async fn ensure_image(
                &self,
                image: &ImageRef,
                policy: PullPolicy,
                progress: &Progress,
            ) -> Result<ImageInfo> {
                (**self).ensure_image(image, policy, progress).await
            }
            async fn build_image(&self, build: BuildSpec, progress: &Progress) -> Result<ImageInfo> {
                (**self).build_image(build, progress).await
            }
            async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
                (**self).start(spec).await
            }
            async fn exec_streaming(
                &self,
                env: &EnvironmentId,
                req: ExecRequest,
            ) -> Result<ExecProcess> {
                (**self).exec_streaming(env, req).await
            }
            async fn exec(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecOutput> {
                (**self).exec(env, req).await
            }
            async fn exec_as_user(
                &self,
                env: &EnvironmentId,
                user: &str,
                req: ExecRequest,
            ) -> Result<ExecOutput> {
                (**self).exec_as_user(env, user, req).await
            }
            async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()> {
                (**self).copy_in(env, dest, tar).await
            }
            async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream> {
                (**self).copy_out(env, path).await
            }
            async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome> {
                (**self).stop(env).await
            }
            async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
                (**self).mark_detached(env).await
            }
            async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
                (**self).list(selector).await
            }
            async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
                (**self).list_volumes(selector).await
            }
            async fn remove_volume(&self, name: &str) -> Result<StopOutcome> {
                (**self).remove_volume(name).await
            }
        }
    )+};
}

forward_container_engine!(Arc, Box);

#[cfg(test)]
mod forwarding_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An engine that answers `exec` and `mark_detached` itself (overriding the defaults) and
    /// refuses the rest, counting calls.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
    }

    impl Fake {
        fn refuse<T>(&self, operation: &'static str) -> Result<T> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Unsupported {
                backend: BackendKind::Docker,
                operation,
                reason: "a fake".into(),
            })
        }
    }

    #[async_trait]
    impl ContainerEngine for Fake {
        fn backend(&self) -> BackendKind {
            BackendKind::Docker
        }
        async fn init(&self) -> Result<EngineInfo> {
            self.refuse("init")
        }
        async fn ensure_image(
            &self,
            _: &ImageRef,
            _: PullPolicy,
            _: &Progress,
        ) -> Result<ImageInfo> {
            self.refuse("ensure_image")
        }
        async fn build_image(&self, _: BuildSpec, _: &Progress) -> Result<ImageInfo> {
            self.refuse("build_image")
        }
        async fn start(&self, _: &EnvironmentSpec) -> Result<EnvironmentId> {
            self.refuse("start")
        }
        async fn exec_streaming(&self, _: &EnvironmentId, _: ExecRequest) -> Result<ExecProcess> {
            self.refuse("exec_streaming")
        }
        async fn exec(&self, _: &EnvironmentId, req: ExecRequest) -> Result<ExecOutput> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            backend::spawn(None, |sink| async move {
                sink.send(OutputChunk::Stdout(req.argv.join(" ").into()))
                    .await;
                Ok(ExitStatus(0))
            })
            .collect(64)
            .await
        }
        async fn copy_in(&self, _: &EnvironmentId, _: &str, _: TarStream) -> Result<()> {
            self.refuse("copy_in")
        }
        async fn copy_out(&self, _: &EnvironmentId, _: &str) -> Result<TarStream> {
            self.refuse("copy_out")
        }
        async fn stop(&self, _: &EnvironmentId) -> Result<StopOutcome> {
            self.refuse("stop")
        }
        async fn mark_detached(&self, _: &EnvironmentId) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn list(&self, _: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
            self.refuse("list")
        }
        async fn list_volumes(&self, _: &LabelSelector) -> Result<Vec<VolumeStatus>> {
            self.refuse("list_volumes")
        }
        async fn remove_volume(&self, _: &str) -> Result<StopOutcome> {
            self.refuse("remove_volume")
        }
    }

    /// A wrapper an embedder might write: it holds any engine and is one.
    struct Counted<E>(E);

    #[async_trait]
    impl<E: ContainerEngine> ContainerEngine for Counted<E> {
        fn backend(&self) -> BackendKind {
            self.0.backend()
        }
        async fn init(&self) -> Result<EngineInfo> {
            self.0.init().await
        }
        async fn ensure_image(
            &self,
            i: &ImageRef,
            p: PullPolicy,
            g: &Progress,
        ) -> Result<ImageInfo> {
            self.0.ensure_image(i, p, g).await
        }
        async fn build_image(&self, b: BuildSpec, g: &Progress) -> Result<ImageInfo> {
            self.0.build_image(b, g).await
        }
        async fn start(&self, s: &EnvironmentSpec) -> Result<EnvironmentId> {
            self.0.start(s).await
        }
        async fn exec_streaming(&self, e: &EnvironmentId, r: ExecRequest) -> Result<ExecProcess> {
            self.0.exec_streaming(e, r).await
        }
        async fn exec(&self, e: &EnvironmentId, r: ExecRequest) -> Result<ExecOutput> {
            self.0.exec(e, r).await
        }
        async fn copy_in(&self, e: &EnvironmentId, d: &str, t: TarStream) -> Result<()> {
            self.0.copy_in(e, d, t).await
        }
        async fn copy_out(&self, e: &EnvironmentId, p: &str) -> Result<TarStream> {
            self.0.copy_out(e, p).await
        }
        async fn stop(&self, e: &EnvironmentId) -> Result<StopOutcome> {
            self.0.stop(e).await
        }
        async fn list(&self, s: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
            self.0.list(s).await
        }
        async fn list_volumes(&self, s: &LabelSelector) -> Result<Vec<VolumeStatus>> {
            self.0.list_volumes(s).await
        }
        async fn mark_detached(&self, e: &EnvironmentId) -> Result<()> {
            self.0.mark_detached(e).await
        }
        async fn remove_volume(&self, n: &str) -> Result<StopOutcome> {
            self.0.remove_volume(n).await
        }
    }

    #[tokio::test]
    async fn arc_and_box_forward_every_call_overrides_included() {
        let fake = Arc::new(Fake::default());
        let env = EnvironmentId::new("env-1").unwrap();
        let boxed: Box<dyn ContainerEngine> = Box::new(fake.clone());
        let wrapped = Counted(Arc::new(boxed));
        assert_eq!(wrapped.backend(), BackendKind::Docker);
        let out = wrapped
            .exec(&env, ExecRequest::new(["echo", "hi"]))
            .await
            .unwrap();
        assert_eq!(
            out.stdout_lossy(),
            "echo hi",
            "the fake's own exec ran, not the default"
        );
        wrapped
            .mark_detached(&env)
            .await
            .expect("the fake's override, not the Unsupported default");
        let err = wrapped.stop(&env).await.unwrap_err();
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    }
}
