//! A disk in memory that simulates a power cut: [`CrashDisk::crash`] throws away every byte
//! not fsynced, every directory entry (new file, rename, removal, new directory) whose directory
//! was not fsynced since, and everything reachable only through such an entry. A SIGKILL keeps
//! the page cache, so only this shows a missing fsync. For tests (and the fault suite).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{Disk, ReadFile, WriteFile};

/// A file system in memory with a durable and a live state.
#[derive(Clone, Default)]
pub struct CrashDisk {
    fs: Arc<Mutex<Fs>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir(usize),
    File(usize),
}

#[derive(Default)]
struct DirNode {
    live: BTreeMap<OsString, Node>,
    durable: BTreeMap<OsString, Node>,
}

#[derive(Default)]
struct FileNode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

struct Fs {
    /// `dirs[0]` is `/`, durable from the start.
    dirs: Vec<DirNode>,
    files: Vec<FileNode>,
    /// Bumped by every crash: handles opened before it fail from then on, as a dead process's
    /// would never write again.
    generation: u64,
    crashes: u64,
    /// Every write fails with "no space left" (ENOSPC), as on a full disk.
    full: bool,
    /// Every operation fails with an I/O error (EIO), as on a dying disk.
    broken: bool,
    /// Writes land in the page cache but fsyncs and truncations fail with EIO, as on a disk
    /// whose flushes fail (or a file system gone read-only behind the cache).
    flush_failing: bool,
    /// Every fsync waits this long first, as on a stalled volume.
    fsync_delay: std::time::Duration,
    /// Every fsync waits until this is false again, as on a volume that hangs.
    fsync_held: bool,
}

/// The longest an fsync stays held by [`CrashDisk::hold_fsyncs`].
const MAX_FSYNC_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Fs {
    fn default() -> Self {
        Fs {
            dirs: vec![DirNode::default()],
            files: Vec::new(),
            generation: 0,
            crashes: 0,
            full: false,
            broken: false,
            flush_failing: false,
            fsync_delay: std::time::Duration::ZERO,
            fsync_held: false,
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

fn flush_failed() -> io::Error {
    io::Error::other("input/output error on flush (a test disk)")
}

fn stale() -> io::Error {
    io::Error::other("the handle was opened before a power cut")
}

impl Fs {
    fn resolve(&self, path: &Path) -> Option<Node> {
        let mut node = Node::Dir(0);
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    let Node::Dir(dir) = node else { return None };
                    node = *self.dirs[dir].live.get(name)?;
                }
                _ => return None,
            }
        }
        Some(node)
    }

    /// The directory holding `path` and `path`'s name in it.
    fn parent_of(&self, path: &Path) -> io::Result<(usize, OsString)> {
        let name = path.file_name().ok_or_else(|| not_found(path))?;
        match path.parent().and_then(|parent| self.resolve(parent)) {
            Some(Node::Dir(dir)) => Ok((dir, name.to_os_string())),
            _ => Err(not_found(path)),
        }
    }

    fn file(&self, path: &Path) -> io::Result<usize> {
        match self.resolve(path) {
            Some(Node::File(id)) => Ok(id),
            _ => Err(not_found(path)),
        }
    }
}

impl CrashDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn fs(&self) -> MutexGuard<'_, Fs> {
        self.fs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on every write fails as on a full disk (or works again).
    pub fn set_full(&self, full: bool) {
        self.fs().full = full;
    }

    /// From now on writes work but fsyncs and truncations fail with EIO (or work again).
    pub fn set_flush_failing(&self, failing: bool) {
        self.fs().flush_failing = failing;
    }

    /// From now on every fsync, of a file or a directory, takes `delay` before it answers (a
    /// stalled volume); zero for none. The wait holds no lock of the disk's.
    pub fn set_fsync_delay(&self, delay: std::time::Duration) {
        self.fs().fsync_delay = delay;
    }

    /// From now on every fsync hangs until this is called with `false` (a volume that hangs
    /// for as long as the test needs, not for a guessed time).
    pub fn hold_fsyncs(&self, held: bool) {
        self.fs().fsync_held = held;
    }

    /// Waits out the fsync delay, and while fsyncs are held, if either is set. The waits hold
    /// no lock of the disk's.
    fn stall(&self) {
        let delay = self.fs().fsync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        // Bounded all the same: a test that fails before letting go must still end.
        let held_since = std::time::Instant::now();
        while self.fs().fsync_held && held_since.elapsed() < MAX_FSYNC_HOLD {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// From now on every operation, reads included, fails with EIO (or works again).
    pub fn set_broken(&self, broken: bool) {
        self.fs().broken = broken;
    }

    /// The file system, or EIO while broken.
    fn working(&self) -> io::Result<MutexGuard<'_, Fs>> {
        let fs = self.fs();
        if fs.broken {
            return Err(io::Error::other("input/output error (a broken test disk)"));
        }
        Ok(fs)
    }

    /// The power cut: only what was made durable is left, and open handles are dead.
    pub fn crash(&self) {
        let mut fs = self.fs();
        for dir in &mut fs.dirs {
            dir.live = dir.durable.clone();
        }
        for file in &mut fs.files {
            file.live = file.durable.clone();
        }
        fs.generation += 1;
        fs.crashes += 1;
    }

    /// How many power cuts this disk has seen.
    pub fn crashes(&self) -> u64 {
        self.fs().crashes
    }

    fn handle(&self, id: usize) -> Handle {
        Handle {
            disk: self.clone(),
            id,
            pos: 0,
            generation: self.fs().generation,
        }
    }
}

