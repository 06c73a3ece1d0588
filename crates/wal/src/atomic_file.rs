//! Small files replaced atomically and durably, e.g. Raft's hard state (term, vote).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{io_error, WalError};
use crate::fsutil::fsync_dir;

/// First bytes of every atomic file (format version 1).
const ATOMIC_FILE_MAGIC: [u8; 8] = *b"SHOALAF1";

/// Header: magic (8) + content length u64 LE (8) + CRC32C u32 LE (4).
const ATOMIC_FILE_HEADER_BYTES: usize = 20;

/// Suffix of the temporary file written before the rename.
const ATOMIC_FILE_TMP_SUFFIX: &str = ".tmp";

/// Largest content of an atomic file: 64 MiB.
///
/// Cost: the whole file is held in memory when read or written; these files hold small
/// metadata such as Raft's hard state, and anything big belongs in a snapshot.
pub const ATOMIC_FILE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Writes `bytes` to `dir/name` atomically and durably: writes `dir/name.tmp`, fsyncs
/// it, renames it over `dir/name`, fsyncs `dir`. The content is framed with a magic,
/// its length and a CRC32C so that [`read_file_atomic`] detects corruption.
///
/// After a crash, `dir/name` holds either the old or the new content, never a mix.
pub fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WalError> {
    validate_file_name(name)?;
    if bytes.len() > ATOMIC_FILE_BYTES_MAX {
        return Err(WalError::TooLarge {
            what: "atomic file content",
            len_bytes: bytes.len() as u64,
            len_bytes_max: ATOMIC_FILE_BYTES_MAX as u64,
        });
    }
    let path = dir.join(name);
    let tmp_path = dir.join(format!("{name}{ATOMIC_FILE_TMP_SUFFIX}"));
    let mut header = [0u8; ATOMIC_FILE_HEADER_BYTES];
    header[..8].copy_from_slice(&ATOMIC_FILE_MAGIC);
    header[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..16]), bytes);
    header[16..20].copy_from_slice(&crc.to_le_bytes());

    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)
        .map_err(io_error("create temporary file", &tmp_path))?;
    file.write_all(&header)
        .and_then(|()| file.write_all(bytes))
        .map_err(io_error("write temporary file", &tmp_path))?;
    file.sync_all()
        .map_err(io_error("fsync temporary file", &tmp_path))?;
    drop(file);
    fs::rename(&tmp_path, &path).map_err(io_error("rename temporary file", &path))?;
    fsync_dir(dir)
}

/// Reads a file written by [`write_file_atomic`]. `Ok(None)` if it does not exist;
/// [`WalError::Corrupt`] if its magic, length or CRC does not match. A leftover
/// `name.tmp` from an interrupted write is ignored.
pub fn read_file_atomic(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, WalError> {
    validate_file_name(name)?;
    let path = dir.join(name);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("open file", &path)(error)),
    };
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        path: path.clone(),
        offset,
        reason,
    };
    let file_len_bytes = file.metadata().map_err(io_error("stat file", &path))?.len();
    let content_len_max = (ATOMIC_FILE_HEADER_BYTES + ATOMIC_FILE_BYTES_MAX) as u64;
    if file_len_bytes < ATOMIC_FILE_HEADER_BYTES as u64 || file_len_bytes > content_len_max {
        return Err(corrupt(
            0,
            format!(
                "file is {file_len_bytes} bytes; an atomic file is {ATOMIC_FILE_HEADER_BYTES} to {content_len_max} bytes"
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(file_len_bytes as usize);
    file.read_to_end(&mut bytes)
        .map_err(io_error("read file", &path))?;
    let (header, content) = bytes.split_at(ATOMIC_FILE_HEADER_BYTES);
    if header[..8] != ATOMIC_FILE_MAGIC {
        return Err(corrupt(0, "bad magic: not an atomic file".to_owned()));
    }
    let mut len_field = [0u8; 8];
    len_field.copy_from_slice(&header[8..16]);
    let len_bytes = u64::from_le_bytes(len_field);
    if len_bytes != content.len() as u64 {
        return Err(corrupt(
            8,
            format!(
                "length field says {len_bytes} bytes but {} follow the header",
                content.len()
            ),
        ));
    }
    let stored = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header[..16]), content);
    if stored != computed {
        return Err(corrupt(
            16,
            format!("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(Some(content.to_vec()))
}

/// Accepts only a plain file name inside the directory that is not a temporary name.
fn validate_file_name(name: &str) -> Result<(), WalError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("not a file name")
    } else if name.contains('/') || name.contains('\0') {
        Some("must not contain '/' or NUL")
    } else if name.ends_with(ATOMIC_FILE_TMP_SUFFIX) {
        Some("the .tmp suffix is reserved for temporary files")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(WalError::InvalidFileName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
