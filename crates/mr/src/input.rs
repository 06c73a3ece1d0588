//! Inputs: paths, directories and globs expanded to files, and files cut into map tasks (one
//! per file, large files split at line boundaries every `split_size_bytes`, small files packed
//! together on request). The seam where Shoal's file system will plug in later.

use std::path::{Path, PathBuf};

use crate::error::MrError;
use crate::job::InputRange;

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
pub fn expand_inputs(args: &[String]) -> Result<Vec<(PathBuf, u64)>, MrError> {
    if args.is_empty() {
        return Err(MrError::Config(
            "no input given (name files, directories or globs)".into(),
        ));
    }
    let mut files = Vec::new();
    for arg in args {
        let mut matched = Vec::new();
        if has_glob_chars(arg) {
            let paths = glob::glob(arg)
                .map_err(|e| MrError::Config(format!("invalid input pattern {arg:?}: {e}")))?;
            for p in paths {
                let p = p.map_err(|e| MrError::Input {
                    path: e.path().display().to_string(),
                    error: e.into(),
                })?;
                if p.is_file() {
                    matched.push(p);
                }
            }
            if matched.is_empty() {
                return Err(MrError::NoInput(format!("input pattern {arg:?} matches no file")));
            }
        } else {
            let p = PathBuf::from(arg);
            let meta = std::fs::metadata(&p).map_err(|e| MrError::Input {
                path: arg.clone(),
                error: e,
            })?;
            if meta.is_dir() {
                let entries = std::fs::read_dir(&p).map_err(|e| MrError::Input {
                    path: arg.clone(),
                    error: e,
                })?;
                for e in entries {
                    let e = e.map_err(|e| MrError::Input {
                        path: arg.clone(),
                        error: e,
                    })?;
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') || name.starts_with('_') {
                        continue;
                    }
                    if e.path().is_file() {
                        matched.push(e.path());
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
            check_readable(&p)?;
            let len = std::fs::metadata(&p)
                .map_err(|e| MrError::Input {
                    path: p.display().to_string(),
                    error: e,
                })?
                .len();
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

fn check_readable(p: &Path) -> Result<(), MrError> {
    std::fs::File::open(p).map(|_| ()).map_err(|e| MrError::Input {
        path: p.display().to_string(),
        error: e,
    })
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
    fn missing_and_unmatched_inputs_are_clear_errors() {
        // Goal: a missing file and a glob without match are refused with the name in the message.
        let e = expand_inputs(&["/no/such/file".into()]).unwrap_err().to_string();
        assert!(e.contains("/no/such/file"), "{e}");
        let e = expand_inputs(&["/no/such/dir/*.txt".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches no file"), "{e}");
    }
}
