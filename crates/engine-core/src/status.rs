//! What an engine reports about what exists: label selectors, the status of environments
//! and workspace volumes, and the outcomes of removing them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;
use crate::spec::{LABEL_CREATED, LABEL_MANAGED_BY, LABEL_SESSION, MANAGED_BY_VALUE};

/// Selects environments by label equality. Every selector includes managed-by=berth.
///
/// ```
/// use berth_engine_core::{LabelSelector, SessionId};
///
/// let session = SessionId::new("s1").unwrap();
/// let selector = LabelSelector::session(&session).with("team", "infra");
/// assert!(selector.matches(&[
///     ("app.kubernetes.io/managed-by", "berth"),
///     ("berth.dev/session", "s1"),
///     ("team", "infra"),
/// ].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    labels: BTreeMap<String, String>,
}

impl Default for LabelSelector {
    fn default() -> Self {
        Self::all()
    }
}

impl LabelSelector {
    /// Everything berth manages.
    #[must_use]
    pub fn all() -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
        Self { labels }
    }

    /// Everything of one session.
    #[must_use]
    pub fn session(session: &SessionId) -> Self {
        Self::all().with(LABEL_SESSION, session.as_str())
    }

    /// Adds one `key=value` requirement.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The `key=value` requirements.
    #[must_use]
    pub fn requirements(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Whether `labels` satisfies every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// What an engine reports about one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvironmentStatus {
    /// The environment's id.
    pub id: crate::EnvironmentId,
    /// The session label, when present and valid.
    pub session: Option<SessionId>,
    /// The image it runs.
    pub image: String,
    /// Its state.
    pub state: EnvironmentState,
    /// All of its labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, seconds since the Unix epoch, when known.
    pub created_unix_secs: Option<u64>,
}

impl EnvironmentStatus {
    /// A status; the session and creation time are read from berth's labels.
    #[must_use]
    pub fn new(
        id: crate::EnvironmentId,
        image: impl Into<String>,
        state: EnvironmentState,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let (session, created_unix_secs) = session_and_created(&labels);
        Self {
            id,
            session,
            image: image.into(),
            state,
            labels,
            created_unix_secs,
        }
    }
}

/// The session and creation time berth's labels record.
pub(crate) fn session_and_created(
    labels: &BTreeMap<String, String>,
) -> (Option<SessionId>, Option<u64>) {
    let session = labels
        .get(LABEL_SESSION)
        .and_then(|s| SessionId::new(s.clone()).ok());
    (
        session,
        labels.get(LABEL_CREATED).and_then(|v| v.parse().ok()),
    )
}

/// What an engine reports about one workspace volume berth created (a Docker volume, a
/// Kubernetes PersistentVolumeClaim): see
/// [`ContainerEngine::list_volumes`](crate::ContainerEngine::list_volumes).
///
/// ```
/// use std::collections::BTreeMap;
/// use berth_engine_core::{VolumeStatus, LABEL_SESSION};
///
/// let labels = BTreeMap::from([(LABEL_SESSION.to_owned(), "s1".to_owned())]);
/// let volume = VolumeStatus::new("agent-workspace", labels, false);
/// assert_eq!(volume.session.unwrap().as_str(), "s1");
/// assert!(!volume.in_use);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VolumeStatus {
    /// The volume's (or claim's) name, as in [`Workspace::Volume`](crate::Workspace::Volume).
    pub name: String,
    /// The session that created it, when labelled.
    pub session: Option<SessionId>,
    /// All of its labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, seconds since the Unix epoch, when known.
    pub created_unix_secs: Option<u64>,
    /// Whether an environment (running, or still being removed) mounts it.
    pub in_use: bool,
}

impl VolumeStatus {
    /// A status; the session and creation time are read from berth's labels.
    #[must_use]
    pub fn new(name: impl Into<String>, labels: BTreeMap<String, String>, in_use: bool) -> Self {
        let session = labels
            .get(LABEL_SESSION)
            .and_then(|s| SessionId::new(s.clone()).ok());
        let created_unix_secs = labels.get(LABEL_CREATED).and_then(|v| v.parse().ok());
        Self {
            name: name.into(),
            session,
            labels,
            created_unix_secs,
            in_use,
        }
    }
}

/// The coarse state of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EnvironmentState {
    /// Created or scheduled, not running yet.
    Pending,
    /// Running and accepting execs.
    Running,
    /// Its main process ended (lifetime reached, killed, or failed).
    Exited,
    /// The engine reports something else.
    Unknown,
}

/// What [`ContainerEngine::stop`](crate::ContainerEngine::stop) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// The environment existed and was removed.
    Stopped,
    /// There was nothing to remove.
    AlreadyGone,
}

/// What [`ContainerEngine::remove_volume`](crate::ContainerEngine::remove_volume) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveOutcome {
    /// The volume existed and was removed.
    Removed,
    /// There was nothing to remove.
    AlreadyGone,
}
