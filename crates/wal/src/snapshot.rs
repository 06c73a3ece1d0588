//! Snapshots written and read as streams of chunks, with bounded memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io_error, WalError};
use crate::fsutil::{create_dir_durably, fsync_dir};

/// First bytes of a snapshot file (format version 1).
const SNAPSHOT_MAGIC_HEAD: [u8; 8] = *b"SHOALSN1";
/// Last bytes of a complete snapshot file.
const SNAPSHOT_MAGIC_TAIL: [u8; 8] = *b"SHOALEND";
/// Header: magic (8) + meta length u32 LE (4); the meta bytes follow.
const SNAPSHOT_HEADER_BYTES: u64 = 12;
/// Trailer: data length u64 LE (8) + CRC32C u32 LE (4) + tail magic (8).
const SNAPSHOT_TRAILER_BYTES: u64 = 20;

const SNAPSHOT_FILE_PREFIX: &str = "snap-";
const SNAPSHOT_FILE_SUFFIX: &str = ".snap";
const SNAPSHOT_TMP_SUFFIX: &str = ".tmp";
const SNAPSHOT_FILE_INDEX_DIGITS: usize = 20;

/// Largest opaque snapshot metadata: 16 MiB.
///
/// Cost: the meta is held in memory by every [`SnapshotInfo`]; it carries index, term
/// and membership, which are small.
pub const SNAPSHOT_META_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest chunk [`SnapshotStore::read_chunk`] returns: 16 MiB; larger requests are cut.
///
/// Cost: one chunk is held in memory per call; bigger chunks mean fewer round trips
/// when sending a snapshot to a follower.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Buffer of a snapshot writer, reader or validation pass: 256 KiB.
///
/// Cost: this much memory per open writer or reader, independent of the snapshot's size.
const SNAPSHOT_IO_BUFFER_BYTES: usize = 256 * 1024;

/// Complete snapshots kept on disk: the newest and one previous.
///
/// Cost: disk space of one extra snapshot; in return a follower still receiving the
/// previous snapshot in chunks is not cut off when a new one is finished.
pub const SNAPSHOTS_KEPT_MAX: usize = 2;

/// Description of a complete snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The index naming the snapshot (the last log index it covers).
    pub index: u64,
    /// Opaque metadata given to [`SnapshotStore::begin`].
    pub meta: Vec<u8>,
    /// Length of the data part in bytes.
    pub data_len: u64,
}

/// Returns the file name of the snapshot at `index`.
pub fn snapshot_file_name(index: u64) -> String {
    format!(
        "{SNAPSHOT_FILE_PREFIX}{index:0width$}{SNAPSHOT_FILE_SUFFIX}",
        width = SNAPSHOT_FILE_INDEX_DIGITS
    )
}

/// Parses a complete snapshot's file name back into its index.
fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SNAPSHOT_FILE_PREFIX)?
        .strip_suffix(SNAPSHOT_FILE_SUFFIX)?;
    if digits.len() != SNAPSHOT_FILE_INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A directory of snapshot files: `snap-<index, 20 digits>.snap`.
