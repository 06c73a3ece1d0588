//! Behaviour of the WAL, atomic files and snapshot store, including crash recovery.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shoal_wal::{read_file_atomic, write_file_atomic, SnapshotStore, Wal, WalError, WalOptions};

fn small_segments() -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 256,
    }
}

fn payload(index: u64) -> Vec<u8> {
    format!("record-{index}-{}", "x".repeat((index % 7) as usize)).into_bytes()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

fn reopen(dir: &Path, options: WalOptions) -> (Wal, Vec<(u64, Vec<u8>)>) {
    let (wal, recovered) = Wal::open(dir, options).expect("open");
    (wal, recovered.records)
}

#[test]
fn append_sync_reopen_roundtrip() {
    // Goal: synced records come back in order with their payloads, and one sync is one fsync.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, records) = reopen(dir.path(), WalOptions::default());
    assert!(records.is_empty());
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    assert!(wal.n_fsyncs() <= 2, "group commit: {} fsyncs", wal.n_fsyncs());
    drop(wal);
    let (wal, records) = reopen(dir.path(), WalOptions::default());
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|(i, d)| *d == payload(*i)));
    assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(100)));
}

#[test]
fn rotation_spreads_records_over_segments_and_reopens() {
    // Goal: small segments rotate; every segment is named by its first index; reopen reads all.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for index in 1..=200 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    let files = segments(dir.path());
    assert!(files.len() > 5, "expected rotation, got {} segments", files.len());
    assert!(files[0].ends_with("00000000000000000001.wal"));
    drop(wal);
    let (_, records) = reopen(dir.path(), small_segments());
    assert_eq!(
        records.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
}

#[test]
fn truncate_suffix_within_and_across_segments() {
    // Goal: appending at an existing index discards it and everything after, across segments,
    // and the result survives a reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.append(40, b"new-40").expect("conflicting append");
    wal.append(41, b"new-41").expect("append");
    wal.sync().expect("sync");
    assert_eq!(wal.last_index(), Some(41));
    wal.truncate_suffix(41).expect("truncate");
    wal.sync().expect("sync");
    drop(wal);
    let (mut wal, records) = reopen(dir.path(), small_segments());
    assert_eq!(records.len(), 40);
    assert_eq!(records[39], (40, b"new-40".to_vec()));
    assert_eq!(wal.read_range(38, 40).expect("read").len(), 3);
    assert!(matches!(
        wal.append(50, b"gap"),
        Err(WalError::Gap {
            index: 50,
            last_index: 40
        })
    ));
}

#[test]
fn compact_prefix_removes_whole_old_segments_only() {
    // Goal: compaction frees sealed segments ending at or before the snapshot, keeps the rest.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for index in 1..=200 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    let before = segments(dir.path()).len();
    wal.compact_prefix(150).expect("compact");
    let first = wal.first_index().expect("not empty");
    assert!(first > 1 && first <= 151, "first index {first}");
    assert!(segments(dir.path()).len() < before);
    drop(wal);
    let (_, records) = reopen(dir.path(), small_segments());
    assert_eq!(records.first().map(|(i, _)| *i), Some(first));
    assert_eq!(records.last().map(|(i, _)| *i), Some(200));
}

#[test]
fn reset_empties_the_log_and_allows_any_next_index() {
    // Goal: after reset (snapshot installed) the log restarts at an arbitrary index.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for index in 1..=50 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    wal.reset().expect("reset");
    assert_eq!(wal.last_index(), None);
    wal.append(1000, b"after-snapshot").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let (_, records) = reopen(dir.path(), small_segments());
    assert_eq!(records, vec![(1000, b"after-snapshot".to_vec())]);
}

#[test]
fn torn_tail_is_cut_at_every_possible_byte() {
    // Goal: a crash that tears the last record at any byte loses only that record.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    for index in 1..=10 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let path = segments(dir.path()).pop().expect("segment");
    let full = fs::read(&path).expect("read");
    let last_record_bytes = 17 + payload(10).len();
    for cut in (full.len() - last_record_bytes)..full.len() {
        fs::write(&path, &full[..cut]).expect("write");
        let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("torn tail recovers");
        assert_eq!(recovered.records.len(), 9, "cut at {cut}");
        assert_eq!(
            recovered.truncated_tail_bytes as usize,
            cut - (full.len() - last_record_bytes)
        );
        assert_eq!(
            fs::metadata(&path).expect("stat").len() as usize,
            full.len() - last_record_bytes
        );
    }
}

#[test]
fn zero_filled_tail_is_cut() {
    // Goal: a tail of zeros (preallocated or unwritten pages after a crash) is a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    for index in 1..=5 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let path = segments(dir.path()).pop().expect("segment");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(&[0u8; 100])
        .expect("write");
    let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("recovers");
    assert_eq!(recovered.records.len(), 5);
    assert_eq!(recovered.truncated_tail_bytes, 100);
    wal.append(6, b"six").expect("append after recovery");
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(reopen(dir.path(), WalOptions::default()).1.len(), 6);
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

#[test]
fn corruption_in_a_sealed_segment_is_refused() {
    // Goal: a flipped bit in an older segment is an error naming the file, never skipped.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for index in 1..=100 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let first = segments(dir.path()).remove(0);
    flip_byte(&first, 30);
    match Wal::open(dir.path(), small_segments()) {
        Err(WalError::Corrupt { path, .. }) => assert_eq!(path, first),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r.records.len())),
    }
}

