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

mod errors;
mod exec;

use berth_engine_core::backend;
use std::collections::HashMap;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentState, EnvironmentStatus, Error, ExecProcess, ExecRequest, ImageInfo, ImageRef,
    LabelSelector, Progress, ProgressEvent, PullPolicy, Resources, Result, SecurityProfile,
    StopOutcome, TarStream, VolumeStatus, Workspace, DETACHED_REQUESTED, DETACHED_YES,
    LABEL_DETACHED,
};
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, Mount, MountType,
    MountVolumeOptions, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use crate::errors::BACKEND;

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
    /// [`Error::InvalidSpec`] naming `docker.host` when the address is malformed.
    pub async fn connect(config: &DockerConfig) -> Result<Self> {
        let address = config.address();
        let docker = Docker::connect_with_host(&address).map_err(|e| match e {
            bollard::errors::Error::UnsupportedURISchemeError { .. } => Error::invalid_spec(
                "docker.host",
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

    async fn ensure_volume(&self, name: &str, labels: &HashMap<String, String>) -> Result<()> {
        // Creating an existing volume returns it unchanged, so this is one call either way.
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(self.other("create volume"))
    }

    fn container_body(
        &self,
        spec: &EnvironmentSpec,
        labels: &HashMap<String, String>,
    ) -> Result<ContainerCreateBody> {
        let mount = match &spec.workspace {
            Workspace::HostPath { path } => Some(Mount {
                target: Some(spec.mount_path.clone()),
                source: Some(path.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                ..Default::default()
            }),
            Workspace::Volume { name, sub_path } => {
                if sub_path.is_some() && !self.supports_volume_subpath() {
                    return Err(Error::Unsupported {
                        backend: BACKEND,
                        operation: "workspace.sub_path",
                        reason: format!(
                            "volume sub-paths need Docker Engine 26 (API 1.45) or newer, and the daemon at {} speaks API {}; mount the whole volume or upgrade the daemon",
                            self.address,
                            self.docker.client_version()
                        ),
                    });
                }
                Some(Mount {
                    target: Some(spec.mount_path.clone()),
                    source: Some(name.clone()),
                    typ: Some(MountType::VOLUME),
                    volume_options: Some(MountVolumeOptions {
                        subpath: sub_path.clone(),
                        labels: Some(labels.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            Workspace::Ephemeral => Some(Mount {
                target: Some(spec.mount_path.clone()),
                typ: Some(MountType::VOLUME),
                volume_options: Some(MountVolumeOptions {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            _ => None,
        };
        let Resources {
            cpu_millis,
            memory_bytes,
            pids,
            ..
        } = spec.resources.clone();
        let (cap_drop, cap_add) = match spec.security {
            SecurityProfile::Restricted => (vec!["ALL".to_owned()], vec![]),
            _ => (
                vec!["ALL".to_owned()],
                HARDENED_CAPABILITIES
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
            ),
        };
        let host_config = HostConfig {
            init: Some(true),
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            cap_drop: Some(cap_drop),
            cap_add: Some(cap_add),
            pids_limit: Some(i64::try_from(pids.unwrap_or(DEFAULT_PIDS_LIMIT)).unwrap_or(i64::MAX)),
            memory: memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            // No swap on top, as on Kubernetes: the limit is where the out-of-memory killer
            // acts, not where the environment starts swapping.
            memory_swap: memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            nano_cpus: cpu_millis
                .map(|c| i64::try_from(c.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            network_mode: Some(if spec.network { "bridge" } else { "none" }.to_owned()),
            mounts: mount.map(|m| vec![m]),
            ..Default::default()
        };
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(ContainerCreateBody {
            image: Some(spec.image.to_string()),
            entrypoint: Some(vec!["sleep".to_owned()]),
            cmd: Some(vec![spec.max_lifetime.as_secs().to_string()]),
            env: Some(env),
            labels: Some(labels.clone()),
            user: spec.user.clone(),
            working_dir: spec.workdir.clone(),
            // SIGTERM ends `sleep` at once under Docker's init; no grace period is needed.
            stop_timeout: Some(1),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    fn supports_volume_subpath(&self) -> bool {
        let v = self.docker.client_version();
        (v.major_version, v.minor_version) >= (1, 45)
    }

    async fn remove_container(&self, name: &str) -> Result<StopOutcome> {
        let removed = self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        match removed {
            Ok(()) => Ok(StopOutcome::Stopped),
            Err(e) => match errors::status(&e) {
                Some((404, _)) => Ok(StopOutcome::AlreadyGone),
                // Another stop is already removing it.
                Some((409, msg)) if msg.contains("already in progress") => Ok(StopOutcome::Stopped),
                _ => Err(errors::env_call(&self.address, name, "remove container", e)),
            },
        }
    }

    async fn inspect_image_info(&self, image: &ImageRef) -> Result<Option<ImageInfo>> {
        match self.docker.inspect_image(image.as_str()).await {
            Ok(inspect) => Ok(Some(ImageInfo::new(
                image.clone(),
                inspect.id,
                inspect.size.and_then(|s| u64::try_from(s).ok()),
            ))),
            Err(e) if matches!(errors::status(&e), Some((404, _))) => Ok(None),
            Err(e) => Err(errors::other(&self.address, "inspect image", e)),
        }
    }

    async fn pull(&self, image: &ImageRef, progress: &Progress) -> Result<()> {
        let (from_image, tag) = match (image.digest(), image.tag()) {
            (Some(_), _) => (image.as_str().to_owned(), None),
            (None, tag) => (
                image.repository().to_owned(),
                Some(tag.unwrap_or("latest").to_owned()),
            ),
        };
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(from_image),
                tag,
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.pull_error(image, e))?;
            if let Some(detail) = info.error_detail {
                let reason = detail.message.unwrap_or_else(|| "unknown error".into());
                return Err(classify_pull_failure(image, reason));
            }
            if let Some(status) = info.status {
                let (current, total) = info
                    .progress_detail
                    .map(|d| {
                        (
                            d.current.and_then(|c| u64::try_from(c).ok()),
                            d.total.and_then(|t| u64::try_from(t).ok()),
                        )
                    })
                    .unwrap_or_default();
                progress.emit(&ProgressEvent::status(info.id, status).with_counts(current, total));
            }
        }
        Ok(())
    }

    fn pull_error(&self, image: &ImageRef, e: bollard::errors::Error) -> Error {
        if errors::is_transport(&e) {
            return errors::unavailable(&self.address, e);
        }
        let reason = match &e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
            bollard::errors::Error::DockerStreamError { error } => error.clone(),
            other => other.to_string(),
        };
        classify_pull_failure(image, reason)
    }
}

fn classify_pull_failure(image: &ImageRef, reason: String) -> Error {
    let lower = reason.to_lowercase();
    if lower.contains("not found")
        || lower.contains("manifest unknown")
        || lower.contains("pull access denied")
        || lower.contains("does not exist")
    {
        Error::ImageNotFound {
            image: image.to_string(),
            reason,
        }
    } else {
        Error::ImagePull {
            image: image.to_string(),
            reason,
        }
    }
}

/// Docker's `label=key=value` filters for `selector` (the daemon ANDs them).
fn label_filters(selector: &LabelSelector) -> HashMap<String, Vec<String>> {
    let labels = selector
        .requirements()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    HashMap::from([("label".to_owned(), labels)])
}

fn labels_map(spec: &EnvironmentSpec) -> HashMap<String, String> {
    spec.object_labels(backend::now_unix())
        .into_iter()
        .collect()
}

/// Docker's names have no length limit that berth's names could reach.
fn container_name(spec: &EnvironmentSpec) -> String {
    backend::object_name(spec, usize::MAX)
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
        if policy != PullPolicy::Always {
            if let Some(info) = self.inspect_image_info(image).await? {
                return Ok(info);
            }
            if policy == PullPolicy::Never {
                return Err(Error::ImageNotFound {
                    image: image.to_string(),
                    reason: format!(
                        "it is not on the Docker daemon at {} and the pull policy is never; build it, load it, or allow pulling",
                        self.address
                    ),
                });
            }
        }
        self.pull(image, progress).await?;
        self.inspect_image_info(image)
            .await?
            .ok_or_else(|| Error::ImageNotFound {
                image: image.to_string(),
                reason: "the pull finished but the daemon does not have the image".into(),
            })
    }

    async fn build_image(&self, build: BuildSpec, progress: &Progress) -> Result<ImageInfo> {
        build.validate()?;
        let tag = build.tag.clone();
        let options = BuildImageOptions {
            dockerfile: build.dockerfile.clone(),
            t: Some(tag.to_string()),
            buildargs: Some(build.build_args.clone().into_iter().collect()),
            labels: Some(build.labels.clone().into_iter().collect()),
            pull: build.pull.then(|| "1".to_owned()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let body = bollard::body_try_stream(build.context);
        let mut stream = self.docker.build_image(options, None, Some(body));
        let build_failed = |reason: String| Error::Build {
            tag: tag.to_string(),
            reason,
        };
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e) if errors::is_transport(&e) => {
                    return Err(errors::unavailable(&self.address, e))
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(build_failed(error))
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(build_failed(message))
                }
                Err(e) => return Err(errors::other(&self.address, "build image", e)),
            };
            if let Some(detail) = info.error_detail {
                return Err(build_failed(detail.message.unwrap_or_default()));
            }
            if let Some(line) = info
                .stream
                .as_deref()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
            {
                progress.emit(&ProgressEvent::status(None, line));
            }
            if let Some(status) = info.status {
                progress.emit(&ProgressEvent::status(info.id, status));
            }
        }
        self.inspect_image_info(&tag).await?.ok_or_else(|| {
            build_failed("the build finished but the daemon has no image with that tag".into())
        })
    }

    async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
        spec.validate()?;
        let labels = labels_map(spec);
        let body = self.container_body(spec, &labels)?;
        if let Workspace::Volume { name, .. } = &spec.workspace {
            self.ensure_volume(name, &labels).await?;
        }
        let name = container_name(spec);
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| match errors::status(&e) {
                Some((404, msg)) if msg.contains("image") => Error::ImageNotFound {
                    image: spec.image.to_string(),
                    reason: format!(
                        "it is not on the Docker daemon at {}; build or pull it first (berth image ensure)",
                        self.address
                    ),
                },
                Some((400, msg)) if msg.contains("bind source path does not exist") => {
                    Error::invalid_spec("workspace.host_path", msg.to_owned())
                }
                _ => errors::other(&self.address, "create container", e),
            })?;
        let id = EnvironmentId::new(name.clone())?;
        if let Err(e) = self.docker.start_container(&name, None).await {
            let err = match errors::status(&e) {
                Some((_, msg))
                    if msg.contains("executable file not found")
                        || msg.contains("no such file or directory") =>
                {
                    Error::invalid_spec(
                        "image",
                        format!(
                            "{} has no `sleep` on its PATH, which berth's keepalive needs ({msg})",
                            spec.image
                        ),
                    )
                }
                _ => errors::other(&self.address, "start container", e),
            };
            return match self.remove_container(&name).await {
                Ok(_) => Err(err),
                Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
            };
        }
        tracing::debug!(env = %id, image = %spec.image, "started environment");
        Ok(id)
    }

    async fn exec_streaming(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecProcess> {
        let env = self.resolve_existing(env).await?;
        exec::exec_streaming(&self.docker, &self.address, &env, req).await
    }

    async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()> {
        backend::require_absolute("dest", dest)?;
        let env = &self.resolve_existing(env).await?;
        self.docker
            .upload_to_container(
                env.as_str(),
                Some(UploadToContainerOptions {
                    path: dest.to_owned(),
                    ..Default::default()
                }),
                bollard::body_try_stream(tar),
            )
            .await
            .map_err(|e| self.path_error(env, dest, "copy into container", e))
    }

    async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream> {
        backend::require_absolute("path", path)?;
        let env = &self.resolve_existing(env).await?;
        let mut stream = self.docker.download_from_container(
            env.as_str(),
            Some(DownloadFromContainerOptions {
                path: path.to_owned(),
            }),
        );
        // The daemon reports a missing path in its response head, which arrives with the
        // first item: surface it here, not half-way through the caller's read.
        let first = match stream.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(self.path_error(env, path, "copy out of container", e)),
            None => bytes::Bytes::new(),
        };
        let address = self.address.clone();
        let rest = stream.map_err(move |e| {
            std::io::Error::other(errors::other(&address, "copy out of container", e))
        });
        Ok(Box::pin(
            futures_util::stream::iter([Ok(first)]).chain(rest),
        ))
    }

    async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome> {
        let Some(name) = self.resolve(env).await? else {
            return Ok(StopOutcome::AlreadyGone);
        };
        let outcome = self.remove_container(&name).await?;
        tracing::debug!(env = %env, ?outcome, "stopped environment");
        Ok(outcome)
    }

    async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
        // Labels are immutable on Docker, so the record is a file the daemon writes into the
        // container (no process runs); `list` reads it back for containers created with
        // `berth.dev/detached=requested`.
        let env = self.resolve_existing(env).await?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o444);
        header.set_size(0);
        tar.append_data(&mut header, DETACHED_MARKER, std::io::empty())
            .and_then(|()| tar.finish())
            .map_err(|e| Error::backend(BACKEND, "write the detached marker", e))?;
        let archive = tar
            .into_inner()
            .map_err(|e| Error::backend(BACKEND, "write the detached marker", e))?;
        self.docker
            .upload_to_container(
                env.as_str(),
                Some(UploadToContainerOptions {
                    path: "/".to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| errors::env_call(&self.address, env.as_str(), "mark detached", e))
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
        let filters = label_filters(selector);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(self.other("list containers"))?;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
            else {
                continue;
            };
            let mut labels: std::collections::BTreeMap<String, String> =
                c.labels.unwrap_or_default().into_iter().collect();
            if labels.get(LABEL_DETACHED).map(String::as_str) == Some(DETACHED_REQUESTED)
                && c.state == Some(ContainerSummaryStateEnum::RUNNING)
                && self.has_detached_marker(&name).await?
            {
                labels.insert(LABEL_DETACHED.to_owned(), DETACHED_YES.to_owned());
            }
            if !selector.matches(&labels) {
                continue;
            }
            let state = match c.state {
                Some(ContainerSummaryStateEnum::RUNNING) => EnvironmentState::Running,
                Some(
                    ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::RESTARTING,
                ) => EnvironmentState::Pending,
                Some(
                    ContainerSummaryStateEnum::EXITED
                    | ContainerSummaryStateEnum::DEAD
                    | ContainerSummaryStateEnum::REMOVING
                    | ContainerSummaryStateEnum::STOPPING,
                ) => EnvironmentState::Exited,
                _ => EnvironmentState::Unknown,
            };
            let mut status = EnvironmentStatus::new(
                EnvironmentId::new(name)?,
                c.image.unwrap_or_default(),
                state,
                labels,
            );
            if status.created_unix_secs.is_none() {
                status.created_unix_secs = c.created.and_then(|t| u64::try_from(t).ok());
            }
            out.push(status);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
        let list = |dangling: bool| {
            let mut filters = label_filters(selector);
            if dangling {
                // Dangling: referenced by no container, running or not.
                filters.insert("dangling".into(), vec!["true".into()]);
            }
            self.docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
        };
        let listed = list(false).await.map_err(self.other("list volumes"))?;
        let unused: std::collections::HashSet<String> = list(true)
            .await
            .map_err(self.other("list unused volumes"))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let mut out: Vec<VolumeStatus> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let labels: std::collections::BTreeMap<String, String> =
                    v.labels.into_iter().collect();
                let in_use = !unused.contains(&v.name);
                selector
                    .matches(&labels)
                    .then(|| VolumeStatus::new(v.name, labels, in_use))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_volume(&self, name: &str) -> Result<StopOutcome> {
        match self
            .docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(StopOutcome::Stopped),
            Err(e) => match errors::status(&e) {
                Some((404, _)) => Ok(StopOutcome::AlreadyGone),
                Some((409, msg)) => Err(Error::Conflict {
                    what: "volume",
                    name: name.to_owned(),
                    reason: msg.to_owned(),
                }),
                _ => Err(errors::other(&self.address, "remove volume", e)),
            },
        }
    }
}

/// A container as [`DockerEngine::resolve`] sees it: its name, full id and whether berth
/// made it.
struct Candidate {
    name: String,
    id: String,
    berths: bool,
}

/// Which container `given` names for berth, by the rule every command follows: an exact
/// name or full id of a berth container; else an id prefix unique among berth's containers.
/// `named` is what the daemon itself resolved `given` to (it also matches id prefixes of
/// containers berth did not create); `berths` lists berth's containers.
///
/// `Ok(None)`: nothing by that name exists; `Err`: it names a container berth did not create,
/// or a prefix ambiguous among berth's.
fn pick_container(
    given: &str,
    named: Option<&Candidate>,
    berths: &[Candidate],
) -> Result<Option<String>> {
    if let Some(c) = named {
        if c.berths {
            return Ok(Some(c.name.clone()));
        }
        if c.name == given || c.id == given {
            return Err(Error::not_a_berth_environment(given));
        }
    }
    let matches: Vec<&Candidate> = berths
        .iter()
        .filter(|c| c.berths && !given.is_empty() && c.id.starts_with(given))
        .collect();
    match (matches.as_slice(), named) {
        ([one], _) => Ok(Some(one.name.clone())),
        ([], None) => Ok(None),
        ([], Some(_)) => Err(Error::not_a_berth_environment(given)),
        (many, _) => Err(Error::invalid_spec(
            "environment",
            format!(
                "the id prefix {given:?} matches {} berth environments ({}); give more of the id or the name",
                many.len(),
                many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

impl DockerEngine {
    /// The name of the berth container `env` names (see [`pick_container`]); `Ok(None)` when
    /// no container has that name or id. Every call taking an environment goes through this,
    /// so berth never runs a command in, copies with, or removes a container it did not create.
    async fn resolve(&self, env: &EnvironmentId) -> Result<Option<String>> {
        let named = match self.docker.inspect_container(env.as_str(), None).await {
            Ok(c) => Some(Candidate {
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                id: c.id.unwrap_or_default(),
                berths: c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(berth_engine_core::LABEL_MANAGED_BY).cloned())
                    .as_deref()
                    == Some(berth_engine_core::MANAGED_BY_VALUE),
            }),
            // Missing, or an id prefix several containers share (the daemon refuses those).
            Err(e) if matches!(errors::status(&e), Some((400 | 404, _))) => None,
            Err(e) => {
                return Err(errors::env_call(
                    &self.address,
                    env.as_str(),
                    "inspect container",
                    e,
                ))
            }
        };
        if named.as_ref().is_some_and(|c| c.berths) {
            return pick_container(env.as_str(), named.as_ref(), &[]);
        }
        // Only a hexadecimal string can be an id prefix of one of berth's containers.
        let berths = if env.as_str().bytes().all(|b| b.is_ascii_hexdigit()) {
            self.berth_containers().await?
        } else {
            Vec::new()
        };
        pick_container(env.as_str(), named.as_ref(), &berths)
    }

    /// Like [`DockerEngine::resolve`], for calls that need the environment to exist: a name
    /// that names nothing is passed on unchanged so the call reports it missing as before.
    async fn resolve_existing(&self, env: &EnvironmentId) -> Result<EnvironmentId> {
        match self.resolve(env).await? {
            Some(name) if name != env.as_str() => EnvironmentId::new(name),
            _ => Ok(env.clone()),
        }
    }

    /// Whether [`ContainerEngine::mark_detached`] wrote its marker into `name`.
    async fn has_detached_marker(&self, name: &str) -> Result<bool> {
        let options = bollard::query_parameters::ContainerArchiveInfoOptions {
            path: format!("/{DETACHED_MARKER}"),
        };
        match self
            .docker
            .get_container_archive_info(name, Some(options))
            .await
        {
            Ok(_) => Ok(true),
            // No marker, or the container went away meanwhile.
            Err(e) if matches!(errors::status(&e), Some((404, _))) => Ok(false),
            Err(e) => Err(errors::env_call(
                &self.address,
                name,
                "stat the detached marker",
                e,
            )),
        }
    }

    async fn berth_containers(&self) -> Result<Vec<Candidate>> {
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filters(&LabelSelector::all())),
                ..Default::default()
            }))
            .await
            .map_err(self.other("list containers"))?;
        Ok(listed
            .into_iter()
            .map(|c| Candidate {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                id: c.id.unwrap_or_default(),
                berths: true,
            })
            .collect())
    }
}

impl DockerEngine {
    fn path_error(
        &self,
        env: &EnvironmentId,
        path: &str,
        step: &str,
        e: bollard::errors::Error,
    ) -> Error {
        match errors::status(&e) {
            Some((404, msg)) if !msg.to_lowercase().contains("no such container") => {
                Error::path_not_found(path, env)
            }
            Some((400, msg)) if msg.contains("not a directory") => {
                Error::invalid_spec("dest", format!("{path} in {env} is not a directory"))
            }
            _ => errors::env_call(&self.address, env.as_str(), step, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, id: &str, berths: bool) -> Candidate {
        Candidate {
            name: name.into(),
            id: id.into(),
            berths,
        }
    }

    #[test]
    fn a_container_berth_did_not_create_is_refused_by_name_id_or_prefix() {
        let foreign = c("foreign", "8f4ad1aa", false);
        for given in ["foreign", "8f4ad1aa", "8f4ad1"] {
            let err = pick_container(given, Some(&foreign), &[]).unwrap_err();
            assert!(err.is_not_found(), "{err}");
            assert!(err.to_string().contains("not a berth environment"), "{err}");
        }
    }

    #[test]
    fn berths_own_resolve_by_name_id_or_unique_prefix() {
        let mine = c("berth-s-main-1", "abc123", true);
        let other = c("berth-s-main-2", "abd456", true);
        let berths = [mine, other];
        assert_eq!(
            pick_container("abc123", Some(&berths[0]), &[]).unwrap(),
            Some("berth-s-main-1".into())
        );
        // The daemon found no unique match (ambiguous with a foreign container): berth's own
        // list decides.
        assert_eq!(
            pick_container("abc", None, &berths).unwrap(),
            Some("berth-s-main-1".into())
        );
        let err = pick_container("ab", None, &berths).unwrap_err();
        assert!(
            err.to_string().contains("matches 2 berth environments"),
            "{err}"
        );
        assert_eq!(pick_container("ffff", None, &berths).unwrap(), None);
    }
}
