//! The segmented write-ahead log: appends, group-commit sync, suffix truncation,
//! prefix compaction and crash recovery.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io_error, WalError};
use crate::fsutil::{create_dir_durably, fsync_dir};
use crate::record::{
    decode, encode_header, find_valid_record_after, record_frame_bytes, RECORD_BYTES_MAX, RECORD_HEADER_BYTES,
};

/// Default [`WalOptions::segment_size_bytes_max`]: 64 MiB.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default [`WalOptions::preallocate_bytes`]: 8 MiB.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;

/// Appended bytes held in memory before they are written to the active segment: 1 MiB.
///
/// Cost: this much memory per open log, and unsynced appends up to this size cost no
/// system call at all; a larger buffer saves write calls only for batches above 1 MiB.
const WRITE_BUFFER_BYTES_MAX: usize = 1024 * 1024;

/// Zeros written per system call when preallocating.
const PREALLOCATE_WRITE_BYTES: usize = 1024 * 1024;

/// Extension of segment files.
const SEGMENT_FILE_SUFFIX: &str = ".wal";

/// Digits of the first index in a segment file name (u64::MAX has 20).
const SEGMENT_FILE_INDEX_DIGITS: usize = 20;

/// Options of a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started when the next record would make the
    /// active segment larger than this. A single record larger than this still gets a
    /// segment of its own.
    ///
    /// Cost: recovery reads one whole segment into memory at a time; compaction frees
    /// disk space only in whole segments.
    pub segment_size_bytes_max: u64,
    /// The active segment's file is kept zero-filled this far ahead of its records, and
    /// extended by this much (at most to `segment_size_bytes_max`) when appends reach the
    /// end of the zeros; 0 turns preallocation off. A sealed segment is cut back to its
    /// records.
    ///
    /// Why: an fsync of a file that grew must also write the file's size and its new block
    /// allocation (on ext4 three writes instead of one); overwriting blocks that are
    /// already written needs only the data. Measured on the machine of docs/BENCHMARKS.md,
    /// that metadata was ~40% of a Raft follower's fsync time.
    ///
    /// Cost: one fsync in every `preallocate_bytes` of appends also writes that many
    /// zeros (8 MiB: about 15 ms on a virtio SSD); the active segment's file takes up to
    /// this much more disk than its records.
    pub preallocate_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes_max: SEGMENT_SIZE_BYTES_DEFAULT,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

impl WalOptions {
    /// Checks every option, naming the bad value.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_size_bytes_max == 0 {
            return Err(WalError::InvalidOptions {
                field: "segment_size_bytes_max",
                value: self.segment_size_bytes_max,
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Index of the first record, or 0 when the log is empty.
    pub first_index: u64,
    /// Every record, as (index, data), contiguous and ascending.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes cut from the end of the last segment because they were a torn or damaged
    /// tail of unsynced appends (0 after a clean shutdown).
    pub truncated_tail_bytes: u64,
}

/// Returns the file name of the segment whose first record has `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!(
        "{first_index:0width$}{SEGMENT_FILE_SUFFIX}",
        width = SEGMENT_FILE_INDEX_DIGITS
    )
}

/// Parses a segment file name back into its first index; `None` for other files.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_FILE_SUFFIX)?;
    if digits.len() != SEGMENT_FILE_INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file and the in-memory index of its records.
#[derive(Debug)]
struct Segment {
    /// Index of the first record; also the file's name.
    first_index: u64,
    path: PathBuf,
    /// Byte offset of every record; record `first_index + i` starts at `record_offsets[i]`.
    ///
    /// Cost: 8 bytes of memory per record in the log.
    record_offsets: Vec<u64>,
    /// Length of the segment including bytes still in the write buffer.
    len_bytes: u64,
}

impl Segment {
    fn n_records(&self) -> u64 {
        self.record_offsets.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        self.n_records()
            .checked_sub(1)
            .map(|n_after_first| self.first_index + n_after_first)
    }

    /// Offset where the record at `index` starts; `index` must be in this segment.
    fn offset_of(&self, index: u64) -> u64 {
        let idx = usize::try_from(index - self.first_index).expect("record index within segment");
        self.record_offsets[idx]
    }