#[test]
fn bad_record_followed_by_valid_records_is_refused() {
    // Goal: damage in the middle of the last segment is corruption, not a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    for index in 1..=10 {
        wal.append(index, &payload(index)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let path = segments(dir.path()).pop().expect("segment");
    flip_byte(&path, 17 + 3);
    let err = Wal::open(dir.path(), WalOptions::default())
        .err()
        .expect("must refuse");
    assert!(matches!(err, WalError::Corrupt { .. }));
    assert!(
        err.to_string().contains("rejoin"),
        "the error says what to do: {err}"
    );
}

#[test]
fn atomic_file_roundtrip_and_corruption() {
    // Goal: atomic files read back exactly, report absence, detect corruption, ignore leftovers.
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(read_file_atomic(dir.path(), "hardstate").expect("read"), None);
    write_file_atomic(dir.path(), "hardstate", b"term=5").expect("write");
    write_file_atomic(dir.path(), "hardstate", b"term=6").expect("overwrite");
    fs::write(dir.path().join("hardstate.tmp"), b"garbage").expect("leftover");
    assert_eq!(
        read_file_atomic(dir.path(), "hardstate").expect("read"),
        Some(b"term=6".to_vec())
    );
    flip_byte(&dir.path().join("hardstate"), 9);
    assert!(matches!(
        read_file_atomic(dir.path(), "hardstate"),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn snapshot_store_streams_chunks_and_keeps_only_complete_snapshots() {
    // Goal: snapshots are written in pieces, read back by chunk and by stream; an abandoned or
    // corrupt snapshot is never returned as the latest.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    assert_eq!(store.latest().expect("latest"), None);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = store.begin(10, b"meta-10").expect("begin");
    for chunk in data.chunks(7000) {
        writer.write(chunk).expect("write");
    }
    let info = writer.finish().expect("finish");
    assert_eq!((info.index, info.data_len), (10, data.len() as u64));
    // Abandoned writer: nothing visible.
    let mut abandoned = store.begin(20, b"meta-20").expect("begin");
    abandoned.write(b"partial").expect("write");
    drop(abandoned);
    let latest = store.latest().expect("latest").expect("one snapshot");
    assert_eq!(
        (latest.index, latest.meta.as_slice()),
        (10, b"meta-10".as_slice())
    );
    assert_eq!(
        store.read_chunk(10, 99_990, 64).expect("chunk"),
        data[99_990..].to_vec()
    );
    let mut streamed = Vec::new();
    store
        .open_reader(10)
        .expect("reader")
        .read_to_end(&mut streamed)
        .expect("read");
    assert_eq!(streamed, data);
    // A newer but corrupt snapshot is skipped; older ones beyond two are pruned.
    let mut w = store.begin(30, b"meta-30").expect("begin");
    w.write(b"thirty").expect("write");
    w.finish().expect("finish");
    flip_byte(&dir.path().join("snap-00000000000000000030.snap"), 16);
    assert_eq!(store.latest().expect("latest").map(|i| i.index), Some(10));
    for index in [40, 50] {
        let mut w = store.begin(index, b"m").expect("begin");
        w.write(b"d").expect("write");
        w.finish().expect("finish");
    }
    assert!(matches!(store.info(10), Err(WalError::NoSnapshot { index: 10 })));
    assert_eq!(store.latest().expect("latest").map(|i| i.index), Some(50));
}

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    Sync,
    Truncate(u8),
    Compact(u8),
    Crash(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..6).prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => any::<u16>().prop_map(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_with_crashes_keep_every_synced_record(ops in proptest::collection::vec(op(), 1..60)) {
        // Goal: against a model, after any crash (unsynced tail torn at a random byte) the
        // recovered log holds every synced record and then at most a prefix of unsynced ones.
        let dir = tempfile::tempdir().expect("tempdir");
        let options = small_segments();
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        let mut current: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut synced: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut compacted_upto = 0u64;
        let mut synced_file: Option<(PathBuf, u64)> = None;
        for op in ops {
            match op {
                Op::Append(n) => {
                    for _ in 0..n {
                        let index = current.last().map_or(compacted_upto + 1, |(i, _)| i + 1);
                        let data = payload(index);
                        wal.append(index, &data).expect("append");
                        current.push((index, data));
                    }
                }
                Op::Sync => {
                    wal.sync().expect("sync");
                    synced = current.clone();
                    synced_file = segments(dir.path()).pop().map(|p| { let l = fs::metadata(&p).expect("stat").len(); (p, l) });
                }
                Op::Truncate(k) => {
                    if let Some((first, _)) = current.first() {
                        let from = first + (k as u64 % (current.len() as u64 + 1));
                        wal.truncate_suffix(from).expect("truncate");
                        current.retain(|(i, _)| *i < from);
                        wal.sync().expect("sync");
                        synced = current.clone();
                        synced_file = segments(dir.path()).pop().map(|p| { let l = fs::metadata(&p).expect("stat").len(); (p, l) });
                    }
                }
                Op::Compact(k) => {
                    if !current.is_empty() {
                        let upto = current[k as usize % current.len()].0;
                        wal.compact_prefix(upto).expect("compact");
                    }
                }
                Op::Crash(cut) => {
                    drop(wal);
                    // Tear the unsynced tail: cut the last segment somewhere after its synced
                    // length, and sometimes leave zeros where the cut bytes were.
                    if let Some(last) = segments(dir.path()).pop() {
                        let len = fs::metadata(&last).expect("stat").len();
                        let synced_len = synced_file.as_ref().filter(|(p, _)| *p == last).map_or(0, |(_, l)| *l);
                        if len > synced_len {
                            let keep = synced_len + (cut as u64 % (len - synced_len + 1));
                            let file = OpenOptions::new().write(true).open(&last).expect("open");
                            file.set_len(keep).expect("cut");
                            if cut % 3 == 0 {
                                file.set_len(keep + (cut as u64 % 40)).expect("zero tail");
                            }
                        }
                    }
                    let (w, recovered) = Wal::open(dir.path(), options.clone()).expect("recovery never fails");
                    wal = w;
                    let recs = recovered.records;
                    // Every synced record (not compacted away) is present, in order.
                    let first = recs.first().map(|(i, _)| *i);
                    for (i, d) in &synced {
                        if first.is_some_and(|f| *i >= f) {
                            prop_assert!(recs.contains(&(*i, d.clone())), "synced record {} lost", i);
                        }
                    }
                    prop_assert!(recs.len() >= synced.iter().filter(|(i, _)| first.is_some_and(|f| *i >= f)).count());
                    current = recs;
                    if let Some((f, _)) = current.first() { compacted_upto = f - 1; }
                    synced = current.clone();
                    synced_file = segments(dir.path()).pop().map(|p| { let l = fs::metadata(&p).expect("stat").len(); (p, l) });
                }
            }
        }
    }
}
