//! Containers: the body an environment is created from, start, stop, list, and the
//! detached marker.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use berth_engine_core::backend;
use berth_engine_core::{
    EnvironmentId, EnvironmentSpec, EnvironmentState, EnvironmentStatus, Error, LabelSelector,
    Result, StopOutcome, Workspace, DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED,
};
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, UploadToContainerOptions,
};

use crate::body;
use crate::errors::{self, BACKEND};
use crate::{DockerEngine, DETACHED_MARKER};

pub(crate) async fn start(engine: &DockerEngine, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
    spec.validate()?;
    if spec.network.allow_list().is_some() {
        if let Some(reason) = crate::egress::enforcement_unavailable(&engine.address) {
            return Err(Error::Unsupported {
                backend: errors::BACKEND,
                operation: "network",
                reason,
            });
        }
    }
    let labels = labels_map(spec);
    let body = body::container_body(
        spec,
        &labels,
        &engine.address,
        &engine.docker.client_version(),
    )?;
    let name = create_and_start(engine, spec, &labels, body, None, |msg| {
        keepalive_missing(spec, msg)
    })
    .await?;
    enforce_network(engine, spec, &name).await?;
    let id = EnvironmentId::new(name)?;
    tracing::debug!(env = %id, image = %spec.image, "started environment");
    Ok(id)
}

/// The error of an environment whose keepalive could not start: the image lacks `sleep`
/// (`msg` is the runtime's words).
pub(crate) fn keepalive_missing(spec: &EnvironmentSpec, msg: &str) -> Error {
    Error::invalid_spec(
        "image",
        format!(
            "{} has no `sleep` on its PATH, which berth's keepalive needs ({msg})",
            spec.image
        ),
    )
}

/// Loads the allow list of `spec`'s network into the started container `name` before anyone
/// else gets it (only the keepalive runs so far); a container whose rules did not load is
/// removed, never handed out unenforced. Nothing to do for `none` and `full`.
pub(crate) async fn enforce_network(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    name: &str,
) -> Result<()> {
    if spec.network.allow_list().is_none() {
        return Ok(());
    }
    if let Err(err) = crate::egress::apply(engine, name, &spec.network, true).await {
        return match engine.remove_container(name).await {
            Ok(_) => Err(err),
            Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
        };
    }
    Ok(())
}

/// Creates the container `body` of `spec` (its workspace volume first), named like an
/// environment, and starts it; returns its name. A container that does not start is
/// removed; `not_runnable` turns the runtime's message about a missing executable into the
/// error to return.
pub(crate) async fn create_and_start(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    labels: &HashMap<String, String>,
    body: bollard::models::ContainerCreateBody,
    before_start: Option<Upload>,
    not_runnable: impl FnOnce(&str) -> Error,
) -> Result<String> {
    create_and_start_named(
        engine,
        spec,
        labels,
        body,
        container_name(spec),
        before_start,
        not_runnable,
    )
    .await
}

/// [`create_and_start`] with the container's name chosen by the caller (a pool member
/// carries its own name in a label).
pub(crate) async fn create_and_start_named(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    labels: &HashMap<String, String>,
    body: bollard::models::ContainerCreateBody,
    name: String,
    before_start: Option<Upload>,
    not_runnable: impl FnOnce(&str) -> Error,
) -> Result<String> {
    let name = create_named(engine, spec, labels, body, name, |_| {}).await?;
    if let Some(upload) = before_start {
        if let Err(e) = upload.put(engine, &name).await {
            return match engine.remove_container(&name).await {
                Ok(_) => Err(e),
                Err(cleanup) => Err(e.with_cleanup_failure(cleanup)),
            };
        }
    }
    if let Err(e) = engine.docker.start_container(&name, None).await {
        let err = match errors::status(&e) {
            Some((_, msg)) if not_runnable_message(msg) => not_runnable(msg),
            _ => errors::other(&engine.address, "start container", e),
        };
        return match engine.remove_container(&name).await {
            Ok(_) => Err(err),
            Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
        };
    }
    Ok(name)
}

