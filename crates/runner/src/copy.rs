//! Copying out of an environment: the archive an environment sends is untrusted data.
//!
//! [`extract`] reads a tar stream with berth's own loop (not `tar::Archive::unpack`, which keeps
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
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::{EntryType, Header};

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

/// How [`extract`] treats an archive.
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

/// Directories whose final mode would lock their owner out while the archive is still being
/// written (no `rwx` for the owner) get it after everything is in place. The list lives in an
/// unnamed temporary file, not in memory: a hostile archive may hold millions of them.
#[derive(Debug)]
struct DeferredModes {
    file: Option<BufWriter<fs::File>>,
    last: Option<PathBuf>,
}

impl DeferredModes {
    fn new() -> Self {
        Self {
            file: None,
            last: None,
        }
    }

    fn push(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        // The same directory header repeated (a hostile stream's favourite) is stored once.
        if self.last.as_deref() == Some(rel) {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(BufWriter::new(tempfile::tempfile()?));
        }
        let file = self.file.as_mut().expect("just created");
        let bytes = rel.as_os_str().as_bytes();
        file.write_all(bytes)?;
        file.write_all(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes())?;
        file.write_all(&mode.to_le_bytes())?;
        self.last = Some(rel.to_owned());
        Ok(())
    }

    /// Applies the modes deepest-first (the reverse of archive order), so a parent that loses
    /// its owner's search permission does not hide its children; `place` maps a staged
    /// relative path to where it now lives.
    fn apply(self, place: impl Fn(&Path) -> PathBuf) -> io::Result<()> {
        let Some(file) = self.file else {
            return Ok(());
        };
        let mut file = BufReader::new(file.into_inner().map_err(io::IntoInnerError::into_error)?);
        let mut end = file.seek(SeekFrom::End(0))?;
        let mut trailer = [0u8; 8];
        while end > 0 {
            file.seek(SeekFrom::Start(end - 8))?;
            file.read_exact(&mut trailer)?;
            let len = u64::from(u32::from_le_bytes(trailer[..4].try_into().expect("4")));
            let mode = u32::from_le_bytes(trailer[4..].try_into().expect("4"));
            let start = end - 8 - len;
            file.seek(SeekFrom::Start(start))?;
            let mut name = vec![0u8; usize::try_from(len).unwrap_or(0)];
            file.read_exact(&mut name)?;
            let path = place(Path::new(OsStr::from_bytes(&name)));
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            end = start;
        }
        Ok(())
    }
}

/// The tar reader: one 512-byte block at a time, member data streamed, nothing kept but the
/// pending extension values of the next member (bounded by the limits).
struct TarReader<R> {
    inner: R,
}

impl<R: Read> TarReader<R> {
    /// Reads one block; `false` at a clean end of stream.
    fn block(&mut self, buf: &mut [u8; 512]) -> Result<bool, CopyError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(CopyError::Malformed {
                        reason: "the stream ends inside a header".into(),
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(true)
    }

    /// Reads a small extension body (already checked against its cap) and its padding.
    fn small_body(&mut self, size: u64) -> Result<Vec<u8>, CopyError> {
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut body)
            .map_err(read_error)?;
        if body.len() as u64 != size {
            return Err(truncated());
        }
        self.skip(padding(size))?;
        Ok(body)
    }

    fn skip(&mut self, n: u64) -> Result<(), CopyError> {
        let skipped =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(read_error)?;
        if skipped == n {
            Ok(())
        } else {
            Err(truncated())
        }
    }
}

