//! berth's Docker backend: [`DockerEngine`] runs each environment as a labelled container on a
//! Docker daemon, through bollard.
//!
//! The container's main process is a keepalive (`sleep <max lifetime>`) under Docker's init,
//! which reaps zombies and forwards SIGTERM, so the environment dies promptly when asked and
//! ends by itself after its lifetime. Execs are Docker execs; copies use the archive endpoints.
//!
//! ```no_run
//! use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
//! use berth_engine_docker::{DockerConfig, DockerEngine};
//!
//! #[tokio::main]
//! async fn main() -> berth_engine_core::Result<()> {
//!     let engine = DockerEngine::connect(&DockerConfig::default()).await?;
//!     let spec = EnvironmentSpec::new(ImageRef::new("berth-test/busybox:2")?, SessionId::generate());
//!     let env = engine.start(&spec).await?;
//!     let out = engine.exec(&env, ExecRequest::shell("echo hi")).await?;
//!     print!("{}", out.stdout_lossy());
//!     engine.stop(&env).await?;
//!     Ok(())
//! }
//! ```

mod body;
mod container;
mod copy;
mod errors;
mod exec;
mod image;
mod resolve;
mod volume;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentStatus, Error, ExecProcess, ExecRequest, ImageInfo, ImageRef, LabelSelector,
    Progress, PullPolicy, RemoveOutcome, Result, StopOutcome, TarStream, VolumeStatus,
};
use bollard::Docker;
/// The daemon address used when neither [`DockerConfig::host`] nor `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The file [`ContainerEngine::mark_detached`] writes at the container's root.
const DETACHED_MARKER: &str = ".berth-detached";

/// Default pids limit of an environment when its spec sets none.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

pub use berth_engine_core::HARDENED_CAPABILITIES;

/// How to reach the daemon.
///
/// ```
/// use berth_engine_docker::DockerConfig;
///
/// let config = DockerConfig::with_host("tcp://127.0.0.1:2375");
/// assert_eq!(config.address(), "tcp://127.0.0.1:2375");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DockerConfig {
    /// `unix:///path`, `tcp://host:port`, `http://...` (or `https://` with the `tls`
    /// feature). `None` means `DOCKER_HOST`, else [`DEFAULT_DOCKER_HOST`], like the docker CLI.
    pub host: Option<String>,
}

impl DockerConfig {
    /// A config for `host`.
    #[must_use]
    pub fn with_host(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
        }
    }

    /// The address that will be dialled.
    #[must_use]
    pub fn address(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
    }
}

/// A [`ContainerEngine`] on a Docker daemon.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    address: String,
}

impl DockerEngine {
    /// Connects to the daemon and negotiates the API version down to what it speaks (bollard
    /// asks for 1.53 by default; Debian's dockerd 20.10 speaks 1.41).
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the address when the daemon cannot be reached;
    /// [`Error::InvalidSpec`] naming `host` ([`DockerConfig::host`]) when the address is
    /// malformed.
    pub async fn connect(config: &DockerConfig) -> Result<Self> {
        let address = config.address();
        let docker = Docker::connect_with_host(&address).map_err(|e| match e {
            bollard::errors::Error::UnsupportedURISchemeError { .. } => Error::invalid_spec(
                "host",
                format!(
                    "{address:?} is not a daemon address: expected unix:///path, tcp://host:port or http(s)://host:port"
                ),
            ),
            other => errors::unavailable(&address, other),
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| errors::unavailable(&address, e))?;
        Ok(Self { docker, address })
    }

    /// The daemon address in use.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    fn other(&self, step: &str) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
        let step = step.to_owned();
        move |e| errors::other(&self.address, &step, e)
    }
}

#[async_trait]
impl ContainerEngine for DockerEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn init(&self) -> Result<EngineInfo> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| errors::unavailable(&self.address, e))?;
        Ok(EngineInfo::new(
            BackendKind::Docker,
            self.address.clone(),
            version.version.unwrap_or_default(),
            Some(self.docker.client_version().to_string()),
        ))
    }

    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        progress: &Progress,
    ) -> Result<ImageInfo> {
        image::ensure(self, image, policy, progress).await
    }

    async fn build_image(&self, build: BuildSpec, progress: &Progress) -> Result<ImageInfo> {
        image::build(self, build, progress).await
    }

    async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
        container::start(self, spec).await
    }

    async fn exec_streaming(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecProcess> {
        let env = self.resolve_existing(env).await?;
        exec::exec_streaming(&self.docker, &self.address, &env, req).await
    }

    async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()> {
        copy::copy_in(self, env, dest, tar).await
    }

    async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream> {
        copy::copy_out(self, env, path).await
    }

    async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome> {
        container::stop(self, env).await
    }

    async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
        container::mark_detached(self, env).await
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
        container::list(self, selector).await
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
        volume::list(self, selector).await
    }

    async fn remove_volume(&self, name: &str) -> Result<RemoveOutcome> {
        volume::remove(self, name).await
    }
}
