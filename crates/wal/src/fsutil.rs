//! Small file-system helpers shared by the log, atomic files and snapshots.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{io_error, WalError};

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(io_error("open directory for fsync", dir))?;
    handle.sync_all().map_err(io_error("fsync directory", dir))
}

/// Creates `dir` (and missing parents) if absent; a new directory's entry in its parent
/// is made durable too, so a crash cannot lose the directory after files in it were synced.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fsync_dir(parent)
}
