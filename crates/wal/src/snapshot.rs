//! Snapshots streamed to and from disk in chunks, with bounded memory.
//!
//! File `snap-<index:020>.snap`:
//! ```text
//! magic "SHSN" | meta_len u32 LE | meta | data … | data_len u64 LE | crc32c(meta ‖ data) u32 LE
//! ```
//! Written as `….snap.tmp`, fsynced, renamed, directory fsynced. `latest()` returns the newest
//! file whose trailer and CRC check out.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{io_err, sync_dir, WalError};

const MAGIC: &[u8; 4] = b"SHSN";
const TRAILER_BYTES: u64 = 12;
/// Complete snapshots kept: the newest, and the one before it (a leader may still be sending it).
const SNAPSHOTS_KEPT_MAX: usize = 2;

/// A complete snapshot on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub index: u64,
    pub meta: Vec<u8>,
    pub data_len: u64,
}

pub struct SnapshotStore {
    dir: PathBuf,
}

fn file_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

impl SnapshotStore {
    /// Opens the store in `dir` (created if absent), removing leftover temporary files.
    pub fn open(dir: &Path) -> Result<SnapshotStore, WalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if entry.file_name().to_string_lossy().ends_with(".snap.tmp") {
                fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(file_name(index))
    }

    /// Starts writing the snapshot at `index` with opaque `meta`.
    pub fn begin(&self, index: u64, meta: &[u8]) -> Result<SnapshotWriter, WalError> {
        let final_path = self.path(index);
        let tmp_path = self.dir.join(format!("{}.tmp", file_name(index)));
        let file = File::create(&tmp_path).map_err(io_err("create", &tmp_path))?;
        let mut writer = SnapshotWriter {
            dir: self.dir.clone(),
            index,
            meta: meta.to_vec(),
            tmp_path,
            final_path,
            file: Some(BufWriter::new(file)),
            crc: crc32c::crc32c(meta),
            data_len: 0,
        };
        let mut header = Vec::with_capacity(8 + meta.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        header.extend_from_slice(meta);
        writer.raw_write(&header)?;
        Ok(writer)
    }

    fn indexes_desc(&self) -> Result<Vec<u64>, WalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(index) = name.strip_prefix("snap-").and_then(|n| n.strip_suffix(".snap")) {
                if let Ok(index) = index.parse::<u64>() {
                    out.push(index);
                }
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// Reads and verifies the snapshot at `index` (streaming its CRC).
    pub fn info(&self, index: u64) -> Result<SnapshotInfo, WalError> {
        let path = self.path(index);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(WalError::NoSnapshot { index }),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let corrupt = |reason: &str| WalError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: reason.into(),
        };
        let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
        let mut header = [0u8; 8];
        file.read_exact(&mut header)
            .map_err(|_| corrupt("truncated header"))?;
        if &header[..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let meta_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
        if 8 + meta_len + TRAILER_BYTES > file_len {
            return Err(corrupt("shorter than its header says"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact(&mut meta)
            .map_err(|_| corrupt("truncated metadata"))?;
        let data_len = file_len - 8 - meta_len - TRAILER_BYTES;
        let mut crc = crc32c::crc32c(&meta);
        let mut remaining = data_len;
        let mut reader = BufReader::new(&mut file);
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let n = (remaining as usize).min(buf.len());
            reader.read_exact(&mut buf[..n]).map_err(io_err("read", &path))?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            remaining -= n as u64;
        }
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        reader
            .read_exact(&mut trailer)
            .map_err(|_| corrupt("truncated trailer"))?;
        let stored_len = u64::from_le_bytes(trailer[..8].try_into().map_err(|_| corrupt("trailer"))?);
        let stored_crc = u32::from_le_bytes(trailer[8..].try_into().map_err(|_| corrupt("trailer"))?);
        if stored_len != data_len {
            return Err(corrupt("data length does not match the trailer"));
        }
        if stored_crc != crc {
            return Err(corrupt("checksum mismatch"));
        }
        Ok(SnapshotInfo {
            index,
            meta,
            data_len,
        })
    }

    /// The newest complete snapshot whose checksum is valid; corrupt newer files are skipped
    /// (an older valid snapshot plus the peers' logs can still bring the node up to date).
    pub fn latest(&self) -> Result<Option<SnapshotInfo>, WalError> {
        for index in self.indexes_desc()? {
            match self.info(index) {
                Ok(info) => return Ok(Some(info)),
                Err(WalError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn data_start(&self, index: u64) -> Result<(File, u64, u64), WalError> {
        let path = self.path(index);
        let mut file = File::open(&path).map_err(|_| WalError::NoSnapshot { index })?;
        let mut header = [0u8; 8];
        file.read_exact(&mut header).map_err(io_err("read", &path))?;
        let meta_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
        let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
        let data_len = file_len.saturating_sub(8 + meta_len + TRAILER_BYTES);
        Ok((file, 8 + meta_len, data_len))
    }

    /// Up to `max_len` data bytes at `offset` of the snapshot at `index`.
    pub fn read_chunk(&self, index: u64, offset: u64, max_len: usize) -> Result<Vec<u8>, WalError> {
        let (mut file, start, data_len) = self.data_start(index)?;
        let n = (data_len.saturating_sub(offset)).min(max_len as u64) as usize;
        let path = self.path(index);
        file.seek(SeekFrom::Start(start + offset))
            .map_err(io_err("seek", &path))?;
        let mut out = vec![0u8; n];
        file.read_exact(&mut out).map_err(io_err("read", &path))?;
        Ok(out)
    }

    /// The data of the snapshot at `index`, as a stream.
    pub fn open_reader(&self, index: u64) -> Result<impl Read, WalError> {
        let (mut file, start, data_len) = self.data_start(index)?;
        let path = self.path(index);
        file.seek(SeekFrom::Start(start)).map_err(io_err("seek", &path))?;
        Ok(BufReader::new(file).take(data_len))
    }

    /// Total data bytes of the snapshot at `index`.
    pub fn data_len(&self, index: u64) -> Result<u64, WalError> {
        Ok(self.data_start(index)?.2)
    }

    fn prune(&self) -> Result<(), WalError> {
        for index in self.indexes_desc()?.into_iter().skip(SNAPSHOTS_KEPT_MAX) {
            let path = self.path(index);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        Ok(())
    }
}

/// A snapshot being written; dropped without `finish`, it leaves nothing visible.
pub struct SnapshotWriter {
    dir: PathBuf,
    index: u64,
    meta: Vec<u8>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: Option<BufWriter<File>>,
    crc: u32,
    data_len: u64,
}

impl SnapshotWriter {
    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(bytes).map_err(io_err("write", &self.tmp_path))
    }

    /// Appends data bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), WalError> {
        self.raw_write(data)?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.data_len += data.len() as u64;
        Ok(())
    }

    /// Seals the snapshot: trailer, fsync, rename into place, fsync the directory, prune old ones.
    pub fn finish(mut self) -> Result<SnapshotInfo, WalError> {
        let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
        trailer.extend_from_slice(&self.data_len.to_le_bytes());
        trailer.extend_from_slice(&self.crc.to_le_bytes());
        self.raw_write(&trailer)?;
        let Some(writer) = self.file.take() else {
            return Err(WalError::NoSnapshot { index: self.index });
        };
        let file = writer
            .into_inner()
            .map_err(|e| io_err("flush", &self.tmp_path)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &self.tmp_path))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path).map_err(io_err("rename", &self.tmp_path))?;
        sync_dir(&self.dir)?;
        let store = SnapshotStore {
            dir: self.dir.clone(),
        };
        store.prune()?;
        Ok(SnapshotInfo {
            index: self.index,
            meta: std::mem::take(&mut self.meta),
            data_len: self.data_len,
        })
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        SnapshotWriter::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
