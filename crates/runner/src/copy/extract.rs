//! The extraction loop: berth's own tar reader, each member checked and written into the
//! staging directory. (Over 500 lines: one reading loop and the member writer it drives, which
//! share the per-archive state; split apart they would pass it all by hand.)

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use tar::{EntryType, Header};

pub(super) use super::modes::DeferredModes;
use super::*;

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
pub(super) fn extract_into(
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
