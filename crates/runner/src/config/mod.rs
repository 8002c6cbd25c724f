//! berth's configuration: the schema of `config.example.yaml`, loaded in layers (built-in
//! defaults < YAML file < `BERTH_*` environment variables) and validated before any I/O.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_engine_core::{BackendKind, PullPolicy, Resources, Workspace};
use serde::Deserialize;

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
    /// A value parses but is not acceptable.
    #[error("invalid {key} in {source_name}: {reason}")]
    Invalid {
        /// The file path, or "defaults".
        source_name: String,
        /// The dotted key path.
        key: String,
        /// What was expected.
        reason: String,
    },
}

/// The whole configuration.
///
/// ```
/// use berth_runner::config::BerthConfig;
/// use berth_engine_core::BackendKind;
///
/// let config = BerthConfig::from_yaml_str("runner:\n  backend: docker\n  image: busybox:1.36\n").unwrap();
/// assert_eq!(config.runner.backend, BackendKind::Docker);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BerthConfig {
    /// Backend choice and what every environment gets.
    pub runner: RunnerConfig,
    /// The Docker backend.
    pub docker: DockerSection,
    /// The Kubernetes backend.
    pub kubernetes: KubernetesSection,
    /// Limits of `berth cp` out of an environment.
    pub copy: CopySection,
}

/// `runner:`: backend choice and environment defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// `docker` or `kubernetes`.
    #[serde(deserialize_with = "de_from_str")]
    pub backend: BackendKind,
    /// The default image of environments.
    pub image: Option<String>,
    /// `always`, `if_not_present` or `never`.
    #[serde(deserialize_with = "de_from_str")]
    pub pull_policy: PullPolicy,
    /// How long an environment may live, e.g. `30m`, `24h`.
    pub max_lifetime: String,
    /// The workspace: `none`, `ephemeral`, `{host_path: /abs}` or `{volume: name}`.
    pub workspace: WorkspaceConfig,
    /// Where the workspace is mounted.
    pub mount_path: String,
    /// Resource limits (Docker; Kubernetes uses `kubernetes.resources`).
    pub resources: ResourceLimits,
    /// Whether environments have network access.
    pub network: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Docker,
            image: None,
            pull_policy: PullPolicy::IfNotPresent,
            max_lifetime: "24h".into(),
            workspace: WorkspaceConfig::default(),
            mount_path: "/workspace".into(),
            resources: ResourceLimits::default(),
            network: true,
        }
    }
}

/// A loader message without its trailing "for key `K`" when it already names `K` (a value's
/// own error, like "invalid runner.backend: ...", says which key it is).
fn once_per_key(message: String) -> String {
    if let Some(start) = message.rfind(" for key `") {
        let key = message[start + " for key `".len()..].trim_end_matches('`');
        if message[..start].contains(key) {
            return message[..start].to_owned();
        }
    }
    message
}

/// Deserializes through `FromStr`, whose error says what was expected.
fn de_from_str<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(de)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// `runner.workspace`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum WorkspaceConfig {
    /// No workspace.
    #[default]
    None,
    /// A scratch volume that lives and dies with the environment.
    Ephemeral,
    /// A host directory.
    HostPath(PathBuf),
    /// A named volume (Docker) or claim (Kubernetes).
    Volume(String),
}

/// The CPU limit of a Docker environment when `runner.resources.cpu` is unset.
pub const DEFAULT_CPU: &str = "2";
/// The memory limit of a Docker environment when `runner.resources.memory` is unset.
pub const DEFAULT_MEMORY: &str = "4Gi";
/// The value of `runner.resources.cpu` / `.memory` that lifts the limit.
pub const UNLIMITED: &str = "unlimited";

/// `cpu`, `memory`, `pids` limits written as Kubernetes quantities; unset CPU and memory
/// take [`DEFAULT_CPU`] and [`DEFAULT_MEMORY`] on Docker, and [`UNLIMITED`] lifts them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// CPU, e.g. `500m` or `2`.
    pub cpu: Option<String>,
    /// Memory, e.g. `512Mi` or `4Gi`.
    pub memory: Option<String>,
    /// Process count.
    pub pids: Option<u64>,
}

/// `docker:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DockerSection {
    /// Daemon address; unset means `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
}

