//! Behaviour of the write-ahead log: appends, rotation, truncation, compaction, reset and
//! recovery from torn tails and corruption.

mod common;

use std::fs;

use common::*;
use shoal_wal::{record_frame_bytes, segment_file_name, Wal, WalError, WalOptions, RECORD_BYTES_MAX};

fn new_payload(index: u64) -> Vec<u8> {
    format!("new-{index}").into_bytes()
}

fn assert_corrupt(result: Result<(Wal, shoal_wal::Recovered), WalError>) -> WalError {
    match result {
        Err(error @ WalError::Corrupt { .. }) => {
            assert!(
                error.to_string().contains("wipe its data directory"),
                "the message tells the operator what to do: {error}"
            );
            error
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovered)) => panic!("expected Corrupt, recovered {} records", recovered.records.len()),
    }
}

#[test]
fn append_sync_reopen_roundtrip() {
    // Goal: synced records come back from disk exactly, and the log continues after reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    assert_eq!(recovered.records, vec![]);
    assert_eq!(recovered.first_index, 0);
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    assert_eq!(wal.read_range(1, 100).expect("read"), expected(1..=100));
    wal.sync().expect("sync");
    drop(wal);

    let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.first_index, 1);
    assert_eq!(recovered.records, expected(1..=100));
    assert_eq!(recovered.truncated_tail_bytes, 0);
    assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(100)));
    wal.append(101, &payload(101)).expect("append after reopen");
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.records, expected(1..=101));
}

#[test]
fn many_appends_cost_one_fsync() {
    // Goal: group commit — a batch of appends is made durable by a single fsync.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    wal.append(1, &payload(1)).expect("append");
    let before = wal.n_fsyncs();
    wal.sync().expect("sync");
    assert_eq!(
        wal.n_fsyncs() - before,
        2,
        "the segment, plus the directory for the new segment"
    );
    let before = wal.n_fsyncs();
    for index in 2..=1001 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    assert_eq!(wal.n_fsyncs() - before, 1);
    let before = wal.n_fsyncs();
    wal.sync().expect("sync");
    assert_eq!(wal.n_fsyncs() - before, 0, "nothing to sync");
}

#[test]
fn rotation_across_many_segments_then_reopen() {
    // Goal: segments rotate at the size limit, are named by their first index, and reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), small_segments(), 1..=500);
    let paths = segment_paths(dir.path());
    assert!(paths.len() > 20, "only {} segments", paths.len());
    for path in &paths {
        assert!(file_len(path) <= small_segments().segment_size_bytes_max);
    }
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.records, expected(1..=500));
    assert_eq!(wal.read_range(37, 420).expect("read"), expected(37..=420));
    // Every segment's name is the index of its first record (header bytes 5..13).
    for path in &paths {
        let bytes = fs::read(path).expect("read segment");
        let mut index_bytes = [0u8; 8];
        index_bytes.copy_from_slice(&bytes[5..13]);
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name, segment_file_name(u64::from_le_bytes(index_bytes)));
    }
}

#[test]
fn single_record_larger_than_a_segment_gets_its_own_segment() {
    // Goal: a record above segment_size_bytes_max is still stored, alone in its segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    let big = vec![7u8; 1000];
    wal.append(1, &payload(1)).expect("append");
    wal.append(2, &big).expect("append big");
    wal.append(3, &payload(3)).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(segment_paths(dir.path()).len(), 3);
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.records[1], (2, big));
}