    /// Offset just past the record at `index`; `index` must be in this segment.
    fn end_of(&self, index: u64) -> u64 {
        let idx = usize::try_from(index - self.first_index).expect("record index within segment");
        self.record_offsets
            .get(idx + 1)
            .copied()
            .unwrap_or(self.len_bytes)
    }
}

/// A segmented write-ahead log of opaque byte records, each at a u64 index.
///
/// See the crate documentation for the file layout and the durability contract.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Segments in index order. Every segment holds at least one record, except for the
    /// moment between creating a segment and writing its first record.
    segments: Vec<Segment>,
    /// Open handle of the last segment; `Some` exactly when `segments` is non-empty.
    active_file: Option<File>,
    /// Bytes of the last segment already handed to the operating system.
    flushed_len_bytes: u64,
    /// Length of the last segment's file: its records, then zeros (preallocation).
    allocated_len_bytes: u64,
    /// Bytes of the last segment not yet written: records appended after
    /// `flushed_len_bytes`, each wholly here or wholly in the file.
    buffer: Vec<u8>,
    /// The last segment has writes or truncations that are not yet fsynced.
    file_dirty: bool,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    /// An I/O error happened in a mutating call; see [`WalError::Poisoned`].
    poisoned: bool,
    n_fsyncs: u64,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("n_segments", &self.segments.len())
            .field("buffered_bytes", &self.buffer.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Result of scanning one segment file during recovery.
struct ScannedSegment {
    record_offsets: Vec<u64>,
    /// Length of the valid prefix; shorter than the file only for a torn last segment.
    valid_len_bytes: u64,
}

impl Wal {
    /// Opens (creating if absent) the log in `dir`, recovering what is on disk.
    ///
    /// A torn tail of the last segment is cut and reported in
    /// [`Recovered::truncated_tail_bytes`]; any other damage is refused with
    /// [`WalError::Corrupt`]. The recovered records are fsynced before this returns, so
    /// they stay durable even if they were only in the page cache of a crashed process.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        create_dir_durably(dir)?;
        let listed = list_segment_files(dir)?;
        let n_listed = listed.len();

        let mut n_fsyncs = 0u64;
        let mut truncated_tail_bytes = 0u64;
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut segments: Vec<Segment> = Vec::with_capacity(n_listed);
        let mut last_allocated_len_bytes = 0u64;

        for (listed_idx, (first_index, path)) in listed.into_iter().enumerate() {
            let is_last = listed_idx + 1 == n_listed;
            if let Some(prev_last) = segments.last().and_then(Segment::last_index) {
                if prev_last.checked_add(1) != Some(first_index) {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "segment starts at index {first_index} but the previous segment ends at index {prev_last}: a segment is missing or out of place"
                        ),
                    });
                }
            }
            let bytes = fs::read(&path).map_err(io_error("read segment", &path))?;
            let scanned = scan_segment(&path, &bytes, first_index, is_last, &mut records)?;
            // Zeros after the records are preallocated space, not damage: they stay.
            let nonzero_len_bytes = bytes
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |last| last as u64 + 1);
            let file_len_bytes = bytes.len() as u64;
            let torn = scanned.valid_len_bytes < nonzero_len_bytes;
            if torn {
                assert!(is_last, "only the last segment may have a torn tail");
                truncated_tail_bytes = nonzero_len_bytes - scanned.valid_len_bytes;
            }
            if scanned.record_offsets.is_empty() {
                if !is_last {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: "segment holds no records but is not the last segment".to_owned(),
                    });
                }
                // A segment created just before a crash, before any of its records
                // reached the disk: nothing in it was ever synced.
                fs::remove_file(&path).map_err(io_error("remove empty last segment", &path))?;
                fsync_dir(dir)?;
                n_fsyncs += 1;
                continue;
            }
            let mut allocated_len_bytes = file_len_bytes;
            if torn {
                allocated_len_bytes = scanned.valid_len_bytes;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error("open segment to cut torn tail", &path))?;
                file.set_len(scanned.valid_len_bytes)
                    .map_err(io_error("cut torn tail", &path))?;
                // The fsync below (of the active segment) makes the cut durable.
            }
            segments.push(Segment {
                first_index,
                path,
                record_offsets: scanned.record_offsets,
                len_bytes: scanned.valid_len_bytes,
            });
            last_allocated_len_bytes = allocated_len_bytes;
        }

        let mut active_file = None;
        let mut flushed_len_bytes = 0;
        if let Some(last) = segments.last() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(io_error("open active segment", &last.path))?;
            // Records that survived a process crash may exist only in the page cache;
            // make them durable before anyone acts on them.
            file.sync_all()
                .map_err(io_error("fsync active segment", &last.path))?;
            fsync_dir(dir)?;
            n_fsyncs += 2;
            flushed_len_bytes = last.len_bytes;
            active_file = Some(file);
        }
        let allocated_len_bytes = if active_file.is_some() {
            last_allocated_len_bytes
        } else {
            0
        };

        let recovered = Recovered {
            first_index: records.first().map_or(0, |(index, _)| *index),
            records,
            truncated_tail_bytes,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            active_file,
            flushed_len_bytes,
            allocated_len_bytes,
            buffer: Vec::new(),
            file_dirty: false,
            dir_dirty: false,
            poisoned: false,
            n_fsyncs,
        };
        Ok((wal, recovered))
    }

    /// Buffers a record at `index`.
    ///
    /// `index` must be `last_index() + 1`, or at most `last_index()`, in which case every
    /// record at or after `index` is discarded first (Raft's conflicting-suffix
    /// truncation, §5.3). If the log is empty, any index starts it (e.g. after a snapshot
    /// reset). Not durable until [`Wal::sync`].
    pub fn append(&mut self, index: u64, data: &[u8]) -> Result<(), WalError> {
        self.check_poisoned()?;
        if data.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                index,
                len_bytes: data.len() as u64,
                len_bytes_max: RECORD_BYTES_MAX as u64,
            });
        }
        if let Some(last_index) = self.last_index() {
            if index > last_index && index - last_index > 1 {
                return Err(WalError::IndexGap { index, last_index });
            }
        }
        let result = self.append_inner(index, data);
        self.poison_on_io_error(result)
    }

    /// Makes every append and truncation so far durable with one fsync of the active
    /// segment (group commit), plus one fsync of the directory when a segment was
    /// created since the last sync. Does nothing when nothing changed.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        let result = self.sync_inner();
        self.poison_on_io_error(result)
    }

    /// Discards records with index >= `from`.
    ///
    /// Durable at the next [`Wal::sync`] at the latest. When the discarded records had
    /// already been written to the file, the cut is made durable before this returns,
    /// because appends that follow must never reach the disk before it (a crash could
    /// otherwise leave new records followed by stale ones, which recovery must refuse).
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), WalError> {
        self.check_poisoned()?;
        let result = self.truncate_suffix_inner(from);
        self.poison_on_io_error(result)
    }

    /// Allows records with index <= `upto` to be discarded (log compaction behind a
    /// snapshot, Raft §7): removes whole segments whose last index is <= `upto`, oldest
    /// first. The last segment is never removed, so [`Wal::first_index`] may stay below
    /// `upto + 1`. Durable when it returns.
    pub fn compact_prefix(&mut self, upto: u64) -> Result<(), WalError> {
        self.check_poisoned()?;
        let result = self.compact_prefix_inner(upto);
        self.poison_on_io_error(result)
    }

    /// Discards everything; the next append may start at any index (used when a
    /// snapshot replaces the whole log). Durable when it returns.
    pub fn reset(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        let result = self.reset_inner();
        self.poison_on_io_error(result)
    }

    /// Index of the first record, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.segments.first().map(|segment| segment.first_index)
    }

    /// Index of the last record, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.segments.last().and_then(Segment::last_index)
    }

    /// Reads records `[from, to]` back, each checked against its CRC.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        self.check_poisoned()?;
        let out_of_range = || WalError::OutOfRange {
            from,
            to,
            first_index: self.first_index(),
            last_index: self.last_index(),
        };
        let (Some(first_index), Some(last_index)) = (self.first_index(), self.last_index()) else {
            return Err(out_of_range());
        };
        if from > to || from < first_index || to > last_index {
            return Err(out_of_range());
        }
        let mut records = Vec::new();
        for (segment_idx, segment) in self.segments.iter().enumerate() {
            let Some(segment_last) = segment.last_index() else {
                continue;
            };
            if segment_last < from {
                continue;
            }
            if segment.first_index > to {
                break;
            }
            let lo = from.max(segment.first_index);
            let hi = to.min(segment_last);
            let start = segment.offset_of(lo);
            let end = segment.end_of(hi);
            let bytes = self.read_segment_bytes(segment_idx, start, end)?;
            let mut pos = 0usize;
            for expected in lo..=hi {
                let corrupt = |reason: String| WalError::Corrupt {
                    path: segment.path.clone(),
                    offset: start + pos as u64,
                    reason,
                };
                let record = decode(&bytes[pos..]).map_err(|e| corrupt(e.to_string()))?;
                if record.index != expected {
                    return Err(corrupt(format!(
                        "record holds index {} where index {expected} belongs",
                        record.index
                    )));
                }
                records.push((record.index, record.payload.to_vec()));
                pos += record.frame_len;
            }
        }
        Ok(records)
    }

    /// Number of fsync calls (of files and of the directory) made so far, for benchmarks.
    pub fn n_fsyncs(&self) -> u64 {
        self.n_fsyncs
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// After a failed system call the in-memory state may not match the disk (a write
    /// may be half done, a failed fsync may have dropped dirty pages), so the log
    /// refuses further use until it is reopened.
    fn poison_on_io_error<T>(&mut self, result: Result<T, WalError>) -> Result<T, WalError> {
        if let Err(WalError::Io { .. }) = &result {
            self.poisoned = true;
        }
        result
    }

    fn append_inner(&mut self, index: u64, data: &[u8]) -> Result<(), WalError> {
        if self.last_index().is_some_and(|last_index| index <= last_index) {
            self.truncate_suffix_inner(index)?;
        }
        let frame_len_bytes = record_frame_bytes(data.len());
        let needs_new_segment = match self.segments.last() {
            None => true,
            Some(segment) => {
                segment.n_records() > 0
                    && segment.len_bytes + frame_len_bytes as u64 > self.options.segment_size_bytes_max
            }
        };
        if needs_new_segment {
            self.start_segment(index)?;
        }
        let Some(segment) = self.segments.last_mut() else {
            unreachable!("start_segment pushed a segment");
        };
        assert_eq!(
            segment.first_index + segment.n_records(),
            index,
            "append continues the last segment"
        );
        segment.record_offsets.push(segment.len_bytes);
        segment.len_bytes += frame_len_bytes as u64;
        self.file_dirty = true;

        let header = encode_header(index, data);
        if frame_len_bytes > WRITE_BUFFER_BYTES_MAX {
            // A large record goes straight to the file instead of growing the buffer.
            self.flush()?;
            self.preallocate(self.flushed_len_bytes + frame_len_bytes as u64)?;
            let path = &self.segments[self.segments.len() - 1].path;
            let file = active_file(&self.active_file);
            file.write_all_at(&header, self.flushed_len_bytes)
                .map_err(io_error("write record header", path))?;
            file.write_all_at(data, self.flushed_len_bytes + RECORD_HEADER_BYTES as u64)
                .map_err(io_error("write record payload", path))?;
            self.flushed_len_bytes += frame_len_bytes as u64;
        } else {
            self.buffer.extend_from_slice(&header);
            self.buffer.extend_from_slice(data);
            if self.buffer.len() >= WRITE_BUFFER_BYTES_MAX {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Seals the current last segment (if any) and starts a new one at `first_index`.
    ///
    /// The sealed segment and its directory entry are made durable first, so that a
    /// segment which is not the last is always complete on disk: recovery can then treat
    /// any damage in it as corruption rather than as a torn tail.
    fn start_segment(&mut self, first_index: u64) -> Result<(), WalError> {
        if !self.segments.is_empty() {
            self.sync_inner()?;
            self.cut_preallocation()?;
        }
        let path = self.dir.join(segment_file_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        self.segments.push(Segment {
            first_index,
            path,
            record_offsets: Vec::new(),
            len_bytes: 0,
        });
        self.active_file = Some(file);
        self.flushed_len_bytes = 0;
        self.allocated_len_bytes = 0;
        self.buffer.clear();
        self.dir_dirty = true;
        Ok(())
    }

    /// Zero-fills the active segment's file up to at least `end` (see
    /// [`WalOptions::preallocate_bytes`]). Durable with the next fsync, like the records.
    fn preallocate(&mut self, end: u64) -> Result<(), WalError> {
        let step = self.options.preallocate_bytes;
        if step == 0 || end <= self.allocated_len_bytes {
            return Ok(());
        }
        let target = (self.allocated_len_bytes + step)
            .min(self.options.segment_size_bytes_max)
            .max(end);
        let zeros = vec![0u8; PREALLOCATE_WRITE_BYTES.min((target - self.allocated_len_bytes) as usize)];
        let path = &self.segments[self.segments.len() - 1].path;
        let file = active_file(&self.active_file);
        let mut offset = self.allocated_len_bytes;
        while offset < target {
            let n = zeros.len().min((target - offset) as usize);
            file.write_all_at(&zeros[..n], offset)
                .map_err(io_error("preallocate segment", path))?;
            offset += n as u64;
        }
        self.allocated_len_bytes = target;
        Ok(())
    }

    /// Cuts the active segment's file back to its records (before it is sealed), durably.
    fn cut_preallocation(&mut self) -> Result<(), WalError> {
        let Some(segment) = self.segments.last() else {
            return Ok(());
        };
        if self.allocated_len_bytes <= segment.len_bytes {
            return Ok(());
        }
        let file = active_file(&self.active_file);
        file.set_len(segment.len_bytes)
            .map_err(io_error("cut preallocated space", &segment.path))?;
        file.sync_all()
            .map_err(io_error("fsync sealed segment", &segment.path))?;
        self.n_fsyncs += 1;
        self.allocated_len_bytes = segment.len_bytes;
        Ok(())
    }

    /// Hands the write buffer to the operating system (no fsync).
    fn flush(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.preallocate(self.flushed_len_bytes + self.buffer.len() as u64)?;
        let path = &self.segments[self.segments.len() - 1].path;
        active_file(&self.active_file)
            .write_all_at(&self.buffer, self.flushed_len_bytes)
            .map_err(io_error("write segment", path))?;
        self.flushed_len_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<(), WalError> {
        if self.segments.is_empty() {
            assert!(self.buffer.is_empty(), "no buffered bytes without a segment");
        } else {
            self.flush()?;
            if self.file_dirty {
                let path = &self.segments[self.segments.len() - 1].path;
                active_file(&self.active_file)
                    .sync_data()
                    .map_err(io_error("fsync segment", path))?;
                self.n_fsyncs += 1;
                self.file_dirty = false;
            }
        }
        if self.dir_dirty {
            fsync_dir(&self.dir)?;
            self.n_fsyncs += 1;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn truncate_suffix_inner(&mut self, from: u64) -> Result<(), WalError> {
        let Some(last_index) = self.last_index() else {
            return Ok(());
        };
        if from > last_index {
            return Ok(());
        }
        // Whole segments go newest first, each removal durable before the next, so a
        // crash leaves a contiguous prefix of segments.
        while self
            .segments
            .last()
            .is_some_and(|segment| segment.first_index >= from)
        {
            self.active_file = None;
            self.buffer.clear();
            self.file_dirty = false;
            if let Some(segment) = self.segments.pop() {
                self.remove_segment_file_durably(&segment.path)?;
            }
        }
        let Some(segment) = self.segments.last_mut() else {
            self.flushed_len_bytes = 0;
            self.allocated_len_bytes = 0;
            return Ok(());
        };
        if self.active_file.is_none() {
            // A sealed segment becomes the active one again; it is fully on disk.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment.path)
                .map_err(io_error("reopen segment", &segment.path))?;
            self.active_file = Some(file);
            self.flushed_len_bytes = segment.len_bytes;
            self.allocated_len_bytes = segment.len_bytes;
            self.buffer.clear();
        }
        let Some(segment_last) = segment.last_index() else {
            unreachable!("segments other than a new one hold records");
        };
        if from > segment_last {
            return Ok(());
        }
        let cut = segment.offset_of(from);
        let n_kept = usize::try_from(from - segment.first_index).expect("index within segment");
        segment.record_offsets.truncate(n_kept);
        segment.len_bytes = cut;
        if cut >= self.flushed_len_bytes {
            let n_buffered_kept =
                usize::try_from(cut - self.flushed_len_bytes).expect("buffer length fits usize");
            self.buffer.truncate(n_buffered_kept);
        } else {
            self.buffer.clear();
            let file = active_file(&self.active_file);
            file.set_len(cut)
                .map_err(io_error("truncate segment", &segment.path))?;
            file.sync_data()
                .map_err(io_error("fsync truncated segment", &segment.path))?;
            self.n_fsyncs += 1;
            self.flushed_len_bytes = cut;
            self.allocated_len_bytes = cut;
            self.file_dirty = false;
        }
        Ok(())
    }

    fn compact_prefix_inner(&mut self, upto: u64) -> Result<(), WalError> {
        // Oldest first, each removal durable before the next, so a crash leaves a
        // contiguous suffix of segments.
        while self.segments.len() > 1 && self.segments[1].first_index - 1 <= upto {
            let segment = self.segments.remove(0);
            self.remove_segment_file_durably(&segment.path)?;
        }
        Ok(())
    }

    fn reset_inner(&mut self) -> Result<(), WalError> {
        self.active_file = None;
        self.buffer.clear();
        self.flushed_len_bytes = 0;
        self.allocated_len_bytes = 0;
        self.file_dirty = false;
        // Newest first, as in truncate_suffix: a crash leaves a contiguous prefix.
        while let Some(segment) = self.segments.pop() {
            self.remove_segment_file_durably(&segment.path)?;
        }
        self.dir_dirty = false;
        Ok(())
    }

    /// Removes a segment file and fsyncs the directory.
    ///
    /// Cost: one directory fsync per removed segment. Removals are rare (conflicts,
    /// compaction, snapshot installs), and ordering them keeps every crash state a
    /// contiguous log instead of one with a hole that recovery would have to refuse.
    fn remove_segment_file_durably(&mut self, path: &Path) -> Result<(), WalError> {
        fs::remove_file(path).map_err(io_error("remove segment", path))?;
        fsync_dir(&self.dir)?;
        self.n_fsyncs += 1;
        Ok(())
    }

    /// Reads bytes `[start, end)` of a segment, from the file and, for the last segment,
    /// from the write buffer.
    fn read_segment_bytes(&self, segment_idx: usize, start: u64, end: u64) -> Result<Vec<u8>, WalError> {
        let segment = &self.segments[segment_idx];
        let len = usize::try_from(end - start).expect("segment range fits in memory");
        let mut bytes = vec![0u8; len];
        let is_last = segment_idx + 1 == self.segments.len();
        if !is_last {
            let file = File::open(&segment.path).map_err(io_error("open segment", &segment.path))?;
            file.read_exact_at(&mut bytes, start)
                .map_err(io_error("read segment", &segment.path))?;
            return Ok(bytes);
        }
        let disk_end = end.min(self.flushed_len_bytes);
        if start < disk_end {
            let n_disk = usize::try_from(disk_end - start).expect("fits usize");
            active_file(&self.active_file)
                .read_exact_at(&mut bytes[..n_disk], start)
                .map_err(io_error("read segment", &segment.path))?;
        }
        if end > self.flushed_len_bytes {
            let buffer_start = usize::try_from(start.max(self.flushed_len_bytes) - self.flushed_len_bytes)
                .expect("fits usize");
            let buffer_end = usize::try_from(end - self.flushed_len_bytes).expect("fits usize");
            let n_disk = len - (buffer_end - buffer_start);
            bytes[n_disk..].copy_from_slice(&self.buffer[buffer_start..buffer_end]);
        }
        Ok(bytes)
    }
}

/// The open handle of the last segment, which exists whenever a segment does.
fn active_file(active_file: &Option<File>) -> &File {
    active_file.as_ref().expect("the last segment has an open handle")
}

/// Lists segment files in `dir` as (first index, path), ascending. Other files are ignored.
fn list_segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let entry = entry.map_err(io_error("list directory", dir))?;
        let name = entry.file_name();
        let Some(first_index) = name.to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        segments.push((first_index, entry.path()));
    }
    segments.sort_unstable_by_key(|(first_index, _)| *first_index);
    Ok(segments)
}

/// Validates one segment's records, appending them to `records`.
///
/// Damage in the last segment is a torn tail (cut, not an error) unless a fully valid
/// record follows it; damage anywhere else, or a valid record with the wrong index, is
/// corruption.
fn scan_segment(
    path: &Path,
    bytes: &[u8],
    first_index: u64,
    is_last: bool,
    records: &mut Vec<(u64, Vec<u8>)>,
) -> Result<ScannedSegment, WalError> {
    let mut record_offsets = Vec::new();
    let mut offset = 0usize;
    let mut expected_index = first_index;
    while offset < bytes.len() {
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        match decode(&bytes[offset..]) {
            Ok(record) => {
                if record.index != expected_index {
                    return Err(corrupt(
                        offset,
                        format!(
                            "record holds index {} where index {expected_index} belongs: the log is not contiguous",
                            record.index
                        ),
                    ));
                }
                record_offsets.push(offset as u64);
                records.push((record.index, record.payload.to_vec()));
                offset += record.frame_len;
                expected_index = expected_index
                    .checked_add(1)
                    .ok_or_else(|| corrupt(offset, "record index overflows u64".to_owned()))?;
            }
            Err(decode_error) => {
                if !is_last {
                    return Err(corrupt(
                        offset,
                        format!("{decode_error} in a segment that is not the last"),
                    ));
                }
                if let Some(valid_offset) = find_valid_record_after(bytes, offset, expected_index) {
                    return Err(corrupt(
                        offset,
                        format!(
                            "{decode_error}, yet a valid record follows at byte offset {valid_offset}, so this is not a torn tail"
                        ),
                    ));
                }
                break;
            }
        }
    }
    Ok(ScannedSegment {
        record_offsets,
        valid_len_bytes: offset as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_names_roundtrip() {
        // Goal: names sort like their indices and parse back; foreign names are ignored.
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("00000000000000000001.wal.tmp"), None);
        assert_eq!(parse_segment_file_name("1.wal"), None);
        assert_eq!(parse_segment_file_name("99999999999999999999.wal"), None);
    }

    #[test]
    fn options_reject_zero_segment_size() {
        // Goal: validation names the bad option.
        let options = WalOptions {
            segment_size_bytes_max: 0,
            ..WalOptions::default()
        };
        let error = options.validate().unwrap_err();
        assert!(error.to_string().contains("segment_size_bytes_max"));
    }

    #[test]
    fn reads_span_file_and_buffer() {
        // Goal: read_range returns records whether they are on disk or still buffered.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        wal.append(1, b"one").expect("append");
        wal.append(2, b"two").expect("append");
        wal.sync().expect("sync");
        wal.append(3, b"three").expect("append");
        assert_eq!(wal.flushed_len_bytes, wal.segments[0].offset_of(3));
        let records = wal.read_range(1, 3).expect("read");
        assert_eq!(
            records,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]
        );
    }

    #[test]
    fn large_record_bypasses_the_buffer() {
        // Goal: a record above the buffer size is written directly and reads back intact.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        let big = vec![0x5Au8; WRITE_BUFFER_BYTES_MAX + 10];
        wal.append(1, b"small").expect("append");
        wal.append(2, &big).expect("append");
        assert!(wal.buffer.is_empty());
        assert_eq!(wal.read_range(2, 2).expect("read")[0].1, big);
        wal.sync().expect("sync");
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        assert_eq!(recovered.records.len(), 2);
        assert_eq!(recovered.records[1].1, big);
    }
}