/// `kubernetes:` (seed spec section 4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KubernetesSection {
    /// Kubeconfig path; unset means `KUBECONFIG`, else `~/.kube/config`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Context name; unset means the current context.
    pub context: Option<String>,
    /// Namespace of the Jobs.
    pub namespace: String,
    /// The workspace claim.
    pub pvc_name: Option<String>,
    /// Requests and limits of the environment container.
    pub resources: KubernetesResources,
    /// Service account of the pods.
    pub service_account: Option<String>,
    /// Mount each session's own sub-directory of the claim (`subPath: <session id>`).
    pub per_session_sub_path: bool,
    /// Create the claim when it is missing.
    pub create_pvc: bool,
    /// `imagePullPolicy` of the environment container: Always, IfNotPresent or Never.
    pub image_pull_policy: Option<String>,
    /// How long `start` waits for the pod to run, e.g. `5m`.
    pub start_timeout: String,
    /// How long an unschedulable pod waits for an autoscaler's scale-up event, e.g. `20s`.
    pub scale_up_grace: String,
    /// `hardened` or `restricted` (the Pod Security Standard; needs a non-root user).
    pub security: String,
    /// The user environments run as (`uid` or `uid:gid`); required by `restricted`.
    pub run_as_user: Option<String>,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: "default".into(),
            pvc_name: None,
            resources: KubernetesResources::default(),
            service_account: None,
            per_session_sub_path: false,
            create_pvc: false,
            image_pull_policy: None,
            start_timeout: "5m".into(),
            scale_up_grace: "20s".into(),
            security: "hardened".into(),
            run_as_user: None,
        }
    }
}

/// `kubernetes.resources`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KubernetesResources {
    /// What the scheduler reserves.
    pub requests: QuantityPair,
    /// The caps.
    pub limits: QuantityPair,
}

/// A `cpu` and `memory` pair of quantities.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QuantityPair {
    /// CPU, e.g. `500m`.
    pub cpu: Option<String>,
    /// Memory, e.g. `1Gi`.
    pub memory: Option<String>,
}

/// Where the configuration file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Built-in defaults only (no file).
    Defaults,
    /// A YAML file.
    File(PathBuf),
}

impl ConfigSource {
    fn name(&self) -> String {
        match self {
            ConfigSource::Defaults => "defaults".into(),
            ConfigSource::File(p) => p.display().to_string(),
        }
    }
}

/// What [`BerthConfig::load`] reads besides the defaults.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// `--config FILE`; else `./berth.yaml`, else `$XDG_CONFIG_HOME/berth/config.yaml` (or
    /// `~/.config/berth/config.yaml`), else none.
    pub path: Option<PathBuf>,
    /// Command-line flags as dotted keys and values, the highest layer.
    pub overrides: Vec<(String, String)>,
}

/// A loaded configuration and where its file came from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded {
    /// The configuration.
    pub config: BerthConfig,
    /// Its file.
    pub source: ConfigSource,
}

/// Every key of the schema, as dotted paths; unknown keys are checked against this list.
pub const KNOWN_KEYS: &[&str] = &[
    "runner.backend",
    "runner.image",
    "runner.pull_policy",
    "runner.max_lifetime",
    "runner.workspace",
    "runner.workspace.host_path",
    "runner.workspace.volume",
    "runner.mount_path",
    "runner.resources.cpu",
    "runner.resources.memory",
    "runner.resources.pids",
    "runner.network",
    "docker.host",
    "kubernetes.kubeconfig",
    "kubernetes.context",
    "kubernetes.namespace",
    "kubernetes.pvc_name",
    "kubernetes.resources.requests.cpu",
    "kubernetes.resources.requests.memory",
    "kubernetes.resources.limits.cpu",
    "kubernetes.resources.limits.memory",
    "kubernetes.service_account",
    "kubernetes.per_session_sub_path",
    "kubernetes.create_pvc",
    "kubernetes.image_pull_policy",
    "kubernetes.start_timeout",
    "kubernetes.scale_up_grace",
    "kubernetes.security",
    "kubernetes.run_as_user",
    "copy.max_bytes",
    "copy.max_entries",
    "copy.max_path_bytes",
];

fn user_config_file() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")))?;
    Some(dir.join("berth").join("config.yaml")).filter(|p| p.is_file())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Every known path: the keys and the sections holding them (`runner`, `runner.resources`).
fn known_paths() -> impl Iterator<Item = &'static str> {
    KNOWN_KEYS.iter().flat_map(|k| {
        k.match_indices('.')
            .map(move |(i, _)| &k[..i])
            .chain(std::iter::once(*k))
    })
}

/// The known key or section nearest to the unknown `key`, if any is close: first among its
/// siblings, then anywhere (a typo in the section name, `runer.image`).
fn suggest(key: &str) -> Option<&'static str> {
    let parent_of = |k: &str| k.rsplit_once('.').map_or("", |(p, _)| p).to_owned();
    let parent = parent_of(key);
    let nearest = |same_parent: bool, limit: usize| {
        known_paths()
            .filter(|k| !same_parent || parent_of(k) == parent)
            .map(|k| (edit_distance(key, k), k))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, k)| k)
    };
    nearest(true, 3).or_else(|| nearest(false, 2))
}