#[test]
fn truncate_suffix_within_a_segment_then_append_and_reopen() {
    // Goal: a cut inside the active segment drops exactly the records at and after it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    for index in 1..=20 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.truncate_suffix(15).expect("truncate");
    assert_eq!(wal.last_index(), Some(14));
    for index in 15..=17 {
        wal.append(index, &new_payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    let mut want = expected(1..=14);
    want.extend((15..=17).map(|i| (i, new_payload(i))));
    assert_eq!(recovered.records, want);
    assert_eq!(recovered.truncated_tail_bytes, 0);
}

#[test]
fn truncate_suffix_across_segments_then_append_and_reopen() {
    // Goal: a cut in an old segment removes every later segment and cuts that one.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=300 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    let n_segments_before = segment_paths(dir.path()).len();
    wal.truncate_suffix(50).expect("truncate");
    assert_eq!(wal.last_index(), Some(49));
    let n_segments_after = segment_paths(dir.path()).len();
    assert!(n_segments_after < n_segments_before / 3);
    assert_eq!(wal.read_range(1, 49).expect("read"), expected(1..=49));
    for index in 50..=60 {
        wal.append(index, &new_payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    let mut want = expected(1..=49);
    want.extend((50..=60).map(|i| (i, new_payload(i))));
    assert_eq!(recovered.records, want);
    assert_eq!(wal.read_range(45, 60).expect("read"), want[44..].to_vec());
}

#[test]
fn truncate_suffix_at_a_segment_start_and_past_the_end() {
    // Goal: cutting exactly at a segment boundary removes that segment; cutting past the
    // end or before the start behaves as a no-op or as emptying the log.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    let paths = segment_paths(dir.path());
    let second_first: u64 = paths[1]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(shoal_wal::parse_segment_file_name)
        .expect("segment name");
    wal.truncate_suffix(second_first).expect("truncate");
    assert_eq!(segment_paths(dir.path()), paths[..1].to_vec());
    assert_eq!(wal.last_index(), Some(second_first - 1));
    wal.truncate_suffix(1000).expect("no-op");
    assert_eq!(wal.last_index(), Some(second_first - 1));
    wal.truncate_suffix(1).expect("truncate all");
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert!(segment_paths(dir.path()).is_empty());
    wal.append(7, &payload(7)).expect("an empty log starts anywhere");
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.records, expected(7..=7));
}

#[test]
fn append_at_an_existing_index_replaces_the_suffix() {
    // Goal: appending at index <= last discards the conflicting suffix first (Raft §5.3).
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=40 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.append(12, &new_payload(12)).expect("conflicting append");
    assert_eq!(wal.last_index(), Some(12));
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    let mut want = expected(1..=11);
    want.push((12, new_payload(12)));
    assert_eq!(recovered.records, want);
}

#[test]
fn gaps_and_oversized_records_are_refused() {
    // Goal: appends that would break contiguity or the size limit fail with clear errors.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    wal.append(5, b"five").expect("first append starts anywhere");
    let error = wal.append(7, b"seven").unwrap_err();
    assert!(matches!(
        error,
        WalError::IndexGap {
            index: 7,
            last_index: 5
        }
    ));
    let big = vec![0u8; RECORD_BYTES_MAX + 1];
    let error = wal.append(6, &big).unwrap_err();
    assert!(matches!(error, WalError::RecordTooLarge { index: 6, .. }));
    assert!(error.to_string().contains("limit"));
    // Refused appends change nothing and do not poison the log.
    wal.append(6, b"six").expect("append");
    assert_eq!(wal.last_index(), Some(6));
}

#[test]
fn read_range_outside_the_log_is_refused() {
    // Goal: reads of absent records fail with OutOfRange naming the log's bounds.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    assert!(matches!(
        wal.read_range(1, 1),
        Err(WalError::OutOfRange {
            first_index: None,
            ..
        })
    ));
    for index in 10..=20 {
        wal.append(index, &payload(index)).expect("append");
    }
    for (from, to) in [(9, 12), (15, 21), (16, 15)] {
        assert!(
            matches!(
                wal.read_range(from, to),
                Err(WalError::OutOfRange {
                    first_index: Some(10),
                    last_index: Some(20),
                    ..
                })
            ),
            "[{from}, {to}]"
        );
    }
    assert_eq!(wal.read_range(20, 20).expect("read"), expected(20..=20));
}

#[test]
fn compact_prefix_removes_whole_old_segments() {
    // Goal: compaction removes segments wholly at or below `upto`, never the last one.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=300 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.compact_prefix(0).expect("no-op");
    assert_eq!(wal.first_index(), Some(1));
    let n_segments_before = segment_paths(dir.path()).len();
    wal.compact_prefix(150).expect("compact");
    let first_index = wal.first_index().expect("non-empty");
    assert!(first_index > 100 && first_index <= 151, "first {first_index}");
    assert!(segment_paths(dir.path()).len() < n_segments_before);
    assert_eq!(
        wal.read_range(first_index, 300).expect("read"),
        expected(first_index..=300)
    );
    drop(wal);

    let (mut wal, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.first_index, first_index);
    assert_eq!(recovered.records, expected(first_index..=300));
    wal.compact_prefix(10_000).expect("compact everything");
    assert_eq!(segment_paths(dir.path()).len(), 1, "the last segment stays");
    assert_eq!(wal.last_index(), Some(300));
    wal.append(301, &payload(301)).expect("append");
}

#[test]
fn reset_discards_everything_durably() {
    // Goal: reset empties the log on disk at once, and the next append starts anywhere.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.reset().expect("reset");
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert!(segment_paths(dir.path()).is_empty());
    drop(wal);

    let (mut wal, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert!(recovered.records.is_empty());
    wal.append(1000, &payload(1000)).expect("append at any index");
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.records, expected(1000..=1000));
}

#[test]
fn unsynced_appends_may_vanish_but_synced_ones_survive() {
    // Goal: dropping the log without sync is a crash that loses only unsynced appends.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    for index in 1..=10 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    for index in 11..=20 {
        wal.append(index, &payload(index)).expect("append");
    }
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.records, expected(1..=10));
}

