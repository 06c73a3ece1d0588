//! # shoal-wal: durable storage for Raft, knowing nothing about Raft
//!
//! Three things, all with CRC32C on every byte that matters:
//!
//! - [`Wal`]: a segmented write-ahead log of opaque records, each tagged with a contiguous
//!   `u64` index. Appends are buffered; [`Wal::sync`] makes all of them durable with one
//!   fsync (group commit). Appending at an index already present first discards that index and
//!   everything after it (Raft's conflicting-suffix truncation); [`Wal::compact_prefix`] drops
//!   whole segments behind a snapshot; [`Wal::reset`] empties the log for a new snapshot.
//! - [`write_file_atomic`] / [`read_file_atomic`]: small files (the hard state) replaced
//!   atomically: write `name.tmp`, fsync, rename over `name`, fsync the directory.
//! - [`SnapshotStore`]: big snapshots written and read in chunks with bounded memory.
//!
//! ## Files
//!
//! A log directory holds segments named by their first index, `00000000000000000001.wal`.
//! A segment is a sequence of records:
//!
//! ```text
//! magic u8 (0xA7) | length u32 LE | index u64 LE | crc32c u32 LE | payload (length bytes)
//! ```
//!
//! where the CRC covers magic, length, index and payload. The active (last) segment is
//! rotated once it exceeds [`WalOptions::segment_size_bytes_max`].
//!
//! ## Recovery rules
//!
//! On [`Wal::open`] every segment is scanned. In the **last** segment, a record that is cut
//! short, fails its CRC, or is zero-filled, and is followed by nothing valid, is a torn tail
//! from a crash: the file is truncated to the last good record (and fsynced); the cut byte count
//! is reported in [`Recovered::truncated_tail_bytes`]. Anything else — a bad record in an
//! earlier segment, a bad record followed by a valid one, indices that are not contiguous — is
//! corruption of data that was once durable, and `open` refuses with [`WalError::Corrupt`]
//! rather than silently skipping it.
//!
//! ## Durability contract
//!
//! Only what [`Wal::sync`] returned for is guaranteed to survive a crash. A crash may lose any
//! suffix of the unsynced appends and may tear the last one; it never corrupts synced records.
//! Truncations become durable at the next sync; [`Wal::reset`] is durable when it returns.

mod atomic;
mod log;
mod snapshot;

pub use atomic::{read_file_atomic, write_file_atomic};
pub use log::{Recovered, Wal, WalOptions, RECORD_BYTES_MAX};
pub use snapshot::{SnapshotInfo, SnapshotStore, SnapshotWriter};

use std::path::PathBuf;

/// Everything that can go wrong in storage. `Io` carries the path it happened on.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "corrupt data in {path} at byte {offset}: {reason}; this node's storage cannot be trusted: \
         move its data directory aside and let it rejoin from its peers"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("record of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("append at index {index} leaves a gap after the last index {last_index}")]
    Gap { index: u64, last_index: u64 },
    #[error("index {index} is not in the log (it holds {first_index}..={last_index})")]
    OutOfRange {
        index: u64,
        first_index: u64,
        last_index: u64,
    },
    #[error("no snapshot with index {index}")]
    NoSnapshot { index: u64 },
}

pub(crate) fn io_err(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), WalError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync directory", dir))
}
