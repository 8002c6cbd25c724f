//! API keys: from `BERTH_SERVER_API_KEYS` (comma-separated) and `server.api_keys_file` (one
//! per line), reloadable, compared in constant time, never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ServerError;

/// The environment variable of extra API keys, comma-separated.
pub const API_KEYS_ENV: &str = "BERTH_SERVER_API_KEYS";

/// The configured API keys. With none, requests need no key (allowed on loopback only, see
/// [`crate::Server::check_listen`]).
pub struct ApiKeys {
    file: Option<PathBuf>,
    fixed: Vec<String>,
    keys: RwLock<Arc<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("ApiKeys")
            .field("file", &self.file)
            .field("count", &self.current().len())
            .finish()
    }
}

/// Keys of a comma-separated list, trimmed, empty ones dropped.
fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Keys of a file: one a line, blank lines and `#` comments ignored.
fn read_file(path: &Path) -> Result<Vec<String>, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::ReadKeys {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

impl ApiKeys {
    /// Keys from `file` (if any) and the comma-separated `list` (if any).
    ///
    /// # Errors
    /// [`ServerError::ReadKeys`] when the file cannot be read.
    pub fn load(file: Option<PathBuf>, list: Option<&str>) -> Result<Self, ServerError> {
        let keys = Self {
            file,
            fixed: list.map(split_list).unwrap_or_default(),
            keys: RwLock::new(Arc::new(Vec::new())),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Reads the file again (the environment's keys stay). On failure the old keys stay.
    ///
    /// # Errors
    /// [`ServerError::ReadKeys`] when the file cannot be read.
    pub fn reload(&self) -> Result<usize, ServerError> {
        let mut all = self.fixed.clone();
        if let Some(path) = &self.file {
            all.extend(read_file(path)?);
        }
        all.sort();
        all.dedup();
        let count = all.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(all.into_iter().map(String::into_bytes).collect());
        Ok(count)
    }

    fn current(&self) -> Arc<Vec<Vec<u8>>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether no key is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, each in constant time,
    /// so the time taken does not say which key, if any, nearly matched. A missing key is
    /// compared as an empty one, so it takes the same path as a wrong one.
    #[must_use]
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        let keys = self.current();
        let presented = presented.unwrap_or_default();
        let mut ok = Choice::from(0);
        for key in keys.iter() {
            ok |= key.as_slice().ct_eq(presented);
        }
        bool::from(ok) && !presented.is_empty()
    }
}

/// The key a request presents: `X-API-Key`, else `Authorization: Bearer`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let rest = auth
        .strip_prefix(b"Bearer ")
        .or_else(|| auth.strip_prefix(b"bearer "))?;
    Some(rest.trim_ascii())
}

/// Middleware: lets a request through when no key is configured or it presents a valid one;
/// 401 with one body otherwise.
pub(crate) async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    if keys.is_empty() || keys.accepts(presented(request.headers())) {
        next.run(request).await
    } else {
        ServerError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_list_and_the_file_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# comment\nfile-key-1\n\n").unwrap();
        let keys = ApiKeys::load(Some(file.clone()), Some(" env-a , ,env-b")).unwrap();
        assert!(keys.accepts(Some(b"file-key-1")));
        assert!(keys.accepts(Some(b"env-b")));
        assert!(!keys.accepts(Some(b"env-")));
        assert!(!keys.accepts(None));
        assert!(!keys.accepts(Some(b"# comment")));
        std::fs::write(&file, "file-key-2\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 3);
        assert!(!keys.accepts(Some(b"file-key-1")));
        assert!(keys.accepts(Some(b"file-key-2")));
        // A file gone keeps the old keys and says why.
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(keys.reload(), Err(ServerError::ReadKeys { .. })));
        assert!(keys.accepts(Some(b"file-key-2")));
        assert!(!format!("{keys:?}").contains("env-a"));
    }

    #[test]
    fn bearer_and_x_api_key_are_both_read() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k1"[..]));
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k2"[..]));
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(presented(&basic), None);
    }
}
