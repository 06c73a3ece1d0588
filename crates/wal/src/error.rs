//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// What the operator is told to do when durable data cannot be trusted.
///
/// A Raft node whose log or snapshot is damaged must not guess: it would risk
/// forgetting entries or votes it already acknowledged (Raft §5.4 relies on them).
/// Peers hold the committed log, so the safe repair is to rebuild this node from them.
const CORRUPT_ADVICE: &str = "the data on this node cannot be trusted; \
     stop the node, wipe its data directory and let it rejoin the cluster so a peer restores it";

/// Errors of the write-ahead log, the atomic files and the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed. For [`crate::Wal`] this also poisons the log: see
    /// [`WalError::Poisoned`].
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "fsync segment".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Durable data failed validation and was refused rather than skipped.
    #[error("corrupt data in {} at byte offset {offset}: {reason}; {CORRUPT_ADVICE}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset in that file where the damage was detected.
        offset: u64,
        /// What exactly failed validation.
        reason: String,
    },

    /// An earlier I/O error left the in-memory state of the log uncertain (for example a
    /// failed fsync may have dropped dirty pages). Every later call fails with this error:
    /// restart the process so [`crate::Wal::open`] recovers from what is on disk.
    #[error("the write-ahead log in {} is unusable after an earlier I/O error; restart the process to recover from disk", dir.display())]
    Poisoned {
        /// The log's directory.
        dir: PathBuf,
    },

    /// A record larger than [`crate::RECORD_BYTES_MAX`] was appended.
    #[error("record at index {index} is {len_bytes} bytes, more than the limit of {len_bytes_max} bytes")]
    RecordTooLarge {
        /// Index of the refused record.
        index: u64,
        /// Its payload length.
        len_bytes: u64,
        /// The limit.
        len_bytes_max: u64,
    },

    /// An append would leave a hole after the last record.
    #[error("append at index {index} would leave a gap after the last index {last_index}; the next index must be at most {}", last_index.saturating_add(1))]
    IndexGap {
        /// The refused index.
        index: u64,
        /// The log's last index.
        last_index: u64,
    },

    /// A read asked for records the log does not hold (compacted, not yet written, or an
    /// empty range).
    #[error("cannot read records [{from}, {to}]: the log holds [{first_index:?}, {last_index:?}]")]
    OutOfRange {
        /// First requested index.
        from: u64,
        /// Last requested index.
        to: u64,
        /// The log's first index, if any.
        first_index: Option<u64>,
        /// The log's last index, if any.
        last_index: Option<u64>,
    },

    /// A [`crate::WalOptions`] field holds an unusable value.
    #[error("invalid option {field} = {value}: {reason}")]
    InvalidOptions {
        /// The option's name.
        field: &'static str,
        /// The refused value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A file name given to [`crate::write_file_atomic`] or [`crate::read_file_atomic`]
    /// is not a plain name inside the directory.
    #[error("invalid file name {name:?}: {reason}")]
    InvalidFileName {
        /// The refused name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// Content given to [`crate::write_file_atomic`] or snapshot metadata is too large.
    #[error("{what} is {len_bytes} bytes, more than the limit of {len_bytes_max} bytes")]
    TooLarge {
        /// What was too large, e.g. "snapshot meta".
        what: &'static str,
        /// Its length.
        len_bytes: u64,
        /// The limit.
        len_bytes_max: u64,
    },

    /// No complete snapshot with this index exists.
    #[error("no snapshot with index {index}")]
    SnapshotNotFound {
        /// The requested index.
        index: u64,
    },

    /// A snapshot older than the newest stored one was started.
    #[error("snapshot at index {index} is older than the stored snapshot at index {latest_index}")]
    SnapshotStale {
        /// The refused index.
        index: u64,
        /// The newest stored snapshot's index.
        latest_index: u64,
    },

    /// A snapshot read started past the end of the snapshot's data.
    #[error("offset {offset} is past the end of snapshot {index}, which holds {data_len} data bytes")]
    SnapshotOffsetOutOfRange {
        /// The snapshot's index.
        index: u64,
        /// The requested offset.
        offset: u64,
        /// The snapshot's data length.
        data_len: u64,
    },
}

/// Returns a closure that wraps an [`io::Error`] with the operation and path.
pub(crate) fn io_error(op: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}
