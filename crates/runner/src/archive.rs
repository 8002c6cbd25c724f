//! Streaming tar archives between local paths and [`TarStream`]s, for `berth cp`. Memory stays
//! bounded: the archive is produced and consumed in 64 KiB pieces on a blocking thread.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_engine_core::{Error, Result, TarStream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

const PIECE: usize = 64 * 1024;

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
/// stay symlinks, modes are kept.
///
/// # Errors
/// [`Error::NotFound`] naming the path when it does not exist.
pub fn pack_path(path: &Path) -> Result<TarStream> {
    pack(path, false)
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
    let (tx, rx) = mpsc::channel(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        };
        let result = (|| {
            let mut builder = tar::Builder::new(&mut writer);
            builder.follow_symlinks(false);
            if meta.is_dir() {
                builder.append_dir_all(&name, &path)?;
            } else {
                builder.append_path_with_name(&path, &name)?;
            }
            builder.finish()?;
            drop(builder);
            writer.flush()
        })();
        if let Err(e) = result {
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )))
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

/// Extracts `stream` into the existing directory `dest`. Entries that would land outside
/// `dest` are refused by the tar reader.
///
/// # Errors
/// [`Error::NotFound`] when `dest` is not a directory; a backend error when reading or
/// writing fails.
pub async fn unpack_into(mut stream: TarStream, dest: &Path) -> Result<()> {
    if !dest.is_dir() {
        return Err(Error::NotFound {
            what: "local directory",
            name: dest.display().to_string(),
        });
    }
    let (tx, rx) = mpsc::channel(4);
    let dest = dest.to_owned();
    let unpack = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(ChannelReader {
            rx,
            current: Bytes::new(),
        });
        archive.set_preserve_permissions(true);
        archive.unpack(&dest)
    });
    let mut feed_error = None;
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if let Err(e) = &item {
            feed_error = Some(std::io::Error::new(e.kind(), e.to_string()));
        }
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let unpacked = unpack
        .await
        .map_err(|e| Error::backend("runner", "extract an archive", e))?;
    if let Some(e) = feed_error {
        return Err(Error::backend(
            "runner",
            "read an archive from the environment",
            e,
        ));
    }
    unpacked.map_err(|e| Error::backend("runner", "extract an archive", e))
}
