//! Damage to the files of a closed `FileStore`: typed errors, never a panic, never a wrong value; intact
//! records stay readable; a torn tail is recovered.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use replikativ_store::{FileStore, Store, StoreError};

const N: usize = 12;

fn key(i: usize) -> Vec<u8> {
    format!("key{i:02}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value number {i} {}", "x".repeat(i)).into_bytes()
}

/// A closed store holding `N` keys, one record each; returns the dir and the segment path.
fn build() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    for i in 0..N {
        store.put(&key(i), &value(i)).expect("put");
    }
    store.close().expect("close");
    let seg = segment(dir.path());
    (dir, seg)
}

fn segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.path().join(e.file_name())).expect("copy");
        }
    }
    to
}

/// Every key reads as its value, as a Corruption error, or (only for trailing records) as absent.
/// Returns how many keys read correctly.
fn check_no_wrong_values(store: &FileStore) -> usize {
    let mut ok = 0;
    let mut missing_from = None;
    for i in 0..N {
        match store.get(&key(i)) {
            Ok(Some(v)) => {
                assert_eq!(v, value(i), "key {i} returned a wrong value");
                assert!(missing_from.is_none(), "key {i} present after a missing key");
                ok += 1;
            }
            Ok(None) => missing_from = missing_from.or(Some(i)),
            Err(StoreError::Corruption { key: Some(k), .. }) => assert_eq!(k, key(i)),
            Err(e) => panic!("key {i}: unexpected error {e}"),
        }
    }
    ok
}

#[test]
fn every_single_byte_flip_gives_typed_errors_and_no_wrong_values() {
    let (dir, seg) = build();
    let bytes = std::fs::read(&seg).expect("read");
    let name = seg.file_name().expect("name").to_owned();
    let mut opened = 0;
    for pos in 0..bytes.len() {
        let copy = copy_dir(dir.path());
        let mut damaged = bytes.clone();
        damaged[pos] ^= 0x40;
        std::fs::write(copy.path().join(&name), &damaged).expect("write");
        match FileStore::open(copy.path()) {
            Ok(store) => {
                opened += 1;
                check_no_wrong_values(&store);
            }
            Err(StoreError::Corruption { file, .. }) => assert_eq!(file.file_name(), Some(name.as_os_str())),
            Err(e) => panic!("flip at {pos}: unexpected error {e}"),
        }
    }
    assert!(opened > 0);
}

#[test]
fn damaged_value_in_the_middle_is_reported_for_its_key_only() {
    let (dir, seg) = build();
    let mut bytes = std::fs::read(&seg).expect("read");
    let victim = value(5);
    let at = bytes.windows(victim.len()).position(|w| w == victim.as_slice()).expect("value on disk");
    bytes[at + 3] ^= 0xFF;
    std::fs::write(&seg, &bytes).expect("write");
    let store = FileStore::open(dir.path()).expect("open despite a damaged value");
    assert_eq!(store.recovery_report().damaged_records.len(), 1);
    match store.get(&key(5)) {
        Err(StoreError::Corruption { key: Some(k), file, .. }) => {
            assert_eq!(k, key(5));
            assert_eq!(file, seg);
        }
        other => panic!("expected corruption for key05, got {other:?}"),
    }
    for i in (0..N).filter(|&i| i != 5) {
        assert_eq!(store.get(&key(i)).expect("get"), Some(value(i)));
    }
    // Overwriting the damaged key heals it.
    store.put(&key(5), b"fresh").expect("put");
    assert_eq!(store.get(&key(5)).expect("get"), Some(b"fresh".to_vec()));
}

