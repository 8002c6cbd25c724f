//! What an environment is made from: [`EnvironmentSpec`] and its parts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{validate_dns_label, ImageRef, SessionId};
use crate::network::Network;

/// Label on every object berth creates, with the value [`MANAGED_BY_VALUE`].
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "berth";
/// Label carrying the [`SessionId`] of the session that created the object.
pub const LABEL_SESSION: &str = "berth.dev/session";
/// Label carrying the environment's name within its session.
pub const LABEL_NAME: &str = "berth.dev/name";
/// Label carrying the creation time, in seconds since the Unix epoch, so `gc` can judge age.
pub const LABEL_CREATED: &str = "berth.dev/created";
/// Label recording that an environment was detached on purpose (`berth up`): handed to no
/// process, so `gc` must not take a gone owner for a crash. [`DETACHED_REQUESTED`] when it
/// is created, [`DETACHED_YES`] once [`ContainerEngine::mark_detached`](crate::ContainerEngine::mark_detached)
/// recorded that it is ready; an environment whose `berth up` died in between stays
/// collectable.
pub const LABEL_DETACHED: &str = "berth.dev/detached";
/// [`LABEL_DETACHED`] at creation: detachment asked for, the environment not yet ready.
pub const DETACHED_REQUESTED: &str = "requested";
/// [`LABEL_DETACHED`] as [`ContainerEngine::list`](crate::ContainerEngine::list) reports it
/// once the environment was marked detached.
pub const DETACHED_YES: &str = "true";

/// Where an environment's workspace lives. It is mounted at [`EnvironmentSpec::mount_path`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Workspace {
    /// No workspace mount: the image's own filesystem only.
    #[default]
    None,
    /// A directory on the engine's host, bind-mounted (Docker) or a hostPath volume (local
    /// Kubernetes clusters such as kind or minikube).
    HostPath {
        /// Absolute path on the engine's host.
        path: PathBuf,
    },
    /// A named, persistent volume: a Docker volume or a Kubernetes PVC. Created (and labelled)
    /// when missing; it outlives the environment and is removed with
    /// [`ContainerEngine::remove_volume`](crate::ContainerEngine::remove_volume).
    Volume {
        /// The volume or claim name.
        name: String,
        /// A sub-directory of the volume to mount instead of its root.
        sub_path: Option<String>,
    },
    /// A scratch volume that lives and dies with the environment.
    Ephemeral,
}

/// Resource limits. `None` leaves the engine's default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Resources {
    /// CPU limit in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes (Docker only; Kubernetes sets it per node).
    pub pids: Option<u64>,
}

impl Resources {
    /// Checks every limit is positive.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `resources.<field>`.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("resources.cpu", self.cpu_millis),
            ("resources.memory", self.memory_bytes),
            ("resources.pids", self.pids),
        ] {
            if value == Some(0) {
                return Err(Error::invalid_spec(
                    field,
                    "must be greater than zero (leave it unset for no limit)",
                ));
            }
        }
        if self.memory_bytes.is_some_and(|m| m < 6 * 1024 * 1024) {
            return Err(Error::invalid_spec(
                "resources.memory",
                "must be at least 6 MiB, the smallest limit container runtimes accept",
            ));
        }
        Ok(())
    }
}

/// The capabilities [`SecurityProfile::Hardened`] keeps after dropping ALL: enough for package
/// managers, ordinary builds and switching users; raw sockets, mknod, chroot, audit, ptrace
/// and file-capability setting stay dropped. Every backend grants exactly these.
pub const HARDENED_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// How tightly the environment is locked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SecurityProfile {
    /// No privilege escalation, a small capability set (enough for package managers), a pids
    /// limit, never privileged, no engine socket inside.
    #[default]
    Hardened,
    /// As hardened, with every capability dropped and a non-root user required: what the
    /// Kubernetes "restricted" Pod Security Standard asks.
    Restricted,
}

