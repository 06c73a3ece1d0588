//! The snapshot store: streaming writes, chunked and streamed reads, abandoned writers,
//! retention and corruption.

mod common;

use std::fs;
use std::io::{Read, Write};

use common::flip_byte;
use shoal_wal::{snapshot_file_name, SnapshotStore, WalError, SNAPSHOTS_KEPT_MAX};

fn snapshot_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn write_snapshot(store: &SnapshotStore, index: u64, meta: &[u8], data: &[u8]) {
    let mut writer = store.begin(index, meta).expect("begin");
    for chunk in data.chunks(7000) {
        writer.write(chunk).expect("write");
    }
    let info = writer.finish().expect("finish");
    assert_eq!(info.index, index);
    assert_eq!(info.data_len, data.len() as u64);
}

#[test]
fn write_finish_latest_and_read_back() {
    // Goal: a snapshot written in pieces is the latest, and reads back by chunk and stream.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    assert_eq!(store.latest().expect("latest"), None);
    let data = snapshot_data(100_000);
    write_snapshot(&store, 10, b"meta-10", &data);

    let latest = store.latest().expect("latest").expect("a snapshot");
    assert_eq!(latest.index, 10);
    assert_eq!(latest.meta, b"meta-10");
    assert_eq!(latest.data_len, 100_000);
    assert_eq!(store.data_len(10).expect("data_len"), 100_000);
    assert_eq!(store.info(10).expect("info"), latest);

    let mut reassembled = Vec::new();
    let mut offset = 0u64;
    loop {
        let chunk = store.read_chunk(10, offset, 4096).expect("chunk");
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        reassembled.extend_from_slice(&chunk);
    }
    assert_eq!(reassembled, data);
    assert_eq!(
        store.read_chunk(10, 99_990, 64).expect("chunk"),
        data[99_990..].to_vec()
    );
    assert!(matches!(
        store.read_chunk(10, 100_001, 1),
        Err(WalError::SnapshotOffsetOutOfRange { .. })
    ));
    assert!(matches!(
        store.read_chunk(11, 0, 1),
        Err(WalError::SnapshotNotFound { index: 11 })
    ));

    let mut streamed = Vec::new();
    store
        .open_reader(10)
        .expect("reader")
        .read_to_end(&mut streamed)
        .expect("stream");
    assert_eq!(streamed, data);

    // A reopened store sees the same snapshot.
    let store = SnapshotStore::open(dir.path()).expect("reopen");
    assert_eq!(store.latest().expect("latest"), Some(latest));
}

#[test]
fn io_write_impl_streams_into_the_snapshot() {
    // Goal: SnapshotWriter works as a std::io::Write sink for a state machine.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    let mut writer = store.begin(3, b"m").expect("begin");
    let sink: &mut dyn Write = &mut writer;
    write!(sink, "hello {}", 42).expect("write!");
    sink.write_all(b", world").expect("write_all");
    let info = writer.finish().expect("finish");
    assert_eq!(info.data_len, 15);
    let mut text = String::new();
    store
        .open_reader(3)
        .expect("reader")
        .read_to_string(&mut text)
        .expect("read");
    assert_eq!(text, "hello 42, world");
}

#[test]
fn abandoned_writer_leaves_no_visible_snapshot() {
    // Goal: a writer dropped before finish removes its temporary file; a temporary left by
    // a crash is removed by the next open.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    write_snapshot(&store, 10, b"meta-10", &snapshot_data(1000));
    let mut abandoned = store.begin(20, b"meta-20").expect("begin");
    abandoned.write(b"partial").expect("write");
    drop(abandoned);
    assert_eq!(store.latest().expect("latest").map(|info| info.index), Some(10));
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![snapshot_file_name(10)]);

    let leftover = dir.path().join(format!("{}.tmp", snapshot_file_name(30)));
    fs::write(&leftover, b"crashed mid-write").expect("leftover");
    let store = SnapshotStore::open(dir.path()).expect("reopen");
    assert!(!leftover.exists());
    assert_eq!(store.latest().expect("latest").map(|info| info.index), Some(10));
}

#[test]
fn finish_keeps_only_the_newest_snapshots() {
    // Goal: older snapshots beyond SNAPSHOTS_KEPT_MAX are deleted, and older indices are
    // refused as stale.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    for index in [10, 20, 30, 40] {
        write_snapshot(&store, index, b"m", &snapshot_data(100));
    }
    let mut kept: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), SNAPSHOTS_KEPT_MAX);
    assert_eq!(kept, vec![snapshot_file_name(30), snapshot_file_name(40)]);
    assert!(matches!(
        store.info(10),
        Err(WalError::SnapshotNotFound { index: 10 })
    ));
    // The previous snapshot stays readable for a transfer in flight.
    assert_eq!(store.read_chunk(30, 0, 10).expect("chunk").len(), 10);
    assert!(matches!(
        store.begin(35, b"m"),
        Err(WalError::SnapshotStale {
            index: 35,
            latest_index: 40
        })
    ));
}

#[test]
fn corrupt_snapshot_is_never_returned() {
    // Goal: a damaged byte anywhere in the newest snapshot makes latest() fail with
    // Corrupt instead of returning it, and the streaming reader fails at the end.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    write_snapshot(&store, 10, b"meta", &snapshot_data(300));
    let path = dir.path().join(snapshot_file_name(10));
    let len = fs::metadata(&path).expect("stat").len();
    for offset in 0..len {
        flip_byte(&path, offset, 0x20);
        let result = store.latest();
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "flip at {offset}: {result:?}"
        );
        flip_byte(&path, offset, 0x20);
    }
    // A flipped data byte is caught by the streaming reader when it reaches the end.
    flip_byte(&path, 100, 0x20);
    let mut reader = store.open_reader(10).expect("layout is intact");
    let mut sink = Vec::new();
    let error = reader.read_to_end(&mut sink).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    // A truncated file is refused too.
    flip_byte(&path, 100, 0x20);
    common::cut_file(&path, len - 1);
    assert!(matches!(store.latest(), Err(WalError::Corrupt { .. })));
}
