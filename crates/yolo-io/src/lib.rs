#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! How yolo-rs writes files: every file a user sees (weights, checkpoints, anchors,
//! converted files, drawn images, label files) goes through [`write_atomic`] or
//! [`write_atomic_path`] (or [`write_bytes_atomic`]; [`AtomicFile`] for a file streamed
//! over a long time, such as a video), and checkpoint directories
//! through [`replace_dir`]. New files get the usual permissions from the umask (`0o666`
//! masked).

use std::fs::{File, Permissions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Whether a write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace the file if it exists.
    Allow,
    /// Fail with [`Error::Exists`] if the file exists (checked again at the rename, so a
    /// file that appears meanwhile is not replaced either).
    Refuse,
}

/// Errors of the file helpers; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target exists and the write was asked not to replace it.
    #[error("{}: already exists (not overwritten)", path.display())]
    Exists {
        /// The target.
        path: PathBuf,
    },
    /// An I/O error on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory the error happened on.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Flushes a directory's entries (the names created or renamed in it) to disk. A no-op
/// where directories cannot be opened as files (Windows).
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Permissions for a new file: those of the file it replaces, or `0o666` (the umask
/// applies at creation) for a new one.
fn permissions_for(path: &Path) -> Option<Permissions> {
    if let Ok(meta) = std::fs::metadata(path) {
        return Some(meta.permissions());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(Permissions::from_mode(0o666))
    }
    #[cfg(not(unix))]
    None
}

/// A temporary file beside `path`, with the permissions `path` should end up with (also
/// returned, to be set again at the commit).
fn temp_beside(path: &Path) -> Result<(tempfile::NamedTempFile, Permissions), Error> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-").suffix(".part");
    let perms = permissions_for(path);
    if let Some(p) = perms.clone() {
        builder.permissions(p);
    }
    let tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    // The umask applies at creation; a replaced file's exact mode is set afterwards.
    if let (Some(p), true) = (perms, path.exists()) {
        std::fs::set_permissions(tmp.path(), p).map_err(|e| Error::io(tmp.path(), e))?;
    }
    let mode = tmp
        .as_file()
        .metadata()
        .map_err(|e| Error::io(tmp.path(), e))?
        .permissions();
    Ok((tmp, mode))
}

/// Syncs the finished temporary file, gives it `mode` (a path-based writer may have put
/// a file of its own there, e.g. safetensors' 0600 one), renames it to `path` and syncs
/// the directory.
fn commit(
    tmp: tempfile::NamedTempFile,
    mode: Permissions,
    path: &Path,
    overwrite: Overwrite,
) -> Result<(), Error> {
    let tmp_path = tmp.path().to_path_buf();
    std::fs::set_permissions(&tmp_path, mode).map_err(|e| Error::io(&tmp_path, e))?;
    // Reopened: a path-based writer may have replaced the file behind our handle.
    File::open(&tmp_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp_path, e))?;
    match overwrite {
        Overwrite::Allow => tmp.persist(path).map(drop),
        Overwrite::Refuse => tmp.persist_noclobber(path).map(drop),
    }
    .map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists {
                path: path.to_path_buf(),
            }
        } else {
            Error::io(path, e.error)
        }
    })?;
    sync_dir(parent_dir(path))
}

fn refuse_existing(path: &Path, overwrite: Overwrite) -> Result<(), Error> {
    if overwrite == Overwrite::Refuse && path.exists() {
        return Err(Error::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Writes `path` atomically with `write`, which gets a buffered writer on a temporary
/// file in the same directory. If `write` fails (or the process dies before the rename),
/// `path` is untouched and the temporary file is removed (or left as a `.tmp-*.part`
/// beside it after a crash).
pub fn write_atomic<E: From<Error>>(
    path: &Path,
    overwrite: Overwrite,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), E>,
) -> Result<(), E> {
    refuse_existing(path, overwrite)?;
    let (tmp, mode) = temp_beside(path)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w)?;
        w.flush().map_err(|e| Error::io(tmp.path(), e))?;
    }
    Ok(commit(tmp, mode, path, overwrite)?)
}

/// [`write_atomic`] of a byte buffer.
pub fn write_bytes_atomic(path: &Path, overwrite: Overwrite, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, overwrite, |w| {
        w.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// A file written piece by piece and put in place atomically: for writers that stream
/// into a file over a long time (a video encoded frame by frame) and need [`Seek`] (an
/// MP4 muxer patches its box sizes). [`AtomicFile::commit`] renames it to its path as
/// [`write_atomic`] does; dropping it uncommitted removes the temporary file and leaves
/// the path untouched.
///
/// [`Seek`]: std::io::Seek
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    mode: Permissions,
    path: PathBuf,
    overwrite: Overwrite,
}

impl AtomicFile {
    /// A temporary file beside `path`, to become `path` at [`AtomicFile::commit`].
    pub fn create(path: &Path, overwrite: Overwrite) -> Result<Self, Error> {
        refuse_existing(path, overwrite)?;
        let (tmp, mode) = temp_beside(path)?;
        Ok(Self {
            tmp,
            mode,
            path: path.to_path_buf(),
            overwrite,
        })
    }

    /// The path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file and renames it to its path (then syncs the directory).
    pub fn commit(self) -> Result<(), Error> {
        commit(self.tmp, self.mode, &self.path, self.overwrite)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.as_file_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.as_file_mut().flush()
    }
}

impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.tmp.as_file_mut().seek(pos)
    }
}

