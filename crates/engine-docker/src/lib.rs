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
pub mod context;
mod copy;
mod daemon;
mod egress;
mod errors;
mod exec;
mod image;
mod lenient;
mod oneshot;
mod podman;
mod pool;
mod port;
mod resolve;
mod retry;
mod run;
mod ssh;
mod tls;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentStatus, Error, ExecProcess, ExecRequest, ImageInfo, ImageRef, LabelSelector,
    LogOptions, LogStream, Network, PoolClaim, PoolSpec, Progress, PullPolicy, RemoveOutcome,
    Result, RunId, RunSpec, RunStatus, StopOutcome, TarStream, VolumeStatus,
};
use bollard::Docker;

pub use crate::run::LABEL_DEADLINE;
pub use daemon::DaemonInfo;
/// The daemon address used when neither [`DockerConfig::host`] nor `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Read/write timeout of a daemon connection, as bollard's default.
const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// The file [`ContainerEngine::mark_detached`] writes at the container's root.
const DETACHED_MARKER: &str = ".berth-detached";

/// Default pids limit of an environment when its spec sets none.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

pub use berth_engine_core::HARDENED_CAPABILITIES;
pub use container::ContainerFiles;

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
    /// `unix:///path`, `tcp://host:port`, `http://...`, `ssh://[user@]host[:port]` (or
    /// `https://` with the `tls` feature). `None` means [`DockerConfig::context`], else
    /// `DOCKER_HOST`, else `DOCKER_CONTEXT` or the docker CLI's current context, else
    /// [`DEFAULT_DOCKER_HOST`], like the docker CLI.
    pub host: Option<String>,
    /// A docker CLI context name (`docker context ls`), read from `$DOCKER_CONFIG/contexts`.
    /// [`DockerConfig::host`] wins over it (a `--docker-host` flag over a configured context).
    pub context: Option<String>,
    /// TLS to a `tcp://` daemon; `None` means the docker CLI's environment
    /// (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`).
    pub tls: Option<TlsConfig>,
    /// An ssh config file passed to `ssh -F` for `ssh://` hosts; `None` means the user's.
    pub ssh_config: Option<PathBuf>,
    /// Env files and secret files applied to every environment at create.
    pub files: ContainerFiles,
}

/// Client TLS material for a `tcp://` daemon, as the docker CLI's `--tlscacert`,
/// `--tlscert`, `--tlskey` and `--tlsverify` (on by default).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The CA that signed the daemon's certificate; unset means `<cert dir>/ca.pem`.
    pub ca: Option<PathBuf>,
    /// The client certificate; unset means `<cert dir>/cert.pem`.
    pub cert: Option<PathBuf>,
    /// The client key; unset means `<cert dir>/key.pem`.
    pub key: Option<PathBuf>,
    /// Verify the daemon's certificate against `ca` (only `true` is supported).
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            verify: true,
        }
    }
}

impl TlsConfig {
    /// Files `ca.pem`, `cert.pem` and `key.pem` in `dir`, verified.
    #[must_use]
    pub fn from_dir(dir: &Path) -> Self {
        Self {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("cert.pem")),
            key: Some(dir.join("key.pem")),
            verify: true,
        }
    }
}

/// What [`DockerConfig`] resolves to: an address and, for TLS, the files to use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    address: String,
    tls: Option<TlsConfig>,
    /// Which setting gave the address, for errors.
    field: &'static str,
}

