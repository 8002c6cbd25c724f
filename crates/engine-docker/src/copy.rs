//! Copies in and out of a container through the archive endpoints.

use berth_engine_core::backend;
use berth_engine_core::{EnvironmentId, Error, Result, TarStream};
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures_util::{StreamExt, TryStreamExt};

use crate::errors::{self};
use crate::DockerEngine;

pub(crate) async fn copy_in(
    engine: &DockerEngine,
    env: &EnvironmentId,
    dest: &str,
    tar: TarStream,
) -> Result<()> {
    backend::require_absolute("dest", dest)?;
    let env = &engine.resolve_existing(env).await?;
    if engine.podman.is_some() {
        // Podman creates a missing destination where Docker refuses it: ask first, so the
        // caller gets Docker's answer (NotFound naming the path) from either.
        let options = bollard::query_parameters::ContainerArchiveInfoOptions {
            path: dest.to_owned(),
        };
        crate::retry::idempotent("stat the copy destination", || {
            engine
                .docker
                .get_container_archive_info(env.as_str(), Some(options.clone()))
        })
        .await
        .map_err(|e| engine.path_error(env, dest, "copy into container", e))?;
    }
    engine
        .docker
        .upload_to_container(
            env.as_str(),
            Some(UploadToContainerOptions {
                path: dest.to_owned(),
                ..Default::default()
            }),
            bollard::body_try_stream(tar),
        )
        .await
        .map_err(|e| engine.path_error(env, dest, "copy into container", e))
}

pub(crate) async fn copy_out(
    engine: &DockerEngine,
    env: &EnvironmentId,
    path: &str,
) -> Result<TarStream> {
    backend::require_absolute("path", path)?;
    let env = &engine.resolve_existing(env).await?;
    let mut stream = engine.docker.download_from_container(
        env.as_str(),
        Some(DownloadFromContainerOptions {
            path: path.to_owned(),
        }),
    );
    // The daemon reports a missing path in its response head, which arrives with the
    // first item: surface it here, not half-way through the caller's read.
    let first = match stream.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(engine.path_error(env, path, "copy out of container", e)),
        None => bytes::Bytes::new(),
    };
    let address = engine.address.clone();
    let rest = stream.map_err(move |e| {
        std::io::Error::other(errors::other(&address, "copy out of container", e))
    });
    Ok(Box::pin(
        futures_util::stream::iter([Ok(first)]).chain(rest),
    ))
}

impl DockerEngine {
    pub(crate) fn path_error(
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
            // Docker: 400 "... not a directory"; Podman: 500 "... exists but is not a directory".
            Some((400 | 500, msg)) if msg.contains("not a directory") => {
                Error::invalid_spec("dest", format!("{path} in {env} is not a directory"))
            }
            _ => errors::env_call(&self.address, env.as_str(), step, e),
        }
    }
}