fn truncated() -> CopyError {
    CopyError::Malformed {
        reason: "the stream ends inside a member".into(),
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn checksum_ok(block: &[u8; 512], header: &Header) -> bool {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * 32;
    header.cksum().is_ok_and(|c| c == sum)
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Values that GNU long-name and PAX headers set for the next member.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    run: u32,
}

/// Extracts the tar stream `archive` into the empty directory `staging`, which nobody else
/// writes to. Memory stays bounded: member data is streamed, the directory modes to apply at
/// the end go to a temporary file. On success returns the deferred modes with the counts.
fn extract_into(
    archive: impl Read,
    staging: &Path,
    options: &ExtractOptions,
    umask: u32,
) -> Result<(Extracted, DeferredModes), CopyError> {
    let mut reader = TarReader { inner: archive };
    let mut deferred = DeferredModes::new();
    let mut done = Extracted::default();
    let mut pending = Pending::default();
    let limits = options.limits;
    let mut block = [0u8; 512];
    loop {
        if !reader.block(&mut block)? {
            break;
        }
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let header = Header::from_byte_slice(&block);
        if !checksum_ok(&block, header) {
            return Err(CopyError::Malformed {
                reason: "a header's checksum does not match".into(),
            });
        }
        let kind = header.entry_type();
        let extension = matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        );
        // A PAX size describes the next member, not an extension header between.
        let size = match pending.size.filter(|_| !extension) {
            Some(s) => s,
            None => header.entry_size().map_err(|e| CopyError::Malformed {
                reason: format!("a header's size is unreadable: {e}"),
            })?,
        };
        if extension {
            pending.run += 1;
            if pending.run > MAX_EXTENSION_RUN {
                return Err(CopyError::Malformed {
                    reason: format!(
                        "more than {MAX_EXTENSION_RUN} extension headers in a row describe no member"
                    ),
                });
            }
            read_extension(&mut reader, kind, size, &limits, &mut pending)?;
            continue;
        }
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(CopyError::LimitExceeded {
                limit: Limit::Entries,
                max: limits.max_entries,
                detail: "the archive holds more members".into(),
            });
        }
        let name = match pending.name.take() {
            Some(n) => n,
            None => header.path_bytes().into_owned(),
        };
        let link = match pending.link.take() {
            Some(l) => Some(l),
            None => header.link_name_bytes().map(std::borrow::Cow::into_owned),
        };
        pending = Pending::default();
        let member = Member {
            name: &name,
            link: link.as_deref(),
            header,
            size,
        };
        let consumed = write_member(
            &mut reader,
            &member,
            staging,
            options,
            umask,
            &mut done,
            &mut deferred,
        )?;
        // Data a member should not have (a directory or link "holding" a terabyte) is read
        // and dropped, but counts against the byte limit: otherwise it never ends.
        let unread = size - consumed;
        done.bytes = done.bytes.saturating_add(unread);
        if done.bytes > limits.max_bytes {
            return Err(CopyError::LimitExceeded {
                limit: Limit::Bytes,
                max: limits.max_bytes,
                detail: format!(
                    "entry {} carries {unread} bytes of data",
                    escape_name(&name)
                ),
            });
        }
        reader.skip(unread + padding(size))?;
    }
    if pending.run > 0 {
        return Err(CopyError::Malformed {
            reason: "the archive ends after an extension header".into(),
        });
    }
    Ok((done, deferred))
}

fn read_extension<R: Read>(
    reader: &mut TarReader<R>,
    kind: EntryType,
    size: u64,
    limits: &CopyLimits,
    pending: &mut Pending,
) -> Result<(), CopyError> {
    match kind {
        EntryType::GNULongName | EntryType::GNULongLink => {
            // The body is the name and a NUL.
            if size > limits.max_path_bytes + 1 {
                return Err(CopyError::LimitExceeded {
                    limit: Limit::PathBytes,
                    max: limits.max_path_bytes,
                    detail: format!("a GNU long name of {size} bytes"),
                });
            }
            let body = trim_nul(reader.small_body(size)?);
            if kind == EntryType::GNULongName {
                pending.name = Some(body);
            } else {
                pending.link = Some(body);
            }
        }
        _ => {
            if size > MAX_PAX_HEADER {
                return Err(CopyError::Malformed {
                    reason: format!(
                        "a PAX header of {size} bytes (berth reads at most {MAX_PAX_HEADER})"
                    ),
                });
            }
            let body = reader.small_body(size)?;
            if kind == EntryType::XGlobalHeader {
                return Ok(());
            }
            for ext in tar::PaxExtensions::new(&body) {
                let ext = ext.map_err(|e| CopyError::Malformed {
                    reason: format!("a PAX header is unreadable: {e}"),
                })?;
                match ext.key_bytes() {
                    b"path" => pending.name = Some(ext.value_bytes().to_vec()),
                    b"linkpath" => pending.link = Some(ext.value_bytes().to_vec()),
                    b"size" => {
                        let size = ext
                            .value()
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or_else(|| CopyError::Malformed {
                                reason: "a PAX size is not a number".into(),
                            })?;
                        pending.size = Some(size);
                    }
                    _ => {}
                }
            }
            for value in [&pending.name, &pending.link].into_iter().flatten() {
                if value.len() as u64 > limits.max_path_bytes {
                    return Err(CopyError::LimitExceeded {
                        limit: Limit::PathBytes,
                        max: limits.max_path_bytes,
                        detail: format!("a PAX path of {} bytes", value.len()),
                    });
                }
            }
        }
    }
    Ok(())
}

