//! The segmented write-ahead log.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{io_err, sync_dir, WalError};

const MAGIC: u8 = 0xA7;
const HEADER_BYTES: usize = 1 + 4 + 8 + 4;
/// Largest record payload. Cost: recovery and reads hold one record in memory at a time.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Buffered bytes written to the file before `sync` asks for it (bounds the write buffer).
const WRITE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".wal";

#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is rotated once it grows past this. Cost: compaction frees space in steps of
    /// one segment, and recovery of the last segment reads it whole.
    pub segment_size_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_size_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// What `open` found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Index of the first record (meaningless when `records` is empty).
    pub first_index: u64,
    /// (index, data), contiguous and ascending.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes of a torn tail cut from the last segment.
    pub truncated_tail_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// File offset of each record, `offsets[i]` for index `first_index + i`.
    offsets: Vec<u64>,
    /// Bytes in the file (written) plus bytes buffered for it.
    len_bytes: u64,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }
}

pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<Segment>,
    /// Append handle of the last segment.
    active: Option<File>,
    /// Encoded records not yet written to the active file.
    buffer: Vec<u8>,
    /// The active file has writes not yet fsynced.
    file_dirty: bool,
    /// Segments were created or removed since the last directory fsync.
    dir_dirty: bool,
    n_fsyncs: u64,
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

fn encode(index: u64, data: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(MAGIC);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 13]), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
}

/// Decodes the record at `offset` of `bytes`: Some((index, payload range end)) when valid.
fn decode(bytes: &[u8], offset: usize) -> Option<(u64, usize, usize)> {
    let header = bytes.get(offset..offset + HEADER_BYTES)?;
    if header[0] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > RECORD_BYTES_MAX {
        return None;
    }
    let index = u64::from_le_bytes(header[5..13].try_into().ok()?);
    let crc = u32::from_le_bytes(header[13..17].try_into().ok()?);
    let payload_start = offset + HEADER_BYTES;
    let payload = bytes.get(payload_start..payload_start + len)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[..13]), payload);
    (actual == crc).then_some((index, payload_start, payload_start + len))
}