/// Everything needed to start an environment.
///
/// ```
/// use std::time::Duration;
/// use berth_engine_core::{EnvironmentSpec, ImageRef, SessionId, Workspace};
///
/// let spec = EnvironmentSpec::new(ImageRef::new("busybox:1.36").unwrap(), SessionId::generate())
///     .with_name("main")
///     .with_env("LANG", "C.UTF-8")
///     .with_workspace(Workspace::Ephemeral)
///     .with_max_lifetime(Duration::from_secs(3600));
/// spec.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvironmentSpec {
    /// The image to run.
    pub image: ImageRef,
    /// The session this environment belongs to; it goes on every label.
    pub session: SessionId,
    /// The environment's name within the session (a DNS label), default `main`.
    pub name: String,
    /// Prefix of the backend object's name, default `berth`.
    pub name_prefix: String,
    /// The workspace mount.
    pub workspace: Workspace,
    /// Where the workspace is mounted, default `/workspace`.
    pub mount_path: String,
    /// Environment variables for the keepalive and, unless overridden, every exec.
    pub env: BTreeMap<String, String>,
    /// Extra labels; the managed-by, session, name and created keys are reserved.
    pub labels: BTreeMap<String, String>,
    /// Resource limits.
    pub resources: Resources,
    /// The default user of execs (`uid`, `uid:gid` or a name), default the image's.
    pub user: Option<String>,
    /// The default working directory of execs, default the image's.
    pub workdir: Option<String>,
    /// What the environment may reach on the network, default [`Network::Full`].
    pub network: Network,
    /// The security profile.
    pub security: SecurityProfile,
    /// The environment stops by itself after this long, default 24 hours.
    pub max_lifetime: Duration,
}

impl EnvironmentSpec {
    /// Default [`EnvironmentSpec::max_lifetime`]: 24 hours.
    pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

    /// A spec with the defaults documented on each field.
    #[must_use]
    pub fn new(image: ImageRef, session: SessionId) -> Self {
        Self {
            image,
            session,
            name: "main".into(),
            name_prefix: "berth".into(),
            workspace: Workspace::None,
            mount_path: "/workspace".into(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            resources: Resources::default(),
            user: None,
            workdir: None,
            network: Network::Full,
            security: SecurityProfile::default(),
            max_lifetime: Self::DEFAULT_MAX_LIFETIME,
        }
    }

    /// Sets [`EnvironmentSpec::name`].
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds one environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds one label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets [`EnvironmentSpec::workspace`].
    #[must_use]
    pub fn with_workspace(mut self, workspace: Workspace) -> Self {
        self.workspace = workspace;
        self
    }

    /// Sets [`EnvironmentSpec::resources`].
    #[must_use]
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets [`EnvironmentSpec::max_lifetime`].
    #[must_use]
    pub fn with_max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Sets [`EnvironmentSpec::network`].
    #[must_use]
    pub fn with_network(mut self, network: impl Into<Network>) -> Self {
        self.network = network.into();
        self
    }

    /// Checks the spec before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        validate_dns_label("name", &self.name, 20)?;
        validate_dns_label("name_prefix", &self.name_prefix, 12)?;
        validate_env(&self.env)?;
        self.resources.validate()?;
        if !self.mount_path.starts_with('/') {
            return Err(Error::invalid_spec(
                "mount_path",
                format!("must be an absolute path, got {:?}", self.mount_path),
            ));
        }
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') {
                return Err(Error::invalid_spec(
                    "workdir",
                    format!("must be an absolute path, got {dir:?}"),
                ));
            }
        }
        if let Some(user) = &self.user {
            validate_user("user", user)?;
        }
        if self.max_lifetime < Duration::from_secs(1) {
            return Err(Error::invalid_spec(
                "max_lifetime",
                "must be at least one second",
            ));
        }
        for key in self.labels.keys() {
            if [LABEL_MANAGED_BY, LABEL_SESSION, LABEL_NAME, LABEL_CREATED].contains(&key.as_str())
            {
                return Err(Error::invalid_spec(
                    "labels",
                    format!("{key:?} is reserved for berth"),
                ));
            }
            if key.is_empty() || key.len() > 253 || key.chars().any(char::is_whitespace) {
                return Err(Error::invalid_spec(
                    "labels",
                    format!("{key:?} is not a valid label key"),
                ));
            }
        }
        match &self.workspace {
            Workspace::HostPath { path } if !path.is_absolute() => {
                return Err(Error::invalid_spec(
                    "workspace.host_path",
                    format!("must be an absolute path, got {}", path.display()),
                ));
            }
            Workspace::Volume { name, sub_path } => {
                validate_dns_label("workspace.volume", name, 63)?;
                if let Some(sub) = sub_path {
                    if sub.is_empty() || sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                        return Err(Error::invalid_spec(
                            "workspace.sub_path",
                            format!("must be a relative path without '..', got {sub:?}"),
                        ));
                    }
                }
            }
            _ => {}
        }
        if self.security == SecurityProfile::Restricted
            && !self.user.as_deref().is_some_and(is_non_root_uid)
        {
            return Err(Error::invalid_spec(
                "user",
                "the restricted security profile needs a numeric non-root user, e.g. \"1000\"",
            ));
        }
        Ok(())
    }

    /// The labels berth puts on every object it creates for this environment: the caller's
    /// labels plus managed-by, session, name and creation time.
    #[must_use]
    pub fn object_labels(&self, created_unix_secs: u64) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
        labels.insert(LABEL_SESSION.into(), self.session.to_string());
        labels.insert(LABEL_NAME.into(), self.name.clone());
        labels.insert(LABEL_CREATED.into(), created_unix_secs.to_string());
        labels
    }
}

