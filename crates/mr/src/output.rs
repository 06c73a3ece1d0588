//! The output folder and its commit protocol (Hadoop's `FileOutputCommitter`), over any
//! [`Storage`].
//!
//! Layout: reduce attempts write `OUTPUT/_temporary/attempt-r-PPPPP-A-wWORKER`; the
//! coordinator renames the winning attempt of partition P to `OUTPUT/part-r-PPPPP` (atomic,
//! storage contract 1), so no temporary name ever matches `part-r-*` and a task that ran
//! twice leaves one file. The coordinator's journal is `OUTPUT/_temporary/journal`. A job
//! that is done writes `_SUCCESS` and removes `_temporary/`; a failed job removes every
//! `part-r-*` and `_SUCCESS` too, so nothing is left to be mistaken for output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::MrError;
use crate::storage::{exists, Storage};

/// The folder of attempts in progress and of the journal.
pub const TEMPORARY_DIR: &str = "_temporary";
/// Written last, when every partition is committed.
pub const SUCCESS_MARKER: &str = "_SUCCESS";
const PART_PREFIX: &str = "part-r-";

/// `part-r-00003`.
pub fn part_name(partition: u32) -> String {
    format!("{PART_PREFIX}{partition:05}")
}

/// Where a reduce attempt writes before its commit. `output_dir` is the job's qualified
/// output folder as the coordinator names it in the job spec.
pub fn attempt_path(output_dir: &Path, partition: u32, attempt: u32, worker_id: u64) -> PathBuf {
    output_dir
        .join(TEMPORARY_DIR)
        .join(format!("attempt-r-{partition:05}-{attempt}-w{worker_id:016x}"))
}

/// A job's output folder, seen by its coordinator.
#[derive(Clone, Debug)]
pub struct OutputCommitter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
}

impl OutputCommitter {
    pub fn new(storage: Arc<dyn Storage>, dir: PathBuf) -> Self {
        Self { storage, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join(TEMPORARY_DIR)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.temp_dir().join("journal")
    }

    /// The output folder's name for workers (see [`Storage::qualify`]).
    pub fn qualified_dir(&self) -> PathBuf {
        self.storage.qualify(&self.dir)
    }

    fn output_error(&self, error: std::io::Error) -> MrError {
        MrError::Output {
            path: self.dir.display().to_string(),
            error,
        }
    }

    /// Whether the folder holds output of an earlier job (`part-r-*` or `_SUCCESS`).
    pub fn has_output(&self) -> bool {
        self.outputs().next().is_some()
    }

    fn outputs(&self) -> impl Iterator<Item = PathBuf> {
        self.storage
            .list_dir(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(PART_PREFIX) || name == SUCCESS_MARKER
            })
    }

    fn remove_outputs(&self) {
        for p in self.outputs() {
            let _ = self.storage.remove_file(&p);
        }
    }

    /// Prepares the folder before the job starts (Hadoop's `setupJob`): creates it, refuses
    /// existing output unless `overwrite` (then removes it), starts `_temporary/` afresh, and
    /// proves the folder writable now rather than at the first commit. A `resumed` job keeps
    /// its output and `_temporary/` (its journal and committed parts are its progress).
    pub fn setup_job(&self, overwrite: bool, resumed: bool) -> Result<(), MrError> {
        self.storage
            .create_dir_all(&self.dir)
            .map_err(|e| self.output_error(e))?;
        let temp = self.temp_dir();
        if !resumed {
            if self.has_output() {
                if !overwrite {
                    return Err(MrError::OutputExists(self.dir.display().to_string()));
                }
                self.remove_outputs();
            }
            let _ = self.storage.remove_dir_all(&temp);
        }
        self.storage
            .create_dir_all(&temp)
            .map_err(|e| self.output_error(e))?;
        let probe = temp.join(".probe");
        self.storage.create(&probe).map_err(|e| self.output_error(e))?;
        let _ = self.storage.remove_file(&probe);
        Ok(())
    }

    /// Whether a worker's reported attempt output lies in this job's `_temporary/`.
    pub fn is_attempt_path(&self, temp: &Path) -> bool {
        temp.parent().map(|p| self.storage.qualify(p)) == Some(self.qualified_dir().join(TEMPORARY_DIR))
    }

    /// Whether partition `partition` is committed.
    pub fn is_committed(&self, partition: u32) -> bool {
        exists(self.storage.as_ref(), &self.dir.join(part_name(partition)))
    }

    /// Makes attempt output `temp` partition `partition`'s output (Hadoop's `commitTask`).
    pub fn commit_task(&self, temp: &Path, partition: u32) -> Result<(), MrError> {
        let target = self.dir.join(part_name(partition));
        self.storage
            .rename(temp, &target)
            .map_err(|error| MrError::Output {
                path: target.display().to_string(),
                error,
            })
    }

    /// Discards a losing or failed attempt's output (Hadoop's `abortTask`); best effort.
    pub fn abort_task(&self, temp: &Path) {
        let _ = self.storage.remove_file(temp);
    }

    /// Every partition is committed: `_SUCCESS`, and `_temporary/` goes.
    pub fn commit_job(&self) {
        let _ = self.storage.create(&self.dir.join(SUCCESS_MARKER));
        let _ = self.storage.remove_dir_all(&self.temp_dir());
    }

    /// The job failed: leave nothing that could be mistaken for output.
    pub fn abort_job(&self) {
        self.remove_outputs();
        let _ = self.storage.remove_dir_all(&self.temp_dir());
    }
}