/// Writes `path` atomically with a writer that insists on a path of its own (candle's
/// `VarMap::save`, `image`'s `save_with_format`): `write` gets the path of a temporary
/// file in the same directory, which it may truncate or recreate.
pub fn write_atomic_path<E: From<Error>>(
    path: &Path,
    overwrite: Overwrite,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    refuse_existing(path, overwrite)?;
    let (tmp, mode) = temp_beside(path)?;
    write(tmp.path())?;
    Ok(commit(tmp, mode, path, overwrite)?)
}

/// Replaces the directory `dir` with one filled by `fill`: a fresh `dir.tmp` is filled
/// (its files should be written with the functions above, which sync them), synced, the
/// old `dir` moved aside to `dir.old`, `dir.tmp` renamed to `dir`, and `dir.old` removed.
/// After a crash, `dir` is the old or the new directory, or missing with `dir.old`
/// complete beside it.
pub fn replace_dir<E: From<Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    sync_dir(&tmp)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(&tmp, e))?;
    sync_dir(parent_dir(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }

    #[test]
    fn replaces_the_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        std::fs::write(&p, "old contents that are longer").unwrap();
        write_bytes_atomic(&p, Overwrite::Allow, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn atomic_file_seeks_commits_and_discards() {
        use std::io::{Seek, SeekFrom};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("clip.mp4");
        std::fs::write(&p, "old").unwrap();
        // dropped before the commit: the old file stays, no temporary file is left
        let mut f = AtomicFile::create(&p, Overwrite::Allow).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty());
        // a size patched in after the body, as a muxer does
        let mut f = AtomicFile::create(&p, Overwrite::Allow).unwrap();
        f.write_all(b"____body").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"size").unwrap();
        assert_eq!(f.path(), p);
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"sizebody");
        assert!(leftovers(d.path()).is_empty());
        assert!(matches!(
            AtomicFile::create(&p, Overwrite::Refuse),
            Err(Error::Exists { .. })
        ));
    }

    #[test]
    fn interrupted_before_the_rename_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("weights.safetensors");
        std::fs::write(&p, "old").unwrap();
        // The writer has written half of the new file when it fails.
        let r: Result<(), Error> = write_atomic(&p, Overwrite::Allow, |w| {
            w.write_all(b"half of the new").unwrap();
            Err(Error::io(&p, std::io::Error::other("interrupted")))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty(), "temporary file removed");
        // Likewise for a path-based writer that has already written its temporary file.
        let r: Result<(), Error> = write_atomic_path(&p, Overwrite::Allow, |t| {
            std::fs::write(t, b"complete new file").unwrap();
            Err(Error::io(t, std::io::Error::other("interrupted")))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn refuses_to_overwrite_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        std::fs::write(&p, "keep").unwrap();
        let e = write_bytes_atomic(&p, Overwrite::Refuse, b"x").unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{e}");
        assert!(e.to_string().contains("a.bin"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        let q = d.path().join("sub/new.bin");
        write_bytes_atomic(&q, Overwrite::Refuse, b"x").unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), b"x");
    }

    #[test]
    fn path_writer_may_recreate_its_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img.png");
        write_atomic_path::<Error>(&p, Overwrite::Allow, |t| {
            std::fs::remove_file(t).unwrap();
            std::fs::write(t, b"png").map_err(|e| Error::io(t, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"png");
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_put_by_the_writer_gets_the_usual_mode() {
        // As safetensors does: its own 0600 temporary file renamed over ours.
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("weights.safetensors");
        write_atomic_path::<Error>(&p, Overwrite::Allow, |t| {
            let own = t.with_extension("own");
            std::fs::write(&own, b"st").unwrap();
            std::fs::set_permissions(&own, Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&own, t).map_err(|e| Error::io(t, e))
        })
        .unwrap();
        let probe = d.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&probe));
    }

    #[cfg(unix)]
    #[test]
    fn permissions_follow_the_umask_or_the_replaced_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new.txt");
        write_bytes_atomic(&p, Overwrite::Allow, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // Readable by others unless the umask forbids it; never tempfile's bare 0o600.
        let probe = d.path().join("probe.txt");
        std::fs::write(&probe, b"").unwrap();
        let expected = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, expected);
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        write_bytes_atomic(&p, Overwrite::Allow, b"y").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn replace_dir_swaps_whole_directories() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("last");
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("stale.txt"), "x").unwrap();
        replace_dir::<Error>(&ck, |t| {
            write_bytes_atomic(&t.join("state.json"), Overwrite::Allow, b"{}")
        })
        .unwrap();
        assert!(ck.join("state.json").exists());
        assert!(!ck.join("stale.txt").exists());
        assert!(!d.path().join("last.tmp").exists() && !d.path().join("last.old").exists());
        // A failing fill leaves the old directory as it was.
        let r = replace_dir::<Error>(&ck, |_| Err(Error::io(&ck, std::io::Error::other("boom"))));
        assert!(r.is_err());
        assert!(ck.join("state.json").exists());
    }
}
