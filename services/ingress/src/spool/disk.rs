//! The spool's view of the file system: every file operation the spool makes goes through
//! [`Disk`], so a test can put a disk underneath that forgets whatever was not fsynced
//! ([`super::crash_disk::CrashDisk`], a power cut) while production uses the real one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A file opened for writing.
pub trait WriteFile: Write + Send {
    /// Makes the file's data (and length) durable: `fdatasync`.
    fn sync_data(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A file opened for reading.
pub trait ReadFile: Read + Seek + Send {
    fn size(&self) -> io::Result<u64>;
}

/// The file operations of the spool. Nothing here fsyncs on its own: the spool says when, so a
/// missing fsync is the spool's bug and shows under [`super::crash_disk::CrashDisk`].
pub trait Disk: Send + Sync + 'static {
    fn exists(&self, path: &Path) -> bool;
    /// Creates one directory whose parent exists.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new file; fails with `AlreadyExists` if anything is at `path`, a symlink
    /// included (`O_CREAT | O_EXCL`).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing file for writing, without truncating it.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Whether `path` is a regular file, not following symlinks.
    fn is_plain_file(&self, path: &Path) -> bool;
    /// The entries of a directory, as full paths.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the directory's exclusive lock (released when the returned value drops); `Ok(None)`
    /// where the disk has no locks. `Err(None)` means another process holds it.
    fn lock(&self, dir: &Path) -> Result<Option<File>, Option<io::Error>>;
}

/// The file system a configured spool lives on: the real one unless a test says otherwise.
#[derive(Clone)]
pub struct SpoolDisk(pub std::sync::Arc<dyn Disk>);

impl Default for SpoolDisk {
    fn default() -> Self {
        SpoolDisk(std::sync::Arc::new(RealDisk))
    }
}

impl std::fmt::Debug for SpoolDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolDisk")
    }
}

/// The disk the spool uses in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

/// The lock file: one process per spool directory.
pub const LOCK_FILE: &str = "LOCK";

impl WriteFile for File {
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

impl ReadFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl Disk for RealDisk {
    fn exists(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        match fs::create_dir(dir) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            other => other,
        }
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new().create_new(true).write(true).open(path)?;
        Ok(Box::new(file))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        Ok(Box::new(OpenOptions::new().write(true).open(path)?))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(File::open(path)?))
    }

    fn is_plain_file(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|item| item.map(|entry| entry.path()))
            .collect()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, dir: &Path) -> Result<Option<File>, Option<io::Error>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(Some)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Err(None),
            Err(TryLockError::Error(error)) => Err(Some(error)),
        }
    }
}

/// Creates `dir` and its missing parents, fsyncing each new directory's parent so the whole
/// path survives a power cut (a new directory is only an entry in its parent until then).
pub fn create_dir_durably(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !disk.exists(at) {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    for new in missing.into_iter().rev() {
        disk.create_dir(new)?;
        // A relative path's first component lives in the working directory.
        let parent = match new.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        disk.sync_dir(parent)?;
    }
    Ok(())
}

/// The whole content of a file.
pub fn read_all(disk: &dyn Disk, path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    disk.open_read(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `bytes` to a new file at `path` and fsyncs it (not its directory).
pub fn write_new(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = disk.create_new(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}