///
/// One writer at a time: the Raft runtime either takes a snapshot or receives one.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating if absent) the snapshot directory and removes leftover temporary
    /// files of writers interrupted by a crash.
    pub fn open(dir: &Path) -> Result<SnapshotStore, WalError> {
        create_dir_durably(dir)?;
        let mut n_removed = 0usize;
        for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
            let entry = entry.map_err(io_error("list directory", dir))?;
            let name = entry.file_name();
            let is_tmp = name.to_str().is_some_and(|name| {
                name.starts_with(SNAPSHOT_FILE_PREFIX) && name.ends_with(SNAPSHOT_TMP_SUFFIX)
            });
            if is_tmp {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error("remove temporary snapshot", &path))?;
                n_removed += 1;
            }
        }
        if n_removed > 0 {
            fsync_dir(dir)?;
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Starts writing the snapshot at `index` with opaque `meta` (the Raft runtime
    /// stores index, term and membership there). Nothing is visible until
    /// [`SnapshotWriter::finish`]; a writer dropped before that removes its file.
    pub fn begin(&self, index: u64, meta: &[u8]) -> Result<SnapshotWriter, WalError> {
        if meta.len() > SNAPSHOT_META_BYTES_MAX {
            return Err(WalError::TooLarge {
                what: "snapshot meta",
                len_bytes: meta.len() as u64,
                len_bytes_max: SNAPSHOT_META_BYTES_MAX as u64,
            });
        }
        if let Some((latest_index, _)) = self.list_snapshot_files()?.last() {
            if index < *latest_index {
                return Err(WalError::SnapshotStale {
                    index,
                    latest_index: *latest_index,
                });
            }
        }
        let final_path = self.dir.join(snapshot_file_name(index));
        let tmp_path = self
            .dir
            .join(format!("{}{SNAPSHOT_TMP_SUFFIX}", snapshot_file_name(index)));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io_error("create temporary snapshot", &tmp_path))?;
        let meta_len = u32::try_from(meta.len()).expect("SNAPSHOT_META_BYTES_MAX fits in u32");
        let mut header = [0u8; SNAPSHOT_HEADER_BYTES as usize];
        header[..8].copy_from_slice(&SNAPSHOT_MAGIC_HEAD);
        header[8..12].copy_from_slice(&meta_len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), meta);
        let mut writer = SnapshotWriter {
            dir: self.dir.clone(),
            index,
            meta: meta.to_vec(),
            tmp_path,
            final_path,
            file: Some(BufWriter::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file)),
            crc,
            data_len: 0,
        };
        writer.write_raw(&header)?;
        writer.write_raw(meta)?;
        Ok(writer)
    }

    /// The newest complete snapshot, or `None` if there is none.
    ///
    /// The newest file is validated in full (CRC over meta and data; cost: one sequential
    /// read of the snapshot, so call it at startup, not per request). If that fails this
    /// returns [`WalError::Corrupt`] rather than falling back to an older snapshot: the log
    /// may already be compacted past the older one, and entries this node acknowledged
    /// would silently be forgotten.
    pub fn latest(&self) -> Result<Option<SnapshotInfo>, WalError> {
        let Some((index, path)) = self.list_snapshot_files()?.pop() else {
            return Ok(None);
        };
        validate_snapshot_file(&path, index).map(Some)
    }

    /// Validates the snapshot at `index` in full (CRC over meta and data) and describes it.
    pub fn info(&self, index: u64) -> Result<SnapshotInfo, WalError> {
        validate_snapshot_file(&self.dir.join(snapshot_file_name(index)), index)
    }

    /// Data length of the snapshot at `index`, from its header and trailer (no CRC pass).
    pub fn data_len(&self, index: u64) -> Result<u64, WalError> {
        let path = self.dir.join(snapshot_file_name(index));
        let file = open_snapshot_file(&path, index)?;
        Ok(read_layout(&file, &path)?.data_len)
    }

    /// Reads up to `max_len` data bytes (at most [`SNAPSHOT_CHUNK_BYTES_MAX`]) at
    /// `offset` from the snapshot at `index`; an empty result means the end. Chunks are
    /// not CRC-checked one by one: [`SnapshotStore::latest`] validated the whole file.
    pub fn read_chunk(&self, index: u64, offset: u64, max_len: usize) -> Result<Vec<u8>, WalError> {
        let path = self.dir.join(snapshot_file_name(index));
        let file = open_snapshot_file(&path, index)?;
        let layout = read_layout(&file, &path)?;
        if offset > layout.data_len {
            return Err(WalError::SnapshotOffsetOutOfRange {
                index,
                offset,
                data_len: layout.data_len,
            });
        }
        let n_remaining = layout.data_len - offset;
        let len = max_len
            .min(SNAPSHOT_CHUNK_BYTES_MAX)
            .min(usize::try_from(n_remaining).unwrap_or(usize::MAX));
        let mut chunk = vec![0u8; len];
        file.read_exact_at(&mut chunk, layout.data_offset + offset)
            .map_err(io_error("read snapshot chunk", &path))?;
        Ok(chunk)
    }

    /// Opens the data part of the snapshot at `index` for streaming into a state machine.
    /// The reader checks the CRC when it reaches the end and fails with
    /// [`io::ErrorKind::InvalidData`] if it does not match.
    pub fn open_reader(&self, index: u64) -> Result<SnapshotReader, WalError> {
        let path = self.dir.join(snapshot_file_name(index));
        let mut file = open_snapshot_file(&path, index)?;
        let layout = read_layout(&file, &path)?;
        file.seek(SeekFrom::Start(layout.data_offset))
            .map_err(io_error("seek snapshot", &path))?;
        Ok(SnapshotReader {
            path,
            reader: BufReader::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file),
            crc: layout.crc_before_data,
            data_len: layout.data_len,
            n_remaining: layout.data_len,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Complete snapshot files as (index, path), ascending.
    fn list_snapshot_files(&self) -> Result<Vec<(u64, PathBuf)>, WalError> {
        list_snapshot_files(&self.dir)
    }
}

fn list_snapshot_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let entry = entry.map_err(io_error("list directory", dir))?;
        let name = entry.file_name();
        if let Some(index) = name.to_str().and_then(parse_snapshot_file_name) {
            snapshots.push((index, entry.path()));
        }
    }
    snapshots.sort_unstable_by_key(|(index, _)| *index);
    Ok(snapshots)
}

