//! The entries of `kubernetes.env_from`, `secret_env`, `mounts`, `caches` and
//! `security_context`: references to Secrets, ConfigMaps and claims (never their values), and
//! their check by key ([`PodOptions::check`]) and translation to the engine's
//! [`PodExtras`].

use std::collections::BTreeMap;

use berth_engine_k8s::manifest::{
    Cache, EnvFromSource, FileMount, KeyRef, NewClaim, PodExtras, SecurityOverrides, SourceKind,
};
use serde::{Deserialize, Serialize};

use super::keys::section;
use super::MemoryQuantity;

/// `secret: NAME` or `config_map: NAME`: exactly one.
fn source(
    key: &str,
    secret: Option<&String>,
    config_map: Option<&String>,
) -> Result<(SourceKind, String), (String, String)> {
    match (secret, config_map) {
        (Some(s), None) => Ok((SourceKind::Secret, s.clone())),
        (None, Some(c)) => Ok((SourceKind::ConfigMap, c.clone())),
        (Some(_), Some(_)) => Err((
            key.to_owned(),
            "expected one of secret or config_map, got both".into(),
        )),
        (None, None) => Err((
            key.to_owned(),
            "expected secret: NAME or config_map: NAME".into(),
        )),
    }
}

/// A DNS subdomain, as the API names Secrets, ConfigMaps and claims.
pub(super) fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err((
            key.to_owned(),
            format!(
                "expected an object name (lowercase letters, digits, '-' and '.'), got {name:?}"
            ),
        ))
    }
}

fn check_absolute(key: &str, path: &str) -> Result<(), (String, String)> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err((
            key.to_owned(),
            format!("expected an absolute path, got {path:?}"),
        ))
    }
}

/// A variable name as Kubernetes takes it (C identifier-like, `-` and `.` allowed).
fn check_variable(key: &str, name: &str) -> Result<(), (String, String)> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err((
            key.to_owned(),
            format!("expected a variable name (letters, digits, '_', '-', '.'; not starting with a digit), got {name:?}"),
        ))
    }
}

/// One `kubernetes.env_from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvFromEntry {
    /// A Secret's name.
    pub secret: Option<String>,
    /// A ConfigMap's name.
    pub config_map: Option<String>,
    /// Put before every variable's name.
    pub prefix: Option<String>,
    /// Start without it when it is missing.
    pub optional: bool,
}

section! {
    /// One `kubernetes.secret_env` value: a key of a Secret (or ConfigMap).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct KeyEntry {
        /// A Secret's name.
        pub secret: Option<String>,
        /// A ConfigMap's name.
        pub config_map: Option<String>,
        /// The key in it.
        pub key: String,
        /// Leave the variable unset when it is missing.
        pub optional: bool,
    }
}

/// One `kubernetes.mounts` entry: a Secret or ConfigMap as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MountEntry {
    /// A Secret's name.
    pub secret: Option<String>,
    /// A ConfigMap's name.
    pub config_map: Option<String>,
    /// The directory in the environment.
    pub path: String,
    /// Only these keys, each to a file name (relative); empty = every key.
    pub items: BTreeMap<String, String>,
    /// Mount read-only.
    pub read_only: bool,
    /// Mount an empty directory when it is missing.
    pub optional: bool,
    /// The files' mode in octal, as text (`"0440"`); unset = 0644.
    pub mode: Option<String>,
}

impl Default for MountEntry {
    fn default() -> Self {
        Self {
            secret: None,
            config_map: None,
            path: String::new(),
            items: BTreeMap::new(),
            read_only: true,
            optional: false,
            mode: None,
        }
    }
}

/// One `kubernetes.caches` entry: a claim mounted at `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The claim's name (an existing one unless `create` is set).
    pub claim: String,
    /// Create the claim (for Argo workflows, one per workflow).
    pub create: Option<NewClaimEntry>,
    /// The directory in the environment.
    pub path: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// `kubernetes.caches[].create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NewClaimEntry {
    /// The storage request, e.g. `10Gi`.
    pub size: Option<MemoryQuantity>,
    /// The storage class; unset = the cluster's default.
    pub storage_class: Option<String>,
    /// Access modes; empty = `ReadWriteOnce`.
    pub access_modes: Vec<String>,
}

section! {
    /// `kubernetes.security_context`: settings beyond `kubernetes.security`'s profile.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct SecurityContextSection {
        /// The environment's root filesystem is read-only.
        pub read_only_root_filesystem: Option<bool>,
        /// The pod's `fsGroup`: volumes belong to this group.
        pub fs_group: Option<u64>,
        /// The pod's `supplementalGroups`.
        pub supplemental_groups: Vec<u64>,
        /// The group the environment runs as (`run_as_user: uid:gid` wins).
        pub run_as_group: Option<u64>,
    }
}

/// The Kubernetes-only pod settings of `kubernetes:`, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodOptions<'a> {
    pub(crate) env_from: &'a [EnvFromEntry],
    pub(crate) secret_env: &'a BTreeMap<String, KeyEntry>,
    pub(crate) mounts: &'a [MountEntry],
    pub(crate) caches: &'a [CacheEntry],
    pub(crate) security: &'a SecurityContextSection,
    pub(crate) annotations: &'a BTreeMap<String, String>,
}

