//! Warm pools: environments started ahead of time and handed to a session by a claim.
//!
//! A pool member is an ordinary environment of the pool's spec, labelled [`LABEL_POOL`] (the
//! pool's name) and [`LABEL_POOL_SPEC`] (a stable hash of the spec, [`PoolSpec::spec_hash`]),
//! owned by the pool's own session ([`PoolSpec::session`]). A claim
//! ([`ContainerEngine::claim_pool_member`](crate::ContainerEngine::claim_pool_member)) is one
//! atomic operation the engine serialises, so two claimers, in one process or many, never get
//! the same member; after it the member carries the claiming session's labels only, and its
//! lifetime counts from the claim.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ids::{validate_dns_label, SessionId};
use crate::spec::{EnvironmentSpec, Workspace};

/// Label on a pool member: the pool's name. Removed (or no longer reported) once claimed.
pub const LABEL_POOL: &str = "berth.dev/pool";
/// Label on a pool member: [`PoolSpec::spec_hash`] of the spec it was started from.
pub const LABEL_POOL_SPEC: &str = "berth.dev/pool-spec";
/// Label on a pool member: the name its backend object was created with (Docker records a
/// claim by renaming the container, so a member whose name differs is claimed).
pub const LABEL_POOL_MEMBER: &str = "berth.dev/pool-member";
/// Label an engine reports on a claimed member whose claim did not finish (Docker: the
/// claimer died between its rename and its claim record); `gc` removes such a member.
pub const LABEL_CLAIM_PENDING: &str = "berth.dev/claim-pending";
/// The longest pool name: the pool's session is `pool-<name>`, a session id.
pub const MAX_POOL_NAME_LEN: usize = crate::ids::MAX_SESSION_ID_LEN - 5;

/// A pool: a name, the spec its members are started from, and how many to keep.
///
/// ```
/// use std::time::Duration;
/// use berth_engine_core::{EnvironmentSpec, ImageRef, PoolSpec, SessionId, LABEL_POOL};
///
/// let spec = EnvironmentSpec::new(ImageRef::new("busybox:1.36").unwrap(), SessionId::generate());
/// let pool = PoolSpec::new("py", spec.clone()).with_min_ready(2).with_max(4);
/// pool.validate().unwrap();
/// let member = pool.member_spec();
/// assert_eq!(member.labels[LABEL_POOL], "py");
/// assert_eq!(member.session.as_str(), "pool-py");
/// // The hash ignores who asks: another session's spec of the same shape matches.
/// let mut other = spec;
/// other.session = SessionId::generate();
/// let other = PoolSpec::new("py", other);
/// assert_eq!(pool.spec_hash(), other.spec_hash());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSpec {
    /// The pool's name (a DNS label of at most [`MAX_POOL_NAME_LEN`] characters).
    pub name: String,
    /// What members are made from; its session and name are replaced by the pool's, and its
    /// `max_lifetime` is the lifetime a claimed member gets by default.
    pub spec: EnvironmentSpec,
    /// How many unclaimed members a long-lived process keeps ready, default 1.
    pub min_ready: usize,
    /// The most unclaimed members the pool ever holds, default 4.
    pub max: usize,
    /// A member unclaimed for this long is replaced, default 1 hour.
    pub idle_ttl: Duration,
}

impl PoolSpec {
    /// A pool called `name` of `spec`, with the defaults documented on each field.
    #[must_use]
    pub fn new(name: impl Into<String>, spec: EnvironmentSpec) -> Self {
        Self {
            name: name.into(),
            spec,
            min_ready: 1,
            max: 4,
            idle_ttl: Duration::from_secs(3600),
        }
    }

    /// Sets [`PoolSpec::min_ready`].
    #[must_use]
    pub fn with_min_ready(mut self, n: usize) -> Self {
        self.min_ready = n;
        self
    }

