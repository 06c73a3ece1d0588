//! Inputs: paths, directories and globs expanded to files, and files cut into map tasks (one
//! per file, large files split at line boundaries every `split_size_bytes`, small files packed
//! together on request), and the reader that gives a split exactly its lines. Files are
//! reached through [`Storage`], the seam where Shoal's file system plugs in.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::MrError;
use crate::job::InputRange;
use crate::storage::Storage;

/// Read buffer of one input split. Cost: this much memory per running map task.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Most input files one job may name. Cost: one entry in memory per file and, without
/// `--combine-small-files`, one map task each.
pub const INPUT_FILES_MAX: usize = 1_000_000;

/// One map task's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSplit {
    pub ranges: Vec<InputRange>,
}

impl InputSplit {
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands each argument: a glob (`*`, `?`, `[…]`), a directory (its files, skipping names that
/// start with `.` or `_`, as Hadoop does), or a file. Every file must be readable.
pub fn expand_inputs(storage: &dyn Storage, args: &[String]) -> Result<Vec<(PathBuf, u64)>, MrError> {
    if args.is_empty() {
        return Err(MrError::Config(
            "no input given (name files, directories or globs)".into(),
        ));
    }
    let mut files = Vec::new();
    for arg in args {
        let mut matched = Vec::new();
        if has_glob_chars(arg) {
            matched = storage.glob(arg)?;
            if matched.is_empty() {
                return Err(MrError::NoInput(format!("input pattern {arg:?} matches no file")));
            }
        } else {
            let p = PathBuf::from(arg);
            let input_error = |error| MrError::Input {
                path: arg.clone(),
                error,
            };
            let status = storage.stat(&p).map_err(input_error)?;
            if status.is_dir {
                for e in storage.list_dir(&p).map_err(input_error)? {
                    let name = e
                        .path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string();
                    if name.starts_with('.') || name.starts_with('_') {
                        continue;
                    }
                    if e.is_file {
                        matched.push(e.path);
                    }
                }
                matched.sort();
                if matched.is_empty() {
                    return Err(MrError::NoInput(format!("input directory {arg} holds no file")));
                }
            } else {
                matched.push(p);
            }
        }
        for p in matched {
            let input_error = |error| MrError::Input {
                path: p.display().to_string(),
                error,
            };
            // Readable now, rather than failing a map task later.
            storage.open_read(&p, 0).map_err(input_error)?;
            let len = storage.stat(&p).map_err(input_error)?.len;
            files.push((p, len));
            if files.len() > INPUT_FILES_MAX {
                return Err(MrError::Config(format!(
                    "more than {INPUT_FILES_MAX} input files"
                )));
            }
        }
    }
    Ok(files)
}

/// Opens `range` for reading its lines: the reader and the file offset it is at. A range
/// starting inside a line leaves that line to the previous range (which reads past its end
/// to finish its last line), so every line belongs to exactly one split wherever the cuts
/// fall (Hadoop's `LineRecordReader`).
pub fn open_range(
    storage: &dyn Storage,
    range: &InputRange,
) -> io::Result<(BufReader<Box<dyn Read + Send>>, u64)> {
    let path = Path::new(&range.path);
    if range.start == 0 {
        return Ok((
            BufReader::with_capacity(READ_BUFFER_BYTES, storage.open_read(path, 0)?),
            0,
        ));
    }
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, storage.open_read(path, range.start - 1)?);
    let pos = range.start - 1 + skip_line(&mut r)?;
    Ok((r, pos))
}

/// Consumes through the next `\n` (or to the end) without keeping the bytes; returns how many.
fn skip_line(r: &mut impl BufRead) -> io::Result<u64> {
    let mut n = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(n + i as u64 + 1);
            }
            None => {
                let len = buf.len();
                r.consume(len);
                n += len as u64;
            }
        }
    }
}

