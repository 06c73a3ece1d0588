//! A worker's local folder for spills and map outputs, and the sweep of folders that dead
//! workers left behind.
//!
//! Every worker keeps its folder under one root (`--work-dir`, by default
//! `$TMPDIR/shoal-mr-UID`): `ROOT/shoal-mr-worker-XXXXXX/`. A worker that exits removes its
//! folder; one killed with SIGKILL cannot, and map outputs are large. So each folder holds a
//! marker, the file `lock`, which its worker keeps locked (`flock`, exclusive) for its whole
//! life; the kernel releases the lock when the process dies, however it dies, and a reused pid
//! cannot fake it. A worker starting up sweeps the root: a folder is removed only if its name
//! has the prefix, it is a real folder (not a link), it holds the marker, and the marker's lock
//! can be taken. Anything else under the root is left alone.
//!
//! The marker appears already locked: it is locked under another name and renamed into place,
//! so a sweeper never sees a live worker's marker unlocked. Locks are per open file, so this
//! also holds between workers of one process (`shoal mr run`). The root must be on a local
//! disk (a network file system may not honour `flock`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Names of worker folders under the root.
pub const WORKER_DIR_PREFIX: &str = "shoal-mr-worker-";
/// The marker a live worker keeps locked in its folder.
pub const LOCK_FILE: &str = "lock";
const LOCK_FILE_NEW: &str = "lock.new";

/// `$TMPDIR/shoal-mr-UID`: one root per user, so users do not share (or sweep) each other's.
pub fn default_root() -> PathBuf {
    std::env::temp_dir().join(format!("shoal-mr-{}", rustix::process::getuid().as_raw()))
}

/// A live worker's folder: locked while this value lives, removed when it is dropped.
#[derive(Debug)]
pub struct WorkDir {
    // Field order matters: the folder is removed before the lock is released.
    dir: tempfile::TempDir,
    _lock: File,
}

impl WorkDir {
    /// Sweeps `root` of dead workers' folders, then creates and locks this worker's folder.
    pub fn create(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        for dir in sweep(root) {
            tracing::info!(dir = %dir.display(), "removed the work folder of a dead worker");
        }
        let dir = tempfile::Builder::new()
            .prefix(WORKER_DIR_PREFIX)
            .tempdir_in(root)?;
        let new = dir.path().join(LOCK_FILE_NEW);
        let mut lock = File::create(&new)?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
        // For a person looking at the folder; the lock is what counts.
        writeln!(lock, "{}", std::process::id())?;
        std::fs::rename(&new, dir.path().join(LOCK_FILE))?;
        Ok(Self { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the worker folders under `root` whose worker is dead (see the module docs);
/// returns them. Errors skip a folder: a sweep never fails a worker.
pub fn sweep(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(WORKER_DIR_PREFIX));
        // `file_type` does not follow links: a link is never swept, nor what it points to.
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        // No marker: not a worker's folder, or one being created.
        let Ok(lock) = File::open(dir.join(LOCK_FILE)) else {
            continue;
        };
        // Held: its worker is alive.
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        // Holding the lock, so a concurrent sweeper skips it.
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_unlocked_worker_folders() {
        // Goal: the sweep removes a dead worker's folder (marker unlocked) and leaves a live
        // worker's folder, a folder without the marker, a folder without the prefix, a file with
        // the prefix and a link with the prefix; a dropped WorkDir removes its own folder.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let live = WorkDir::create(root).unwrap();
        std::fs::write(live.path().join("map-00000-0.data"), b"x").unwrap();
        let dead = root.join(format!("{WORKER_DIR_PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_FILE), b"123\n").unwrap();
        std::fs::write(dead.join("map-00001-0.data"), b"x").unwrap();
        let unmarked = root.join(format!("{WORKER_DIR_PREFIX}unmarked"));
        std::fs::create_dir(&unmarked).unwrap();
        let foreign = root.join("somebody-else");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join(LOCK_FILE), b"").unwrap();
        let file = root.join(format!("{WORKER_DIR_PREFIX}file"));
        std::fs::write(&file, b"").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join(LOCK_FILE), b"").unwrap();
        let link = root.join(format!("{WORKER_DIR_PREFIX}link"));
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();

        // A second worker starting up sweeps.
        let second = WorkDir::create(root).unwrap();
        assert!(!dead.exists());
        for kept in [live.path(), &unmarked, &foreign, &file, &link, elsewhere.path()] {
            assert!(kept.exists(), "{} was swept", kept.display());
        }
        assert!(live.path().join("map-00000-0.data").exists());
        assert_eq!(sweep(root), Vec::<PathBuf>::new());

        let (live_path, second_path) = (live.path().to_path_buf(), second.path().to_path_buf());
        drop(live);
        drop(second);
        assert!(!live_path.exists() && !second_path.exists());
    }
}