fn gid(key: &str, g: u64) -> Result<i64, (String, String)> {
    i64::try_from(g).map_err(|_| (key.to_owned(), format!("expected a group id, got {g}")))
}

impl PodOptions<'_> {
    /// The first key set here, if any (for "has no meaning on Docker").
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        [
            ("kubernetes.env_from", !self.env_from.is_empty()),
            ("kubernetes.secret_env", !self.secret_env.is_empty()),
            ("kubernetes.mounts", !self.mounts.is_empty()),
            ("kubernetes.caches", !self.caches.is_empty()),
            (
                "kubernetes.security_context",
                *self.security != SecurityContextSection::default(),
            ),
            ("kubernetes.annotations", !self.annotations.is_empty()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// The engine's pod extras, every entry checked.
    ///
    /// # Errors
    /// `(key, reason)`: the dotted key at fault (with the entry's index or name) and what was
    /// expected.
    pub(crate) fn extras(&self) -> Result<PodExtras, (String, String)> {
        let mut out = PodExtras::default();
        for (i, e) in self.env_from.iter().enumerate() {
            let key = format!("kubernetes.env_from[{i}]");
            let (kind, name) = source(&key, e.secret.as_ref(), e.config_map.as_ref())?;
            check_name(&key, &name)?;
            if let Some(prefix) = e.prefix.as_deref().filter(|p| !p.is_empty()) {
                check_variable(&format!("{key}.prefix"), prefix)?;
            }
            let mut from = EnvFromSource::new(kind, name);
            from.prefix = e.prefix.clone().filter(|p| !p.is_empty());
            from.optional = e.optional;
            out.env_from.push(from);
        }
        for (var, e) in self.secret_env {
            let key = format!("kubernetes.secret_env.{var}");
            check_variable(&key, var)?;
            let (kind, name) = source(&key, e.secret.as_ref(), e.config_map.as_ref())?;
            check_name(&key, &name)?;
            if e.key.is_empty() {
                return Err((
                    format!("{key}.key"),
                    "expected the key in the object".into(),
                ));
            }
            let mut r = KeyRef::new(kind, name, e.key.clone());
            r.optional = e.optional;
            out.key_env.insert(var.clone(), r);
        }
        for (i, e) in self.mounts.iter().enumerate() {
            let key = format!("kubernetes.mounts[{i}]");
            let (kind, name) = source(&key, e.secret.as_ref(), e.config_map.as_ref())?;
            check_name(&key, &name)?;
            check_absolute(&format!("{key}.path"), &e.path)?;
            for (item, file) in &e.items {
                if file.is_empty() || file.starts_with('/') || file.split('/').any(|p| p == "..") {
                    return Err((
                        format!("{key}.items.{item}"),
                        format!("expected a relative file path without '..', got {file:?}"),
                    ));
                }
            }
            let mut m = FileMount::new(kind, name, e.path.clone());
            m.items.clone_from(&e.items);
            m.read_only = e.read_only;
            m.optional = e.optional;
            if let Some(mode) = &e.mode {
                let digits = mode.trim_start_matches("0o");
                m.mode = Some(
                    i32::from_str_radix(digits, 8)
                        .ok()
                        .filter(|m| (0..=0o777).contains(m))
                        .ok_or_else(|| {
                            (
                                format!("{key}.mode"),
                                format!("expected an octal mode from 0000 to 0777 as text, like \"0440\", got {mode:?}"),
                            )
                        })?,
                );
            }
            out.mounts.push(m);
        }
        for (i, e) in self.caches.iter().enumerate() {
            let key = format!("kubernetes.caches[{i}]");
            check_name(&format!("{key}.claim"), &e.claim)?;
            check_absolute(&format!("{key}.path"), &e.path)?;
            let create = match &e.create {
                None => None,
                Some(c) => {
                    let size = c.size.ok_or_else(|| {
                        (
                            format!("{key}.create.size"),
                            "expected a storage quantity like 10Gi".to_owned(),
                        )
                    })?;
                    Some(NewClaim {
                        size: size.to_string(),
                        storage_class: c.storage_class.clone(),
                        access_modes: c.access_modes.clone(),
                    })
                }
            };
            out.caches.push(Cache {
                claim: e.claim.clone(),
                create,
                path: e.path.clone(),
                read_only: e.read_only,
            });
        }
        let s = self.security;
        let key = "kubernetes.security_context";
        out.security = SecurityOverrides {
            read_only_root_filesystem: s.read_only_root_filesystem,
            fs_group: s.fs_group.map(|g| gid(key, g)).transpose()?,
            supplemental_groups: s
                .supplemental_groups
                .iter()
                .map(|g| gid(key, *g))
                .collect::<Result<_, _>>()?,
            run_as_group: s.run_as_group.map(|g| gid(key, g)).transpose()?,
        };
        out.annotations.clone_from(self.annotations);
        Ok(out)
    }
}