fn open_snapshot_file(path: &Path, index: u64) -> Result<File, WalError> {
    match File::open(path) {
        Ok(file) => Ok(file),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(WalError::SnapshotNotFound { index }),
        Err(error) => Err(io_error("open snapshot", path)(error)),
    }
}

/// Where the parts of a snapshot file are, from its header and trailer.
struct Layout {
    meta: Vec<u8>,
    data_offset: u64,
    data_len: u64,
    /// CRC32C over the header and meta, to continue over the data.
    crc_before_data: u32,
    /// The trailer's stored CRC.
    stored_crc: u32,
}

/// Reads and checks the header, meta and trailer (not the data CRC).
fn read_layout(file: &File, path: &Path) -> Result<Layout, WalError> {
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let file_len_bytes = file.metadata().map_err(io_error("stat snapshot", path))?.len();
    if file_len_bytes < SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES {
        return Err(corrupt(
            0,
            format!("snapshot file is only {file_len_bytes} bytes"),
        ));
    }
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(io_error("read snapshot header", path))?;
    if header[..8] != SNAPSHOT_MAGIC_HEAD {
        return Err(corrupt(0, "bad magic: not a snapshot file".to_owned()));
    }
    let meta_len = u64::from(u32::from_le_bytes([header[8], header[9], header[10], header[11]]));
    if meta_len > SNAPSHOT_META_BYTES_MAX as u64
        || SNAPSHOT_HEADER_BYTES + meta_len + SNAPSHOT_TRAILER_BYTES > file_len_bytes
    {
        return Err(corrupt(
            8,
            format!("meta length {meta_len} does not fit a {file_len_bytes}-byte snapshot"),
        ));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, SNAPSHOT_HEADER_BYTES)
        .map_err(io_error("read snapshot meta", path))?;
    let trailer_offset = file_len_bytes - SNAPSHOT_TRAILER_BYTES;
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
    file.read_exact_at(&mut trailer, trailer_offset)
        .map_err(io_error("read snapshot trailer", path))?;
    if trailer[12..20] != SNAPSHOT_MAGIC_TAIL {
        return Err(corrupt(
            trailer_offset + 12,
            "bad tail magic: snapshot is incomplete".to_owned(),
        ));
    }
    let mut data_len_field = [0u8; 8];
    data_len_field.copy_from_slice(&trailer[..8]);
    let data_len = u64::from_le_bytes(data_len_field);
    let data_offset = SNAPSHOT_HEADER_BYTES + meta_len;
    if data_offset + data_len != trailer_offset {
        return Err(corrupt(
            trailer_offset,
            format!(
                "trailer says {data_len} data bytes but the file holds {}",
                trailer_offset - data_offset
            ),
        ));
    }
    let stored_crc = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    Ok(Layout {
        crc_before_data: crc32c::crc32c_append(crc32c::crc32c(&header), &meta),
        meta,
        data_offset,
        data_len,
        stored_crc,
    })
}

/// Checks a whole snapshot file, streaming the data through the CRC.
fn validate_snapshot_file(path: &Path, index: u64) -> Result<SnapshotInfo, WalError> {
    let mut file = open_snapshot_file(path, index)?;
    let layout = read_layout(&file, path)?;
    file.seek(SeekFrom::Start(layout.data_offset))
        .map_err(io_error("seek snapshot", path))?;
    let mut reader = BufReader::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file).take(layout.data_len);
    let mut crc = layout.crc_before_data;
    let mut buffer = vec![0u8; SNAPSHOT_IO_BUFFER_BYTES];
    loop {
        let n_read = reader
            .read(&mut buffer)
            .map_err(io_error("read snapshot data", path))?;
        if n_read == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n_read]);
    }
    crc = crc32c::crc32c_append(crc, &layout.data_len.to_le_bytes());
    if crc != layout.stored_crc {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: layout.data_offset,
            reason: format!(
                "snapshot CRC mismatch: stored {:#010x}, computed {crc:#010x}",
                layout.stored_crc
            ),
        });
    }
    Ok(SnapshotInfo {
        index,
        meta: layout.meta,
        data_len: layout.data_len,
    })
}

