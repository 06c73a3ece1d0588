//! Small files replaced atomically and durably, framed with length + CRC32C.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::{io_err, sync_dir, WalError};

const HEADER_BYTES: usize = 8;

/// Writes `bytes` to `dir/name` atomically and durably: `name.tmp`, fsync, rename, fsync dir.
pub fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WalError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut framed = Vec::with_capacity(bytes.len() + HEADER_BYTES);
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    framed.extend_from_slice(bytes);
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&framed).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir)
}

/// Reads a file written by [`write_file_atomic`]: `Ok(None)` when absent, `Corrupt` when its
/// length or CRC does not match. A leftover `name.tmp` is ignored.
pub fn read_file_atomic(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, WalError> {
    let path = dir.join(name);
    let framed = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let corrupt = |reason: &str| WalError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason: reason.to_string(),
    };
    if framed.len() < HEADER_BYTES {
        return Err(corrupt("file shorter than its header"));
    }
    let len = u32::from_le_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
    let crc = u32::from_le_bytes([framed[4], framed[5], framed[6], framed[7]]);
    let body = &framed[HEADER_BYTES..];
    if body.len() != len {
        return Err(corrupt("length does not match the header"));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(body.to_vec()))
}
