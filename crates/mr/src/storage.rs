//! The storage seam: where a job's inputs and outputs live.
//!
//! The coordinator lists and sizes inputs, samples them, and keeps the output folder (its
//! journal, the commit by rename, `_SUCCESS`) through a [`Storage`]; a worker reads its input
//! split and writes its reduce output through the same trait. Nothing else in the crate
//! touches input or output files, so Shoal's file system plugs in by implementing it.
//! A worker's spills and map outputs are not behind this seam: they stay on its local disk
//! (§3.1: map output is local, reducers fetch it over the network).
//!
//! The trait is a small file system, as Hadoop's `FileSystem` is for its `InputFormat` and
//! `FileOutputCommitter`: the MapReduce rules (globs and splits in [`crate::input`], the
//! output folder's layout and commit protocol in [`crate::output`]) live above it, once.
//! Two implementations: [`LocalStorage`] (local or shared paths; the default) and
//! [`MemoryStorage`] (a map in memory, for tests of whole jobs).
//!
//! Contract, checked for both by `conformance` in the tests:
//! 1. `rename` is atomic and replaces an existing target: a reader sees the old file or the
//!    new one, never a mix (the output commit depends on it).
//! 2. Bytes written to an [`OutputFile`] and `sync`ed survive a crash (the journal depends on
//!    it); `create` truncates, `append` appends.
//! 3. `glob` returns files only, sorted, with `*` not crossing `/`.
//! 4. A missing path is an `io::ErrorKind::NotFound` error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::MrError;

/// What [`Storage::stat`] and [`Storage::list_dir`] say about a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    pub path: PathBuf,
    pub len: u64,
    pub is_dir: bool,
    pub is_file: bool,
}

/// A file being written: a reduce attempt's output or the coordinator's journal.
pub trait OutputFile: Write + Send {
    /// Makes everything written so far durable (fdatasync on a local disk).
    fn sync(&mut self) -> io::Result<()>;
}

