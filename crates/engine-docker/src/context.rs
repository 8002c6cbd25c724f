//! The docker CLI's context store (`docker context create`, `docker --context`), read so users
//! reuse the endpoints they already have.
//!
//! Layout (docker CLI 19.03+): `$DOCKER_CONFIG/contexts/meta/<sha256 of name>/meta.json` holds
//! `{"Name": …, "Endpoints": {"docker": {"Host": …, "SkipTLSVerify": …}}}`; TLS material, when
//! the context has any, is `$DOCKER_CONFIG/contexts/tls/<sha256 of name>/docker/{ca,cert,key}.pem`.
//! `$DOCKER_CONFIG` defaults to `~/.docker`.

use std::path::{Path, PathBuf};

use berth_engine_core::Error;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A context's docker endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEndpoint {
    /// The context's name.
    pub name: String,
    /// Its daemon address (`unix://`, `tcp://`, `ssh://`).
    pub host: String,
    /// Whether the context asks not to verify the daemon's certificate.
    pub skip_tls_verify: bool,
    /// Its TLS directory (`ca.pem`, `cert.pem`, `key.pem`), when it has one.
    pub tls_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Endpoints", default)]
    endpoints: std::collections::BTreeMap<String, Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "Host", default)]
    host: Option<String>,
    #[serde(rename = "SkipTLSVerify", default)]
    skip_tls_verify: bool,
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
#[must_use]
pub fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The context `config.json` names as current (`docker context use`), if any.
#[must_use]
pub fn current_context(config_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config_dir.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .get("currentContext")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn digest(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names of the contexts in the store (sorted), for "did you mean".
#[must_use]
pub fn known_contexts(config_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(config_dir.join("contexts").join("meta")) {
        for dir in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(dir.path().join("meta.json")) else {
                continue;
            };
            if let Ok(meta) = serde_json::from_str::<Meta>(&text) {
                names.push(meta.name);
            }
        }
    }
    names.sort();
    names
}

/// Reads context `name` from the store under `config_dir`; `field` names the setting.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `field` when the context is unknown (listing the known ones),
/// its metadata is unreadable, or it has no docker endpoint.
pub fn load(config_dir: &Path, field: &str, name: &str) -> Result<ContextEndpoint, Error> {
    let hash = digest(name);
    let meta_path = config_dir
        .join("contexts")
        .join("meta")
        .join(&hash)
        .join("meta.json");
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let known = known_contexts(config_dir);
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(Error::invalid_spec(
                field,
                format!(
                    "unknown docker context {name:?} in {} (known contexts: default, {known}); create it with `docker context create`",
                    config_dir.join("contexts").display()
                ),
            ));
        }
        Err(e) => {
            return Err(Error::invalid_spec(
                field,
                format!("cannot read {}: {e}", meta_path.display()),
            ))
        }
    };
    let meta: Meta = serde_json::from_str(&text).map_err(|e| {
        Error::invalid_spec(
            field,
            format!(
                "{} is not a docker context's meta.json: {e}",
                meta_path.display()
            ),
        )
    })?;
    let endpoint = meta.endpoints.get("docker");
    let host = endpoint
        .and_then(|e| e.host.clone())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Error::invalid_spec(
                field,
                format!(
                    "docker context {name:?} ({}) has no Endpoints.docker.Host",
                    meta_path.display()
                ),
            )
        })?;
    let tls_dir = config_dir
        .join("contexts")
        .join("tls")
        .join(&hash)
        .join("docker");
    Ok(ContextEndpoint {
        name: meta.name,
        host,
        skip_tls_verify: endpoint.is_some_and(|e| e.skip_tls_verify),
        tls_dir: tls_dir.is_dir().then_some(tls_dir),
    })
}

/// Writes a context into the store under `config_dir`, as `docker context create` does (used
/// by tests and by anyone scripting a store).
///
/// # Errors
/// An I/O error writing the files.
pub fn write(
    config_dir: &Path,
    name: &str,
    host: &str,
    tls: Option<(&Path, &Path, &Path)>,
) -> std::io::Result<()> {
    let hash = digest(name);
    let meta_dir = config_dir.join("contexts").join("meta").join(&hash);
    std::fs::create_dir_all(&meta_dir)?;
    let meta = serde_json::json!({
        "Name": name,
        "Metadata": {},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}},
    });
    std::fs::write(meta_dir.join("meta.json"), meta.to_string())?;
    if let Some((ca, cert, key)) = tls {
        let tls_dir = config_dir
            .join("contexts")
            .join("tls")
            .join(&hash)
            .join("docker");
        std::fs::create_dir_all(&tls_dir)?;
        std::fs::copy(ca, tls_dir.join("ca.pem"))?;
        std::fs::copy(cert, tls_dir.join("cert.pem"))?;
        std::fs::copy(key, tls_dir.join("key.pem"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_hex_of_the_name() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn round_trips_and_lists_unknown() {
        let dir = std::env::temp_dir().join(format!("berth-ctx-{}", uuid::Uuid::new_v4().simple()));
        write(&dir, "far", "ssh://u@far:2222", None).unwrap();
        let ep = load(&dir, "context", "far").unwrap();
        assert_eq!(ep.host, "ssh://u@far:2222");
        assert_eq!(ep.tls_dir, None);
        let err = load(&dir, "context", "near").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("context") && text.contains("\"near\"") && text.contains("far"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