fn is_non_root_uid(user: &str) -> bool {
    let uid = user.split(':').next().unwrap_or_default();
    uid.parse::<u32>().is_ok_and(|u| u != 0)
}

/// Checks environment variable names and values: a name is non-empty and holds no `=` or NUL;
/// a value holds no NUL.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `env` and the offending variable.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid_spec(
                "env",
                format!("variable name {key:?} must be non-empty and contain no '=' or NUL"),
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid_spec(
                "env",
                format!("the value of {key} contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

/// Checks a user given as `uid`, `uid:gid`, `name` or `name:group`.
pub(crate) fn validate_user(field: &str, user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.split(':').count() <= 2
        && user.split(':').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_spec(
            field,
            format!("expected uid, uid:gid, name or name:group, got {user:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, LabelSelector};

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec::new(ImageRef::new("busybox").unwrap(), SessionId::generate())
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidSpec { field, .. } => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn default_spec_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn zero_memory_is_rejected() {
        let s = spec().with_resources(Resources {
            memory_bytes: Some(0),
            ..Resources::default()
        });
        assert_eq!(field_of(s.validate().unwrap_err()), "resources.memory");
    }

    #[test]
    fn env_names_with_equals_or_nul_are_rejected() {
        for bad in ["A=B", "A\0B", ""] {
            let err = spec().with_env(bad, "x").validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSpec);
            assert!(err.to_string().contains("invalid env"), "{err}");
        }
        let err = spec().with_env("A", "x\0y").validate().unwrap_err();
        assert_eq!(field_of(err), "env");
    }

    #[test]
    fn reserved_labels_are_rejected() {
        let err = spec()
            .with_label("berth.dev/session", "x")
            .validate()
            .unwrap_err();
        assert_eq!(field_of(err), "labels");
    }

    #[test]
    fn restricted_needs_non_root_user() {
        let mut s = spec();
        s.security = SecurityProfile::Restricted;
        assert_eq!(field_of(s.validate().unwrap_err()), "user");
        s.user = Some("1000".into());
        s.validate().unwrap();
    }

    #[test]
    fn object_labels_carry_session_and_time() {
        let s = spec();
        let labels = s.object_labels(42);
        assert_eq!(labels[LABEL_MANAGED_BY], "berth");
        assert_eq!(labels[LABEL_SESSION], s.session.as_str());
        assert_eq!(labels[LABEL_CREATED], "42");
        assert!(LabelSelector::session(&s.session).matches(&labels));
    }
}
