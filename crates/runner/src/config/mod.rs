//! berth's configuration: the schema of `config.example.yaml` ([`BerthConfig`]),
//! loaded in layers (built-in defaults < YAML file < `BERTH_*` environment variables <
//! command-line flags) straight into typed values ([`HumanDuration`], [`CpuQuantity`],
//! [`MemoryQuantity`], engine-core's `BackendKind`, `PullPolicy` and `SecurityProfile`), so
//! an invalid value cannot exist past loading.
//!
//! Files: `schema.rs` (the serde structs), `keys.rs` (the known keys, derived from the
//! structs), `load.rs` (the layers and their messages), `types.rs` and `parse.rs` (the value
//! types and their text forms).

mod builders;
mod keys;
mod load;
mod parse;
mod pod;
mod pools;
mod runs;
mod schema;
mod types;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use builders::BuilderConfig;
pub use load::{known_keys, ConfigSource, LoadOptions, Loaded};
pub use parse::{
    format_cpu_millis, format_duration, format_memory_bytes, parse_cpu_millis, parse_duration,
    parse_memory_bytes, InvalidValue,
};
pub use pod::{
    CacheEntry, EnvFromEntry, KeyEntry, MountEntry, NewClaimEntry, SecurityContextSection,
};
pub use pools::{PoolConfig, DEFAULT_START_CONCURRENCY};
pub use runs::SchedulesSection;
pub use schema::{
    BerthConfig, CopySection, DockerSection, DockerTls, KubernetesResources, KubernetesSection,
    QuantityPair, ResourceLimits, RunnerConfig, ServerSection, ServerTls, WorkspaceConfig,
    DEFAULT_CPU, DEFAULT_GIT_IMAGE, DEFAULT_MEMORY,
};
pub use types::{
    kubernetes_pull_policy, CpuQuantity, HumanDuration, Limit, MemoryQuantity, UNLIMITED,
};

/// A configuration error: which source, which key, and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named with `--config` does not exist or cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file or an environment variable does not fit the schema.
    #[error("invalid configuration in {source_name}: {message}")]
    Parse {
        /// The file path, or "environment".
        source_name: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is not of its key's form, or parses but is not acceptable.
    #[error("invalid {key} in {source_name}: {reason}")]
    Invalid {
        /// The file path, "environment variable NAME", "inline YAML" or "defaults".
        source_name: String,
        /// The dotted key path.
        key: String,
        /// What was expected.
        reason: String,
    },
}
