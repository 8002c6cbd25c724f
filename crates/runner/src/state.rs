//! berth's local state. Older versions recorded here which environments `berth up` detached
//! on purpose; detachment now lives on the environment itself (the `berth.dev/detached`
//! label, see `gc`), so every host and state directory agrees. gc still honours the old
//! markers and forgets them once their environments are gone.

use std::path::{Path, PathBuf};

use berth_engine_core::EnvironmentId;

/// The state directory: `$BERTH_STATE_DIR`, else `$XDG_STATE_HOME/berth`, else
/// `~/.local/state/berth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl Default for StateDir {
    fn default() -> Self {
        Self::from_env()
    }
}

impl StateDir {
    /// The directory the environment names.
    #[must_use]
    pub fn from_env() -> Self {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = env("BERTH_STATE_DIR")
            .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("berth")))
            .or_else(|| env("HOME").map(|h| h.join(".local/state/berth")))
            .unwrap_or_else(|| std::env::temp_dir().join("berth-state"));
        Self(dir)
    }

    /// A state directory at `path`.
    #[must_use]
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    fn marker(&self, env: &EnvironmentId) -> PathBuf {
        self.0.join("detached").join(env.as_str())
    }

    /// Records that `env` was detached on purpose.
    ///
    /// # Errors
    /// When the directory cannot be written.
    pub fn mark_detached(&self, env: &EnvironmentId) -> std::io::Result<()> {
        let path = self.marker(env);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, b"")
    }

    /// Whether `env` was detached on purpose.
    #[must_use]
    pub fn is_detached(&self, env: &EnvironmentId) -> bool {
        self.marker(env).exists()
    }

    /// Forgets `env` (after `down`, or when gc finds it gone).
    pub fn forget(&self, env: &EnvironmentId) {
        let _ = std::fs::remove_file(self.marker(env));
    }

    /// Every environment recorded as detached.
    #[must_use]
    pub fn detached(&self) -> Vec<EnvironmentId> {
        let Ok(entries) = std::fs::read_dir(self.0.join("detached")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| EnvironmentId::new(e.file_name().to_string_lossy().into_owned()).ok())
            .collect()
    }
}
