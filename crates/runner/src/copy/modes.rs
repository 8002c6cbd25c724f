//! Directory modes applied last, deepest first, from a temporary file (not memory).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directories whose final mode would lock their owner out while the archive is still being
/// written (no `rwx` for the owner) get it after everything is in place. The list lives in an
/// unnamed temporary file, not in memory: a hostile archive may hold millions of them.
#[derive(Debug)]
pub(super) struct DeferredModes {
    file: Option<BufWriter<fs::File>>,
    last: Option<PathBuf>,
}

impl DeferredModes {
    pub(super) fn new() -> Self {
        Self {
            file: None,
            last: None,
        }
    }

    pub(super) fn push(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
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
    pub(super) fn apply(self, place: impl Fn(&Path) -> PathBuf) -> io::Result<()> {
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
