//! The one error type of the engine contract.

use std::time::Duration;

use crate::BackendKind;

/// A boxed cause from a backend SDK, kept as a `#[source]` without exposing the SDK's type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on. Every backend maps its SDK errors onto these.
///
/// Messages say what was tried and what to do; the underlying cause, where there is one, is
/// available through [`std::error::Error::source`] and is not repeated in the message.
///
/// ```
/// use berth_engine_core::{Error, ErrorKind};
///
/// let err = Error::invalid_spec("resources.memory", "must be greater than zero, got 0");
/// assert_eq!(err.kind(), ErrorKind::InvalidSpec);
/// assert!(err.to_string().contains("resources.memory"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine (daemon or cluster) could not be reached.
    #[error("{backend} engine unavailable at {address}: {hint}")]
    Unavailable {
        /// Which backend was being contacted.
        backend: BackendKind,
        /// The address that was tried (socket path, URL, kube context).
        address: String,
        /// What to do about it.
        hint: String,
        /// The transport error.
        #[source]
        source: Option<BoxError>,
    },
    /// The image is not present and could not be found where it was looked for.
    #[error("image {image} not found: {reason}")]
    ImageNotFound {
        /// The image reference as given.
        image: String,
        /// Where it was looked for, or what the registry said.
        reason: String,
    },
    /// Pulling the image failed for a reason other than its absence (network, auth, disk).
    #[error("pulling image {image} failed: {reason}")]
    ImagePull {
        /// The image reference as given.
        image: String,
        /// What the engine reported.
        reason: String,
    },
    /// Building an image failed.
    #[error("building image {tag} failed: {reason}")]
    Build {
        /// The tag that was being built.
        tag: String,
        /// The builder's error message.
        reason: String,
    },
    /// The named object (environment, container, volume, path) does not exist.
    #[error("{what} not found: {name}")]
    NotFound {
        /// The kind of object ("environment", "path", "volume").
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The object exists in a state that forbids the operation.
    #[error("conflict on {what} {name}: {reason}")]
    Conflict {
        /// The kind of object.
        what: &'static str,
        /// Its name or id.
        name: String,
        /// What the engine reported.
        reason: String,
    },
    /// The engine refused the caller's identity this operation (Kubernetes RBAC, a Docker
    /// authorization plugin). Retrying does not help; granting the permission does.
    #[error("{backend} engine at {address} forbids {action}: {reason}")]
    Forbidden {
        /// Which backend.
        backend: BackendKind,
        /// The address (API server URL and namespace, daemon socket).
        address: String,
        /// What was refused, as a verb phrase ("create job").
        action: String,
        /// The engine's message and what to grant.
        reason: String,
    },
    /// The scheduler cannot place the environment (no node has room for its requests, or a
    /// volume it needs is missing); `reason` is the scheduler's message.
    #[error("{what} cannot be scheduled: {reason}")]
    Unschedulable {
        /// What was being scheduled.
        what: String,
        /// The scheduler's message, e.g. "0/1 nodes are available: 1 Insufficient cpu."
        reason: String,
    },
    /// The operation did not finish within its time limit.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        operation: String,
        /// The limit that elapsed.
        after: Duration,
    },
    /// A command timed out and its process tree was killed, but processes that may have come
    /// from it outlived the kill: they left the tree (cleared `BERTH_EXEC_ID`, called `setsid`
    /// and were re-parented to PID 1) or could not be signalled. Its kind is
    /// [`ErrorKind::Timeout`]; end the environment to be sure nothing of the command runs.
    #[error("{operation} timed out after {after:?}; its process tree was killed, but {} may have escaped the kill: {}", processes.len(), processes.join(", "))]
    TimeoutLeftProcesses {
        /// What timed out.
        operation: String,
        /// The limit that elapsed.
        after: Duration,
        /// The processes still running, as `pid (name): why`.
        processes: Vec<String>,
    },
    /// The backend genuinely cannot do this; the sentence says why and what to use instead.
    #[error("{operation} is not supported by the {backend} backend: {reason}")]
    Unsupported {
        /// Which backend.
        backend: BackendKind,
        /// The operation that was asked for.
        operation: &'static str,
        /// Why not, and what to use instead.
        reason: String,
    },
    /// The caller's input is malformed; `field` names the offending field or argument.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The field path or argument name, e.g. `resources.memory` or `argv`.
        field: String,
        /// What was expected.
        reason: String,
    },
    /// A backend step failed in a way that fits none of the kinds above.
    #[error("{backend} backend failed to {step}")]
    Backend {
        /// Which backend.
        backend: BackendKind,
        /// The step that failed, named as a verb phrase ("create exec", "inspect container").
        step: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
    /// The connection to the engine broke (closed, reset, or silent past the ping deadline)
    /// while an operation was under way. What the operation did in the environment is unknown:
    /// a command may still be running there, a copy may be incomplete. Never a timeout and
    /// never a success.
    #[error("lost the connection to the {backend} engine at {address} during {operation}: {hint}")]
    ConnectionLost {
        /// Which backend.
        backend: BackendKind,
        /// The address that was connected to.
        address: String,
        /// What was under way ("exec in ENV", "copy out of ENV").
        operation: String,
        /// What may be left behind and how to look.
        hint: String,
        /// The transport's error, where there was one.
        #[source]
        source: Option<BoxError>,
    },
    /// The environment stopped, was deleted, or was killed while an operation ran in it, so
    /// the operation's own outcome is not known: distinct from a command that exited with 137.
    #[error("the environment {env} stopped while {operation} ran: {reason}")]
    EnvironmentGone {
        /// The environment.
        env: String,
        /// What was running ("the command", "the copy").
        operation: String,
        /// What the engine reported about the environment.
        reason: String,
    },
    /// A [`Shell`](crate::Shell) ended (the command ran `exit` or `exec`, the shell was killed,
    /// its stream dropped) while a command ran in it, or was used after it ended. The command's
    /// outcome is unknown; open a new shell (its state starts fresh).
    #[error("the shell in {env} is closed ({operation}): {reason}")]
    ShellClosed {
        /// The environment.
        env: String,
        /// What was under way ("running a command", "opening").
        operation: String,
        /// What ended it.
        reason: String,
    },
    /// Reading or writing a stream failed outside any backend call (a tar stream handed in by
    /// the caller, a local file).
    #[error("failed to {step}")]
    Io {
        /// The step, as a verb phrase ("read a tar stream").
        step: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A task of berth's own ended without a result: it panicked or was aborted. A bug in
    /// berth or in a backend, never the environment's doing; `what` says which task.
    #[error("berth's {what} ended without a result (it panicked or was aborted)")]
    Internal {
        /// The task, e.g. "exec I/O task".
        what: String,
    },
    /// A connection to a TCP port inside an environment failed: nothing listens on it (or
    /// only on an address other than the environment's loopback). The port forward serving
    /// other clients goes on; start the server inside, or forward another port.
    #[error("cannot connect to port {port} in {env}: {reason}")]
    PortClosed {
        /// The environment.
        env: String,
        /// The port inside it.
        port: u16,
        /// What was found ("nothing listens on it") or what the relay said.
        reason: String,
    },
    /// An operation failed, and cleaning up after it failed too; both are reported.
    #[error("{primary}; cleanup also failed: {cleanup}")]
    CleanupFailed {
        /// The first failure.
        primary: Box<Error>,
        /// The failure of the cleanup that followed.
        cleanup: Box<Error>,
    },
}

/// The kind of an [`Error`], for matching without caring about the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::ImageNotFound`].
    ImageNotFound,
    /// See [`Error::ImagePull`].
    ImagePull,
    /// See [`Error::Build`].
    Build,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Forbidden`].
    Forbidden,
    /// See [`Error::Unschedulable`].
    Unschedulable,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::InvalidSpec`].
    InvalidSpec,
    /// See [`Error::ConnectionLost`].
    ConnectionLost,
    /// See [`Error::EnvironmentGone`].
    EnvironmentGone,
    /// See [`Error::ShellClosed`].
    ShellClosed,
    /// See [`Error::PortClosed`].
    PortClosed,
    /// See [`Error::Backend`], [`Error::Io`] and [`Error::Internal`].
    Other,
}