/// Creates the container `body` of `spec` (its workspace volume first, the configured env
/// and secret files applied, then `adjust`), named like an environment; returns its name.
pub(crate) async fn create(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    labels: &HashMap<String, String>,
    body: bollard::models::ContainerCreateBody,
    adjust: impl FnOnce(&mut ContainerCreateBody),
) -> Result<String> {
    create_named(engine, spec, labels, body, container_name(spec), adjust).await
}

/// [`create`] named `name`. On Podman an ephemeral workspace becomes a named, labelled
/// volume and the resource limits are read back (see below); a container that fails either
/// is removed.
async fn create_named(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    labels: &HashMap<String, String>,
    body: bollard::models::ContainerCreateBody,
    name: String,
    adjust: impl FnOnce(&mut ContainerCreateBody),
) -> Result<String> {
    if let Workspace::Volume { name, .. } = &spec.workspace {
        engine.ensure_volume(name, labels).await?;
    }
    let mut body = body;
    engine.files.apply(spec, &engine.address, &mut body)?;
    adjust(&mut body);
    let podman_workspace =
        engine.podman.is_some() && matches!(spec.workspace, Workspace::Ephemeral);
    if podman_workspace {
        // Podman ignores a mount's volume labels, so the anonymous workspace volume would be
        // unlabelled there (invisible to gc): make it a named, labelled volume instead, which
        // `remove_container` removes with the container.
        let volume = ephemeral_volume(&name);
        engine.ensure_volume(&volume, labels).await?;
        let mounts = body
            .host_config
            .as_mut()
            .and_then(|h| h.mounts.as_mut())
            .into_iter()
            .flatten();
        for mount in mounts {
            if mount.typ == Some(MountType::VOLUME) && mount.source.is_none() {
                mount.source = Some(volume.clone());
                mount.volume_options = None;
            }
        }
    }
    let limits = requested_limits(&body);
    let created = engine
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await;
    if let Err(e) = created {
        let err = create_error(engine, spec, e);
        if podman_workspace {
            if let Err(cleanup) = engine.remove_ephemeral_volume(&name).await {
                return Err(err.with_cleanup_failure(cleanup));
            }
        }
        return Err(err);
    }
    if engine.podman.is_some() {
        // Rootless Podman on cgroup v1 accepts resource limits and drops them without a word
        // (its inspect then reports 0): an environment without its pids or memory limit is
        // not one berth promised, so refuse it.
        if let Err(err) = engine.check_limits(&name, &limits).await {
            return match engine.remove_container(&name).await {
                Ok(_) => Err(err),
                Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
            };
        }
    }
    Ok(name)
}

/// Whether a start failed because the command's executable is missing (runc's `exec:
/// "sleep": executable file not found in $PATH`, `exec: "/x": stat /x: no such file or
/// directory`), not because of some other missing file of the runtime's own (rootless
/// Podman's "failed to mount runtime directory for rootless netns: no such file or
/// directory" is no fault of the image).
pub(crate) fn not_runnable_message(msg: &str) -> bool {
    msg.contains("executable file not found")
        || (msg.contains("no such file or directory") && msg.contains("exec:"))
}

/// Files put into a created container before it starts (a run's checkout): a tar archive
/// extracted at `dest`, owned by the container's user.
pub(crate) struct Upload {
    /// The absolute directory the archive is extracted into.
    pub(crate) dest: String,
    /// The archive.
    pub(crate) tar: berth_engine_core::TarStream,
}

impl Upload {
    async fn put(self, engine: &DockerEngine, container: &str) -> Result<()> {
        let dest = self.dest;
        engine
            .docker
            .upload_to_container(
                container,
                Some(bollard::query_parameters::UploadToContainerOptions {
                    path: dest.clone(),
                    // Owned by the user the command runs as, so it can change its checkout.
                    copy_uidgid: Some("true".to_owned()),
                    ..Default::default()
                }),
                bollard::body_try_stream(self.tar),
            )
            .await
            .map_err(|e| {
                errors::other(
                    &engine.address,
                    &format!("copy the run's files into {dest}"),
                    e,
                )
            })
    }
}