impl DockerConfig {
    /// A config for `host`.
    #[must_use]
    pub fn with_host(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
            ..Self::default()
        }
    }

    /// A config for docker context `name`.
    #[must_use]
    pub fn with_context(name: impl Into<String>) -> Self {
        Self {
            context: Some(name.into()),
            ..Self::default()
        }
    }

    /// The address that will be dialled (a context's host when one applies; the default
    /// socket when the context cannot be read).
    #[must_use]
    pub fn address(&self) -> String {
        self.endpoint().map_or_else(
            |_| DEFAULT_DOCKER_HOST.to_owned(),
            |endpoint| endpoint.address,
        )
    }

    /// The address that will be dialled, or why the settings name none (an unreadable or
    /// unknown context, a context that skips TLS verification).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `context` (or `DOCKER_CONTEXT`) and what is wrong.
    pub fn resolve_address(&self) -> Result<String> {
        self.endpoint().map(|endpoint| endpoint.address)
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let from_context = |field: &'static str, name: &str| -> Result<Endpoint> {
            let dir = context::docker_config_dir().ok_or_else(|| {
                Error::invalid_spec(
                    field,
                    "cannot find the docker config dir: set DOCKER_CONFIG or HOME",
                )
            })?;
            let ctx = context::load(&dir, field, name)?;
            if ctx.skip_tls_verify {
                return Err(Error::invalid_spec(
                    field,
                    format!("docker context {name:?} skips TLS verification, which berth does not support; give the context a CA"),
                ));
            }
            let tls = self
                .tls
                .clone()
                .or_else(|| ctx.tls_dir.as_deref().map(TlsConfig::from_dir));
            Ok(Endpoint {
                address: ctx.host,
                tls,
                field,
            })
        };
        let (address, field) = if let Some(host) = &self.host {
            (host.clone(), "host")
        } else if let Some(name) = &self.context {
            return from_context("context", name);
        } else if let Some(host) = env("DOCKER_HOST") {
            (host, "DOCKER_HOST")
        } else if let Some(name) = env("DOCKER_CONTEXT") {
            return if name == "default" {
                Ok(Endpoint {
                    address: DEFAULT_DOCKER_HOST.to_owned(),
                    tls: None,
                    field: "DOCKER_CONTEXT",
                })
            } else {
                from_context("DOCKER_CONTEXT", &name)
            };
        } else if let Some(name) = context::docker_config_dir()
            .as_deref()
            .and_then(context::current_context)
            .filter(|n| n != "default")
        {
            return from_context("currentContext", &name);
        } else {
            (DEFAULT_DOCKER_HOST.to_owned(), "host")
        };
        let tls = self.tls.clone().or_else(|| {
            env("DOCKER_TLS_VERIFY").map(|_| {
                let dir = env("DOCKER_CERT_PATH")
                    .map(PathBuf::from)
                    .or_else(context::docker_config_dir)
                    .unwrap_or_else(|| PathBuf::from(".docker"));
                TlsConfig::from_dir(&dir)
            })
        });
        Ok(Endpoint {
            address,
            tls,
            field,
        })
    }
}

/// Podman's state when the daemon's `/version` answer is Podman's (the negotiation asked the
/// same endpoint, but bollard keeps only the version number).
async fn detect_podman(
    docker: &Docker,
) -> std::result::Result<Option<Arc<podman::Podman>>, bollard::errors::Error> {
    let version = retry::idempotent("version", || docker.version()).await?;
    Ok(podman::is_podman(&version).then(|| Arc::new(podman::Podman::default())))
}