struct Member<'a> {
    name: &'a [u8],
    link: Option<&'a [u8]>,
    header: &'a Header,
    size: u64,
}

/// Writes one member under `staging`; returns how many data bytes it consumed.
fn write_member<R: Read>(
    reader: &mut TarReader<R>,
    member: &Member<'_>,
    staging: &Path,
    options: &ExtractOptions,
    umask: u32,
    done: &mut Extracted,
    deferred: &mut DeferredModes,
) -> Result<u64, CopyError> {
    let name = member.name;
    let kind = member.header.entry_type();
    let mode = || {
        member
            .header
            .mode()
            .map(|m| host_mode(m, options.preserve_mode, umask))
            .map_err(|e| CopyError::Malformed {
                reason: format!("entry {}'s mode is unreadable: {e}", escape_name(name)),
            })
    };
    let refuse_kind = |what: &str| {
        Err(refused(
            name,
            format!("it is {what}; berth cp copies files, directories and links only"),
        ))
    };
    match kind {
        EntryType::Char => return refuse_kind("a character device"),
        EntryType::Block => return refuse_kind("a block device"),
        EntryType::Fifo => return refuse_kind("a FIFO"),
        EntryType::GNUSparse => return refuse_kind("a GNU sparse file"),
        EntryType::Regular
        | EntryType::Continuous
        | EntryType::Directory
        | EntryType::Symlink
        | EntryType::Link => {}
        other => return refuse_kind(&format!("of tar type {:?}", other.as_byte() as char)),
    }
    let Some(rel) = member_path(name, options)? else {
        // The archive's root (`./`): the destination itself, whose mode is the user's.
        return Ok(0);
    };
    let path = staging.join(&rel);
    prepare_parent(staging, &rel, name, umask)?;
    match kind {
        EntryType::Directory => {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&path).map_err(write_error("replace", &path))?;
                    make_dir(&path)?;
                }
                Err(_) => make_dir(&path)?,
            }
            let mode = mode()?;
            if mode & 0o700 == 0o700 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(write_error("set the mode of", &path))?;
            } else {
                deferred
                    .push(&rel, mode)
                    .map_err(write_error("note the mode of", &path))?;
            }
            Ok(0)
        }
        EntryType::Regular | EntryType::Continuous => {
            if done.bytes.saturating_add(member.size) > options.limits.max_bytes {
                return Err(CopyError::LimitExceeded {
                    limit: Limit::Bytes,
                    max: options.limits.max_bytes,
                    detail: format!(
                        "entry {} holds {} bytes after {} already written",
                        escape_name(name),
                        member.size,
                        done.bytes
                    ),
                });
            }
            clear_for(&path, name)?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(write_error("create file", &path))?;
            let copied = copy_data(&mut (&mut reader.inner).take(member.size), &mut file, &path)?;
            if copied != member.size {
                return Err(truncated());
            }
            done.bytes += copied;
            file.set_permissions(fs::Permissions::from_mode(mode()?))
                .map_err(write_error("set the mode of", &path))?;
            if let Ok(mtime) = member.header.mtime() {
                // A timestamp the platform cannot store is not worth failing a copy for.
                let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
            }
            Ok(copied)
        }
        EntryType::Symlink => {
            let target = link_target(member, options)?;
            clear_for(&path, name)?;
            // The link is written as is: it may point anywhere, but no later entry writes
            // through it (see prepare_parent) and placing never follows it.
            std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                .map_err(write_error("create symlink", &path))?;
            Ok(0)
        }
        _ => {
            let target = link_target(member, options)?;
            let Some(target_rel) = member_path(target, options)
                .map_err(|_| refused(name, "it hard-links to a path outside the archive"))?
            else {
                return Err(refused(name, "it hard-links to the archive's root"));
            };
            // Only a regular file this archive wrote may be linked: anything else on the host
            // is out of reach because staging starts empty.
            let parent_ok = staged_dir_chain(staging, &target_rel);
            let target_path = staging.join(&target_rel);
            let is_file = fs::symlink_metadata(&target_path).is_ok_and(|m| m.is_file());
            if !parent_ok || !is_file {
                return Err(refused(
                    name,
                    format!(
                        "it hard-links to {}, which is not a file earlier in the archive",
                        escape_name(target)
                    ),
                ));
            }
            clear_for(&path, name)?;
            fs::hard_link(&target_path, &path).map_err(write_error("create hard link", &path))?;
            Ok(0)
        }
    }
}

