//! Copying out of an environment: the archive an environment sends is untrusted data.
//!
//! [`extract_to`] reads a tar stream with berth's own loop (not `tar::Archive::unpack`, which keeps
//! every directory entry in memory and reads GNU long names and PAX headers of any size), so
//! memory stays bounded whatever the archive holds. It writes into a private temporary
//! directory next to the destination and moves the result into place only once the whole
//! archive was accepted: a refused or failed copy leaves nothing behind.
//!
//! What the host gets:
//! - set-uid, set-gid and sticky bits are always stripped; ownership is never taken from the
//!   archive; modes are masked by the user's umask unless [`ExtractOptions::preserve_mode`];
//! - no entry writes outside the destination: absolute names, `..` components, writes through
//!   a symlink (planted earlier in the same archive) and hard links to anything but a file the
//!   archive itself wrote are refused;
//! - device nodes, FIFOs and GNU sparse entries are refused, as are names and link targets
//!   holding control characters (newlines, terminal escapes) unless allowed;
//! - [`CopyLimits`] bound the bytes written, the number of entries and the length of a path.
//!
//! A refused entry fails the whole copy with [`CopyError::Refused`] naming it (escaped); it is
//! never dropped silently.
//!
//! ```no_run
//! use berth_runner::copy::{extract_to, ExtractOptions};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let archive = std::fs::File::open("untrusted.tar")?;
//! let placed = extract_to(archive, Path::new("out"), Some("src".as_ref()), &ExtractOptions::default())?;
//! println!("{} entries, {} bytes", placed.entries, placed.bytes);
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

mod extract;
mod modes;
mod stage;

pub use stage::{extract_to, stage, Staged};

const BLOCK: u64 = 512;
/// The largest PAX extension header berth reads: real ones hold a few paths and times.
const MAX_PAX_HEADER: u64 = 1024 * 1024;
/// Extension headers (long names, PAX) allowed in a row before a member: real archives use
/// at most three; a stream of nothing else is hostile.
const MAX_EXTENSION_RUN: u32 = 8;

/// Limits on what one copy out of an environment may write on the host. The defaults are far
/// above a normal project copy; the config's `copy:` section and `berth cp` flags raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyLimits {
    /// Total bytes of file content written (a sparse file counts at its full size).
    pub max_bytes: u64,
    /// Archive members (files, directories, links).
    pub max_entries: u64,
    /// Length in bytes of one member's path, and of a link's target.
    pub max_path_bytes: u64,
}

impl Default for CopyLimits {
    /// 8 GiB, 1,000,000 entries, 4096-byte paths.
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024 * 1024,
            max_entries: 1_000_000,
            max_path_bytes: 4096,
        }
    }
}

/// How [`extract_to`] treats an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractOptions {
    /// The limits.
    pub limits: CopyLimits,
    /// Keep the archive's permission bits instead of masking them by the umask (set-uid,
    /// set-gid and sticky are stripped regardless).
    pub preserve_mode: bool,
    /// Accept names and link targets holding control characters (refused by default: a name
    /// with a newline or an escape sequence misleads whoever lists the directory).
    pub allow_control_characters: bool,
}

impl ExtractOptions {
    /// These limits.
    #[must_use]
    pub fn limits(mut self, limits: CopyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether to keep the archive's permission bits (without s-bits).
    #[must_use]
    pub fn preserve_mode(mut self, preserve: bool) -> Self {
        self.preserve_mode = preserve;
        self
    }

    /// Whether names with control characters are accepted.
    #[must_use]
    pub fn allow_control_characters(mut self, allow: bool) -> Self {
        self.allow_control_characters = allow;
        self
    }
}

/// Which of the [`CopyLimits`] an archive hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`CopyLimits::max_bytes`].
    Bytes,
    /// [`CopyLimits::max_entries`].
    Entries,
    /// [`CopyLimits::max_path_bytes`].
    PathBytes,
}

impl Limit {
    /// The `berth cp` flag that raises this limit.
    #[must_use]
    pub fn flag(self) -> &'static str {
        match self {
            Self::Bytes => "--max-bytes",
            Self::Entries => "--max-entries",
            Self::PathBytes => "--max-path-bytes",
        }
    }

    /// The config key that raises this limit.
    #[must_use]
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Bytes => "copy.max_bytes",
            Self::Entries => "copy.max_entries",
            Self::PathBytes => "copy.max_path_bytes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bytes => "byte limit",
            Self::Entries => "entry limit",
            Self::PathBytes => "path length limit",
        })
    }
}