/// What a value in the file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// A mapping of keys.
    Section,
    /// Text.
    Text,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Count,
    /// A quantity or duration: text, or a bare number (`cpu: 2`, `max_lifetime: 90`).
    Quantity,
    /// `runner.workspace`: `none`, `ephemeral`, `{host_path: ..}` or `{volume: ..}`.
    Workspace,
}

fn kind_of(key: &str) -> Option<ValueKind> {
    use ValueKind::{Bool, Count, Quantity, Section, Text, Workspace};
    Some(match key {
        "runner"
        | "docker"
        | "kubernetes"
        | "runner.resources"
        | "kubernetes.resources"
        | "kubernetes.resources.requests"
        | "kubernetes.resources.limits" => Section,
        "runner.workspace" => Workspace,
        "runner.network" | "kubernetes.per_session_sub_path" | "kubernetes.create_pvc" => Bool,
        "runner.resources.pids" => Count,
        "runner.max_lifetime"
        | "runner.resources.cpu"
        | "runner.resources.memory"
        | "kubernetes.start_timeout"
        | "kubernetes.run_as_user"
        | "kubernetes.resources.requests.cpu"
        | "kubernetes.resources.requests.memory"
        | "kubernetes.resources.limits.cpu"
        | "kubernetes.resources.limits.memory" => Quantity,
        k if KNOWN_KEYS.contains(&k) => Text,
        _ => return None,
    })
}

fn describe(value: &yaml_rust2::Yaml) -> String {
    use yaml_rust2::Yaml;
    match value {
        Yaml::Integer(i) => format!("the number {i}"),
        Yaml::Real(r) => format!("the number {r}"),
        Yaml::Boolean(b) => format!("{b}"),
        Yaml::String(t) => format!("the text {t:?}"),
        Yaml::Array(_) => "a list".into(),
        Yaml::Hash(_) => "a mapping".into(),
        _ => "a value of another kind".into(),
    }
}

/// The first value in `doc` whose type does not fit the schema, as (key, reason). Unknown
/// keys are left to [`unknown_keys`], which suggests the nearest known one.
fn type_error(prefix: &str, doc: &yaml_rust2::Yaml) -> Option<(String, String)> {
    use yaml_rust2::Yaml;
    let Yaml::Hash(map) = doc else {
        return None;
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Some((
                prefix.to_owned(),
                format!("keys must be text, got {}", describe(key)),
            ));
        };
        let path = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(kind) = kind_of(&path) else {
            continue;
        };
        let fits = match (kind, value) {
            (_, Yaml::Null) => true,
            (ValueKind::Section, Yaml::Hash(_)) => {
                if let Some(found) = type_error(&path, value) {
                    return Some(found);
                }
                true
            }
            (ValueKind::Text, Yaml::String(_))
            | (ValueKind::Bool, Yaml::Boolean(_))
            | (ValueKind::Quantity, Yaml::String(_) | Yaml::Integer(_) | Yaml::Real(_)) => true,
            (ValueKind::Count, Yaml::Integer(i)) => *i >= 0,
            (ValueKind::Workspace, _) => {
                if let Some(reason) = workspace_error(value) {
                    return Some((path, reason));
                }
                true
            }
            _ => false,
        };
        if !fits {
            let expected = match kind {
                ValueKind::Section => "a section (a mapping of keys)",
                ValueKind::Text => "text (quote it if it looks like a number or true/false)",
                ValueKind::Bool => "true or false",
                ValueKind::Count => "a whole number",
                ValueKind::Quantity => "a quantity or duration, like 2, 500m, 4Gi or 30m",
                ValueKind::Workspace => unreachable!("handled above"),
            };
            return Some((
                path,
                format!("expected {expected}, got {}", describe(value)),
            ));
        }
    }
    None
}

/// Why `value` is not one of `runner.workspace`'s forms, if it is not.
fn workspace_error(value: &yaml_rust2::Yaml) -> Option<String> {
    use yaml_rust2::Yaml;
    const FORMS: &str = "none, ephemeral, {host_path: /abs/dir} or {volume: name}";
    match value {
        Yaml::String(s) if s == "none" || s == "ephemeral" => None,
        Yaml::Hash(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next()?;
            let key = key.as_str().unwrap_or_default();
            match (key, inner) {
                ("host_path" | "volume", Yaml::String(_)) => None,
                ("host_path" | "volume", other) => Some(format!(
                    "expected {FORMS}; {key} needs text, got {}",
                    describe(other)
                )),
                _ => {
                    let near = ["host_path", "volume"]
                        .into_iter()
                        .find(|k| edit_distance(key, k) <= 3)
                        .map(|k| format!("; did you mean {k}?"))
                        .unwrap_or_default();
                    Some(format!("expected {FORMS}, got {{{key}: ..}}{near}"))
                }
            }
        }
        other => Some(format!("expected {FORMS}, got {}", describe(other))),
    }
}

