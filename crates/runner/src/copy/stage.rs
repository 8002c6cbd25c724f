//! Staging and placing: an accepted archive is written next to the destination, then moved
//! into place as a whole.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::extract::{extract_into, DeferredModes};
use super::*;

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