/// Where inputs are read and outputs written. See the module docs for the contract.
pub trait Storage: fmt::Debug + Send + Sync {
    /// The file or folder at `path`.
    fn stat(&self, path: &Path) -> io::Result<FileStatus>;
    /// The entries of folder `path`, in any order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<FileStatus>>;
    /// The files (not folders) matching a pattern of `*`, `?` and `[…]`, sorted.
    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, MrError>;
    /// Reads file `path` from byte `offset` to its end (a split's reader stops where it wants).
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn Read + Send>>;
    /// Creates folder `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates file `path` (emptied if it exists) for writing; its folder must exist.
    fn create(&self, path: &Path) -> io::Result<Box<dyn OutputFile>>;
    /// Opens file `path` for appending, creating it if missing; its folder must exist.
    fn append(&self, path: &Path) -> io::Result<Box<dyn OutputFile>>;
    /// Atomically renames file `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes folder `path` and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The name of `path` that means the same file to every process of the job (workers may
    /// run in another working directory): absolute for local paths.
    fn qualify(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// Whether `path` names an existing file or folder.
pub fn exists(storage: &dyn Storage, path: &Path) -> bool {
    storage.stat(path).is_ok()
}

/// The local file system (or a shared one mounted on every machine): today's inputs and
/// outputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalStorage;

/// The default storage of coordinators and workers.
pub fn local() -> Arc<dyn Storage> {
    Arc::new(LocalStorage)
}

struct LocalFile(File);

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl OutputFile for LocalFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

fn status_of(path: &Path, meta: &std::fs::Metadata) -> FileStatus {
    FileStatus {
        path: path.to_path_buf(),
        len: meta.len(),
        is_dir: meta.is_dir(),
        is_file: meta.is_file(),
    }
}

impl Storage for LocalStorage {
    fn stat(&self, path: &Path) -> io::Result<FileStatus> {
        Ok(status_of(path, &std::fs::metadata(path)?))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<FileStatus>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            // Follows symbolic links, as `Path::is_file` does.
            match std::fs::metadata(&p) {
                Ok(meta) => out.push(status_of(&p, &meta)),
                Err(_) => out.push(FileStatus {
                    path: p,
                    len: 0,
                    is_dir: false,
                    is_file: false,
                }),
            }
        }
        Ok(out)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, MrError> {
        let paths = glob::glob(pattern)
            .map_err(|e| MrError::Config(format!("invalid input pattern {pattern:?}: {e}")))?;
        let mut out = Vec::new();
        for p in paths {
            let p = p.map_err(|e| MrError::Input {
                path: e.path().display().to_string(),
                error: e.into(),
            })?;
            if p.is_file() {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut f = File::open(path)?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(Box::new(f))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn OutputFile>> {
        Ok(Box::new(LocalFile(File::create(path)?)))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn OutputFile>> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(LocalFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn qualify(&self, path: &Path) -> PathBuf {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Files and folders in memory, shared by every clone: a whole job (coordinator and
/// in-process workers) can run on it without touching the disk, which is how the tests prove
/// that every input and output access goes through [`Storage`]. Paths are taken as given
/// (use absolute ones); `/` always exists.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemoryTree>>,
}

type MemoryData = Arc<Mutex<Vec<u8>>>;

#[derive(Debug, Default)]
struct MemoryTree {
    files: BTreeMap<PathBuf, MemoryData>,
    dirs: BTreeSet<PathBuf>,
}

impl MemoryTree {
    fn is_dir(&self, path: &Path) -> bool {
        path.parent().is_none() || path.as_os_str().is_empty() || self.dirs.contains(path)
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !self.is_dir(parent) => Err(not_found(parent)),
            _ if self.is_dir(path) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder", path.display()),
            )),
            _ => Ok(()),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or folder", path.display()),
    )
}

fn lock_data(data: &MemoryData) -> MutexGuard<'_, Vec<u8>> {
    data.lock().unwrap_or_else(|e| e.into_inner())
}

struct MemoryFile(MemoryData);

impl Write for MemoryFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock_data(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl OutputFile for MemoryFile {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn tree(&self) -> MutexGuard<'_, MemoryTree> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a whole file, creating its folders (for setting up inputs).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            self.create_dir_all(parent)?;
        }
        let mut f = self.create(path)?;
        f.write_all(bytes)
    }

    /// A whole file's bytes.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let tree = self.tree();
        let data = tree.files.get(path).ok_or_else(|| not_found(path))?;
        let bytes = lock_data(data).clone();
        Ok(bytes)
    }

    /// Every file's path, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.tree().files.keys().cloned().collect()
    }
}

impl Storage for MemoryStorage {
    fn stat(&self, path: &Path) -> io::Result<FileStatus> {
        let tree = self.tree();
        if let Some(data) = tree.files.get(path) {
            return Ok(FileStatus {
                path: path.to_path_buf(),
                len: lock_data(data).len() as u64,
                is_dir: false,
                is_file: true,
            });
        }
        if tree.is_dir(path) {
            return Ok(FileStatus {
                path: path.to_path_buf(),
                len: 0,
                is_dir: true,
                is_file: false,
            });
        }
        Err(not_found(path))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<FileStatus>> {
        let children: Vec<PathBuf> = {
            let tree = self.tree();
            if !tree.is_dir(path) {
                return Err(not_found(path));
            }
            let child = |p: &&PathBuf| p.parent() == Some(path);
            tree.files
                .keys()
                .filter(child)
                .chain(tree.dirs.iter().filter(child))
                .cloned()
                .collect()
        };
        children.iter().map(|p| self.stat(p)).collect()
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, MrError> {
        let compiled = glob::Pattern::new(pattern)
            .map_err(|e| MrError::Config(format!("invalid input pattern {pattern:?}: {e}")))?;
        // As `glob::glob` matches: `*` stays within one path component.
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        Ok(self
            .tree()
            .files
            .keys()
            .filter(|p| compiled.matches_path_with(p, options))
            .cloned()
            .collect())
    }

    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let tree = self.tree();
        let data = tree.files.get(path).ok_or_else(|| not_found(path))?;
        let data = lock_data(data);
        let start = (offset as usize).min(data.len());
        Ok(Box::new(io::Cursor::new(data[start..].to_vec())))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree();
        for dir in path.ancestors() {
            if tree.files.contains_key(dir) {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file, not a folder", dir.display()),
                ));
            }
        }
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() && dir.parent().is_some() {
                tree.dirs.insert(dir.to_path_buf());
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn OutputFile>> {
        let mut tree = self.tree();
        tree.check_parent(path)?;
        let data = MemoryData::default();
        tree.files.insert(path.to_path_buf(), data.clone());
        Ok(Box::new(MemoryFile(data)))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn OutputFile>> {
        let mut tree = self.tree();
        tree.check_parent(path)?;
        let data = tree.files.entry(path.to_path_buf()).or_default().clone();
        Ok(Box::new(MemoryFile(data)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree();
        tree.check_parent(to)?;
        let data = tree.files.remove(from).ok_or_else(|| not_found(from))?;
        tree.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree();
        tree.files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree();
        if !tree.dirs.contains(path) {
            return Err(not_found(path));
        }
        tree.files.retain(|p, _| !p.starts_with(path));
        tree.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &dyn Storage, path: &Path, offset: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.open_read(path, offset).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    fn names(mut paths: Vec<PathBuf>, root: &Path) -> Vec<String> {
        paths.sort();
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    /// The contract of the module docs, for any implementation, under folder `root`.
    fn conformance(s: &dyn Storage, root: &Path) {
        let dir = root.join("d");
        s.create_dir_all(&dir.join("sub")).unwrap();
        assert!(s.stat(&dir).unwrap().is_dir);
        // A missing path is NotFound, for reads and stats alike.
        let missing = dir.join("missing");
        assert_eq!(s.stat(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            s.open_read(&missing, 0).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        assert!(s.create(&root.join("no/such/folder/f")).is_err());

        // create truncates; append appends; reads start at any offset.
        let a = dir.join("a.txt");
        let mut f = s.create(&a).unwrap();
        f.write_all(b"hello\nworld\n").unwrap();
        f.sync().unwrap();
        drop(f);
        let st = s.stat(&a).unwrap();
        assert!(st.is_file && !st.is_dir && st.len == 12, "{st:?}");
        assert_eq!(read_all(s, &a, 6), b"world\n");
        assert_eq!(read_all(s, &a, 100), b"");
        let mut f = s.append(&a).unwrap();
        f.write_all(b"again\n").unwrap();
        f.sync().unwrap();
        drop(f);
        assert_eq!(read_all(s, &a, 0), b"hello\nworld\nagain\n");
        let mut f = s.create(&a).unwrap();
        f.write_all(b"new\n").unwrap();
        drop(f);
        assert_eq!(read_all(s, &a, 0), b"new\n");
        // A file cannot become a folder.
        assert!(s.create_dir_all(&a.join("x")).is_err());

        // Listing shows direct children only; glob files only, sorted, `*` within a component.
        s.create(&dir.join("b.txt")).unwrap();
        s.create(&dir.join("sub").join("c.txt")).unwrap();
        let listed: Vec<PathBuf> = s.list_dir(&dir).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names(listed, &dir), vec!["a.txt", "b.txt", "sub"]);
        let pattern = format!("{}/*", dir.display());
        assert_eq!(names(s.glob(&pattern).unwrap(), &dir), vec!["a.txt", "b.txt"]);
        let pattern = format!("{}/*/*.txt", dir.display());
        assert_eq!(names(s.glob(&pattern).unwrap(), &dir), vec!["sub/c.txt"]);
        assert!(s.glob(&format!("{}/[", dir.display())).is_err());

        // rename replaces its target; the source is gone.
        s.rename(&a, &dir.join("b.txt")).unwrap();
        assert_eq!(read_all(s, &dir.join("b.txt"), 0), b"new\n");
        assert_eq!(s.stat(&a).unwrap_err().kind(), io::ErrorKind::NotFound);

        s.remove_file(&dir.join("b.txt")).unwrap();
        assert!(!exists(s, &dir.join("b.txt")));
        s.remove_dir_all(&dir).unwrap();
        assert!(!exists(s, &dir.join("sub").join("c.txt")));
        assert!(!exists(s, &dir));
    }

    #[test]
    fn local_storage_meets_the_contract() {
        // Goal: the local file system implementation keeps the storage contract.
        let tmp = tempfile::tempdir().unwrap();
        conformance(&LocalStorage, tmp.path());
    }

    #[test]
    fn memory_storage_meets_the_contract() {
        // Goal: the in-memory implementation keeps the same contract as the local one.
        conformance(&MemoryStorage::new(), Path::new("/mem"));
    }
}