#[test]
fn truncation_of_written_records_is_durable_before_new_appends() {
    // Goal: a cut of already-written records reaches the disk before later appends can,
    // so a crash leaves the synced prefix, never new records followed by stale ones.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    for index in 1..=10 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.truncate_suffix(5).expect("truncate");
    for index in 5..=7 {
        wal.append(index, &new_payload(index)).expect("append");
    }
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.records, expected(1..=4));
}

#[test]
fn torn_tail_is_cut_at_every_byte_of_the_last_record() {
    // Goal: whatever prefix of the last record reached the disk, recovery keeps every
    // earlier record, cuts the rest and reports how much it cut.
    let template = tempfile::tempdir().expect("tempdir");
    write_log(template.path(), exact_files(), 1..=5);
    let segment = segment_paths(template.path()).remove(0);
    let full_len = file_len(&segment);
    let last_frame = record_frame_bytes(payload(5).len()) as u64;
    let last_start = full_len - last_frame;
    let original = fs::read(&segment).expect("read");
    for cut in last_start..full_len {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(segment_file_name(1));
        fs::write(&path, &original[..cut as usize]).expect("write cut copy");
        let (mut wal, recovered) = Wal::open(dir.path(), exact_files()).expect("recovers");
        assert_eq!(recovered.records, expected(1..=4), "cut at {cut}");
        // Zeros are free space, not damage: only up to the last non-zero byte is cut.
        let tail = &original[last_start as usize..cut as usize];
        let torn_len = tail
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last as u64 + 1);
        assert_eq!(recovered.truncated_tail_bytes, torn_len, "cut at {cut}");
        let kept_len = if torn_len > 0 { last_start } else { cut };
        assert_eq!(file_len(&path), kept_len, "file cut back at {cut}");
        // The log is writable again at the cut.
        wal.append(5, &payload(5)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), exact_files()).expect("reopen");
        assert_eq!(recovered.records, expected(1..=5));
        assert_eq!(fs::read(&path).expect("read"), original);
    }
}

#[test]
fn torn_last_segment_that_loses_every_record_is_removed() {
    // Goal: a last segment cut down to nothing is removed and the previous one continues.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), small_segments(), 1..=50);
    let paths = segment_paths(dir.path());
    let last = paths.last().expect("segments");
    let last_len = file_len(last);
    cut_file(last, 5);
    // What counts as cut: the bytes up to the last non-zero one (zeros are free space).
    let head = fs::read(last).expect("read");
    let torn_len = head
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1);
    let (mut wal, recovered) = Wal::open(dir.path(), small_segments()).expect("recovers");
    assert!(!last.exists());
    let last_index = wal.last_index().expect("non-empty");
    assert!(last_index < 50);
    assert_eq!(recovered.records, expected(1..=last_index));
    assert_eq!(recovered.truncated_tail_bytes, torn_len);
    assert!(last_len > 5);
    for index in last_index + 1..=60 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovered.records, expected(1..=60));
}

#[test]
fn garbage_and_zero_filled_tails_are_cut() {
    // Goal: a tail of random bytes or a plausible-looking header is cut; a tail of zeros is
    // not damage (preallocated space looks the same) and stays, and the log goes on after it.
    let mut garbage = Vec::new();
    let mut state = 0x9E37_79B9_u32;
    for _ in 0..500 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        garbage.push(state as u8);
    }
    // A header with the right kind byte and a length running past the end of the file.
    let mut fake_header = vec![0xA7u8, 0xFF, 0x00, 0x00, 0x00];
    fake_header.extend_from_slice(&6u64.to_le_bytes());
    fake_header.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    for tail in [garbage, vec![0u8; 4096], fake_header] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_log(dir.path(), exact_files(), 1..=5);
        let segment = segment_paths(dir.path()).remove(0);
        let synced_len = file_len(&segment);
        append_bytes(&segment, &tail);
        let zeros = tail.iter().all(|&b| b == 0);
        let (mut wal, recovered) = Wal::open(dir.path(), exact_files()).expect("recovers");
        assert_eq!(recovered.records, expected(1..=5));
        if zeros {
            assert_eq!(recovered.truncated_tail_bytes, 0);
            assert_eq!(file_len(&segment), synced_len + tail.len() as u64);
        } else {
            assert_eq!(recovered.truncated_tail_bytes, tail.len() as u64);
            assert_eq!(file_len(&segment), synced_len);
        }
        wal.append(6, &payload(6)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), exact_files()).expect("reopen");
        assert_eq!(recovered.records, expected(1..=6));
        assert_eq!(recovered.truncated_tail_bytes, 0);
    }
}

