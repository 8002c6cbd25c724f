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
    let labels = labels_map(spec);
    let body = body::container_body(
        spec,
        &labels,
        &engine.address,
        &engine.docker.client_version(),
    )?;
    let name = create_and_start(engine, spec, &labels, body, |msg| {
        Error::invalid_spec(
            "image",
            format!(
                "{} has no `sleep` on its PATH, which berth's keepalive needs ({msg})",
                spec.image
            ),
        )
    })
    .await?;
    let id = EnvironmentId::new(name)?;
    tracing::debug!(env = %id, image = %spec.image, "started environment");
    Ok(id)
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
    not_runnable: impl FnOnce(&str) -> Error,
) -> Result<String> {
    let name = create(engine, spec, labels, body, |_| {}).await?;
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

/// Whether the runtime's message says the executable to start is missing.
pub(crate) fn not_runnable_message(msg: &str) -> bool {
    msg.contains("executable file not found") || msg.contains("no such file or directory")
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
    if let Workspace::Volume { name, .. } = &spec.workspace {
        engine.ensure_volume(name, labels).await?;
    }
    let mut body = body;
    engine.files.apply(spec, &engine.address, &mut body)?;
    adjust(&mut body);
    let name = container_name(spec);
    engine
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| create_error(engine, spec, e))?;
    Ok(name)
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

pub(crate) async fn stop(engine: &DockerEngine, env: &EnvironmentId) -> Result<StopOutcome> {
    if engine.forget_removed(env.as_str()) {
        return Ok(StopOutcome::AlreadyGone);
    }
    let Some(name) = engine.resolve(env).await? else {
        return Ok(StopOutcome::AlreadyGone);
    };
    let outcome = engine.remove_container(&name).await?;
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
    let containers = crate::retry::idempotent("list containers", || {
        engine.docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
    })
    .await
    .map_err(engine.other("list containers"))?;
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

impl DockerEngine {
    pub(crate) async fn remove_container(&self, name: &str) -> Result<StopOutcome> {
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
