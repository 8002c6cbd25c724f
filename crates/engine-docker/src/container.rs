//! Containers: the body an environment is created from, start, stop, list, and the
//! detached marker.

use std::collections::HashMap;

use berth_engine_core::backend;
use berth_engine_core::{
    EnvironmentId, EnvironmentSpec, EnvironmentState, EnvironmentStatus, Error, LabelSelector,
    Result, StopOutcome, Workspace, DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED,
};
use bollard::models::ContainerSummaryStateEnum;
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
    if let Workspace::Volume { name, .. } = &spec.workspace {
        engine.ensure_volume(name, labels).await?;
    }
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
    if let Err(e) = engine.docker.start_container(&name, None).await {
        let err = match errors::status(&e) {
            Some((_, msg))
                if msg.contains("executable file not found")
                    || msg.contains("no such file or directory") =>
            {
                not_runnable(msg)
            }
            _ => errors::other(&engine.address, "start container", e),
        };
        return match engine.remove_container(&name).await {
            Ok(_) => Err(err),
            Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
        };
    }
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
    let containers = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
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

fn labels_map(spec: &EnvironmentSpec) -> HashMap<String, String> {
    spec.object_labels(backend::now_unix())
        .into_iter()
        .collect()
}

/// Docker's names have no length limit that berth's names could reach.
fn container_name(spec: &EnvironmentSpec) -> String {
    backend::object_name(spec, usize::MAX)
}
