//! `pools:`: warm pools, each a name and the spec of its members (what `runner:` does not
//! say is taken from there), how many to keep ready, at most, and for how long idle.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use berth_engine_core::{ImageRef, PoolSpec, SessionId, MAX_POOL_NAME_LEN};
use serde::{Deserialize, Serialize};

use super::keys::section;
use super::schema::{BerthConfig, ResourceLimits, WorkspaceConfig};
use super::types::{process_count, HumanDuration};

section! {
    /// `pools.NAME`: one warm pool. Unset keys take `runner:`'s value (the image, resources,
    /// network, lifetime); the workspace defaults to `ephemeral` (a member is shared by no
    /// one, so it cannot bind a host directory).
    ///
    /// ```
    /// use berth_runner::config::BerthConfig;
    ///
    /// let config = BerthConfig::from_yaml_str(
    ///     "runner:\n  image: busybox:1.36\npools:\n  py:\n    min_ready: 2\n    max: 5\n    idle_ttl: 30m\n",
    /// )
    /// .unwrap();
    /// let pool = config.pool_spec("py").unwrap();
    /// assert_eq!((pool.min_ready, pool.max), (2, 5));
    /// assert!(config.pool_spec("nope").is_err());
    /// ```
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct PoolConfig {
        /// The members' image; unset means `runner.image`.
        pub image: Option<String>,
        /// Resource limits; an unset one is `runner.resources`'.
        pub resources: ResourceLimits,
        /// `none` or `ephemeral` (default).
        pub workspace: WorkspaceConfig,
        /// Variables of the members (and every command in them).
        pub env: BTreeMap<String, String>,
        /// The user commands run as (`uid`, `uid:gid` or a name).
        pub user: Option<String> => super::keys::ValueKind::TextOrNumber,
        /// The working directory of commands.
        pub workdir: Option<String>,
        /// Network access; unset means `runner.network`.
        pub network: Option<berth_engine_core::Network>,
        /// How long a claimed member lives, counted from its claim; unset means
        /// `runner.max_lifetime`.
        pub max_lifetime: Option<HumanDuration>,
        /// How many unclaimed members a long-lived process (`berth serve`, the library's
        /// refiller) keeps ready.
        pub min_ready: u64,
        /// The most unclaimed members the pool holds.
        pub max: u64,
        /// A member unclaimed this long is replaced (and `gc` removes it).
        pub idle_ttl: HumanDuration,
        /// How many members start at once when the pool fills.
        #[serde(deserialize_with = "process_count::deserialize")]
        pub start_concurrency: Option<NonZeroU64>,
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            image: None,
            resources: ResourceLimits::default(),
            workspace: WorkspaceConfig::Ephemeral,
            env: BTreeMap::new(),
            user: None,
            workdir: None,
            network: None,
            max_lifetime: None,
            min_ready: 1,
            max: 4,
            idle_ttl: HumanDuration(Duration::from_secs(3600)),
            start_concurrency: None,
        }
    }
}

/// How many members start at once when `start_concurrency` is unset.
pub const DEFAULT_START_CONCURRENCY: usize = 2;

impl PoolConfig {
    /// `start_concurrency`, or [`DEFAULT_START_CONCURRENCY`].
    #[must_use]
    pub fn start_concurrency(&self) -> usize {
        self.start_concurrency
            .map_or(DEFAULT_START_CONCURRENCY, |n| {
                usize::try_from(n.get()).unwrap_or(usize::MAX)
            })
    }
}