/// Writes one snapshot into a temporary file; [`SnapshotWriter::finish`] publishes it.
/// Dropped without `finish`, it removes its temporary file.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    index: u64,
    meta: Vec<u8>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// `None` once finished.
    file: Option<BufWriter<File>>,
    /// CRC32C over everything written so far.
    crc: u32,
    data_len: u64,
}

impl SnapshotWriter {
    /// Appends data bytes to the snapshot.
    pub fn write(&mut self, data: &[u8]) -> Result<(), WalError> {
        self.write_raw(data)?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.data_len += data.len() as u64;
        Ok(())
    }

    /// Data bytes written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Completes the snapshot: writes the trailer, fsyncs, renames the temporary file
    /// to its final name, fsyncs the directory, then removes all but the newest
    /// [`SNAPSHOTS_KEPT_MAX`] snapshots.
    pub fn finish(mut self) -> Result<SnapshotInfo, WalError> {
        let data_len_bytes = self.data_len.to_le_bytes();
        let crc = crc32c::crc32c_append(self.crc, &data_len_bytes);
        let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
        trailer[..8].copy_from_slice(&data_len_bytes);
        trailer[8..12].copy_from_slice(&crc.to_le_bytes());
        trailer[12..20].copy_from_slice(&SNAPSHOT_MAGIC_TAIL);
        self.write_raw(&trailer)?;
        let Some(buffered) = self.file.take() else {
            unreachable!("finish consumes the writer");
        };
        let file = buffered
            .into_inner()
            .map_err(|error| io_error("flush snapshot", &self.tmp_path)(error.into_error()))?;
        file.sync_all()
            .map_err(io_error("fsync snapshot", &self.tmp_path))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path)
            .map_err(io_error("rename snapshot", &self.final_path))?;
        fsync_dir(&self.dir)?;

        let info = SnapshotInfo {
            index: self.index,
            meta: std::mem::take(&mut self.meta),
            data_len: self.data_len,
        };
        let snapshots = list_snapshot_files(&self.dir)?;
        let n_old = snapshots.len().saturating_sub(SNAPSHOTS_KEPT_MAX);
        for (index, path) in &snapshots[..n_old] {
            if *index != self.index {
                fs::remove_file(path).map_err(io_error("remove old snapshot", path))?;
            }
        }
        if n_old > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(info)
    }

    /// Writes bytes to the file without counting them as data.
    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let Some(file) = self.file.as_mut() else {
            unreachable!("a finished writer is consumed");
        };
        file.write_all(bytes)
            .map_err(io_error("write snapshot", &self.tmp_path))
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SnapshotWriter::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    /// Does nothing: durability comes only from [`SnapshotWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Abandoned before finish: the partial snapshot must never become visible.
            // Drop cannot report errors; a leftover file is removed by the next open.
            drop(file);
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Streams the data part of a snapshot and checks its CRC at the end.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// CRC32C over everything read so far.
    crc: u32,
    data_len: u64,
    n_remaining: u64,
}

impl SnapshotReader {
    /// Length of the data part in bytes.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn verify_trailer(&mut self) -> io::Result<()> {
        let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
        self.reader.read_exact(&mut trailer)?;
        let crc = crc32c::crc32c_append(self.crc, &trailer[..8]);
        let stored = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
        if crc != stored {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                WalError::Corrupt {
                    path: self.path.clone(),
                    offset: 0,
                    reason: format!("snapshot CRC mismatch: stored {stored:#010x}, computed {crc:#010x}"),
                },
            ));
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.n_remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n_wanted = buf
            .len()
            .min(usize::try_from(self.n_remaining).unwrap_or(usize::MAX));
        let n_read = self.reader.read(&mut buf[..n_wanted])?;
        if n_read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "snapshot {} ended {} bytes early",
                    self.path.display(),
                    self.n_remaining
                ),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n_read]);
        self.n_remaining -= n_read as u64;
        if self.n_remaining == 0 {
            // Checked as soon as the last byte is read, so a consumer that stops at
            // exactly data_len bytes still learns of corruption.
            self.verify_trailer()?;
        }
        Ok(n_read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_file_names_roundtrip() {
        // Goal: snapshot names embed the index with fixed width and parse back.
        assert_eq!(snapshot_file_name(7), "snap-00000000000000000007.snap");
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(7)), Some(7));
        assert_eq!(
            parse_snapshot_file_name("snap-00000000000000000007.snap.tmp"),
            None
        );
    }
}