/// The error of a failed container create for `spec`: a missing image or bind source named
/// as such.
fn create_error(engine: &DockerEngine, spec: &EnvironmentSpec, e: bollard::errors::Error) -> Error {
    match errors::status(&e) {
        Some((404, msg)) if msg.contains("image") => Error::ImageNotFound {
            image: spec.image.to_string(),
            reason: format!(
                "it is not on the Docker daemon at {}; build or pull it first (berth image ensure)",
                engine.address
            ),
        },
        Some((400, msg)) if msg.contains("bind source path does not exist") => {
            Error::invalid_spec("workspace.host_path", msg.to_owned())
        }
        _ => errors::other(&engine.address, "create container", e),
    }
}

pub(crate) async fn set_network(
    engine: &DockerEngine,
    env: &EnvironmentId,
    network: &berth_engine_core::Network,
) -> Result<()> {
    let env = engine.resolve_existing(env).await?;
    crate::egress::set_network(engine, env.as_str(), network).await
}

pub(crate) async fn stop(engine: &DockerEngine, env: &EnvironmentId) -> Result<StopOutcome> {
    if engine.forget_removed(env.as_str()) {
        return Ok(StopOutcome::AlreadyGone);
    }
    let Some(name) = engine.resolve(env).await? else {
        return Ok(StopOutcome::AlreadyGone);
    };
    let outcome = engine.remove_container(&name).await?;
    if let Some(podman) = &engine.podman {
        podman.forget(&name);
    }
    tracing::debug!(env = %env, ?outcome, "stopped environment");
    Ok(outcome)
}

pub(crate) async fn mark_detached(engine: &DockerEngine, env: &EnvironmentId) -> Result<()> {
    // Labels are immutable on Docker, so the record is a file the daemon writes into the
    // container (no process runs); `list` reads it back for containers created with
    // `berth.dev/detached=requested`.
    let env = engine.resolve_existing(env).await?;
    engine
        .write_marker(env.as_str(), DETACHED_MARKER, "mark detached")
        .await
}

impl DockerEngine {
    /// Writes the empty file `/<marker>` into the container `name` through the archive API
    /// (no process runs, so it works on a stopped container too): how berth records what
    /// Docker's immutable labels cannot.
    pub(crate) async fn write_marker(&self, name: &str, marker: &str, step: &str) -> Result<()> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o444);
        header.set_size(0);
        tar.append_data(&mut header, marker, std::io::empty())
            .and_then(|()| tar.finish())
            .map_err(|e| Error::backend(BACKEND, step.to_owned(), e))?;
        let archive = tar
            .into_inner()
            .map_err(|e| Error::backend(BACKEND, step.to_owned(), e))?;
        self.docker
            .upload_to_container(
                name,
                Some(UploadToContainerOptions {
                    path: "/".to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| errors::env_call(&self.address, name, step, e))
    }
}