impl BerthConfig {
    /// The pool called `name` as an engine [`PoolSpec`], its spec built as
    /// [`crate::spec::environment_spec`] builds one, with the pool's settings over
    /// `runner:`'s, and checked.
    ///
    /// # Errors
    /// (key, reason): an unknown pool (the configured ones listed), a missing image, or what
    /// the engine would refuse, named under `pools.NAME`.
    pub fn pool_spec(&self, name: &str) -> Result<PoolSpec, (String, String)> {
        let Some(pool) = self.pools.get(name) else {
            let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
            return Err((
                format!("pools.{name}"),
                if known.is_empty() {
                    "no pool of that name: the config has no `pools:` section".to_owned()
                } else {
                    format!("no pool of that name; configured: {}", known.join(", "))
                },
            ));
        };
        let key = |field: &str| format!("pools.{name}.{field}");
        let image = pool
            .image
            .as_ref()
            .or(self.runner.image.as_ref())
            .ok_or_else(|| {
                (
                    key("image"),
                    "expected an image (or set runner.image)".to_owned(),
                )
            })?;
        let image = ImageRef::new(image.clone()).map_err(|e| (key("image"), e.to_string()))?;
        let session = SessionId::new("pool").map_err(|e| (key("name"), e.to_string()))?;
        let mut spec = berth_engine_core::EnvironmentSpec::new(image, session);
        spec.workspace = match &pool.workspace {
            WorkspaceConfig::None => berth_engine_core::Workspace::None,
            WorkspaceConfig::Ephemeral => berth_engine_core::Workspace::Ephemeral,
            _ => {
                return Err((
                    key("workspace"),
                    "expected none or ephemeral: a member is started before anyone knows whose work it will hold".to_owned(),
                ))
            }
        };
        spec.mount_path.clone_from(&self.runner.mount_path);
        let mut resources = self.runner_resources();
        let own = &pool.resources;
        if let Some(cpu) = own.cpu {
            resources.cpu_millis = cpu.get().map(super::CpuQuantity::millis);
        }
        if let Some(memory) = own.memory {
            resources.memory_bytes = memory.get().map(super::MemoryQuantity::bytes);
        }
        if let Some(pids) = own.pids {
            resources.pids = Some(pids.get());
        }
        spec.resources = resources;
        spec.env.clone_from(&pool.env);
        spec.user = pool.user.clone();
        spec.workdir = pool.workdir.clone();
        spec.network = pool
            .network
            .clone()
            .unwrap_or_else(|| self.runner.network.clone());
        spec.max_lifetime = pool
            .max_lifetime
            .map_or_else(|| self.max_lifetime(), HumanDuration::get);
        spec.labels.extend(self.kubernetes.labels.clone());
        if self.runner.backend == berth_engine_core::BackendKind::Kubernetes {
            spec.security = self.kubernetes.security;
            if spec.user.is_none() {
                spec.user.clone_from(&self.kubernetes.run_as_user);
            }
        }
        let as_count = |n: u64, field: &str| {
            usize::try_from(n).map_err(|_| (key(field), format!("{n} is too large")))
        };
        let spec = PoolSpec::new(name, spec)
            .with_min_ready(as_count(pool.min_ready, "min_ready")?)
            .with_max(as_count(pool.max, "max")?)
            .with_idle_ttl(pool.idle_ttl.get());
        spec.validate().map_err(|e| match e {
            berth_engine_core::Error::InvalidSpec { field, reason } => {
                let field = field.strip_prefix("pools.").unwrap_or(&field).to_owned();
                (key(&field), reason)
            }
            other => (format!("pools.{name}"), other.to_string()),
        })?;
        Ok(spec)
    }

    /// Every configured pool as a [`PoolSpec`].
    ///
    /// # Errors
    /// As [`BerthConfig::pool_spec`], for the first pool that fails.
    pub fn pool_specs(&self) -> Result<Vec<PoolSpec>, (String, String)> {
        self.pools.keys().map(|name| self.pool_spec(name)).collect()
    }
}

/// Why `pools` is not acceptable, as (key, reason): checked when the config loads, so a bad
/// pool is named before anything runs.
pub(crate) fn check(config: &BerthConfig) -> Result<(), (String, String)> {
    for name in config.pools.keys() {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_POOL_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !name_ok {
            return Err((
                format!("pools.{name}"),
                format!("expected a pool name of 1 to {MAX_POOL_NAME_LEN} lowercase letters, digits or inner dashes"),
            ));
        }
        // An image may come from the command line (`runner.image` unset here is fine only
        // when the pool names one): report what is missing when it is used.
        if config.pools[name].image.is_none() && config.runner.image.is_none() {
            continue;
        }
        config.pool_spec(name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::BerthConfig;

    fn err(yaml: &str) -> String {
        BerthConfig::from_yaml_str(yaml).unwrap_err().to_string()
    }

    #[test]
    fn pools_load_and_bad_ones_name_their_key() {
        let config = BerthConfig::from_yaml_str(
            "runner:\n  image: busybox:1.36\n  max_lifetime: 2h\npools:\n  py:\n    env: {A: '1'}\n    resources: {memory: 256Mi}\n    max_lifetime: 30m\n",
        )
        .unwrap();
        let pool = config.pool_spec("py").unwrap();
        assert_eq!(pool.spec.env["A"], "1");
        assert_eq!(pool.spec.resources.memory_bytes, Some(256 << 20));
        assert_eq!(pool.spec.max_lifetime.as_secs(), 1800);
        assert_eq!(pool.spec.workspace, berth_engine_core::Workspace::Ephemeral);
        assert_eq!((pool.min_ready, pool.max), (1, 4));

        let e = err("runner:\n  image: busybox\npools:\n  py:\n    min_ready: 5\n    max: 2\n");
        assert!(e.contains("pools.py.min_ready"), "{e}");
        let e = err("runner:\n  image: busybox\npools:\n  py:\n    max: 0\n");
        assert!(e.contains("pools.py.max"), "{e}");
        let e = err("runner:\n  image: busybox\npools:\n  Py_1:\n    max: 2\n");
        assert!(e.contains("pools.Py_1"), "{e}");
        let e = err("runner:\n  image: busybox\npools:\n  py:\n    workspace: {host_path: /tmp}\n");
        assert!(e.contains("pools.py.workspace"), "{e}");
        let e = err("pools:\n  py:\n    mx: 2\n");
        assert!(e.contains("pools.py") && e.contains("mx"), "{e}");
        let e = err("runner:\n  image: busybox\npools:\n  py:\n    idle_ttl: soon\n");
        assert!(e.contains("pools.py.idle_ttl"), "{e}");
        let e = BerthConfig::default().pool_spec("py").unwrap_err();
        assert!(e.0 == "pools.py" && e.1.contains("no `pools:`"), "{e:?}");
    }
}