/// Reads `path` as YAML and checks the value types, before the layered loader (whose own
/// messages coerce `42` to text and name Rust types).
fn check_file(path: &Path, source_name: &str) -> Result<(), ConfigError> {
    let parse = |message: String| ConfigError::Parse {
        source_name: source_name.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        return Err(parse(format!(
            "this is binary data (a NUL byte at offset {at}), not a YAML config file"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        parse(format!(
            "not UTF-8 text (invalid byte at offset {}); a config file is YAML",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| parse(format!("not valid YAML: {e}")))?;
    match docs.first() {
        None | Some(yaml_rust2::Yaml::Null | yaml_rust2::Yaml::Hash(_)) => {}
        Some(other) => {
            return Err(parse(format!(
                "expected sections (runner:, docker:, kubernetes:), got {}",
                describe(other)
            )))
        }
    }
    match docs.first().and_then(|d| type_error("", d)) {
        Some((key, reason)) => Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key,
            reason,
        }),
        None => Ok(()),
    }
}

/// The environment variable that sets `key` (`runner.image` → `BERTH_RUNNER__IMAGE`).
fn variable_of(key: &str) -> String {
    format!("BERTH_{}", key.to_uppercase().replace('.', "__"))
}

/// Every key path in `value` that the schema does not know, with a suggestion; `name` shows
/// a key as its source spells it (a dotted path, or an environment variable).
fn unknown_keys(
    prefix: &str,
    value: &config::Value,
    name: fn(&str) -> String,
    out: &mut Vec<String>,
) {
    let Ok(table) = value.clone().into_table() else {
        return;
    };
    for (key, child) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let known = KNOWN_KEYS
            .iter()
            .any(|k| *k == path || k.starts_with(&format!("{path}.")));
        if !known && child.clone().into_table().is_ok_and(|t| !t.is_empty()) {
            // A mistyped section: name the keys under it, each with its nearest known key
            // (`runer.image` -> `runner.image`), as the file or the variable spells them.
            unknown_keys(&path, &child, name, out);
        } else if !known {
            out.push(match suggest(&path) {
                Some(near) => format!("unknown key {}; did you mean {}?", name(&path), name(near)),
                None => format!("unknown key {}", name(&path)),
            });
        } else {
            unknown_keys(&path, &child, name, out);
        }
    }
}

fn check_known(
    source_name: &str,
    cfg: &config::Config,
    name: fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut unknown = Vec::new();
    let root: config::Value = cfg.cache.clone();
    unknown_keys("", &root, name, &mut unknown);
    match unknown.into_iter().next() {
        Some(message) => Err(ConfigError::Parse {
            source_name: source_name.to_owned(),
            message,
        }),
        None => Ok(()),
    }
}

/// The first `BERTH_*` variable that is invalid on its own (over the built-in defaults), as
/// an error naming it.
fn culprit_variable(vars: &config::Map<String, String>) -> Option<ConfigError> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let source_name = format!("environment variable {name}");
        let one = config::Map::from([(name.clone(), vars[name].clone())]);
        let parsed = config::Config::builder()
            .add_source(
                config::Environment::with_prefix("BERTH")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(one)),
            )
            .build()
            .and_then(config::Config::try_deserialize::<BerthConfig>);
        match parsed {
            Err(e) => Some(ConfigError::Parse {
                source_name,
                message: once_per_key(e.to_string()),
            }),
            Ok(c) => c.validate(&source_name).err(),
        }
    })
}