/// Why a copy out of an environment failed. Nothing was left at the destination unless the
/// variant says otherwise ([`CopyError::Place`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The archive went over one of the [`CopyLimits`].
    #[error(
        "the archive exceeds the {limit} of {max} ({detail}); raise it with {flag} or {key}",
        flag = limit.flag(),
        key = limit.config_key()
    )]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// Its value.
        max: u64,
        /// What went over it.
        detail: String,
    },
    /// An entry was refused; the copy fails as a whole.
    #[error("refused archive entry {name}: {reason}")]
    Refused {
        /// The entry's name, escaped for a terminal.
        name: String,
        /// Why.
        reason: String,
    },
    /// The stream is not a tar archive berth can read.
    #[error("malformed archive: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The destination cannot take the copy (missing parent, a directory onto a file).
    #[error("cannot copy to {}: {reason}", path.display())]
    Destination {
        /// The destination.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading the archive failed (the environment's stream broke).
    #[error("failed to read the archive")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing into the temporary directory failed; it was removed.
    #[error("failed to {step} {}", path.display())]
    Write {
        /// The step, e.g. "create file".
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Moving the accepted archive into place failed part-way: what was moved stays.
    #[error("failed to move {} into place at {}", from.display(), to.display())]
    Place {
        /// The staged path.
        from: PathBuf,
        /// Where it was going.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl CopyError {
    /// Whether one of the [`CopyLimits`] was hit, and which.
    #[must_use]
    pub fn limit(&self) -> Option<Limit> {
        match self {
            Self::LimitExceeded { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// Whether an entry was refused.
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

fn read_error(source: io::Error) -> CopyError {
    CopyError::Read { source }
}

fn write_error(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.to_owned();
    move |source| CopyError::Write { step, path, source }
}

/// A name as a terminal may show it: quoted, control characters escaped.
#[must_use]
pub fn escape_name(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

fn refused(name: &[u8], reason: impl Into<String>) -> CopyError {
    CopyError::Refused {
        name: escape_name(name),
        reason: reason.into(),
    }
}

fn has_control_character(bytes: &[u8]) -> bool {
    // C0 controls and DEL as bytes; C1 controls (U+0080..U+009F, 8-bit CSI and friends) as
    // characters when the name is UTF-8.
    bytes.iter().any(|b| *b < 0x20 || *b == 0x7f)
        || std::str::from_utf8(bytes).is_ok_and(|s| s.chars().any(char::is_control))
}

/// Checks a member's name and turns it into a path relative to the destination; `None` for
/// the archive's root (`.` or `./`). Pure: no file system access.
///
/// # Errors
/// [`CopyError::Refused`] for absolute names, `..` components, empty names and (unless
/// allowed) control characters; [`CopyError::LimitExceeded`] for a name over the path limit.
pub fn member_path(name: &[u8], options: &ExtractOptions) -> Result<Option<PathBuf>, CopyError> {
    let max = options.limits.max_path_bytes;
    if name.len() as u64 > max {
        return Err(CopyError::LimitExceeded {
            limit: Limit::PathBytes,
            max,
            detail: format!(
                "entry {} is {} bytes long",
                escape_name(&name[..name.len().min(64)]),
                name.len()
            ),
        });
    }
    if name.is_empty() {
        return Err(refused(name, "it has an empty name"));
    }
    if !options.allow_control_characters && has_control_character(name) {
        return Err(refused(name, "its name holds control characters"));
    }
    let path = Path::new(OsStr::from_bytes(name));
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(name, "it is an absolute path"));
            }
            Component::ParentDir => {
                return Err(refused(name, "it leads out of the destination with `..`"));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The mode a member gets on the host: never set-uid, set-gid or sticky; masked by `umask`
/// unless `preserve`. Pure.
#[must_use]
pub fn host_mode(archive_mode: u32, preserve: bool, umask: u32) -> u32 {
    let mode = archive_mode & 0o777;
    if preserve {
        mode
    } else {
        mode & !umask
    }
}

/// The process's umask, read from `/proc/self/status` (reading it with `umask(2)` would set
/// it, racing other threads); 0o022 when the kernel does not say.
#[must_use]
pub fn current_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_umask(&s))
        .unwrap_or(0o022)
}

fn parse_umask(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// What an accepted archive held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extracted {
    /// Members written.
    pub entries: u64,
    /// Bytes of member data read: file content written, plus any data a directory or link
    /// header claimed (dropped, but counted).
    pub bytes: u64,
}

/// The name the top-level entry of a copy of the environment's `path` has (`/src/app/` gives
/// `app`); `None` for `/`, or a path ending in `.` or `..`, whose archive has no one name.
#[must_use]
pub fn source_name(path: &str) -> Option<&OsStr> {
    let trimmed = path.trim_end_matches('/');
    let last = trimmed.rsplit('/').next()?;
    (!last.is_empty() && last != "." && last != "..").then_some(OsStr::new(last))
}

#[cfg(test)]
mod tests;