fn copy_data(from: &mut impl Read, to: &mut fs::File, path: &Path) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        to.write_all(&buf[..n])
            .map_err(write_error("write file", path))?;
        total += n as u64;
    }
}

fn link_target<'a>(member: &Member<'a>, options: &ExtractOptions) -> Result<&'a [u8], CopyError> {
    let target = member
        .link
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused(member.name, "it is a link without a target"))?;
    if target.len() as u64 > options.limits.max_path_bytes {
        return Err(CopyError::LimitExceeded {
            limit: Limit::PathBytes,
            max: options.limits.max_path_bytes,
            detail: format!(
                "entry {} links to a {}-byte path",
                escape_name(member.name),
                target.len()
            ),
        });
    }
    if !options.allow_control_characters && has_control_character(target) {
        return Err(refused(
            member.name,
            "its link target holds control characters",
        ));
    }
    Ok(target)
}

fn make_dir(path: &Path) -> Result<(), CopyError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(write_error("create directory", path))
}

/// Whether every parent of `rel` under `staging` is a real directory (no symlink).
fn staged_dir_chain(staging: &Path, rel: &Path) -> bool {
    let mut cur = staging.to_owned();
    let Some(parent) = rel.parent() else {
        return true;
    };
    for c in parent.components() {
        cur.push(c);
        if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
            return false;
        }
    }
    true
}

/// Makes sure every parent of `rel` under `staging` is a real directory, creating missing ones
/// (mode 0777 masked by the umask, as `mkdir -p` would). Staging is ours alone, so checking and
/// then acting is safe; a parent that is a symlink or a file is refused, so nothing writes
/// through a link the archive planted.
fn prepare_parent(staging: &Path, rel: &Path, name: &[u8], umask: u32) -> Result<(), CopyError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = staging.to_owned();
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(refused(
                    name,
                    format!(
                        "its parent {} is {what} in the archive",
                        escape_name(
                            cur.strip_prefix(staging)
                                .unwrap_or(&cur)
                                .as_os_str()
                                .as_bytes()
                        )
                    ),
                ));
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o777 & !umask | 0o700)
                    .create(&cur)
                    .map_err(write_error("create directory", &cur))?;
            }
        }
    }
    Ok(())
}

/// Removes what an earlier member put at `path`, so a new member never writes through it; a
/// directory is not replaced by a non-directory.
fn clear_for(path: &Path, name: &[u8]) -> Result<(), CopyError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(refused(name, "it would replace a directory of the archive")),
        Ok(_) => fs::remove_file(path).map_err(write_error("replace", path)),
        Err(_) => Ok(()),
    }
}