impl BerthConfig {
    /// Loads the layers, lowest first: built-in defaults, the YAML file (see
    /// [`LoadOptions::path`]), `BERTH_<SECTION>__<KEY>` environment variables
    /// (`BERTH_RUNNER__BACKEND=docker`), then `options.overrides`; and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file (or environment variable), the key and what was
    /// expected; unknown keys come with the nearest valid key.
    pub fn load(options: &LoadOptions) -> Result<Loaded, ConfigError> {
        let source = match &options.path {
            Some(p) => {
                if p.is_dir() {
                    return Err(ConfigError::Read {
                        path: p.clone(),
                        reason: "it is a directory; give a YAML file".into(),
                    });
                }
                if !p.is_file() {
                    return Err(ConfigError::Read {
                        path: p.clone(),
                        reason: "no such file".into(),
                    });
                }
                ConfigSource::File(p.clone())
            }
            None if Path::new("berth.yaml").is_file() => ConfigSource::File("berth.yaml".into()),
            None => user_config_file().map_or(ConfigSource::Defaults, ConfigSource::File),
        };
        let mut builder = config::Config::builder();
        if let ConfigSource::File(p) = &source {
            check_file(p, &source.name())?;
            let file = config::Config::builder()
                .add_source(config::File::from(p.as_path()).format(config::FileFormat::Yaml))
                .build()
                .map_err(|e| ConfigError::Parse {
                    source_name: source.name(),
                    message: e.to_string(),
                })?;
            check_known(&source.name(), &file, str::to_owned)?;
            builder = builder.add_source(file);
        }
        // Only BERTH_<SECTION>__<KEY> variables are config; others (BERTH_BUSYBOX,
        // BERTH_STATE_DIR, BERTH_E2E_KUBECONFIG) belong to tools and tests.
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("BERTH_") && k.contains("__"))
            .collect();
        let env_source = config::Environment::with_prefix("BERTH")
            .prefix_separator("_")
            .separator("__")
            .source(Some(vars.clone()));
        let env_layer = config::Config::builder()
            .add_source(env_source)
            .build()
            .map_err(|e| ConfigError::Parse {
                source_name: "environment".into(),
                message: e.to_string(),
            })?;
        check_known("the environment", &env_layer, variable_of)?;
        builder = builder.add_source(env_layer);
        for (key, value) in &options.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| ConfigError::Parse {
                    source_name: "command line".into(),
                    message: e.to_string(),
                })?;
        }
        let parsed = builder
            .build()
            .and_then(config::Config::try_deserialize::<BerthConfig>)
            .map_err(|e| ConfigError::Parse {
                source_name: source.name(),
                message: once_per_key(e.to_string()),
            })
            .and_then(|parsed| parsed.validate(&source.name()).map(|()| parsed));
        match parsed {
            Ok(config) => Ok(Loaded { config, source }),
            // The file passed on its own, so a bad value most likely came from a variable:
            // name it rather than the file.
            Err(e) => Err(culprit_variable(&vars).unwrap_or(e)),
        }
    }

    /// Parses YAML text (no environment layer) and validates it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and what was expected.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let parsed = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(config::Config::try_deserialize::<BerthConfig>)
            .map_err(|e| ConfigError::Parse {
                source_name: "inline YAML".into(),
                message: once_per_key(e.to_string()),
            })?;
        parsed.validate("inline YAML")?;
        Ok(parsed)
    }

    /// Checks every value that parses but may still be wrong.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `source_name` and the key.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if let Some(image) = &self.runner.image {
            berth_engine_core::ImageRef::new(image.clone())
                .map_err(|e| invalid("runner.image", e.to_string()))?;
        }
        parse_duration(&self.runner.max_lifetime).map_err(|r| invalid("runner.max_lifetime", r))?;
        self.runner_resources()
            .map_err(|(key, reason)| invalid(&key, reason))?;
        for (key, value) in [
            (
                "kubernetes.resources.requests.cpu",
                &self.kubernetes.resources.requests.cpu,
            ),
            (
                "kubernetes.resources.limits.cpu",
                &self.kubernetes.resources.limits.cpu,
            ),
        ] {
            if let Some(v) = value {
                parse_cpu_millis(v).map_err(|r| invalid(key, r))?;
            }
        }
        for (key, value) in [
            (
                "kubernetes.resources.requests.memory",
                &self.kubernetes.resources.requests.memory,
            ),
            (
                "kubernetes.resources.limits.memory",
                &self.kubernetes.resources.limits.memory,
            ),
        ] {
            if let Some(v) = value {
                parse_memory_bytes(v).map_err(|r| invalid(key, r))?;
            }
        }
        parse_duration(&self.kubernetes.start_timeout)
            .map_err(|r| invalid("kubernetes.start_timeout", r))?;
        parse_duration(&self.kubernetes.scale_up_grace)
            .map_err(|r| invalid("kubernetes.scale_up_grace", r))?;
        if !matches!(self.kubernetes.security.as_str(), "hardened" | "restricted") {
            return Err(invalid(
                "kubernetes.security",
                format!(
                    "expected hardened or restricted, got {:?}",
                    self.kubernetes.security
                ),
            ));
        }
        if let Some(p) = &self.kubernetes.image_pull_policy {
            if !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(invalid(
                    "kubernetes.image_pull_policy",
                    format!("expected Always, IfNotPresent or Never, got {p:?}"),
                ));
            }
        }
        for (key, value) in [
            ("runner.mount_path", Some(self.runner.mount_path.clone())),
            (
                "runner.workspace.host_path",
                match &self.runner.workspace {
                    WorkspaceConfig::HostPath(p) => Some(p.to_string_lossy().into_owned()),
                    _ => None,
                },
            ),
            (
                "kubernetes.kubeconfig",
                self.kubernetes
                    .kubeconfig
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
        ] {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(invalid(key, "a path cannot contain a NUL byte".into()));
            }
        }
        if !self.runner.mount_path.starts_with('/') {
            return Err(invalid(
                "runner.mount_path",
                format!(
                    "expected an absolute path, got {:?}",
                    self.runner.mount_path
                ),
            ));
        }
        if let WorkspaceConfig::HostPath(p) = &self.runner.workspace {
            if !p.is_absolute() {
                return Err(invalid(
                    "runner.workspace.host_path",
                    format!("expected an absolute path, got {}", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// `runner.resources` as engine limits.
    ///
    /// # Errors
    /// The key and the reason when a quantity does not parse.
    pub fn runner_resources(&self) -> Result<Resources, (String, String)> {
        let r = &self.runner.resources;
        // Untrusted commands get a bounded share of the machine unless the config says
        // otherwise. On Kubernetes, where a limit without a request also reserves it on a
        // node, the cluster's own kubernetes.resources stay in charge.
        let default = |value: &Option<String>, fallback: &'static str| match value {
            Some(v) => Some(v.clone()),
            None if self.runner.backend == BackendKind::Docker => Some(fallback.to_owned()),
            None => None,
        };
        let cpu = default(&r.cpu, DEFAULT_CPU).filter(|v| v != UNLIMITED);
        let memory = default(&r.memory, DEFAULT_MEMORY).filter(|v| v != UNLIMITED);
        let mut out = Resources::default();
        if let Some(cpu) = &cpu {
            out.cpu_millis =
                Some(parse_cpu_millis(cpu).map_err(|e| ("runner.resources.cpu".to_owned(), e))?);
        }
        if let Some(mem) = &memory {
            out.memory_bytes = Some(
                parse_memory_bytes(mem).map_err(|e| ("runner.resources.memory".to_owned(), e))?,
            );
        }
        if r.pids == Some(0) {
            return Err((
                "runner.resources.pids".into(),
                "expected a positive process count".into(),
            ));
        }
        out.pids = r.pids;
        Ok(out)
    }

    /// `runner.max_lifetime` as a duration (validated by [`BerthConfig::validate`]).
    #[must_use]
    pub fn max_lifetime(&self) -> Duration {
        parse_duration(&self.runner.max_lifetime).unwrap_or(Duration::from_secs(24 * 3600))
    }

    /// The workspace of a session's environments: `runner.workspace`, else on Kubernetes the
    /// claim `kubernetes.pvc_name` (at the sub-path named after the session when
    /// `kubernetes.per_session_sub_path`).
    #[must_use]
    pub fn workspace_for(&self, session: &berth_engine_core::SessionId) -> Workspace {
        match (
            &self.runner.workspace,
            self.runner.backend,
            &self.kubernetes.pvc_name,
        ) {
            (WorkspaceConfig::None, BackendKind::Kubernetes, Some(claim)) => Workspace::Volume {
                name: claim.clone(),
                sub_path: self
                    .kubernetes
                    .per_session_sub_path
                    .then(|| session.to_string()),
            },
            _ => self.workspace(),
        }
    }

    /// `runner.workspace` as an engine workspace.
    #[must_use]
    pub fn workspace(&self) -> Workspace {
        match &self.runner.workspace {
            WorkspaceConfig::None => Workspace::None,
            WorkspaceConfig::Ephemeral => Workspace::Ephemeral,
            WorkspaceConfig::HostPath(p) => Workspace::HostPath { path: p.clone() },
            WorkspaceConfig::Volume(name) => Workspace::Volume {
                name: name.clone(),
                sub_path: None,
            },
        }
    }
}

/// Parses a Kubernetes memory quantity (`512Mi`, `4Gi`, `1G`, `1.5Gi`, `1048576`) into bytes.
///
/// # Errors
/// What was expected, when `text` is not a positive quantity.
pub fn parse_memory_bytes(text: &str) -> Result<u64, String> {
    let expected =
        || format!("expected a positive memory quantity like 512Mi, 4Gi or 1G, got {text:?}");
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(expected()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(expected());
    }
    Ok(bytes as u64)
}

/// Parses a Kubernetes CPU quantity (`500m`, `2`, `0.5`) into millicores.
///
/// # Errors
/// What was expected, when `text` is not a positive quantity.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let expected = || format!("expected a positive CPU quantity like 500m, 2 or 0.5, got {text:?}");
    let t = text.trim();
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| expected())?
    } else {
        let cores: f64 = t.parse().map_err(|_| expected())?;
        if !cores.is_finite() {
            return Err(expected());
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(expected());
    }
    Ok(millis)
}

/// Parses a duration like `90s`, `30m`, `24h`, `2d` or a bare number of seconds.
///
/// # Errors
/// What was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like 90s, 30m, 24h or 2d, got {text:?}");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| expected())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(expected()),
    };
    if secs == 0 {
        return Err(expected());
    }
    Ok(Duration::from_secs(secs))
}

