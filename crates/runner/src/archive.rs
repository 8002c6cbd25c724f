//! Streaming tar archives between local paths and [`TarStream`]s, for `berth cp`. Memory stays
//! bounded: the archive is produced and consumed in 64 KiB pieces on a blocking thread.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use berth_engine_core::{Error, Result, TarStream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::copy::{self, CopyError, ExtractOptions, Extracted};

const PIECE: usize = 64 * 1024;
/// What may follow an archive's end marker (tar pads to its record size, 10 KiB by default).
const TRAILING_MAX: usize = 1024 * 1024;

struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "archive reader gone"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Archives the file or directory at `path` as one top-level entry named after it; symlinks
/// stay symlinks, modes are kept, sparse files are written whole (plain entries every reader
/// takes; Docker refuses GNU sparse ones). Like `docker cp`, a path whose last component is
/// `.` (`.`, `dir/.`) archives the directory's contents instead; `..` and other paths without
/// a name are archived under the name of the directory they resolve to.
///
/// # Errors
/// [`Error::NotFound`] naming the path when it does not exist.
pub fn pack_path(path: &Path) -> Result<TarStream> {
    if ends_in_cur_dir(path) {
        return pack_dir_contents(path);
    }
    if path.file_name().is_none() {
        let resolved = path.canonicalize().map_err(|_| Error::NotFound {
            what: "local path",
            name: path.display().to_string(),
        })?;
        return pack(&resolved, false);
    }
    pack(path, false)
}

/// Whether the path's last written component is `.` (`Path::components` hides a trailing one).
fn ends_in_cur_dir(path: &Path) -> bool {
    let bytes = path.as_os_str().as_encoded_bytes();
    let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
    trimmed == b"."
        || trimmed.ends_with(b"/.")
        || path.components().next_back() == Some(Component::CurDir)
}

/// Archives the contents of the directory `dir` at the archive's root (a build context).
///
/// # Errors
/// [`Error::NotFound`] naming the directory when it does not exist.
pub fn pack_dir_contents(dir: &Path) -> Result<TarStream> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: "local directory",
            name: dir.display().to_string(),
        });
    }
    pack(dir, true)
}

fn pack(path: &Path, contents_only: bool) -> Result<TarStream> {
    let meta = std::fs::symlink_metadata(path).map_err(|_| Error::NotFound {
        what: "local path",
        name: path.display().to_string(),
    })?;
    let name: PathBuf = if contents_only {
        PathBuf::from(".")
    } else {
        path.file_name().map(PathBuf::from).ok_or_else(|| {
            Error::invalid_spec("source", format!("{} has no file name", path.display()))
        })?
    };
    let path = path.to_owned();
    Ok(stream_tar(move |builder| {
        if meta.is_dir() {
            builder.append_dir_all(&name, &path)
        } else {
            builder.append_path_with_name(&path, &name)
        }
    }))
}

/// A tar archive written by `fill` on a blocking thread (symlinks kept as symlinks, no
/// sparse entries), streamed in 64 KiB pieces; an error of `fill` ends the stream with it.
pub(crate) fn stream_tar<F>(fill: F) -> TarStream
where
    F: FnOnce(&mut tar::Builder<&mut dyn Write>) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        };
        let result = (|| {
            let mut builder = tar::Builder::new(&mut writer as &mut dyn Write);
            builder.follow_symlinks(false);
            builder.sparse(false);
            fill(&mut builder)?;
            builder.finish()?;
            drop(builder);
            writer.flush()
        })();
        if let Err(e) = result {
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Copies the archive `stream` of an environment's path `source_name` to the local `dest`
/// with [`copy::extract_to`]: bounded, refusing what could reach outside `dest`, and leaving
/// nothing behind when the copy fails.
///
/// # Errors
/// [`CopyError`]; a failure of the environment's stream is [`CopyError::Read`].
pub async fn copy_out_to(
    stream: TarStream,
    dest: &Path,
    source_name: Option<&OsStr>,
    options: &ExtractOptions,
) -> std::result::Result<Extracted, CopyError> {
    let (tx, rx) = mpsc::channel(4);
    let dest = dest.to_owned();
    let source_name = source_name.map(OsStr::to_owned);
    let options = options.clone();
    // Read twice (while staging, then to its end): fused, so its end is seen once.
    let mut stream = stream.fuse();
    let stage = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        copy::stage(reader, &dest, source_name.as_deref(), &options)
    });
    let mut stream_error = None;
    while let Some(item) = stream.next().await {
        match item {
            // A closed channel means staging stopped (refused, or the archive's end).
            Ok(piece) => {
                if tx.send(Ok(piece)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Err(std::io::Error::new(e.kind(), e.to_string())))
                    .await;
                stream_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let staged = stage.await.map_err(|e| CopyError::Read {
        source: std::io::Error::other(e),
    })?;
    if let Some(source) = stream_error {
        return Err(CopyError::Read { source });
    }
    let staged = staged?;
    // The archive ended; the stream must end too, and may still report that the environment's
    // `tar` failed (an unreadable file is skipped with a late exit 1): then nothing is placed.
    let mut trailing = 0usize;
    while let Some(item) = stream.next().await {
        trailing += item.map_err(|source| CopyError::Read { source })?.len();
        if trailing > TRAILING_MAX {
            return Err(CopyError::Malformed {
                reason: format!("more than {TRAILING_MAX} bytes follow the archive's end"),
            });
        }
    }
    drop(stream);
    tokio::task::spawn_blocking(move || staged.place())
        .await
        .map_err(|e| CopyError::Read {
            source: std::io::Error::other(e),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn members(stream: TarStream) -> Vec<(String, tar::EntryType, u64)> {
        let bytes: Vec<u8> = stream.map(|b| b.expect("piece").to_vec()).concat().await;
        let mut archive = tar::Archive::new(&bytes[..]);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.entry_type(),
                    h.entry_size().expect("size"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn archive_sparse_files_pack_as_plain_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sparse = dir.path().join("sp");
        std::fs::File::create(&sparse)
            .expect("create")
            .set_len(10 * 1024 * 1024)
            .expect("truncate");
        let got = members(pack_path(&sparse).expect("pack")).await;
        assert_eq!(
            got,
            vec![("sp".to_owned(), tar::EntryType::Regular, 10 * 1024 * 1024)]
        );
    }

    #[tokio::test]
    async fn archive_dot_packs_the_directory_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), "a").expect("write");
        for source in [dir.path().join("."), dir.path().join("./")] {
            let got = members(pack_path(&source).expect("pack")).await;
            let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
            assert!(names.contains(&"a") || names.contains(&"./a"), "{names:?}");
            assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
        }
        assert!(ends_in_cur_dir(Path::new(".")));
        assert!(ends_in_cur_dir(Path::new("src/.")));
        assert!(!ends_in_cur_dir(Path::new("src")));
        assert!(!ends_in_cur_dir(Path::new("..")));
    }
}