/// Extracts the tar stream `archive` (a copy out of an environment of a path named
/// `source_name`) to `dest`, following `docker cp`: into `dest` when it is an existing
/// directory (merging with what is there); as `dest` when it does not exist (its parent must);
/// over `dest` when it is an existing file and the archive holds one file.
///
/// When `source_name` is given, every member must lie under it: an environment asked for
/// `/src` cannot send `.bashrc`.
///
/// # Errors
/// [`CopyError`]; except for [`CopyError::Place`], nothing was written at the destination.
pub fn extract_to(
    archive: impl Read,
    dest: &Path,
    source_name: Option<&OsStr>,
    options: &ExtractOptions,
) -> Result<Extracted, CopyError> {
    stage(archive, dest, source_name, options)?.place()
}

/// An archive [`stage`] accepted, written into a private temporary directory next to the
/// destination; [`Staged::place`] moves it into place, dropping it removes it.
#[derive(Debug)]
pub struct Staged {
    staging: tempfile::TempDir,
    target: Destination,
    top: Option<std::ffi::OsString>,
    deferred: DeferredModes,
    extracted: Extracted,
}

/// The first half of [`extract_to`]: reads and checks the whole archive into a temporary
/// directory next to `dest`, touching nothing else. A caller that must still learn whether the
/// stream ended well (an environment's `tar` reports a failure after the archive's end)
/// places the result only then.
///
/// # Errors
/// [`CopyError`]; nothing is left behind.
pub fn stage(
    archive: impl Read,
    dest: &Path,
    source_name: Option<&OsStr>,
    options: &ExtractOptions,
) -> Result<Staged, CopyError> {
    let target = Destination::of(dest)?;
    let staging_parent = target.staging_parent();
    let staging = tempfile::Builder::new()
        .prefix(".berth-cp-")
        .tempdir_in(&staging_parent)
        .map_err(|e| CopyError::Destination {
            path: dest.to_owned(),
            reason: format!(
                "cannot create a temporary directory in {}: {e}",
                staging_parent.display()
            ),
        })?;
    let umask = current_umask();
    let (extracted, deferred) = extract_into(archive, staging.path(), options, umask)?;
    let top = single_or_named_top(staging.path(), source_name, &target, dest)?;
    if let (Destination::OverFile(path), Some(top)) = (&target, &top) {
        if fs::symlink_metadata(staging.path().join(top)).is_ok_and(|m| m.is_dir()) {
            return Err(CopyError::Destination {
                path: path.clone(),
                reason: "a directory cannot replace a file".into(),
            });
        }
    }
    Ok(Staged {
        staging,
        target,
        top,
        deferred,
        extracted,
    })
}

impl Staged {
    /// What the archive held.
    #[must_use]
    pub fn extracted(&self) -> Extracted {
        self.extracted
    }

    /// Moves the staged copy into place, following `docker cp` (see [`extract_to`]).
    ///
    /// # Errors
    /// [`CopyError::Place`] when a move fails part-way (what was moved stays);
    /// [`CopyError::Write`] when setting modes or removing the temporary directory fails.
    pub fn place(self) -> Result<Extracted, CopyError> {
        let Self {
            staging,
            target,
            top,
            deferred,
            extracted,
        } = self;
        match &target {
            Destination::IntoDir(dir) => {
                let entries =
                    fs::read_dir(staging.path()).map_err(write_error("list", staging.path()))?;
                for entry in entries {
                    let entry = entry.map_err(write_error("list", staging.path()))?;
                    merge(&entry.path(), &dir.join(entry.file_name()))?;
                }
                deferred
                    .apply(|rel| dir.join(rel))
                    .map_err(write_error("set directory modes in", dir))?;
            }
            Destination::New(path) | Destination::OverFile(path) => {
                let top = top.expect("one top-level entry");
                let from = staging.path().join(&top);
                fs::rename(&from, path).map_err(|source| CopyError::Place {
                    from: from.clone(),
                    to: path.clone(),
                    source,
                })?;
                deferred
                    .apply(|rel| {
                        let rest = rel.strip_prefix(&top).unwrap_or(rel);
                        if rest.as_os_str().is_empty() {
                            path.clone()
                        } else {
                            path.join(rest)
                        }
                    })
                    .map_err(write_error("set directory modes in", path))?;
            }
        }
        let parent = target.staging_parent();
        staging
            .close()
            .map_err(|e| write_error("remove the temporary directory", &parent)(e))?;
        Ok(extracted)
    }
}