/// `copy:`: limits on what one `berth cp` out of an environment may write on the host (the
/// archive an environment sends is untrusted). Defaults: 8Gi, 1000000 entries, 4096-byte paths.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CopySection {
    /// Total bytes of file content, as a quantity (`8Gi`) or a number of bytes.
    #[serde(deserialize_with = "de_bytes")]
    pub max_bytes: u64,
    /// Number of archive members.
    pub max_entries: u64,
    /// Length in bytes of one path or link target.
    pub max_path_bytes: u64,
}

impl Default for CopySection {
    fn default() -> Self {
        let d = crate::copy::CopyLimits::default();
        Self {
            max_bytes: d.max_bytes,
            max_entries: d.max_entries,
            max_path_bytes: d.max_path_bytes,
        }
    }
}

impl CopySection {
    /// The limits these values set.
    #[must_use]
    pub fn limits(&self) -> crate::copy::CopyLimits {
        crate::copy::CopyLimits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            max_path_bytes: self.max_path_bytes,
        }
    }
}

/// A byte count written as a memory quantity (`8Gi`) or a plain number.
fn de_bytes<'de, D: serde::Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Number(u64),
        Text(String),
    }
    match Bytes::deserialize(de)? {
        Bytes::Number(n) => Ok(n),
        Bytes::Text(t) => parse_memory_bytes(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_memory_bytes("512Mi").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory_bytes("1.5Gi").unwrap(), 1_610_612_736);
        assert!(parse_memory_bytes("4 gigs").is_err());
        assert!(parse_memory_bytes("0").is_err());
        assert!(parse_memory_bytes("-1Gi").is_err());
        assert_eq!(parse_cpu_millis("500m").unwrap(), 500);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(parse_cpu_millis("0.25").unwrap(), 250);
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("lots").is_err());
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unknown_backend_names_the_key_and_the_choices() {
        let err = BerthConfig::from_yaml_str("runner:\n  backend: dockr\n").unwrap_err();
        let text = err.to_string();
        assert_eq!(text.matches("runner.backend").count(), 1, "{text}");
        assert!(text.contains("dockr"), "{text}");
        assert!(
            text.contains("docker") && text.contains("kubernetes"),
            "{text}"
        );
        assert!(text.contains("runner.backend"), "{text}");
    }

    #[test]
    fn unknown_key_is_rejected_with_a_suggestion() {
        let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typo.yaml");
        std::fs::write(&path, "runner:\n  imgae: x\nkubernetes:\n  namespce: a\n").unwrap();
        let err = BerthConfig::load(&LoadOptions {
            path: Some(path.clone()),
            ..LoadOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("unknown key runner.imgae; did you mean runner.image?")
                || err.contains(
                    "unknown key kubernetes.namespce; did you mean kubernetes.namespace?"
                ),
            "{err}"
        );
        assert_eq!(suggest("docker.hots"), Some("docker.host"));
        assert_eq!(suggest("runner.zzzzzzzz"), None);
    }

    #[test]
    fn bad_quantity_names_the_key() {
        let err =
            BerthConfig::from_yaml_str("runner:\n  resources:\n    memory: 4 gigs\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("runner.resources.memory"), "{text}");
        assert!(text.contains("4 gigs"), "{text}");
        let err =
            BerthConfig::from_yaml_str("kubernetes:\n  resources:\n    limits:\n      cpu: many\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("kubernetes.resources.limits.cpu"),
            "{err}"
        );
    }

    #[test]
    fn malformed_image_names_the_key() {
        let err = BerthConfig::from_yaml_str("runner:\n  image: 'Not An Image'\n").unwrap_err();
        assert!(err.to_string().contains("runner.image"), "{err}");
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
        let loaded = BerthConfig::load(&LoadOptions {
            path: Some(path.clone()),
            ..LoadOptions::default()
        })
        .unwrap();
        assert_eq!(loaded.source, ConfigSource::File(path));
        assert_eq!(loaded.config.runner.backend, BackendKind::Docker);
        assert_eq!(loaded.config.kubernetes.namespace, "berth-agents");
        assert_eq!(
            loaded.config.runner.image.as_deref(),
            Some("berth-test/busybox:2")
        );
    }

    fn load_file(name: &str, body: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("berth-cfg-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        BerthConfig::load(&LoadOptions {
            path: Some(path),
            ..LoadOptions::default()
        })
        .map(|_| ())
        .expect_err(name)
        .to_string()
    }

    #[test]
    fn wrong_types_name_the_key_and_what_was_expected() {
        let err = load_file("section.yaml", b"runner: 5\n");
        assert!(
            err.contains("runner") && err.contains("expected a section"),
            "{err}"
        );
        let err = load_file("image.yaml", b"runner:\n  image: 42\n");
        assert!(
            err.contains("runner.image") && err.contains("expected text"),
            "{err}"
        );
        assert!(err.contains("the number 42"), "{err}");
        let err = load_file("network.yaml", b"runner:\n  network: maybe\n");
        assert!(
            err.contains("runner.network") && err.contains("true or false"),
            "{err}"
        );
    }

    #[test]
    fn binary_and_non_yaml_files_say_so() {
        let err = load_file("binary.yaml", &[0x7f, b'E', b'L', b'F', 0, 1, 2, 0xff]);
        assert!(err.contains("binary data"), "{err}");
        let err = load_file("latin1.yaml", b"runner:\n  image: caf\xe9\n");
        assert!(err.contains("not UTF-8"), "{err}");
        let err = load_file("broken.yaml", b"runner: [unclosed\n");
        assert!(err.contains("not valid YAML"), "{err}");
        let err = load_file("scalar.yaml", b"just some words\n");
        assert!(err.contains("expected sections"), "{err}");
    }

    #[test]
    fn nul_in_a_path_is_refused() {
        let err = load_file("nul.yaml", b"runner:\n  mount_path: \"/work\\0space\"\n");
        assert!(
            err.contains("runner.mount_path") && err.contains("NUL"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_is_not_a_config_file() {
        let err = BerthConfig::load(&LoadOptions {
            path: Some(std::env::temp_dir()),
            ..LoadOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn workspace_forms_are_listed_with_a_suggestion() {
        let err = load_file("ws.yaml", b"runner:\n  workspace: {hostpath: /tmp}\n");
        assert!(err.contains("{host_path: /abs/dir}"), "{err}");
        assert!(err.contains("did you mean host_path?"), "{err}");
        assert!(!err.contains("WorkspaceConfig"), "{err}");
        let err = load_file("ws2.yaml", b"runner:\n  workspace: sometimes\n");
        assert!(err.contains("none, ephemeral"), "{err}");
    }

    #[test]
    fn section_typos_get_suggestions() {
        let err = load_file("runnr.yaml", b"runnr:\n  image: x\n");
        assert!(
            err.contains("unknown key runnr.image; did you mean runner.image?"),
            "{err}"
        );
        assert_eq!(suggest("runnr"), Some("runner"));
        assert_eq!(suggest("runer.image"), Some("runner.image"));
        assert_eq!(variable_of("runner.image"), "BERTH_RUNNER__IMAGE");
    }

    #[test]
    fn docker_environments_are_limited_by_default() {
        let r = BerthConfig::from_yaml_str("runner:\n  backend: docker\n")
            .unwrap()
            .runner_resources()
            .unwrap();
        assert_eq!(r.cpu_millis, Some(2000));
        assert_eq!(r.memory_bytes, Some(4 << 30));
        let r = BerthConfig::from_yaml_str(
            "runner:\n  resources:\n    cpu: unlimited\n    memory: unlimited\n",
        )
        .unwrap()
        .runner_resources()
        .unwrap();
        assert_eq!((r.cpu_millis, r.memory_bytes), (None, None));
        // Kubernetes: kubernetes.resources decides.
        let r = BerthConfig::from_yaml_str("runner:\n  backend: kubernetes\n")
            .unwrap()
            .runner_resources()
            .unwrap();
        assert_eq!((r.cpu_millis, r.memory_bytes), (None, None));
    }

    #[test]
    fn missing_file_is_named() {
        let err = BerthConfig::load(&LoadOptions {
            path: Some("/no/such/berth.yaml".into()),
            ..LoadOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/no/such/berth.yaml"), "{err}");
    }
}