    /// Sets [`PoolSpec::max`].
    #[must_use]
    pub fn with_max(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// Sets [`PoolSpec::idle_ttl`].
    #[must_use]
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Checks the name, the counts and the spec.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `pools.<field>` or the spec's field.
    pub fn validate(&self) -> Result<()> {
        validate_dns_label("pools.name", &self.name, MAX_POOL_NAME_LEN)?;
        if self.max == 0 {
            return Err(Error::invalid_spec("pools.max", "must be at least 1"));
        }
        if self.min_ready > self.max {
            return Err(Error::invalid_spec(
                "pools.min_ready",
                format!(
                    "{} is more than max ({}); a pool never holds more than max",
                    self.min_ready, self.max
                ),
            ));
        }
        if self.idle_ttl < Duration::from_secs(1) {
            return Err(Error::invalid_spec(
                "pools.idle_ttl",
                "must be at least one second",
            ));
        }
        if matches!(self.spec.workspace, Workspace::HostPath { .. }) {
            // A pool's members are started before anyone knows whose work they will hold.
            return Err(Error::invalid_spec(
                "pools.workspace",
                "a pool member cannot bind a host directory (members are shared by sessions); use ephemeral",
            ));
        }
        self.member_spec().validate()
    }

    /// The session that owns the pool's unclaimed members: `pool-<name>`.
    ///
    /// # Panics
    /// Never for a name [`PoolSpec::validate`] accepts.
    #[must_use]
    pub fn session(&self) -> SessionId {
        SessionId::new(format!("pool-{}", self.name))
            .unwrap_or_else(|_| SessionId::new("pool").expect("a valid session id"))
    }

    /// A stable hash (16 hex digits) of what makes members interchangeable: image, workspace
    /// kind and mount path, env, resources, user, workdir, network, security profile and
    /// name prefix. The session, name, labels and lifetime are not in it: a claim sets them.
    #[must_use]
    pub fn spec_hash(&self) -> String {
        spec_hash(&self.spec)
    }

    /// The spec a member is started from: the pool's session, name `member`, the pool labels,
    /// and a lifetime of `idle_ttl + max_lifetime`, so that a member claimed at the end of its
    /// idle time still has its whole lifetime (the claim cuts it to `max_lifetime` from then).
    #[must_use]
    pub fn member_spec(&self) -> EnvironmentSpec {
        let mut spec = self.spec.clone();
        spec.session = self.session();
        spec.name = "member".into();
        spec.labels.insert(LABEL_POOL.into(), self.name.clone());
        spec.labels.insert(LABEL_POOL_SPEC.into(), self.spec_hash());
        spec.max_lifetime = self.idle_ttl.saturating_add(self.spec.max_lifetime);
        spec
    }

    /// A claim of one of this pool's members for `session`'s environment `name`, with the
    /// pool spec's labels and lifetime.
    #[must_use]
    pub fn claim_for(&self, session: SessionId, name: impl Into<String>) -> PoolClaim {
        PoolClaim {
            pool: self.name.clone(),
            spec_hash: self.spec_hash(),
            session,
            name: name.into(),
            labels: self.spec.labels.clone(),
            lifetime: self.spec.max_lifetime,
        }
    }
}

/// The [`PoolSpec::spec_hash`] of `spec`: FNV-1a over a canonical text of the fields that
/// matter, so it is the same in every process and every berth build.
#[must_use]
pub fn spec_hash(spec: &EnvironmentSpec) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "image={}\nprefix={}\nmount={}\nuser={:?}\nworkdir={:?}\nnetwork={}\nsecurity={:?}\ncpu={:?}\nmemory={:?}\npids={:?}\n",
        spec.image,
        spec.name_prefix,
        spec.mount_path,
        spec.user,
        spec.workdir,
        spec.network.describe(),
        spec.security,
        spec.resources.cpu_millis,
        spec.resources.memory_bytes,
        spec.resources.pids,
    );
    let workspace = match &spec.workspace {
        Workspace::None => "none".to_owned(),
        Workspace::HostPath { path } => format!("host:{}", path.display()),
        Workspace::Volume { name, sub_path } => format!("volume:{name}:{sub_path:?}"),
        Workspace::Ephemeral => "ephemeral".to_owned(),
    };
    let _ = writeln!(text, "workspace={workspace}");
    for (k, v) in &spec.env {
        let _ = writeln!(text, "env {k:?}={v:?}");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// What a claim asks for: a member of `pool` started from a spec hashing to `spec_hash`,
/// handed to `session` as its environment `name`, carrying `labels`, living `lifetime` from
/// the claim.
///
/// ```
/// use std::time::Duration;
/// use berth_engine_core::{PoolClaim, SessionId};
///
/// let claim = PoolClaim::new("py", "0123456789abcdef", SessionId::generate(), "main")
///     .with_label("team", "infra")
///     .with_lifetime(Duration::from_secs(600));
/// claim.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolClaim {
    /// The pool's name.
    pub pool: String,
    /// Only members started from a spec with this hash are taken.
    pub spec_hash: String,
    /// The claiming session; it goes on the member's labels.
    pub session: SessionId,
    /// The environment's name within the session.
    pub name: String,
    /// Extra labels (owner, detached marker...); berth's reserved keys are refused.
    pub labels: BTreeMap<String, String>,
    /// The claimed environment stops by itself this long after the claim.
    pub lifetime: Duration,
}