#[test]
fn any_damage_in_an_earlier_segment_is_refused() {
    // Goal: a flipped bit anywhere in a sealed segment is corruption, never a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), small_segments(), 1..=100);
    let paths = segment_paths(dir.path());
    let victim = &paths[1];
    for offset in 0..file_len(victim) {
        flip_byte(victim, offset, 0x10);
        let error = assert_corrupt(Wal::open(dir.path(), small_segments()));
        let WalError::Corrupt { path, .. } = &error else {
            unreachable!()
        };
        assert_eq!(path, victim, "flip at {offset}: {error}");
        flip_byte(victim, offset, 0x10);
    }
    let (_, recovered) = Wal::open(dir.path(), small_segments()).expect("intact again");
    assert_eq!(recovered.records, expected(1..=100));
}

#[test]
fn damage_in_the_last_segment_followed_by_a_valid_record_is_refused() {
    // Goal: a bad record that has a valid one after it is corruption, not a torn tail,
    // wherever in the record the flipped bit sits; a bad final record is a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), exact_files(), 1..=10);
    let segment = segment_paths(dir.path()).remove(0);
    let full_len = file_len(&segment);
    let last_start = full_len - record_frame_bytes(payload(10).len()) as u64;
    for offset in 0..last_start {
        flip_byte(&segment, offset, 0x01);
        let error = assert_corrupt(Wal::open(dir.path(), exact_files()));
        assert!(
            error.to_string().contains("not a torn tail"),
            "flip at {offset}: {error}"
        );
        flip_byte(&segment, offset, 0x01);
    }
    let original = fs::read(&segment).expect("read");
    for offset in last_start..full_len {
        flip_byte(&segment, offset, 0x01);
        let (_, recovered) = Wal::open(dir.path(), exact_files()).expect("torn tail");
        assert_eq!(recovered.records, expected(1..=9), "flip at {offset}");
        fs::write(&segment, &original).expect("restore");
    }
}

#[test]
fn missing_or_misnamed_segments_are_refused() {
    // Goal: a hole between segments, or a record index that does not continue the log,
    // is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), small_segments(), 1..=100);
    let paths = segment_paths(dir.path());
    let moved = dir.path().join("aside");
    fs::rename(&paths[2], &moved).expect("move segment aside");
    let error = assert_corrupt(Wal::open(dir.path(), small_segments()));
    assert!(error.to_string().contains("missing"), "{error}");
    fs::rename(&moved, &paths[2]).expect("move back");

    // A segment renamed so that its name disagrees with its records.
    let first_of_last = paths.len() - 1;
    let last = &paths[first_of_last];
    let renamed = dir.path().join(segment_file_name(1_000_000));
    fs::rename(last, &renamed).expect("rename");
    assert_corrupt(Wal::open(dir.path(), small_segments()));
}

#[test]
fn empty_last_segment_from_a_crash_during_rotation_is_removed() {
    // Goal: a new segment created just before a crash, with no record in it, is removed;
    // an empty segment whose name does not continue the log is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), small_segments(), 1..=30);
    let empty = dir.path().join(segment_file_name(31));
    fs::write(&empty, b"").expect("create empty segment");
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).expect("recovers");
    assert_eq!(recovered.records, expected(1..=30));
    assert!(!empty.exists());
    drop(wal);

    let stray = dir.path().join(segment_file_name(40));
    fs::write(&stray, b"").expect("create stray segment");
    assert_corrupt(Wal::open(dir.path(), small_segments()));
}

#[test]
fn an_io_error_poisons_the_log() {
    // Goal: after a failed system call the log refuses further use until reopened.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    let paths = segment_paths(dir.path());
    fs::remove_file(&paths[0]).expect("remove a segment behind the log's back");
    assert!(matches!(wal.compact_prefix(90), Err(WalError::Io { .. })));
    assert!(matches!(
        wal.append(101, &payload(101)),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
}

#[test]
fn invalid_options_are_refused() {
    // Goal: open validates its options and names the bad one.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_size_bytes_max: 0,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open(dir.path(), options),
        Err(WalError::InvalidOptions {
            field: "segment_size_bytes_max",
            ..
        })
    ));
}
