//! The runner's own error type: what went wrong above the engine (config, naming, images,
//! shutdown), with the engine's [`berth_engine_core::Error`] kept whole where it is the cause.

use berth_engine_core::{EnvironmentId, ErrorKind, ImageRef, SessionId};

/// A runner result.
pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

/// What the runner reports, in terms a front end can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The engine failed; its error is kept whole.
    #[error(transparent)]
    Engine(#[from] berth_engine_core::Error),
    /// A config value that cannot be used, named by its key.
    #[error("invalid {key}: {reason}")]
    Config {
        /// The config key (`runner.resources.cpu`).
        key: String,
        /// What was expected.
        reason: String,
    },
    /// No image was given and the config names none.
    #[error("no image: none was given and runner.image is not set in the config")]
    NoImage,
    /// The image is not present and pulling it failed.
    #[error("image {image} is not present locally, and pulling it failed{hint}")]
    ImageMissing {
        /// The image.
        image: ImageRef,
        /// How to get it, when berth knows (starts with "; "), else empty.
        hint: &'static str,
        /// The pull's failure.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// The session already has a live environment of that name.
    #[error("session {session} already has an environment named {name} ({existing}); pick another name, or `berth down {existing}` first")]
    NameTaken {
        /// The session.
        session: SessionId,
        /// The name asked for.
        name: String,
        /// The environment that holds it.
        existing: EnvironmentId,
    },
    /// The session already has, or is starting, an environment of that name.
    #[error("session {session} already has an environment named {name}")]
    NameInUse {
        /// The session.
        session: SessionId,
        /// The name.
        name: String,
    },
    /// The session has no started environment of that name.
    #[error("session {session} has no environment named {name}")]
    UnknownName {
        /// The session.
        session: SessionId,
        /// The name.
        name: String,
    },
    /// The session shut down (or detached) while this start ran; what it started was
    /// stopped, or failed to stop (`stop_failed`, and `berth gc` finds it).
    #[error("session {session} shut down while {name} was starting; {}", match stop_failed { None => "it was stopped".to_owned(), Some(e) => format!("stopping it failed too ({e}); berth gc will find it") })]
    ShutDownWhileStarting {
        /// The session.
        session: SessionId,
        /// The name being started.
        name: String,
        /// Why stopping what came up failed, if it did.
        stop_failed: Option<Box<berth_engine_core::Error>>,
    },
    /// The command's program is not on the environment's PATH.
    #[error("{command}: command not found in {env} (not on its PATH)")]
    CommandNotFound {
        /// `argv[0]`.
        command: String,
        /// Where it was looked for.
        env: EnvironmentId,
    },
    /// An environment id given by the caller names nothing berth knows.
    #[error("no berth environment {env}: nothing stopped")]
    NoSuchEnvironment {
        /// The id given.
        env: EnvironmentId,
    },
    /// Stopping one environment failed.
    #[error("failed to stop {env}")]
    StopFailed {
        /// The environment.
        env: EnvironmentId,
        /// The engine's error.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// `up` could not record on the environment that it was detached (it was stopped).
    #[error("cannot record {env} as detached; it was stopped")]
    NotDetached {
        /// The environment.
        env: EnvironmentId,
        /// The engine's error.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// Stopping environments failed; every failure is listed.
    #[error("failed to stop {} environment(s) of session {session}: {}", failures.len(), list(failures))]
    Shutdown {
        /// The session.
        session: SessionId,
        /// Each environment that did not stop, with why.
        failures: Vec<(EnvironmentId, berth_engine_core::Error)>,
    },
    /// A run's repository (`berth submit --git`) could not be checked out on this machine.
    #[error("cannot check out --git {url}: {source}")]
    Checkout {
        /// The repository, as given.
        url: String,
        /// Why.
        #[source]
        source: crate::source::SourceError,
    },
    /// Local I/O (state directory, files) failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn list(failures: &[(EnvironmentId, berth_engine_core::Error)]) -> String {
    failures
        .iter()
        .map(|(env, e)| format!("{env}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RunnerError {
    /// The engine's error this is, or wraps as its only cause, if any.
    #[must_use]
    pub fn engine_error(&self) -> Option<&berth_engine_core::Error> {
        match self {
            RunnerError::Engine(e) => Some(e),
            RunnerError::ImageMissing { source: e, .. }
            | RunnerError::StopFailed { source: e, .. }
            | RunnerError::NotDetached { source: e, .. } => Some(e.as_ref()),
            RunnerError::Shutdown { failures, .. } if failures.len() == 1 => Some(&failures[0].1),
            _ => None,
        }
    }

    /// The engine's error kind behind this, if an engine error is the cause.
    #[must_use]
    pub fn engine_kind(&self) -> Option<ErrorKind> {
        self.engine_error().map(berth_engine_core::Error::kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_names_every_failure() {
        let env = |n: &str| EnvironmentId::new(n).expect("id");
        let err = RunnerError::Shutdown {
            session: SessionId::new("s1").expect("session"),
            failures: vec![
                (
                    env("a"),
                    berth_engine_core::Error::invalid_spec("x", "gone wrong"),
                ),
                (
                    env("b"),
                    berth_engine_core::Error::invalid_spec("y", "also wrong"),
                ),
            ],
        };
        let text = err.to_string();
        assert!(text.contains("2 environment(s) of session s1"), "{text}");
        assert!(text.contains("a: ") && text.contains("b: "), "{text}");
        assert_eq!(err.engine_kind(), None);
    }
}