/// Where a copy goes, decided before anything is read.
#[derive(Debug)]
enum Destination {
    IntoDir(PathBuf),
    New(PathBuf),
    OverFile(PathBuf),
}

impl Destination {
    /// The staging directory's parent: next to the target, so placing is a rename.
    fn staging_parent(&self) -> PathBuf {
        match self {
            Self::IntoDir(d) => d.clone(),
            Self::New(p) | Self::OverFile(p) => parent_dir(p),
        }
    }

    fn of(dest: &Path) -> Result<Self, CopyError> {
        // The destination is the user's own path: following a symlink there is what they asked.
        match fs::metadata(dest) {
            Ok(m) if m.is_dir() => Ok(Self::IntoDir(dest.to_owned())),
            Ok(m) if m.is_file() => Ok(Self::OverFile(dest.to_owned())),
            Ok(_) => Err(CopyError::Destination {
                path: dest.to_owned(),
                reason: "it is neither a directory nor a regular file".into(),
            }),
            Err(_) => {
                let parent = parent_dir(dest);
                if dest.as_os_str().as_bytes().ends_with(b"/") || !parent.is_dir() {
                    return Err(CopyError::Destination {
                        path: dest.to_owned(),
                        reason: "no such directory".into(),
                    });
                }
                Ok(Self::New(dest.to_owned()))
            }
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Checks the staged top-level entries: all named `source_name` when given; exactly one when
/// the destination is a new path or a file. Returns that one's name.
fn single_or_named_top(
    staging: &Path,
    source_name: Option<&OsStr>,
    target: &Destination,
    dest: &Path,
) -> Result<Option<std::ffi::OsString>, CopyError> {
    let mut first = None;
    let mut count = 0u64;
    for entry in fs::read_dir(staging).map_err(write_error("list", staging))? {
        let name = entry.map_err(write_error("list", staging))?.file_name();
        if let Some(want) = source_name {
            if name != want {
                return Err(refused(
                    name.as_bytes(),
                    format!(
                        "it is outside the copied path {}",
                        escape_name(want.as_bytes())
                    ),
                ));
            }
        }
        count += 1;
        if first.is_none() {
            first = Some(name);
        }
    }
    if matches!(target, Destination::IntoDir(_)) {
        return Ok(first);
    }
    match count {
        1 => Ok(first),
        0 => Err(CopyError::Malformed {
            reason: "the archive holds nothing to copy".into(),
        }),
        _ => Err(CopyError::Destination {
            path: dest.to_owned(),
            reason: "the archive holds several top-level entries; copy into a directory".into(),
        }),
    }
}

/// Moves the staged `from` to `to`, merging directories like `tar -x` over existing ones:
/// a staged directory over a real directory merges; anything else replaces what is there
/// (a symlink at `to` is replaced, never followed); a non-directory never replaces a
/// directory.
fn merge(from: &Path, to: &Path) -> Result<(), CopyError> {
    let mut work = vec![(from.to_owned(), to.to_owned())];
    while let Some((from, to)) = work.pop() {
        let failed = |source| CopyError::Place {
            from: from.clone(),
            to: to.clone(),
            source,
        };
        let staged = fs::symlink_metadata(&from).map_err(failed)?;
        match fs::symlink_metadata(&to) {
            Err(_) => fs::rename(&from, &to).map_err(failed)?,
            Ok(m) if m.is_dir() && staged.is_dir() => {
                fs::set_permissions(&to, staged.permissions()).map_err(failed)?;
                for entry in fs::read_dir(&from).map_err(failed)? {
                    let entry = entry.map_err(failed)?;
                    work.push((entry.path(), to.join(entry.file_name())));
                }
            }
            Ok(m) if m.is_dir() => {
                return Err(CopyError::Destination {
                    path: to.clone(),
                    reason: "a file from the archive cannot replace this directory".into(),
                })
            }
            Ok(_) => {
                if staged.is_dir() {
                    fs::remove_file(&to).map_err(failed)?;
                }
                fs::rename(&from, &to).map_err(failed)?;
            }
        }
    }
    Ok(())
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
#[path = "copy_tests.rs"]
mod tests;