impl Error {
    /// The kind of this error. For [`Error::CleanupFailed`] it is the kind of the primary failure.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::ImageNotFound { .. } => ErrorKind::ImageNotFound,
            Error::ImagePull { .. } => ErrorKind::ImagePull,
            Error::Build { .. } => ErrorKind::Build,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::Unschedulable { .. } => ErrorKind::Unschedulable,
            Error::Timeout { .. } | Error::TimeoutLeftProcesses { .. } => ErrorKind::Timeout,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidSpec { .. } => ErrorKind::InvalidSpec,
            Error::ConnectionLost { .. } => ErrorKind::ConnectionLost,
            Error::EnvironmentGone { .. } => ErrorKind::EnvironmentGone,
            Error::ShellClosed { .. } => ErrorKind::ShellClosed,
            Error::PortClosed { .. } => ErrorKind::PortClosed,
            Error::Backend { .. } | Error::Io { .. } | Error::Internal { .. } => ErrorKind::Other,
            Error::CleanupFailed { primary, .. } => primary.kind(),
        }
    }

    /// Shorthand for an [`Error::InvalidSpec`].
    pub fn invalid_spec(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`Error::Backend`] wrapping an SDK error.
    pub fn backend(
        backend: BackendKind,
        step: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            step: step.into(),
            source: source.into(),
        }
    }

    /// The [`Error::NotFound`] of a workspace volume (a Docker volume, a claim) that exists but
    /// was not created by berth: `remove_volume` refuses it and leaves it alone.
    pub fn not_a_berth_volume(name: impl std::fmt::Display) -> Self {
        Error::NotFound {
            what: "berth volume",
            name: format!(
                "{name} (not a berth volume: it exists but lacks the label {}={}, so berth leaves it alone)",
                crate::LABEL_MANAGED_BY,
                crate::MANAGED_BY_VALUE
            ),
        }
    }

    /// The refusal of an object berth did not create: `name` names a container, Job or pod
    /// that exists but lacks the label `app.kubernetes.io/managed-by=berth`. A
    /// [`ErrorKind::NotFound`], because to berth it is not an environment; nothing was touched.
    pub fn not_a_berth_environment(name: impl std::fmt::Display) -> Self {
        Error::NotFound {
            what: "berth environment",
            name: format!(
                "{name} (not a berth environment: it exists but lacks the label {}={}, so berth leaves it alone)",
                crate::LABEL_MANAGED_BY,
                crate::MANAGED_BY_VALUE
            ),
        }
    }

    /// The [`Error::NotFound`] of a `path` that does not exist in the environment `env` (a
    /// copy's source or destination).
    pub fn path_not_found(path: &str, env: impl std::fmt::Display) -> Self {
        Error::NotFound {
            what: "path",
            name: format!("{path} in {env}"),
        }
    }

    /// An [`Error::ConnectionLost`] during a command in `env`: the hint says the command may
    /// still be running and how to look.
    pub fn connection_lost_in_exec(
        backend: BackendKind,
        address: impl Into<String>,
        env: &str,
        source: Option<BoxError>,
    ) -> Self {
        Error::ConnectionLost {
            backend,
            address: address.into(),
            operation: format!("exec in {env}"),
            hint: format!(
                "the command may still be running in the environment; look with `berth exec {env} -- ps`"
            ),
            source,
        }
    }

    /// An [`Error::ConnectionLost`] during a copy into or out of `env` (`operation` says
    /// which): what arrived is incomplete.
    pub fn connection_lost_in_copy(
        backend: BackendKind,
        address: impl Into<String>,
        env: &str,
        operation: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Error::ConnectionLost {
            backend,
            address: address.into(),
            operation: operation.into(),
            hint: format!(
                "the copy is incomplete and may still be running in the environment; look with `berth exec {env} -- ps`, then copy again"
            ),
            source,
        }
    }

    /// The error of a failed read or write of a stream during `step`: the engine error the
    /// stream carried, when a backend's stream failed with one (so a lost connection stays
    /// [`ErrorKind::ConnectionLost`]), or an [`Error::Io`].
    #[must_use]
    pub fn from_io(step: impl Into<String>, mut err: std::io::Error) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let kind = err.kind();
            err = match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(engine)) => return *engine,
                Some(Err(other)) => std::io::Error::new(kind, other),
                None => std::io::Error::from(kind),
            };
        }
        Error::Io {
            step: step.into(),
            source: err,
        }
    }

    /// Combines a primary failure with the failure of the cleanup that followed it.
    #[must_use]
    pub fn with_cleanup_failure(self, cleanup: Error) -> Self {
        Error::CleanupFailed {
            primary: Box::new(self),
            cleanup: Box::new(cleanup),
        }
    }

    /// True for [`ErrorKind::NotFound`].
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// True for [`ErrorKind::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// True for [`ErrorKind::ConnectionLost`].
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        self.kind() == ErrorKind::ConnectionLost
    }

    /// True for [`ErrorKind::Unsupported`].
    #[must_use]
    pub fn is_unsupported(&self) -> bool {
        self.kind() == ErrorKind::Unsupported
    }

    /// Whether retrying the same call later may succeed: an unreachable engine, a timeout, a
    /// failed pull. Invalid input, missing objects and unsupported operations never are, and
    /// neither is a lost connection: the operation may have run, so repeating it is the
    /// caller's decision.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::ImagePull
        )
    }
}