#[test]
fn damaged_header_in_the_middle_fails_open_with_corruption() {
    let (dir, seg) = build();
    let mut bytes = std::fs::read(&seg).expect("read");
    // The third record's header: find the third "RPKR" magic and damage its length field.
    let third = bytes.windows(4).enumerate().filter(|(_, w)| *w == b"RPKR").nth(2).expect("record").0;
    bytes[third + 5] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write");
    match FileStore::open(dir.path()) {
        Err(StoreError::Corruption { file, offset, .. }) => {
            assert_eq!(file, seg);
            assert_eq!(offset, third as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn every_truncation_recovers_a_prefix() {
    let (dir, seg) = build();
    let len = std::fs::metadata(&seg).expect("stat").len();
    let name = seg.file_name().expect("name").to_owned();
    let mut last_ok = 0;
    for cut in (0..=len).rev() {
        let copy = copy_dir(dir.path());
        let f = OpenOptions::new().write(true).open(copy.path().join(&name)).expect("open");
        f.set_len(cut).expect("truncate");
        drop(f);
        let store = FileStore::open(copy.path()).expect("a truncated tail must be recovered");
        let ok = check_no_wrong_values(&store);
        assert!(cut == len || ok <= last_ok || last_ok == 0);
        last_ok = ok;
        if cut < len {
            assert!(ok < N);
        }
        // The recovered store accepts writes and reopens cleanly.
        store.put(b"after", b"crash").expect("put");
        store.close().expect("close");
        let store = FileStore::open(copy.path()).expect("reopen");
        assert_eq!(store.get(b"after").expect("get"), Some(b"crash".to_vec()));
        assert_eq!(store.recovery_report().truncated_tail, None);
    }
}

#[test]
fn zero_filled_tail_is_truncated_and_reported() {
    let (dir, seg) = build();
    let len = std::fs::metadata(&seg).expect("stat").len();
    OpenOptions::new().append(true).open(&seg).expect("open").write_all(&[0u8; 4096]).expect("append");
    let store = FileStore::open(dir.path()).expect("open");
    let report = store.recovery_report();
    assert_eq!(report.truncated_tail, Some((seg.clone(), len)));
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(check_no_wrong_values(&store), N);
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len);
}

#[test]
fn damaged_segment_header_of_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    store.put(b"a", b"1").expect("put");
    store.compact().expect("compact"); // rolls to a second segment, removes the first
    store.put(b"b", b"2").expect("put");
    store.close().expect("close");
    drop(store);
    // Roll once more by hand: create an empty newer segment so the damaged one is not the last.
    let first = segment(dir.path());
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[0] ^= 1;
    std::fs::write(&first, &bytes).expect("write");
    let next_id: u32 =
        first.file_stem().and_then(|s| s.to_str()).expect("stem").parse::<u32>().expect("id") + 1;
    let mut header = b"RPKSEG01".to_vec();
    header.extend_from_slice(&u64::from(next_id).to_le_bytes());
    std::fs::write(dir.path().join(format!("{next_id:010}.seg")), header).expect("write");
    assert!(matches!(FileStore::open(dir.path()), Err(StoreError::Corruption { .. })));
}

#[test]
fn damaged_blob_fails_its_checksum_and_short_blob_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    let data = vec![42u8; 300_000];
    store.put_blob(b"snap", &mut data.as_slice()).expect("put_blob");
    let blob =
        std::fs::read_dir(dir.path().join("blobs")).expect("dir").next().expect("file").expect("e").path();
    let mut bytes = std::fs::read(&blob).expect("read");
    bytes[123_456] ^= 1;
    std::fs::write(&blob, &bytes).expect("write");
    let mut r = store.open_blob(b"snap").expect("open_blob").expect("exists");
    let err = r.read_to_end(&mut Vec::new()).expect_err("checksum must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    std::fs::write(&blob, &bytes[..10]).expect("write");
    assert!(matches!(store.open_blob(b"snap"), Err(StoreError::Corruption { .. })));
}

#[test]
fn compaction_preserves_state_and_reclaims_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    for round in 0..20u8 {
        for i in 0..200 {
            store.put(&key(i), &[round; 100]).expect("put");
        }
    }
    store.log_append(b"log", b"entry").expect("append");
    let before = store.stats();
    store.compact().expect("compact");
    let after = store.stats();
    assert_eq!(after.entries, before.entries);
    assert!(after.total_bytes < before.total_bytes / 5, "{before:?} -> {after:?}");
    store.close().expect("close");
    let store = FileStore::open(dir.path()).expect("reopen");
    for i in 0..200 {
        assert_eq!(store.get(&key(i)).expect("get"), Some(vec![19u8; 100]));
    }
    assert_eq!(store.log_read(b"log", 0, 10).expect("log")[0].data, b"entry");
}