impl Wal {
    /// Opens (creating if absent) the log in `dir`, recovering what is on disk.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                if let Ok(first_index) = stem.parse::<u64>() {
                    names.push((first_index, entry.path()));
                }
            }
        }
        names.sort();
        let mut recovered = Recovered::default();
        let mut segments = Vec::new();
        let n_segments = names.len();
        for (segment_idx, (first_index, path)) in names.into_iter().enumerate() {
            let is_last = segment_idx + 1 == n_segments;
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            let corrupt = |offset: usize, reason: String| WalError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason,
            };
            if let Some((last_index, _)) = recovered.records.last() {
                if first_index != last_index + 1 {
                    return Err(corrupt(
                        0,
                        format!("segment starts at {first_index}, expected {}", last_index + 1),
                    ));
                }
            }
            let mut offsets = Vec::new();
            let mut offset = 0usize;
            while offset < bytes.len() {
                let expected_index = first_index + offsets.len() as u64;
                match decode(&bytes, offset) {
                    Some((index, start, end)) => {
                        if index != expected_index {
                            return Err(corrupt(
                                offset,
                                format!("record index {index}, expected {expected_index}"),
                            ));
                        }
                        offsets.push(offset as u64);
                        recovered.records.push((index, bytes[start..end].to_vec()));
                        offset = end;
                    }
                    None => {
                        if !is_last {
                            return Err(corrupt(offset, "bad record in a sealed segment".into()));
                        }
                        if (offset + 1..bytes.len()).any(|later| decode(&bytes, later).is_some()) {
                            return Err(corrupt(offset, "bad record followed by valid records".into()));
                        }
                        // A torn tail: cut it.
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io_err("open", &path))?;
                        file.set_len(offset as u64).map_err(io_err("truncate", &path))?;
                        file.sync_all().map_err(io_err("fsync", &path))?;
                        recovered.truncated_tail_bytes = (bytes.len() - offset) as u64;
                        break;
                    }
                }
            }
            let len_bytes = offset as u64;
            segments.push(Segment {
                first_index,
                path,
                offsets,
                len_bytes,
            });
        }
        recovered.first_index = recovered.records.first().map_or(0, |(index, _)| *index);
        // Empty trailing segments (e.g. a crash right after rotation) are removed.
        let mut dir_dirty = false;
        while segments.last().is_some_and(|s| s.offsets.is_empty()) {
            if let Some(segment) = segments.pop() {
                fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
                dir_dirty = true;
            }
        }
        let active = match segments.last() {
            Some(segment) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_err("open", &segment.path))?,
            ),
            None => None,
        };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            active,
            buffer: Vec::new(),
            file_dirty: false,
            dir_dirty,
            n_fsyncs: 0,
        };
        if wal.dir_dirty {
            sync_dir(&wal.dir)?;
            wal.dir_dirty = false;
        }
        Ok((wal, recovered))
    }

    pub fn first_index(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| !s.offsets.is_empty())
            .map(|s| s.first_index)
    }

    pub fn last_index(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last_index)
    }

    pub fn n_fsyncs(&self) -> u64 {
        self.n_fsyncs
    }

    /// Buffers a record at `index` (see the crate docs for truncation). Not durable until `sync`.
    pub fn append(&mut self, index: u64, data: &[u8]) -> Result<(), WalError> {
        if data.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                size_bytes: data.len(),
                max_bytes: RECORD_BYTES_MAX,
            });
        }
        match self.last_index() {
            Some(last) if index <= last => {
                self.truncate_suffix(index)?;
            }
            Some(last) if index != last + 1 => {
                return Err(WalError::Gap {
                    index,
                    last_index: last,
                })
            }
            _ => {}
        }
        let needs_segment = match self.segments.last() {
            None => true,
            Some(segment) => segment.len_bytes >= self.options.segment_size_bytes_max,
        };
        if needs_segment || self.last_index().is_none() {
            self.start_segment(index)?;
        }
        let segment = self.segments.last_mut().expect("a segment was just ensured");
        segment.offsets.push(segment.len_bytes);
        let before = self.buffer.len();
        encode(index, data, &mut self.buffer);
        segment.len_bytes += (self.buffer.len() - before) as u64;
        if self.buffer.len() >= WRITE_BUFFER_BYTES_MAX {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Seals the active segment (its data made durable) and starts a new one at `first_index`.
    fn start_segment(&mut self, first_index: u64) -> Result<(), WalError> {
        if self.active.is_some() {
            self.sync()?;
        }
        // An empty segment (all truncated away) is replaced.
        if let Some(segment) = self.segments.last() {
            if segment.offsets.is_empty() {
                let segment = self.segments.pop().expect("checked");
                fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
            }
        }
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        self.active = Some(file);
        self.segments.push(Segment {
            first_index,
            path,
            offsets: Vec::new(),
            len_bytes: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.last()) else {
            self.buffer.clear();
            return Ok(());
        };
        file.write_all(&self.buffer)
            .map_err(io_err("write", &segment.path))?;
        self.buffer.clear();
        self.file_dirty = true;
        Ok(())
    }

    /// Makes every append and truncation so far durable: one fsync of the active segment (group
    /// commit), plus one of the directory if segments were created or removed.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        if self.file_dirty {
            if let (Some(file), Some(segment)) = (self.active.as_ref(), self.segments.last()) {
                file.sync_data().map_err(io_err("fsync", &segment.path))?;
                self.n_fsyncs += 1;
            }
            self.file_dirty = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.n_fsyncs += 1;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Discards records with index >= `from` (durable at the next `sync`).
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), WalError> {
        if self.last_index().is_none_or(|last| from > last) {
            return Ok(());
        }
        self.write_buffer()?;
        while let Some(segment) = self.segments.last() {
            if segment.first_index >= from && self.segments.len() > 1 {
                let segment = self.segments.pop().expect("checked");
                fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
                self.dir_dirty = true;
                continue;
            }
            break;
        }
        let Some(segment) = self.segments.last_mut() else {
            return Ok(());
        };
        let keep = from.saturating_sub(segment.first_index) as usize;
        if keep < segment.offsets.len() {
            let cut = segment.offsets[keep];
            segment.offsets.truncate(keep);
            segment.len_bytes = cut;
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(io_err("open", &segment.path))?;
            file.set_len(cut).map_err(io_err("truncate", &segment.path))?;
            self.file_dirty = true;
        }
        let path = segment.path.clone();
        self.active = Some(
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err("open", &path))?,
        );
        Ok(())
    }

    /// Allows records with index <= `upto` to go: removes whole sealed segments that end at or
    /// before it. The active segment is never removed.
    pub fn compact_prefix(&mut self, upto: u64) -> Result<(), WalError> {
        while self.segments.len() > 1 && self.segments[0].last_index().is_some_and(|last| last <= upto) {
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
            self.dir_dirty = true;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Discards everything, durably; the next append may start at any index.
    pub fn reset(&mut self) -> Result<(), WalError> {
        self.buffer.clear();
        self.active = None;
        for segment in self.segments.drain(..) {
            fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
        }
        self.file_dirty = false;
        sync_dir(&self.dir)?;
        self.dir_dirty = false;
        Ok(())
    }

    /// Reads records `from..=to` back from disk (flushing buffered appends first).
    pub fn read_range(&mut self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Ok(Vec::new());
        };
        for index in [from, to] {
            if index < first || index > last {
                return Err(WalError::OutOfRange {
                    index,
                    first_index: first,
                    last_index: last,
                });
            }
        }
        self.write_buffer()?;
        let mut out = Vec::new();
        for segment in &self.segments {
            let Some(seg_last) = segment.last_index() else {
                continue;
            };
            if seg_last < from || segment.first_index > to {
                continue;
            }
            let mut file = File::open(&segment.path).map_err(io_err("open", &segment.path))?;
            let start_idx = from.max(segment.first_index);
            let start = segment.offsets[(start_idx - segment.first_index) as usize];
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seek", &segment.path))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(io_err("read", &segment.path))?;
            let mut offset = 0;
            for index in start_idx..=to.min(seg_last) {
                let Some((found, begin, end)) = decode(&bytes, offset) else {
                    return Err(WalError::Corrupt {
                        path: segment.path.clone(),
                        offset: start + offset as u64,
                        reason: "record unreadable after it was written".into(),
                    });
                };
                debug_assert_eq!(found, index);
                out.push((index, bytes[begin..end].to_vec()));
                offset = end;
            }
        }
        Ok(out)
    }
}