impl PoolClaim {
    /// A claim with no extra labels and the default lifetime (24 hours).
    #[must_use]
    pub fn new(
        pool: impl Into<String>,
        spec_hash: impl Into<String>,
        session: SessionId,
        name: impl Into<String>,
    ) -> Self {
        Self {
            pool: pool.into(),
            spec_hash: spec_hash.into(),
            session,
            name: name.into(),
            labels: BTreeMap::new(),
            lifetime: EnvironmentSpec::DEFAULT_MAX_LIFETIME,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets [`PoolClaim::lifetime`].
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Checks the pool name, the environment name, the labels and the lifetime.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        validate_dns_label("pool", &self.pool, MAX_POOL_NAME_LEN)?;
        validate_dns_label("name", &self.name, 20)?;
        for key in self.labels.keys() {
            if [LABEL_POOL, LABEL_POOL_SPEC, LABEL_POOL_MEMBER].contains(&key.as_str()) {
                return Err(Error::invalid_spec(
                    "labels",
                    format!("{key:?} is reserved for berth's pools"),
                ));
            }
        }
        if self.lifetime < Duration::from_secs(1) {
            return Err(Error::invalid_spec(
                "lifetime",
                "must be at least one second",
            ));
        }
        // The rest of the label rules are the spec's.
        let mut probe = EnvironmentSpec::new(
            crate::ImageRef::new("claim").expect("a valid image reference"),
            self.session.clone(),
        );
        probe.labels = self.labels.clone();
        probe.validate()
    }

    /// The labels the claimed member carries: `labels` plus managed-by, the session, the
    /// name and `claimed_unix_secs` as its creation time (its age counts from the claim).
    #[must_use]
    pub fn object_labels(&self, claimed_unix_secs: u64) -> BTreeMap<String, String> {
        let mut probe = EnvironmentSpec::new(
            crate::ImageRef::new("claim").expect("a valid image reference"),
            self.session.clone(),
        );
        probe.name.clone_from(&self.name);
        probe.labels = self.labels.clone();
        probe.object_labels(claimed_unix_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageRef;

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec::new(ImageRef::new("busybox").unwrap(), SessionId::generate())
    }

    #[test]
    fn the_hash_changes_with_what_matters_only() {
        let base = PoolSpec::new("p", spec());
        let same = PoolSpec::new("p", spec().with_name("other").with_label("a", "b"));
        assert_eq!(base.spec_hash(), same.spec_hash());
        for changed in [
            spec().with_env("A", "1"),
            spec().with_workspace(Workspace::Ephemeral),
            {
                let mut s = spec();
                s.network = crate::Network::None;
                s
            },
            {
                let mut s = spec();
                s.resources.memory_bytes = Some(64 << 20);
                s
            },
            EnvironmentSpec::new(ImageRef::new("alpine").unwrap(), SessionId::generate()),
        ] {
            assert_ne!(base.spec_hash(), PoolSpec::new("p", changed).spec_hash());
        }
        assert_eq!(base.spec_hash().len(), 16);
    }

    #[test]
    fn bad_pools_and_claims_name_the_field() {
        let err = PoolSpec::new("Bad_Name", spec()).validate().unwrap_err();
        assert!(err.to_string().contains("pools.name"), "{err}");
        let err = PoolSpec::new("p", spec())
            .with_min_ready(5)
            .with_max(2)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("pools.min_ready"), "{err}");
        let err = PoolSpec::new("p", spec())
            .with_max(0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("pools.max"), "{err}");
        let err = PoolSpec::new(
            "p",
            spec().with_workspace(Workspace::HostPath { path: "/x".into() }),
        )
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("pools.workspace"), "{err}");
        let claim =
            PoolClaim::new("p", "h", SessionId::generate(), "main").with_label(LABEL_POOL, "x");
        assert!(claim.validate().unwrap_err().to_string().contains("labels"));
        let claim = PoolClaim::new("p", "h", SessionId::generate(), "main")
            .with_label(crate::LABEL_SESSION, "x");
        assert!(claim
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reserved"));
    }

    #[test]
    fn a_member_lives_its_idle_time_plus_its_lifetime() {
        let pool = PoolSpec::new("p", spec().with_max_lifetime(Duration::from_secs(60)))
            .with_idle_ttl(Duration::from_secs(30));
        let member = pool.member_spec();
        assert_eq!(member.max_lifetime, Duration::from_secs(90));
        assert_eq!(member.labels[LABEL_POOL_SPEC], pool.spec_hash());
        assert_eq!(member.name, "member");
        let labels = pool
            .claim_for(SessionId::new("s1").unwrap(), "main")
            .object_labels(7);
        assert_eq!(labels[crate::LABEL_SESSION], "s1");
        assert_eq!(labels[crate::LABEL_CREATED], "7");
        assert!(!labels.contains_key(LABEL_POOL));
    }
}
