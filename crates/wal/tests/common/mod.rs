//! Helpers shared by the integration tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shoal_wal::{parse_segment_file_name, Wal, WalOptions};

/// Options that rotate after a few hundred bytes, so tests see many segments.
/// Files hold exactly their records (no preallocation), so tests can cut and extend them.
pub fn small_segments() -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 256,
        preallocate_bytes: 0,
    }
}

/// Default options without preallocation: files hold exactly their records.
pub fn exact_files() -> WalOptions {
    WalOptions {
        preallocate_bytes: 0,
        ..WalOptions::default()
    }
}

/// A payload that identifies its index and varies in length.
pub fn payload(index: u64) -> Vec<u8> {
    let len = 5 + (index % 23) as usize;
    let mut bytes = format!("rec-{index}-").into_bytes();
    bytes.resize(len.max(bytes.len()), b'a' + (index % 26) as u8);
    bytes
}

/// The records (i, payload(i)) for every i in `indices`.
pub fn expected(indices: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    indices.map(|i| (i, payload(i))).collect()
}

/// Segment files of `dir`, ascending by first index.
pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            parse_segment_file_name(&name).map(|first| (first, path))
        })
        .collect();
    segments.sort();
    segments.into_iter().map(|(_, path)| path).collect()
}

/// Opens a log, appends payload(i) for every i in `indices`, syncs, and drops it.
pub fn write_log(dir: &Path, options: WalOptions, indices: std::ops::RangeInclusive<u64>) {
    let (mut wal, _) = Wal::open(dir, options).expect("open");
    for index in indices {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
}

/// XORs one byte of a file with `mask`.
pub fn flip_byte(path: &Path, offset: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= mask;
    file.write_all_at(&byte, offset).expect("write byte");
}

/// Length of a file.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Truncates a file to `len` bytes.
pub fn cut_file(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for cut")
        .set_len(len)
        .expect("set_len");
}

/// Overwrites bytes at `offset` (the file keeps its length if they fit).
pub fn write_bytes_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).expect("open for write");
    file.write_all_at(bytes, offset).expect("write bytes");
}

/// Appends raw bytes at the end of a file.
pub fn append_bytes(path: &Path, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for append");
    let len = file.metadata().expect("stat").len();
    file.write_all_at(bytes, len).expect("append bytes");
}
