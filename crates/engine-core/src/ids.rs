//! Validated identifiers: sessions, environments and image references.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest session id accepted: it must fit, with a prefix and an environment name, into a
/// 63-character Kubernetes object name.
pub const MAX_SESSION_ID_LEN: usize = 24;

/// The id of a session: lowercase letters, digits and inner dashes (a DNS label), at most
/// [`MAX_SESSION_ID_LEN`] characters. It is on the labels of everything the session creates.
///
/// ```
/// use berth_engine_core::SessionId;
///
/// let id = SessionId::new("agent-7").unwrap();
/// assert_eq!(id.as_str(), "agent-7");
/// assert!(SessionId::new("Agent 7").is_err());
/// assert_eq!(SessionId::generate().as_str().len(), 12);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `session` when `id` is not a short DNS label.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        validate_dns_label("session", &id, MAX_SESSION_ID_LEN)?;
        Ok(Self(id))
    }

    /// A fresh random id of 12 hex digits.
    #[must_use]
    pub fn generate() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self(hex[..12].to_owned())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks that `value` is a DNS-1123 label of at most `max` characters.
pub(crate) fn validate_dns_label(field: &str, value: &str, max: usize) -> Result<()> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty()
        || value.len() > max
        || !ok_chars
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Err(Error::invalid_spec(
            field,
            format!("expected 1 to {max} lowercase letters, digits or inner dashes, got {value:?}"),
        ));
    }
    Ok(())
}

/// The id of a running environment: the backend's name for it (a container name on Docker, a
/// Job name on Kubernetes). Letters, digits, `_`, `.` and `-`, starting with a letter or digit.
///
/// ```
/// use berth_engine_core::EnvironmentId;
///
/// let id: EnvironmentId = "berth-3f2a-main".parse().unwrap();
/// assert_eq!(id.to_string(), "berth-3f2a-main");
/// assert!("".parse::<EnvironmentId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvironmentId(String);

impl EnvironmentId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `environment` when `id` is empty, too long or holds other
    /// characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let first_ok = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        let rest_ok = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || id.len() > 128 {
            return Err(Error::invalid_spec(
                "environment",
                format!("expected 1 to 128 letters, digits, '_', '.' or '-' starting with a letter or digit, got {id:?}"),
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A container image reference: `[registry[:port]/]path[:tag][@digest]`, validated with the
/// grammar Docker and Kubernetes use.
///
/// ```
/// use berth_engine_core::ImageRef;
///
/// let image = ImageRef::new("registry.local:5000/team/tool:1.2").unwrap();
/// assert_eq!(image.repository(), "registry.local:5000/team/tool");
/// assert_eq!(image.tag(), Some("1.2"));
/// assert!(ImageRef::new("Bad Image").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    full: String,
    /// Length of the repository part (everything before `:tag` / `@digest`).
    repo_len: usize,
    tag: Option<(usize, usize)>,
    digest: Option<usize>,
}

impl ImageRef {
    /// Parses and validates `reference`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `image` and the part that is malformed.
    pub fn new(reference: impl Into<String>) -> Result<Self> {
        let full: String = reference.into();
        let bad = |why: &str| {
            Error::invalid_spec(
                "image",
                format!("{full:?} is not a valid image reference: {why}"),
            )
        };
        if full.is_empty() {
            return Err(bad("it is empty"));
        }
        if full.len() > 4096 {
            return Err(bad("it is longer than 4096 characters"));
        }
        let (name_and_tag, digest) = match full.find('@') {
            Some(at) => {
                let digest = &full[at + 1..];
                let (algo, hex) = digest
                    .split_once(':')
                    .ok_or_else(|| bad("a digest must look like sha256:<hex>"))?;
                let algo_ok = !algo.is_empty()
                    && algo.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-')
                    });
                if !algo_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("a digest must look like sha256:<hex>"));
                }
                (&full[..at], Some(at))
            }
            None => (full.as_str(), None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name_and_tag[last_slash..].find(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (
                    &name_and_tag[..colon],
                    Some((colon + 1, name_and_tag.len())),
                )
            }
            None => (name_and_tag, None),
        };
        if let Some((start, end)) = tag {
            let tag = &full[start..end];
            let first_ok = tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            let rest_ok = tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !first_ok || !rest_ok || tag.len() > 128 {
                return Err(bad(
                    "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                ));
            }
        }
        let mut components: Vec<&str> = repo.split('/').collect();
        // The first component is a registry host when it has a '.' or ':' or is "localhost".
        if components.len() > 1 {
            let host = components[0];
            if host.contains('.') || host.contains(':') || host == "localhost" {
                let (h, port) = host.split_once(':').unwrap_or((host, ""));
                let host_ok = !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
                let port_ok = host.find(':').is_none()
                    || (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
                if !host_ok || !port_ok {
                    return Err(bad(
                        "the registry must be a host name with an optional :port",
                    ));
                }
                components.remove(0);
            }
        }
        for component in components {
            if !valid_path_component(component) {
                return Err(bad(
                    "each path component must be lowercase letters and digits, separated by '.', '_', '__' or '-'",
                ));
            }
        }
        Ok(Self {
            repo_len: repo.len(),
            tag,
            digest,
            full,
        })
    }

    /// The reference as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The repository: everything before the tag and digest.
    #[must_use]
    pub fn repository(&self) -> &str {
        &self.full[..self.repo_len]
    }

    /// The tag, when one was given.
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        self.tag.map(|(s, e)| &self.full[s..e])
    }

    /// The digest (`sha256:...`), when one was given.
    #[must_use]
    pub fn digest(&self) -> Option<&str> {
        self.digest.map(|at| &self.full[at + 1..])
    }
}

fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() {
        return false;
    }
    if !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let run_end = bytes[i..]
            .iter()
            .position(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
            .map_or(bytes.len(), |p| i + p);
        let sep = &c[i..run_end];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
        i = run_end;
    }
    true
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.as_str().to_owned()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}

string_newtype_impls!(SessionId);
string_newtype_impls!(EnvironmentId);
string_newtype_impls!(ImageRef);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn image_refs_accepted() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "berth-test/busybox:1",
            "localhost:5000/a/b",
            "ghcr.io/org/img_name:v1.0-rc.1",
            "a__b/c--d",
            "img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            ImageRef::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let r = ImageRef::new("localhost:5000/a/b").unwrap();
        assert_eq!(r.repository(), "localhost:5000/a/b");
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn image_refs_rejected_with_field_named() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "busybox:",
            "busybox:-x",
            "a//b",
            "-a",
            "a-",
            "a...b",
            "img@sha256:xyz",
            "host:port/x",
            "a:b:c",
        ] {
            let err = ImageRef::new(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{bad}");
            assert!(err.to_string().starts_with("invalid image:"), "{err}");
        }
    }

    #[test]
    fn session_ids() {
        assert!(SessionId::new("a").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(25)] {
            assert!(SessionId::new(bad).is_err(), "{bad}");
        }
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        SessionId::new(a.as_str()).unwrap();
    }
}
