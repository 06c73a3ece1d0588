//! Atomically replaced small files: roundtrip, corruption detection, leftovers.

mod common;

use std::fs;

use common::{cut_file, file_len, flip_byte};
use shoal_wal::{read_file_atomic, write_file_atomic, WalError, ATOMIC_FILE_BYTES_MAX};

#[test]
fn write_then_read_roundtrips_and_replaces() {
    // Goal: content reads back exactly, a rewrite replaces it, an absent file is None.
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(read_file_atomic(dir.path(), "hard_state").expect("read"), None);
    write_file_atomic(dir.path(), "hard_state", b"term=1").expect("write");
    assert_eq!(
        read_file_atomic(dir.path(), "hard_state").expect("read"),
        Some(b"term=1".to_vec())
    );
    write_file_atomic(dir.path(), "hard_state", b"term=2 vote=3").expect("rewrite");
    assert_eq!(
        read_file_atomic(dir.path(), "hard_state").expect("read"),
        Some(b"term=2 vote=3".to_vec())
    );
    write_file_atomic(dir.path(), "empty", b"").expect("write empty");
    assert_eq!(
        read_file_atomic(dir.path(), "empty").expect("read"),
        Some(Vec::new())
    );
    assert!(!dir.path().join("hard_state.tmp").exists());
}

#[test]
fn every_flipped_byte_and_every_cut_is_detected() {
    // Goal: any single damaged byte or a shortened file is reported as Corrupt.
    let dir = tempfile::tempdir().expect("tempdir");
    write_file_atomic(dir.path(), "state", b"some durable state").expect("write");
    let path = dir.path().join("state");
    let len = file_len(&path);
    for offset in 0..len {
        flip_byte(&path, offset, 0x04);
        let result = read_file_atomic(dir.path(), "state");
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "flip at {offset}: {result:?}"
        );
        flip_byte(&path, offset, 0x04);
    }
    let original = fs::read(&path).expect("read");
    for cut in 0..len {
        cut_file(&path, cut);
        let error = read_file_atomic(dir.path(), "state").unwrap_err();
        assert!(matches!(error, WalError::Corrupt { .. }), "cut at {cut}");
        assert!(error.to_string().contains("wipe its data directory"));
        fs::write(&path, &original).expect("restore");
    }
}

#[test]
fn leftover_temporary_file_is_ignored() {
    // Goal: a crash between writing name.tmp and the rename leaves the old content visible,
    // and the next write succeeds over the leftover.
    let dir = tempfile::tempdir().expect("tempdir");
    write_file_atomic(dir.path(), "state", b"old").expect("write");
    fs::write(dir.path().join("state.tmp"), b"half-written garbage").expect("leftover");
    assert_eq!(
        read_file_atomic(dir.path(), "state").expect("read"),
        Some(b"old".to_vec())
    );
    write_file_atomic(dir.path(), "state", b"new").expect("write over leftover");
    assert_eq!(
        read_file_atomic(dir.path(), "state").expect("read"),
        Some(b"new".to_vec())
    );
}

#[test]
fn bad_names_and_oversized_content_are_refused() {
    // Goal: names that escape the directory or collide with temporaries, and content over
    // the limit, fail with structured errors.
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["", ".", "..", "a/b", "state.tmp"] {
        assert!(
            matches!(
                write_file_atomic(dir.path(), name, b"x"),
                Err(WalError::InvalidFileName { .. })
            ),
            "{name:?}"
        );
    }
    let big = vec![0u8; ATOMIC_FILE_BYTES_MAX + 1];
    assert!(matches!(
        write_file_atomic(dir.path(), "big", &big),
        Err(WalError::TooLarge { .. })
    ));
}