/// An open file: reads and writes go to the live bytes at `pos`.
struct Handle {
    disk: CrashDisk,
    id: usize,
    pos: u64,
    generation: u64,
}

impl Handle {
    fn fs(&self) -> io::Result<MutexGuard<'_, Fs>> {
        let fs = self.disk.working()?;
        if fs.generation != self.generation {
            return Err(stale());
        }
        Ok(fs)
    }
}

impl Write for Handle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let pos = self.pos as usize;
        let id = self.id;
        let mut fs = self.fs()?;
        if fs.full {
            return Err(io::ErrorKind::StorageFull.into());
        }
        let data = &mut fs.files[id].live;
        if data.len() < pos + buf.len() {
            data.resize(pos + buf.len(), 0);
        }
        data[pos..pos + buf.len()].copy_from_slice(buf);
        drop(fs);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteFile for Handle {
    fn sync_data(&mut self) -> io::Result<()> {
        self.disk.stall();
        let id = self.id;
        let mut fs = self.fs()?;
        if fs.flush_failing {
            return Err(flush_failed());
        }
        let file = &mut fs.files[id];
        file.durable = file.live.clone();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let id = self.id;
        let mut fs = self.fs()?;
        if fs.flush_failing {
            return Err(flush_failed());
        }
        fs.files[id].live.resize(len as usize, 0);
        Ok(())
    }
}

impl Read for Handle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.pos as usize;
        let id = self.id;
        let fs = self.fs()?;
        let data = &fs.files[id].live;
        let n = data.len().saturating_sub(pos).min(buf.len());
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        drop(fs);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Handle {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.size()? as i64;
        let pos = match to {
            SeekFrom::Start(at) => at as i64,
            SeekFrom::End(delta) => len + delta,
            SeekFrom::Current(delta) => self.pos as i64 + delta,
        };
        self.pos = u64::try_from(pos).map_err(|_| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

impl ReadFile for Handle {
    fn size(&self) -> io::Result<u64> {
        Ok(self.fs()?.files[self.id].live.len() as u64)
    }
}

impl Disk for CrashDisk {
    fn exists(&self, path: &Path) -> bool {
        self.fs().resolve(path).is_some()
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.working()?;
        let (parent, name) = fs.parent_of(dir)?;
        match fs.dirs[parent].live.get(&name) {
            Some(Node::Dir(_)) => return Ok(()),
            Some(Node::File(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
            None => {}
        }
        fs.dirs.push(DirNode::default());
        let id = fs.dirs.len() - 1;
        fs.dirs[parent].live.insert(name, Node::Dir(id));
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let id = {
            let mut fs = self.working()?;
            let (parent, name) = fs.parent_of(path)?;
            if fs.dirs[parent].live.contains_key(&name) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs.files.push(FileNode::default());
            let id = fs.files.len() - 1;
            fs.dirs[parent].live.insert(name, Node::File(id));
            id
        };
        Ok(Box::new(self.handle(id)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let id = self.working()?.file(path)?;
        Ok(Box::new(self.handle(id)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let id = self.working()?.file(path)?;
        Ok(Box::new(self.handle(id)))
    }

    fn is_plain_file(&self, path: &Path) -> bool {
        self.fs().file(path).is_ok()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let fs = self.working()?;
        match fs.resolve(dir) {
            Some(Node::Dir(id)) => Ok(fs.dirs[id].live.keys().map(|n| dir.join(n)).collect()),
            _ => Err(not_found(dir)),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.working()?;
        fs.file(path)?;
        let (parent, name) = fs.parent_of(path)?;
        fs.dirs[parent].live.remove(&name);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.working()?;
        let node = fs.resolve(from).ok_or_else(|| not_found(from))?;
        let (from_dir, from_name) = fs.parent_of(from)?;
        let (to_dir, to_name) = fs.parent_of(to)?;
        fs.dirs[from_dir].live.remove(&from_name);
        fs.dirs[to_dir].live.insert(to_name, node);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.stall();
        let mut fs = self.working()?;
        match fs.resolve(dir) {
            Some(Node::Dir(id)) => {
                let entries = fs.dirs[id].live.clone();
                fs.dirs[id].durable = entries;
                Ok(())
            }
            _ => Err(not_found(dir)),
        }
    }

    fn lock(&self, _dir: &Path) -> Result<Option<File>, Option<io::Error>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_only_what_was_synced() {
        let disk = CrashDisk::new();
        let dir = Path::new("/a/b");
        disk.create_dir(Path::new("/a")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        disk.create_dir(dir).unwrap();
        // /a/b is not durable in /a yet.
        let mut file = disk.create_new(&dir.join("f")).unwrap();
        file.write_all(b"hello").unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        disk.crash();
        assert!(disk.exists(Path::new("/a")));
        assert!(
            !disk.exists(dir),
            "the new directory's entry was never synced"
        );

        disk.create_dir(dir).unwrap();
        disk.sync_dir(Path::new("/a")).unwrap();
        let mut file = disk.create_new(&dir.join("f")).unwrap();
        file.write_all(b"kept").unwrap();
        file.sync_data().unwrap();
        file.write_all(b" and lost").unwrap();
        disk.sync_dir(dir).unwrap();
        disk.rename(&dir.join("f"), &dir.join("g")).unwrap();
        disk.crash();
        assert!(file.write_all(b"x").is_err(), "dead handles stay dead");
        let mut bytes = Vec::new();
        disk.open_read(&dir.join("f"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes, b"kept");
        assert!(!disk.exists(&dir.join("g")), "the rename was never synced");
    }
}
