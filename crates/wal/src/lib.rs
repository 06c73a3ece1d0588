//! # shoal-wal: durable storage for Raft, knowing nothing about Raft
//!
//! Three tools, every byte that matters covered by a CRC32C:
//!
//! - [`Wal`]: a segmented write-ahead log of opaque records, each at a contiguous `u64`
//!   index. Appends are buffered; [`Wal::sync`] makes all of them durable with one fsync
//!   (group commit). Appending at an index already present first discards that index and
//!   everything after it (Raft's conflicting-suffix truncation, §5.3);
//!   [`Wal::compact_prefix`] drops whole segments behind a snapshot (§7); [`Wal::reset`]
//!   empties the log when a snapshot replaces it.
//! - [`write_file_atomic`] / [`read_file_atomic`]: small files (Raft's hard state) replaced
//!   atomically: write `name.tmp`, fsync, rename over `name`, fsync the directory.
//! - [`SnapshotStore`]: big snapshots written and read in chunks with bounded memory.
//!
//! **Architecture invariant:** this crate knows nothing about Raft: no terms, no entries,
//! no membership. The Raft runtime encodes those into the opaque record and meta bytes.
//!
//! The crate targets Unix: it relies on positional I/O and on fsync of directories.
//!
//! ## Log directory layout
//!
//! ```text
//! <dir>/00000000000000000001.wal   segment whose first record has index 1
//! <dir>/00000000000000004711.wal   next segment, first index 4711 (= previous last + 1)
//! ```
//!
//! Segment names are the first index in 20 digits, so names sort like indices. Files with
//! other names are ignored. The last segment is the *active* one; when the next record
//! would make it larger than [`WalOptions::segment_size_bytes_max`], it is sealed (flushed
//! and fsynced, with the directory) and a new segment starts.
//!
//! The active segment's file is zero-filled ahead of its records
//! ([`WalOptions::preallocate_bytes`], 8 MiB at a time), so that a sync overwrites blocks
//! that already exist and the fsync writes only data, not the file's size and block
//! allocation. Sealing cuts the file back to its records: only the last segment ever ends
//! in zeros.
//!
//! ## Record format
//!
//! A segment is a plain sequence of records, with no file header:
//!
//! ```text
//! offset  size  field
//! 0       1     kind: 0xA7 (entry record, format version 1; never 0, so zeros never parse)
//! 1       4     payload length, u32 little-endian, at most RECORD_BYTES_MAX
//! 5       8     index, u64 little-endian
//! 13      4     CRC32C over bytes 0..13 followed by the payload, u32 little-endian
//! 17      len   payload
//! ```
//!
//! In memory the log keeps, per segment, the byte offset of every record, so a suffix
//! truncation cuts the file at the exact record boundary.
//!
//! ## Recovery rules ([`Wal::open`])
//!
//! 1. Segments are read in index order; each must start at the previous segment's last
//!    index + 1 and every record must carry the next index. Otherwise: refused.
//! 2. In a segment that is **not the last**, any record that fails to decode (short, bad
//!    kind, length over the limit, CRC mismatch) is refused. Such segments were fsynced
//!    before the next one was created, so damage there is corruption, not a crash.
//! 3. In the **last** segment, the first bad record starts a *torn tail* — a partial
//!    header, a partial payload, a CRC mismatch or a zero-filled region left by a crash
//!    during unsynced appends — unless a fully valid record follows it somewhere later
//!    in the file, which proves the damage sits in the middle of written data: refused.
//!    Zeros from there to the end of the file are preallocated space and stay. Anything
//!    else is a torn tail: it is cut (the file is truncated to the last good record) and
//!    its size up to its last non-zero byte is reported in
//!    [`Recovered::truncated_tail_bytes`]. A last segment left with no record is removed.
//! 4. The recovered records are then fsynced, since after a process crash they may live
//!    only in the page cache.
//!
//! "Refused" means [`WalError::Corrupt`] naming the file, the byte offset and the reason,
//! and telling the operator to rebuild the node from its peers. Nothing is ever skipped
//! silently. One limit of rule 3: a damaged *last* record of the last segment is
//! indistinguishable from a torn write and is cut; and if a file system wrote pages of an
//! unsynced append out of order, the hole is refused (safe, but needs the operator).
//!
//! ## Durability contract
//!
//! - Only what [`Wal::sync`] returned for is guaranteed to survive a crash. A crash may
//!   lose any suffix of the unsynced appends and may tear the last one; it never damages
//!   synced records and never makes recovery fail.
//! - Dropping a [`Wal`] without `sync` is a crash: buffered appends are discarded.
//! - [`Wal::truncate_suffix`] is durable at the next sync, and before it returns when it
//!   cut bytes that had reached the file (so later appends can never be persisted ahead of
//!   the cut). [`Wal::compact_prefix`] and [`Wal::reset`] are durable when they return;
//!   segment files are removed one at a time with a directory fsync after each, so a crash
//!   in between always leaves a contiguous log.
//! - After any I/O error in a mutating call the `Wal` is poisoned
//!   ([`WalError::Poisoned`]): the in-memory state may no longer match the disk (a failed
//!   fsync can drop dirty pages), so the process must restart and recover from disk.
//!
//! ## Snapshot files
//!
//! `snap-<index, 20 digits>.snap`, written as `….snap.tmp`, fsynced, renamed, directory
//! fsynced. Layout: magic `SHOALSN1` | meta length u32 | meta | data | data length u64 |
//! CRC32C over everything before it (u32) | magic `SHOALEND`. The newest and one previous
//! snapshot are kept ([`SNAPSHOTS_KEPT_MAX`]).
//!
//! ## Atomic files
//!
//! Magic `SHOALAF1` | content length u64 | CRC32C over the previous 16 bytes and the content
//! (u32) | content.

mod atomic_file;
mod error;
mod fsutil;
mod record;
mod snapshot;
mod wal;

pub use atomic_file::{read_file_atomic, write_file_atomic, ATOMIC_FILE_BYTES_MAX};
pub use error::WalError;
pub use record::{record_frame_bytes, RECORD_BYTES_MAX, RECORD_HEADER_BYTES};
pub use snapshot::{
    snapshot_file_name, SnapshotInfo, SnapshotReader, SnapshotStore, SnapshotWriter, SNAPSHOTS_KEPT_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_META_BYTES_MAX,
};
pub use wal::{
    parse_segment_file_name, segment_file_name, Recovered, Wal, WalOptions, PREALLOCATE_BYTES_DEFAULT,
    SEGMENT_SIZE_BYTES_DEFAULT,
};