/// A [`ContainerEngine`] on a Docker daemon (or on Podman's Docker-compatible service).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    address: String,
    /// The ssh transport of an `ssh://` host; the engine's last clone drops it.
    _ssh: Option<Arc<ssh::SshProxy>>,
    /// Env files and secret files of every environment.
    files: ContainerFiles,
    /// Set when the daemon is Podman's Docker-compatible service (see [`DockerEngine::is_podman`]).
    podman: Option<Arc<podman::Podman>>,
    /// Claim records already read, by container id (a record never changes once written).
    claims: pool::ClaimCache,
    /// One-shot containers this engine removed itself once their command ended, so that the
    /// caller's stop need not ask the daemon again.
    removed: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl DockerEngine {
    /// Connects to the daemon and negotiates the API version down to what it speaks (bollard
    /// asks for 1.53 by default; Debian's dockerd 20.10 speaks 1.41).
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the address when the daemon cannot be reached;
    /// [`Error::Forbidden`] when ssh refuses the host key or the credentials;
    /// [`Error::InvalidSpec`] naming `host`, `context` or the TLS file at fault when the
    /// settings are malformed.
    pub async fn connect(config: &DockerConfig) -> Result<Self> {
        let endpoint = config.endpoint()?;
        let address = endpoint.address.clone();
        let field = endpoint.field;
        if address.starts_with("ssh://") {
            let target = ssh::SshTarget::parse(field, &address)?;
            let proxy =
                ssh::SshProxy::start(&address, target, config.ssh_config.as_deref()).await?;
            let docker = Docker::connect_with_socket(
                &proxy.socket().display().to_string(),
                DEFAULT_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|e| errors::unavailable(&address, e))?;
            let docker =
                match retry::idempotent("version", || docker.clone().negotiate_version()).await {
                    Ok(d) => d,
                    Err(e) => return Err(proxy.classify(&address, e)),
                };
            let podman = match detect_podman(&docker).await {
                Ok(podman) => podman,
                Err(e) => return Err(proxy.classify(&address, e)),
            };
            return Ok(Self {
                docker,
                address,
                _ssh: Some(Arc::new(proxy)),
                files: config.files.clone(),
                podman,
                claims: pool::ClaimCache::default(),
                removed: Arc::default(),
            });
        }
        let docker = match &endpoint.tls {
            Some(tls) if address.starts_with("tcp://") || address.starts_with("https://") => {
                tls::connect(&address, tls)?
            }
            _ => Docker::connect_with_host(&address).map_err(|e| match e {
                bollard::errors::Error::UnsupportedURISchemeError { .. } => Error::invalid_spec(
                    field,
                    format!(
                        "{address:?} is not a daemon address: expected unix:///path, tcp://host:port, ssh://[user@]host[:port] or http(s)://host:port"
                    ),
                ),
                other => errors::unavailable(&address, other),
            })?,
        };
        let classify = |e| match &endpoint.tls {
            Some(tls) => tls::classify(&address, tls, e),
            None => errors::unavailable(&address, e),
        };
        let docker = retry::idempotent("version", || docker.clone().negotiate_version())
            .await
            .map_err(classify)?;
        let podman = detect_podman(&docker).await.map_err(classify)?;
        Ok(Self {
            docker,
            address,
            _ssh: None,
            files: config.files.clone(),
            podman,
            claims: pool::ClaimCache::default(),
            removed: Arc::default(),
        })
    }

    /// Whether the daemon is Podman's Docker-compatible service (told by its `/version`
    /// answer at connect). The backend then maps Podman's answers onto Docker's semantics,
    /// so callers need not ask; this is for reports such as `berth doctor`.
    #[must_use]
    pub fn is_podman(&self) -> bool {
        self.podman.is_some()
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
        let version = retry::idempotent("version", || self.docker.version())
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
        image::build(self, build, None, progress).await
    }

    async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
        container::start(self, spec).await
    }

    async fn exec_streaming(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecProcess> {
        let env = self.resolve_existing(env).await?;
        exec::exec_streaming(&self.docker, &self.address, &env, req, self.podman.clone()).await
    }

    async fn run_once(
        &self,
        spec: &EnvironmentSpec,
        req: ExecRequest,
    ) -> Result<(EnvironmentId, ExecProcess)> {
        oneshot::run_once(self, spec, req).await
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

    async fn set_network(&self, env: &EnvironmentId, network: &Network) -> Result<()> {
        container::set_network(self, env, network).await
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
        container::list(self, selector).await
    }

    async fn start_pool_member(&self, pool: &PoolSpec) -> Result<EnvironmentId> {
        pool::start_member(self, pool).await
    }

    async fn claim_pool_member(&self, claim: &PoolClaim) -> Result<Option<EnvironmentId>> {
        pool::claim(self, claim).await
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
        volume::list(self, selector).await
    }

    async fn submit_run(&self, spec: &RunSpec) -> Result<RunId> {
        run::submit(self, spec).await
    }

    async fn run_status(&self, run: &RunId) -> Result<RunStatus> {
        run::status(self, run).await
    }

    async fn run_logs(&self, run: &RunId, options: LogOptions) -> Result<LogStream> {
        run::logs(self, run, options).await
    }

    async fn list_runs(&self, selector: &LabelSelector) -> Result<Vec<RunStatus>> {
        run::list(self, selector).await
    }

    async fn cancel_run(&self, run: &RunId) -> Result<()> {
        run::cancel(self, run).await
    }

    async fn remove_volume(&self, name: &str) -> Result<RemoveOutcome> {
        volume::remove(self, name).await
    }

    async fn connect_port(
        &self,
        env: &EnvironmentId,
        port: u16,
    ) -> Result<berth_engine_core::PortStream> {
        port::connect(self, env, port).await
    }
}