pub(crate) async fn list(
    engine: &DockerEngine,
    selector: &LabelSelector,
) -> Result<Vec<EnvironmentStatus>> {
    let filters = label_filters(selector);
    let list_with = |filters: HashMap<String, Vec<String>>| {
        crate::retry::idempotent("list containers", move || {
            crate::lenient::list_containers(
                &engine.docker,
                ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                },
            )
        })
    };
    let mut containers = list_with(filters)
        .await
        .map_err(engine.other("list containers"))?;
    // A selector naming a pool wants unclaimed members, whose own labels are their labels.
    let wants_members = selector
        .requirements()
        .contains_key(berth_engine_core::LABEL_POOL);
    if selector != &LabelSelector::all() && !wants_members {
        // A claimed pool member's own labels are the pool's; its session's are in its claim
        // record, so the daemon's label filter cannot find it: look at every claimed member.
        let mut members = label_filters(&LabelSelector::all());
        if let Some(labels) = members.get_mut("label") {
            labels.push(berth_engine_core::LABEL_POOL_MEMBER.to_owned());
        }
        let seen: std::collections::HashSet<String> =
            containers.iter().filter_map(|c| c.id.clone()).collect();
        containers.extend(
            list_with(members)
                .await
                .map_err(engine.other("list containers"))?
                .into_iter()
                .filter(|c| c.id.as_ref().is_some_and(|id| !seen.contains(id))),
        );
    }
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
        if crate::pool::is_claimed(&name, &labels) {
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            let id = c.id.clone().unwrap_or_default();
            match claimed_labels(engine, &id, &name, labels).await {
                Ok(claimed) => labels = claimed,
                // One going away (the daemon cannot read its files while removing it) is
                // left out rather than failing the whole list.
                Err(e) if !running && e.kind() != berth_engine_core::ErrorKind::Unavailable => {
                    tracing::debug!(container = %name, error = %e, "skipping a claimed member going away");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if labels.get(LABEL_DETACHED).map(String::as_str) == Some(DETACHED_REQUESTED)
            && c.state == Some(ContainerSummaryStateEnum::RUNNING)
            && engine.has_detached_marker(&name).await?
        {
            labels.insert(LABEL_DETACHED.to_owned(), DETACHED_YES.to_owned());
        }
        if !selector.matches(&labels) {
            continue;
        }
        let state = match c.state {
            Some(ContainerSummaryStateEnum::RUNNING) => EnvironmentState::Running,
            Some(ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::RESTARTING) => {
                EnvironmentState::Pending
            }
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

/// The labels `list` reports for the claimed pool member `name` whose own labels are
/// `own`: its claim record's; while the record is not written, the member's labels less the
/// pool's (so it is no longer offered as a member, and gc sees a claim nobody finished).
async fn claimed_labels(
    engine: &DockerEngine,
    id: &str,
    name: &str,
    own: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut read = engine.cached_claim_record(id, name).await;
    if let Err(e) = &read {
        if !matches!(
            e.kind(),
            berth_engine_core::ErrorKind::NotFound | berth_engine_core::ErrorKind::Unavailable
        ) {
            // The daemon answers 500 while it removes the container: ask once more, when it
            // is gone (404) or readable again.
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            read = engine.cached_claim_record(id, name).await;
        }
    }
    let record = match read {
        Ok(record) => record,
        // Removed while listing.
        Err(e) if e.kind() == berth_engine_core::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(match record {
        Some(mut labels) => {
            // The record cannot make a container berth's or move it into another pool.
            labels.insert(
                berth_engine_core::LABEL_MANAGED_BY.to_owned(),
                berth_engine_core::MANAGED_BY_VALUE.to_owned(),
            );
            labels.remove(berth_engine_core::LABEL_POOL);
            labels.remove(berth_engine_core::LABEL_POOL_SPEC);
            labels
        }
        None => {
            let mut labels = own;
            labels.remove(berth_engine_core::LABEL_POOL);
            labels.insert(
                berth_engine_core::LABEL_CLAIM_PENDING.to_owned(),
                "true".to_owned(),
            );
            labels
        }
    })
}

impl DockerEngine {
    pub(crate) async fn remove_container(&self, name: &str) -> Result<StopOutcome> {
        // On Podman the ephemeral workspace is a volume named after the container as it was
        // created; a claimed pool member has been renamed since, so its first name is read
        // from its label before it goes.
        let created_as = match &self.podman {
            Some(_) => crate::lenient::inspect_container(&self.docker, name)
                .await
                .ok()
                .and_then(|c| {
                    c.config?
                        .labels?
                        .remove(berth_engine_core::LABEL_POOL_MEMBER)
                })
                .unwrap_or_else(|| name.to_owned()),
            None => name.to_owned(),
        };
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
        let outcome = match removed {
            Ok(()) => StopOutcome::Stopped,
            Err(e) => match errors::status(&e) {
                Some((404, _)) => StopOutcome::AlreadyGone,
                // Another stop is already removing it.
                Some((409, msg)) if msg.contains("already in progress") => StopOutcome::Stopped,
                _ => return Err(errors::env_call(&self.address, name, "remove container", e)),
            },
        };
        if self.podman.is_some() {
            self.remove_ephemeral_volume(&created_as).await?;
        }
        Ok(outcome)
    }

    /// Removes the named workspace volume an ephemeral environment has on Podman (see
    /// `create_and_start`); fine when there is none.
    async fn remove_ephemeral_volume(&self, container: &str) -> Result<()> {
        let volume = ephemeral_volume(container);
        match self
            .docker
            .remove_volume(
                &volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(errors::status(&e), Some((404, _))) => Ok(()),
            Err(e) => Err(errors::other(&self.address, "remove workspace volume", e)),
        }
    }
}

/// Docker's `label=key=value` filters for `selector` (the daemon ANDs them).
pub(crate) fn label_filters(selector: &LabelSelector) -> HashMap<String, Vec<String>> {
    let labels = selector
        .requirements()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    HashMap::from([("label".to_owned(), labels)])
}

pub(crate) fn labels_map(spec: &EnvironmentSpec) -> HashMap<String, String> {
    spec.object_labels(backend::now_unix())
        .into_iter()
        .collect()
}

/// The resource limits a container body asks for: (name, value) of those set.
fn requested_limits(body: &ContainerCreateBody) -> Vec<(&'static str, i64)> {
    let Some(host) = &body.host_config else {
        return Vec::new();
    };
    [
        ("resources.memory", host.memory),
        ("resources.pids", host.pids_limit),
        ("resources.cpu", host.nano_cpus),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.filter(|v| *v > 0).map(|v| (name, v)))
    .collect()
}

/// The limits of `requested` that `applied` (the daemon's inspect) lacks.
fn dropped_limits(
    requested: &[(&'static str, i64)],
    applied: &bollard::models::HostConfig,
) -> Vec<&'static str> {
    requested
        .iter()
        .filter(|(name, _)| {
            let got = match *name {
                "resources.memory" => applied.memory,
                "resources.pids" => applied.pids_limit,
                _ => applied.nano_cpus,
            };
            got.unwrap_or(0) <= 0
        })
        .map(|(name, _)| *name)
        .collect()
}

impl DockerEngine {
    /// `Unsupported` when the daemon dropped any of the `requested` limits of container `name`.
    async fn check_limits(&self, name: &str, requested: &[(&'static str, i64)]) -> Result<()> {
        if requested.is_empty() {
            return Ok(());
        }
        let inspect = crate::lenient::inspect_container(&self.docker, name)
            .await
            .map_err(|e| errors::env_call(&self.address, name, "inspect container", e))?;
        let dropped = dropped_limits(requested, &inspect.host_config.unwrap_or_default());
        match dropped.first() {
            None => Ok(()),
            Some(&first) => Err(Error::Unsupported {
                backend: BACKEND,
                operation: first,
                reason: format!(
                    "the Podman service at {} accepted and then ignored the {} limit(s): rootless Podman cannot set resource limits on a cgroup v1 host; use rootful Podman, a cgroup v2 host with delegated controllers, or Docker",
                    self.address,
                    dropped.join(", ")
                ),
            }),
        }
    }
}

/// The named workspace volume of ephemeral environment `container` on Podman.
fn ephemeral_volume(container: &str) -> String {
    format!("{container}-workspace")
}

/// Docker's names have no length limit that berth's names could reach.
fn container_name(spec: &EnvironmentSpec) -> String {
    backend::object_name(spec, usize::MAX)
}

/// Files read on the client and applied to every environment at create: `KEY=VALUE` env
/// files (their variables set in the container, the spec's own env winning) and secret files
/// bind-mounted read-only. Values are never logged or put in errors (a bad line is named by
/// its number).
///
/// ```
/// use berth_engine_docker::ContainerFiles;
///
/// let files = ContainerFiles::new(
///     vec!["/home/me/.config/app.env".into()],
///     [("/run/secrets/token".to_owned(), "/home/me/token".into())].into(),
/// );
/// assert!(!files.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerFiles {
    /// `KEY=VALUE` files (blank lines and `#` comments skipped), read in order; a later
    /// file's variable wins.
    pub env_files: Vec<PathBuf>,
    /// Path in the environment -> local file, mounted read-only.
    pub secret_files: BTreeMap<String, PathBuf>,
}

impl ContainerFiles {
    /// These env files and secret files.
    #[must_use]
    pub fn new(env_files: Vec<PathBuf>, secret_files: BTreeMap<String, PathBuf>) -> Self {
        Self {
            env_files,
            secret_files,
        }
    }

    /// Whether there is nothing to apply.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.env_files.is_empty() && self.secret_files.is_empty()
    }

    /// Reads the env files and checks the secret files, then adds them to `body`.
    fn apply(
        &self,
        spec: &EnvironmentSpec,
        address: &str,
        body: &mut ContainerCreateBody,
    ) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if !self.secret_files.is_empty() && !address.starts_with("unix://") {
            return Err(Error::Unsupported {
                backend: BACKEND,
                operation: "secret_files",
                reason: format!(
                    "secret files are bind-mounted from this machine, and the daemon at {address} is not on it (a bind would name the remote host's file); use env_files or copy the file in"
                ),
            });
        }
        let mut vars = BTreeMap::new();
        for file in &self.env_files {
            vars.extend(read_env_file(file)?);
        }
        for key in spec.env.keys() {
            vars.remove(key);
        }
        body.env
            .get_or_insert_with(Vec::new)
            .extend(vars.into_iter().map(|(k, v)| format!("{k}={v}")));
        let host = body.host_config.get_or_insert_with(Default::default);
        for (inside, local) in &self.secret_files {
            if !inside.starts_with('/') || inside.contains('\0') {
                return Err(Error::invalid_spec(
                    "secret_files",
                    format!("expected an absolute path in the environment, got {inside:?}"),
                ));
            }
            let source = std::fs::canonicalize(local)
                .ok()
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    Error::invalid_spec(
                        "secret_files",
                        format!(
                            "{} (for {inside}): no such file on this machine",
                            local.display()
                        ),
                    )
                })?;
            host.mounts.get_or_insert_with(Vec::new).push(Mount {
                target: Some(inside.clone()),
                source: Some(source.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Ok(())
    }
}

/// The variables of a `KEY=VALUE` file, as `docker run --env-file` reads it (no quoting:
/// the value is the rest of the line).
fn read_env_file(file: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read(file).map_err(|e| {
        Error::invalid_spec("env_files", format!("cannot read {}: {e}", file.display()))
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        Error::invalid_spec("env_files", format!("{} is not UTF-8 text", file.display()))
    })?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| {
            Error::invalid_spec(
                "env_files",
                format!("{} line {}: {what}", file.display(), n + 1),
            )
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.strip_prefix("export ").unwrap_or(key).trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !valid {
            return Err(bad(
                "expected a variable name (letters, digits and '_') before '='",
            ));
        }
        if value.contains('\0') {
            return Err(bad("a value cannot hold a NUL byte"));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod files_tests {
    use super::*;

    #[test]
    fn limits_a_daemon_dropped_are_named() {
        let body = ContainerCreateBody {
            host_config: Some(bollard::models::HostConfig {
                memory: Some(64 << 20),
                pids_limit: Some(4096),
                nano_cpus: None,
                ..Default::default()
            }),
            ..Default::default()
        };
        let requested = requested_limits(&body);
        assert_eq!(
            requested,
            [("resources.memory", 64 << 20), ("resources.pids", 4096)]
        );
        let rootless_v1 = bollard::models::HostConfig {
            memory: Some(0),
            pids_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(
            dropped_limits(&requested, &rootless_v1),
            ["resources.memory", "resources.pids"]
        );
        let applied = bollard::models::HostConfig {
            memory: Some(64 << 20),
            pids_limit: Some(4096),
            ..Default::default()
        };
        assert!(dropped_limits(&requested, &applied).is_empty());
    }

    #[test]
    fn only_a_missing_executable_blames_the_image() {
        assert!(not_runnable_message(
            "OCI runtime create failed: container_linux.go:380: starting container process caused: exec: \"sleep\": executable file not found in $PATH: unknown"
        ));
        assert!(not_runnable_message(
            "runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory: OCI runtime attempted to invoke a command that was not found"
        ));
        assert!(!not_runnable_message(
            "failed to mount runtime directory for rootless netns: no such file or directory"
        ));
    }

    #[test]
    fn env_files_read_like_docker_and_name_the_line_not_the_value() {
        let dir = std::env::temp_dir().join(format!("berth-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.env");
        std::fs::write(&file, "# comment\n\nA=1\nexport B=two words=x\n").unwrap();
        let vars = read_env_file(&file).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words=x");
        std::fs::write(&file, "A=1\nsecret-value-without-key\n").unwrap();
        let err = read_env_file(&file).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("env_files"), "{err}");
        assert!(
            !err.contains("secret-value"),
            "the line is not printed: {err}"
        );
        let err = read_env_file(&dir.join("missing.env"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.env"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