/// The result type of the engine contract.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_failure_keeps_primary_kind_and_both_messages() {
        let primary = Error::NotFound {
            what: "environment",
            name: "a".into(),
        };
        let cleanup = Error::Timeout {
            operation: "remove container".into(),
            after: Duration::from_secs(1),
        };
        let err = primary.with_cleanup_failure(cleanup);
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let text = err.to_string();
        assert!(text.contains("environment not found: a"), "{text}");
        assert!(text.contains("remove container timed out"), "{text}");
    }

    #[test]
    fn connection_lost_says_what_may_still_run_and_how_to_look() {
        let err = Error::connection_lost_in_exec(
            BackendKind::Kubernetes,
            "https://api:6443",
            "env-1",
            None,
        );
        assert_eq!(err.kind(), ErrorKind::ConnectionLost);
        assert!(err.is_connection_lost());
        assert!(!err.is_timeout() && !err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("may still be running"), "{text}");
        assert!(text.contains("berth exec env-1 -- ps"), "{text}");
        let gone = Error::EnvironmentGone {
            env: "env-1".into(),
            operation: "the command".into(),
            reason: "its pod was deleted".into(),
        };
        assert_eq!(gone.kind(), ErrorKind::EnvironmentGone);
        assert!(
            gone.to_string().contains("stopped while the command ran"),
            "{gone}"
        );
    }

    #[test]
    fn an_engine_error_inside_an_io_error_keeps_its_kind() {
        let lost = Error::connection_lost_in_copy(
            BackendKind::Docker,
            "unix:///var/run/docker.sock",
            "env-1",
            "copy out of env-1",
            None,
        );
        let err = Error::from_io("read a tar stream", std::io::Error::other(lost));
        assert_eq!(err.kind(), ErrorKind::ConnectionLost);
        let plain = Error::from_io(
            "read a tar stream",
            std::io::ErrorKind::UnexpectedEof.into(),
        );
        assert_eq!(plain.kind(), ErrorKind::Other);
        assert_eq!(plain.to_string(), "failed to read a tar stream");
    }

    #[test]
    fn retryable_kinds() {
        assert!(Error::Timeout {
            operation: "x".into(),
            after: Duration::ZERO
        }
        .is_retryable());
        assert!(!Error::invalid_spec("argv", "empty").is_retryable());
        let forbidden = Error::Forbidden {
            backend: BackendKind::Kubernetes,
            address: "https://api:6443 (namespace ci)".into(),
            action: "create job".into(),
            reason: "jobs.batch is forbidden".into(),
        };
        assert_eq!(forbidden.kind(), ErrorKind::Forbidden);
        assert!(!forbidden.is_retryable(), "a refusal is not retried");
        assert!(
            forbidden.to_string().contains("forbids create job"),
            "{forbidden}"
        );
    }
}
