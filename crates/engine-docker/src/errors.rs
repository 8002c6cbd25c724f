//! Mapping bollard's errors onto the engine contract's kinds.

use berth_engine_core::{BackendKind, Error};
use bollard::errors::Error as BollardError;

pub(crate) const BACKEND: BackendKind = BackendKind::Docker;

/// The HTTP status and message of a daemon error response.
pub(crate) fn status(err: &BollardError) -> Option<(u16, &str)> {
    match err {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

/// Whether the error is the transport failing (socket missing, connection refused or reset,
/// request timed out) rather than the daemon answering.
pub(crate) fn is_transport(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::HttpClientError { .. }
    )
}

/// What to tell a user whose daemon cannot be reached.
pub(crate) const UNAVAILABLE_HINT: &str = "is the Docker daemon running? Start it (`sudo dockerd` or `sudo systemctl start docker`), or point DOCKER_HOST (or the host configured) at a running one";

pub(crate) fn unavailable(address: &str, err: BollardError) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        address: address.to_owned(),
        hint: UNAVAILABLE_HINT.to_owned(),
        source: Some(Box::new(err)),
    }
}

/// Maps an error of a call about environment `env`: a missing container is `NotFound`, a
/// stopped one too (it cannot take commands any more).
pub(crate) fn env_call(address: &str, env: &str, step: &str, err: BollardError) -> Error {
    if is_transport(&err) {
        return unavailable(address, err);
    }
    match status(&err) {
        Some((404, msg))
            if msg.contains("No such container") || msg.contains("no such container") =>
        {
            Error::NotFound {
                what: "environment",
                name: env.to_owned(),
            }
        }
        // Docker: 409 "Container ... is not running"; Podman: 500 "can only create exec
        // sessions on running containers: container state improper".
        Some((409, msg)) if msg.contains("not running") || msg.contains("paused") => {
            Error::NotFound {
                what: "running environment",
                name: env.to_owned(),
            }
        }
        Some((500, msg))
            if msg.contains("container state improper") || msg.contains("is not running") =>
        {
            Error::NotFound {
                what: "running environment",
                name: env.to_owned(),
            }
        }
        _ => other(address, step, err),
    }
}

/// Any other failure of `step`.
pub(crate) fn other(address: &str, step: &str, err: BollardError) -> Error {
    if is_transport(&err) {
        return unavailable(address, err);
    }
    if let Some((403, msg)) = status(&err) {
        // An authorization plugin refused it.
        return Error::Forbidden {
            backend: BACKEND,
            address: address.to_owned(),
            action: step.to_owned(),
            reason: format!("{msg}; ask the daemon's administrator to allow it"),
        };
    }
    Error::backend(BACKEND, step, err)
}
