//! Loading the layers with the `config` crate, lowest first: built-in defaults, the YAML file,
//! `BERTH_<SECTION>__<KEY>` environment variables, then command-line flags. A file is read
//! once more on its own first, so a wrong type or an unknown key is named as the file spells
//! it (the layered loader would quietly turn `42` into text).

use std::path::{Path, PathBuf};

use yaml_rust2::Yaml;

use super::keys::{flatten, nearest, path_matches, suggest, Schema, ValueKind};
use super::schema::{BerthConfig, WorkspaceConfig};
use super::ConfigError;

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

/// Every path of the schema with its kind, sections included (`runner`, `runner.resources`,
/// `runner.resources.cpu`), derived from the schema's types.
pub(crate) fn known_paths() -> Vec<(String, ValueKind)> {
    let mut out = Vec::new();
    flatten("", &BerthConfig::keys(), &mut out);
    out
}

/// Every key of the schema that holds a value, as dotted paths (`runner.image`), derived
/// from the schema's types.
#[must_use]
pub fn known_keys() -> Vec<String> {
    known_paths()
        .into_iter()
        .filter(|(_, kind)| !matches!(kind, ValueKind::Section | ValueKind::Named))
        .map(|(path, _)| path)
        .collect()
}

fn user_config_file() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")))?;
    Some(dir.join("berth").join("config.yaml")).filter(|p| p.is_file())
}

/// A loader message without its trailing "for key `K`" when it already names `K`.
fn once_per_key(message: String) -> String {
    if let Some(start) = message.rfind(" for key `") {
        let key = message[start + " for key `".len()..].trim_end_matches('`');
        if message[..start].contains(key) {
            return message[..start].to_owned();
        }
    }
    message
}

/// A key path as the `config` crate writes it inside lists (`caches[0]create.size`) in the
/// dotted form the rest of berth uses (`caches[0].create.size`).
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_alphanumeric() || *n == '_')
        {
            out.push('.');
        }
    }
    out
}

/// The `config` crate's error as ours: a value's own error at a key (a duration, a
/// quantity, a choice) is [`ConfigError::Invalid`] naming the key; anything else is
/// [`ConfigError::Parse`] with the loader's message.
fn loader_error(source_name: &str, error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } if matches!(*error, config::ConfigError::Message(_)) => ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: dotted(&key),
            reason: error.to_string(),
        },
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: dotted(&key),
            reason: format!("expected {expected}, got {unexpected}"),
        },
        other => ConfigError::Parse {
            source_name: source_name.to_owned(),
            message: once_per_key(other.to_string()),
        },
    }
}

fn describe(value: &Yaml) -> String {
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
fn type_error(prefix: &str, doc: &Yaml, known: &[(String, ValueKind)]) -> Option<(String, String)> {
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
        let Some(kind) = known
            .iter()
            .find(|(k, _)| path_matches(k, &path))
            .map(|(_, kind)| *kind)
        else {
            continue;
        };
        let fits = match (kind, value) {
            (_, Yaml::Null) => true,
            (ValueKind::Section | ValueKind::Named, Yaml::Hash(_)) => {
                if let Some(found) = type_error(&path, value, known) {
                    return Some(found);
                }
                true
            }
            (ValueKind::Network, Yaml::Boolean(_)) => true,
            (ValueKind::Network, Yaml::String(s)) => {
                matches!(s.as_str(), "none" | "full" | "true" | "false")
            }
            (ValueKind::Network, Yaml::Hash(_)) => {
                if let Some(found) = type_error(&path, value, known) {
                    return Some(found);
                }
                true
            }
            (ValueKind::Workspace, _) => {
                if let Some(reason) = workspace_error(value) {
                    return Some((path, reason));
                }
                true
            }
            (ValueKind::Text, Yaml::String(_))
            | (ValueKind::List, Yaml::Array(_))
            | (ValueKind::Bool, Yaml::Boolean(_))
            | (
                ValueKind::Quantity | ValueKind::TextOrNumber,
                Yaml::String(_) | Yaml::Integer(_) | Yaml::Real(_),
            ) => true,
            (ValueKind::Count, Yaml::Integer(i)) => *i >= 0,
            _ => false,
        };
        if !fits {
            return Some((
                path,
                format!("expected {}, got {}", kind.expected(), describe(value)),
            ));
        }
    }
    None
}

/// Why `value` is not one of `runner.workspace`'s forms, if it is not.
fn workspace_error(value: &Yaml) -> Option<String> {
    let forms = ValueKind::Workspace.expected();
    let keys = WorkspaceConfig::keys();
    let names = || keys.iter().map(|k| k.name);
    match value {
        Yaml::String(s) if s == "none" || s == "ephemeral" => None,
        Yaml::Hash(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next()?;
            let key = key.as_str().unwrap_or_default();
            match inner {
                _ if !names().any(|k| k == key) => {
                    let near = nearest(key, names(), 3)
                        .map(|k| format!("; did you mean {k}?"))
                        .unwrap_or_default();
                    Some(format!("expected {forms}, got {{{key}: ..}}{near}"))
                }
                Yaml::String(_) => None,
                other => Some(format!(
                    "expected {forms}; {key} needs text, got {}",
                    describe(other)
                )),
            }
        }
        other => Some(format!("expected {forms}, got {}", describe(other))),
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
        None | Some(Yaml::Null | Yaml::Hash(_)) => {}
        Some(other) => {
            return Err(parse(format!(
                "expected sections (runner:, docker:, kubernetes:), got {}",
                describe(other)
            )))
        }
    }
    match docs.first().and_then(|d| type_error("", d, &known_paths())) {
        Some((key, reason)) => Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key,
            reason,
        }),
        None => Ok(()),
    }
}

