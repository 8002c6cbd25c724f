//! `builders:`: named Docker daemons that build images (`berth image build --builder NAME`),
//! each reached as `docker:` is (a host, TLS files, a docker context, an ssh config).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::keys::{section, Key, Schema, ValueKind};
use super::schema::DockerTls;
use super::ConfigError;

section! {
    /// `builders.NAME`: one build daemon.
    ///
    /// ```
    /// use berth_runner::config::BerthConfig;
    ///
    /// let config = BerthConfig::from_yaml_str(
    ///     "builders:\n  arm:\n    host: ssh://build@arm-1\n    platform: linux/arm64\n",
    /// )
    /// .unwrap();
    /// assert_eq!(config.builders["arm"].platform.as_deref(), Some("linux/arm64"));
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct BuilderConfig {
        /// The daemon: `ssh://[user@]host[:port]`, `tcp://host:2376` (with `tls`) or
        /// `unix:///path`. One of `host` and `context` is required.
        pub host: Option<String>,
        /// A docker CLI context to reach it through (`docker context ls`).
        pub context: Option<String>,
        /// TLS client material for a `tcp://` host.
        pub tls: DockerTls,
        /// An ssh client config file (`ssh -F`) for an `ssh://` host.
        pub ssh_config: Option<PathBuf>,
        /// The platform it builds for, `os/arch[/variant]` (`linux/arm64`); unset means the
        /// daemon's own.
        pub platform: Option<String>,
        /// Free-form labels shown by `berth builder ls` (`{gpu: "no", site: fra}`).
        pub labels: BTreeMap<String, String>,
        /// The registry `--push` pushes to, `host[:port][/path]`; the tag must be under it.
        pub registry: Option<String>,
    }
}

impl<T: Schema> Schema for BTreeMap<String, T> {
    fn kind() -> ValueKind {
        ValueKind::Named
    }
    fn keys() -> Vec<Key> {
        vec![Key {
            name: "*",
            kind: T::kind(),
            children: T::keys(),
        }]
    }
}

/// Why `builders` is not acceptable, as (key, reason).
pub(crate) fn check(builders: &BTreeMap<String, BuilderConfig>) -> Result<(), (String, String)> {
    for (name, b) in builders {
        let key = |field: &str| format!("builders.{name}.{field}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                format!("builders.{name}"),
                "expected a name of letters, digits, '-', '_' and '.'".into(),
            ));
        }
        match (&b.host, &b.context) {
            (None, None) => {
                return Err((
                    format!("builders.{name}"),
                    "expected host (ssh://, tcp:// or unix://) or context".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    format!("builders.{name}"),
                    "expected host or context, not both".into(),
                ))
            }
            _ => {}
        }
        if let Some((field, reason)) = b.tls.problem() {
            return Err((key(&format!("tls.{field}")), reason));
        }
        if let Some(platform) = &b.platform {
            let parts: Vec<&str> = platform.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
                return Err((
                    key("platform"),
                    format!("expected os/arch[/variant] like linux/amd64, got {platform:?}"),
                ));
            }
        }
        if let Some(registry) = &b.registry {
            if registry.is_empty() || registry.contains("://") || registry.ends_with('/') {
                return Err((
                    key("registry"),
                    format!("expected host[:port][/path] without a scheme, like registry.example:5000/team, got {registry:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// `check` as a [`ConfigError`] of `source_name`.
pub(crate) fn validate(
    builders: &BTreeMap<String, BuilderConfig>,
    source_name: &str,
) -> Result<(), ConfigError> {
    check(builders).map_err(|(key, reason)| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        key,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::BerthConfig;

    fn err(yaml: &str) -> String {
        BerthConfig::from_yaml_str(yaml).unwrap_err().to_string()
    }

    #[test]
    fn builders_load_and_bad_ones_name_their_key() {
        let config = BerthConfig::from_yaml_str(
            "builders:\n  arm:\n    host: ssh://b@h\n    labels: {site: fra}\n  local:\n    context: default\n",
        )
        .unwrap();
        assert_eq!(config.builders.len(), 2);
        assert_eq!(config.builders["arm"].labels["site"], "fra");

        let e = err("builders:\n  arm:\n    platform: linux/arm64\n");
        assert!(e.contains("builders.arm") && e.contains("host"), "{e}");
        let e = err("builders:\n  arm:\n    host: ssh://h\n    platform: arm64\n");
        assert!(e.contains("builders.arm.platform"), "{e}");
        let e = err("builders:\n  arm:\n    host: ssh://h\n    registry: https://r\n");
        assert!(e.contains("builders.arm.registry"), "{e}");
        let e = err("builders:\n  arm:\n    host: tcp://h:2376\n    tls: {ca: /ca.pem}\n");
        assert!(e.contains("builders.arm.tls.cert"), "{e}");
        let e = err("builders:\n  arm:\n    hots: ssh://h\n");
        assert!(e.contains("builders.arm") && e.contains("hots"), "{e}");
        let e = err("builders:\n  arm: yes\n");
        assert!(e.contains("builders.arm"), "{e}");
    }
}