/// Cuts files into map tasks. Empty files make no task.
pub fn plan_splits(
    files: &[(PathBuf, u64)],
    split_size_bytes: u64,
    combine_small_files: bool,
) -> Vec<InputSplit> {
    assert!(split_size_bytes > 0);
    let mut splits = Vec::new();
    let mut pack: Vec<InputRange> = Vec::new();
    let mut pack_bytes = 0u64;
    for (path, len) in files {
        let path = path.display().to_string();
        if *len == 0 {
            continue;
        }
        if combine_small_files && *len < split_size_bytes {
            if pack_bytes + len > split_size_bytes && !pack.is_empty() {
                splits.push(InputSplit {
                    ranges: std::mem::take(&mut pack),
                });
                pack_bytes = 0;
            }
            pack.push(InputRange {
                path,
                start: 0,
                end: *len,
            });
            pack_bytes += len;
            continue;
        }
        let mut start = 0;
        while start < *len {
            let end = (start + split_size_bytes).min(*len);
            splits.push(InputSplit {
                ranges: vec![InputRange {
                    path: path.clone(),
                    start,
                    end,
                }],
            });
            start = end;
        }
    }
    if !pack.is_empty() {
        splits.push(InputSplit { ranges: pack });
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStorage, MemoryStorage};

    #[test]
    fn splits_cover_files_and_pack_small_ones() {
        // Goal: large files are cut every split size, small files packed up to the split size,
        // empty files skipped, and every byte belongs to exactly one split.
        let files = vec![
            (PathBuf::from("big"), 250),
            (PathBuf::from("empty"), 0),
            (PathBuf::from("a"), 40),
            (PathBuf::from("b"), 40),
            (PathBuf::from("c"), 40),
        ];
        let plain = plan_splits(&files, 100, false);
        assert_eq!(plain.len(), 3 + 3);
        let packed = plan_splits(&files, 100, true);
        assert_eq!(packed.len(), 3 + 2);
        assert_eq!(packed[3].ranges.len(), 2);
        let total: u64 = packed.iter().map(InputSplit::bytes).sum();
        assert_eq!(total, 370);
    }

    #[test]
    fn ranges_read_every_line_exactly_once_wherever_they_cut() {
        // Goal: for every split size, the ranges' readers together yield each line of the file
        // exactly once and in order (a line belongs to the range its first byte is in), with or
        // without a final newline.
        let storage = MemoryStorage::new();
        for text in [&b"a\nbb\n\nccc\ndddd\ne\n"[..], b"x\nyy\nzzz"] {
            let path = Path::new("/in/t.txt");
            storage.write_file(path, text).unwrap();
            let expected: Vec<&[u8]> = text
                .strip_suffix(b"\n")
                .unwrap_or(text)
                .split(|b| *b == b'\n')
                .collect();
            for split_size in 1..=text.len() as u64 + 1 {
                let files = vec![(path.to_path_buf(), text.len() as u64)];
                let mut got: Vec<Vec<u8>> = Vec::new();
                for split in plan_splits(&files, split_size, false) {
                    let range = &split.ranges[0];
                    let (mut r, mut pos) = open_range(&storage, range).unwrap();
                    while pos < range.end {
                        let mut line = Vec::new();
                        let n = r.read_until(b'\n', &mut line).unwrap();
                        if n == 0 {
                            break;
                        }
                        pos += n as u64;
                        got.push(line.strip_suffix(b"\n").unwrap_or(&line).to_vec());
                    }
                }
                assert_eq!(got, expected, "split size {split_size}");
            }
        }
    }

    #[test]
    fn missing_and_unmatched_inputs_are_clear_errors() {
        // Goal: a missing file and a glob without match are refused with the name in the message.
        let e = expand_inputs(&LocalStorage, &["/no/such/file".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/file"), "{e}");
        let e = expand_inputs(&LocalStorage, &["/no/such/dir/*.txt".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches no file"), "{e}");
    }
}