/// The environment variable that sets `key` (`runner.image` → `BERTH_RUNNER__IMAGE`).
pub(crate) fn variable_of(key: &str) -> String {
    format!("BERTH_{}", key.to_uppercase().replace('.', "__"))
}

/// Every key path in `value` that the schema does not know, with a suggestion; `name` shows
/// a key as its source spells it (a dotted path, or an environment variable).
fn unknown_keys(
    prefix: &str,
    value: &config::Value,
    known: &[(String, ValueKind)],
    name: fn(&str) -> String,
    out: &mut Vec<String>,
) {
    unknown_keys_under(prefix, prefix, value, known, name, out);
}

/// `pattern` is `prefix` with the user's own names (a named map's keys, which may hold dots,
/// such as an annotation `example.com/team`) written as `*`.
fn unknown_keys_under(
    prefix: &str,
    pattern: &str,
    value: &config::Value,
    known: &[(String, ValueKind)],
    name: fn(&str) -> String,
    out: &mut Vec<String>,
) {
    let Ok(table) = value.clone().into_table() else {
        return;
    };
    let in_named_map = known
        .iter()
        .any(|(k, kind)| *kind == ValueKind::Named && path_matches(k, pattern));
    for (key, child) in table {
        let (path, child_pattern) = if prefix.is_empty() {
            (key.clone(), key.clone())
        } else if in_named_map {
            (format!("{prefix}.{key}"), format!("{pattern}.*"))
        } else {
            (format!("{prefix}.{key}"), format!("{pattern}.{key}"))
        };
        let kind = known
            .iter()
            .find(|(k, _)| path_matches(k, &child_pattern))
            .map(|(_, kind)| *kind);
        let is_known = kind.is_some();
        if matches!(kind, Some(ValueKind::List)) {
            // Entries checked when they deserialize (serde names a wrong key in them).
            continue;
        }
        if !is_known && child.clone().into_table().is_ok_and(|t| !t.is_empty()) {
            // A mistyped section: name the keys under it, each with its nearest known key
            // (`runer.image` -> `runner.image`), as the file or the variable spells them.
            unknown_keys_under(&path, &child_pattern, &child, known, name, out);
        } else if !is_known {
            out.push(match suggest(&path, known) {
                Some(near) => format!("unknown key {}; did you mean {}?", name(&path), name(near)),
                None => format!("unknown key {}", name(&path)),
            });
        } else {
            unknown_keys_under(&path, &child_pattern, &child, known, name, out);
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
    unknown_keys("", &root, &known_paths(), name, &mut unknown);
    match unknown.into_iter().next() {
        Some(message) => Err(ConfigError::Parse {
            source_name: source_name.to_owned(),
            message,
        }),
        None => Ok(()),
    }
}

/// Only `BERTH_<SECTION>__<KEY>` variables are config; others (`BERTH_BUSYBOX`,
/// `BERTH_STATE_DIR`, `BERTH_E2E_KUBECONFIG`) belong to tools and tests.
fn env_source(vars: config::Map<String, String>) -> config::Environment {
    config::Environment::with_prefix("BERTH")
        .prefix_separator("_")
        .separator("__")
        .source(Some(vars))
}

/// Deserializes the layers of `builder` and validates the result, naming `source_name`.
fn finish(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    source_name: &str,
) -> Result<BerthConfig, ConfigError> {
    let parsed = builder
        .build()
        .and_then(config::Config::try_deserialize::<BerthConfig>)
        .map_err(|e| loader_error(source_name, e))?;
    parsed.validate(source_name)?;
    Ok(parsed)
}

/// The first `BERTH_*` variable that is invalid on its own (over the built-in defaults), as
/// an error naming it.
fn culprit_variable(vars: &config::Map<String, String>) -> Option<ConfigError> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let one = config::Map::from([(name.clone(), vars[name].clone())]);
        let builder = config::Config::builder().add_source(env_source(one));
        finish(builder, &format!("environment variable {name}")).err()
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
                .map_err(|e| loader_error(&source.name(), e))?;
            check_known(&source.name(), &file, str::to_owned)?;
            builder = builder.add_source(file);
        }
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("BERTH_") && k.contains("__"))
            .collect();
        let env_layer = config::Config::builder()
            .add_source(env_source(vars.clone()))
            .build()
            .map_err(|e| loader_error("environment", e))?;
        check_known("the environment", &env_layer, variable_of)?;
        builder = builder.add_source(env_layer);
        for (key, value) in &options.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| loader_error("command line", e))?;
        }
        match finish(builder, &source.name()) {
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
        let builder = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml));
        finish(builder, "inline YAML")
    }
}
