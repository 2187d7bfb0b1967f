//! Read-only and must-exist opens: `FileStore::open_read_only` refuses every write, reads everything a
//! normal open wrote, creates and changes nothing on disk, shares the lock with other readers but not
//! with a writer; `open_existing` never creates a store.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use replikativ_store::{Batch, FileStore, FileStoreOptions, SledStore, Store, StoreError};

/// Every file under `dir` (recursively) with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().expect("mtime")));
        }
    }
    out
}

fn blob(store: &dyn Store, name: &[u8]) -> Option<Vec<u8>> {
    let mut reader = store.open_blob(name).expect("open blob")?;
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).expect("read blob");
    Some(buf)
}

/// A closed store with keys, a pruned log, a blob, several segments and one compaction behind it.
fn written_store(dir: &Path) {
    let store = FileStore::open_with(dir, FileStoreOptions::default().with_segment_size(4096)).expect("open");
    for i in 0..200u32 {
        store.put(format!("k/{i:03}").as_bytes(), &[i as u8; 40]).expect("put");
    }
    store.compact().expect("compact");
    for i in 0..50u32 {
        store.delete(format!("k/{i:03}").as_bytes()).expect("delete");
    }
    store.apply(&Batch::new().put(b"batch/a", b"1".to_vec()).put(b"batch/b", b"2".to_vec())).expect("batch");
    for i in 0..10u8 {
        store.log_append(b"log", &[i]).expect("append");
    }
    store.log_prune(b"log", 4).expect("prune");
    store.put_blob(b"snapshot", &mut &[9u8; 100_000][..]).expect("blob");
    assert!(store.stats().segments > 1, "the test wants several segments");
    store.close().expect("close");
}

#[test]
fn open_read_only_reads_everything_a_normal_open_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    written_store(dir.path());
    let ro = FileStore::open_read_only(dir.path()).expect("read-only open");
    assert!(ro.is_read_only());
    assert_eq!(ro.get(b"k/049").expect("get"), None);
    assert_eq!(ro.get(b"k/050").expect("get"), Some(vec![50u8; 40]));
    assert!(ro.exists(b"k/199").expect("exists"));
    assert_eq!(ro.scan_prefix(b"k/").expect("scan").len(), 150);
    assert_eq!(ro.scan_prefix(b"batch/").expect("scan").len(), 2);
    let bounds = ro.log_bounds(b"log").expect("bounds");
    assert_eq!((bounds.first, bounds.next), (4, 10));
    let entries = ro.log_read(b"log", 0, 100).expect("log read");
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (4..10).collect::<Vec<_>>());
    assert_eq!(entries[0].data, vec![4u8]);
    assert_eq!(blob(&ro, b"snapshot"), Some(vec![9u8; 100_000]));
    assert_eq!(blob(&ro, b"absent"), None);
    assert!(ro.size_on_disk().expect("size") > 0);
    ro.close().expect("close");
    assert!(matches!(ro.get(b"k/050"), Err(StoreError::Closed)));
}

#[test]
fn open_read_only_refuses_every_write_with_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    written_store(dir.path());
    let before = snapshot(dir.path());
    let ro = FileStore::open_read_only(dir.path()).expect("read-only open");
    let refused = |what: &str, r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::ReadOnly)), "{what}: {r:?}");
    };
    refused("put", ro.put(b"k/050", b"new"));
    let mut called = false;
    refused(
        "update",
        ro.update(b"k/050", &mut |_| {
            called = true;
            Some(b"new".to_vec())
        })
        .map(|_| ()),
    );
    assert!(!called, "update must not run its function on a read-only store");
    refused("delete", ro.delete(b"k/050"));
    refused("apply", ro.apply(&Batch::new().put(b"x", b"y".to_vec())));
    refused("apply of an empty batch", ro.apply(&Batch::new()));
    refused("apply_owned", ro.apply_owned(Batch::new().delete(b"k/050")));
    let mut batch = Batch::new();
    batch.push_log_append(b"log".to_vec(), b"e".to_vec());
    refused("apply with a log append", ro.apply(&batch));
    refused("log_append", ro.log_append(b"log", b"e").map(|_| ()));
    refused("log_prune", ro.log_prune(b"log", 8));
    refused("put_blob", ro.put_blob(b"other", &mut &b"data"[..]).map(|_| ()));
    refused("delete_blob", ro.delete_blob(b"snapshot").map(|_| ()));
    refused("oversize put", ro.put(&vec![b'k'; 5000], b"v"));
    refused("compact", ro.compact());
    // The barrier has nothing to make durable.
    ro.sync().expect("sync of a read-only store");
    // Nothing changed, in memory or on disk.
    assert_eq!(ro.get(b"k/050").expect("get"), Some(vec![50u8; 40]));
    assert_eq!(ro.log_bounds(b"log").expect("bounds").next, 10);
    assert_eq!(blob(&ro, b"snapshot").map(|b| b.len()), Some(100_000));
    ro.close().expect("close");
    assert_eq!(snapshot(dir.path()), before, "a read-only handle changed the directory");
}

#[test]
fn open_read_only_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    written_store(dir.path());
    // A leftover blob temp file, which a writable open would delete.
    std::fs::write(dir.path().join("blobs").join("tmp-1-0"), b"partial").expect("temp file");
    let before = snapshot(dir.path());
    for _ in 0..2 {
        let ro = FileStore::open_read_only(dir.path()).expect("read-only open");
        ro.scan_prefix(b"").expect("scan");
        ro.log_read(b"log", 0, 100).expect("log read");
        blob(&ro, b"snapshot").expect("blob");
        ro.sync().expect("sync");
        ro.close().expect("close");
    }
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn open_read_only_does_not_create_a_missing_or_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("typo");
    match FileStore::open_read_only(&missing) {
        Err(e @ StoreError::NotFound { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&missing.display().to_string()), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!missing.exists(), "the read-only open created the directory");
    // Under a parent that does not exist either.
    assert!(matches!(FileStore::open_read_only(missing.join("deeper")), Err(StoreError::NotFound { .. })));
    assert!(!missing.exists());
    // An existing directory without a store is no store either, and stays empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    match FileStore::open_read_only(&empty) {
        Err(e @ StoreError::NotFound { .. }) => assert!(e.to_string().contains("holds no store"), "{e}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0, "the read-only open created files");
    // A file, not a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(matches!(FileStore::open_read_only(&file), Err(StoreError::NotFound { .. })));
}

#[test]
fn open_existing_does_not_create_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("typo");
    assert!(matches!(FileStore::open_existing(&missing), Err(StoreError::NotFound { .. })));
    assert!(matches!(SledStore::open_existing(&missing), Err(StoreError::NotFound { .. })));
    assert!(!missing.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(matches!(FileStore::open_existing(&empty), Err(StoreError::NotFound { .. })));
    assert!(matches!(SledStore::open_existing(&empty), Err(StoreError::NotFound { .. })));
    assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0);
    // Existing stores open for writing.
    let file_dir = dir.path().join("file");
    FileStore::open(&file_dir).expect("create").close().expect("close");
    let store = FileStore::open_existing(&file_dir).expect("open existing");
    assert!(!store.is_read_only());
    store.put(b"k", b"v").expect("put");
    store.close().expect("close");
    let sled_dir = dir.path().join("sled");
    SledStore::open(&sled_dir).expect("create").close().expect("close");
    let store = SledStore::open_existing(&sled_dir).expect("open existing");
    store.put(b"k", b"v").expect("put");
    store.close().expect("close");
}

#[test]
fn open_read_only_shares_the_lock_with_readers_but_not_with_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    written_store(dir.path());
    // While a writer holds the store, a read-only open is refused.
    let writer = FileStore::open(dir.path()).expect("writer");
    match FileStore::open_read_only(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    writer.close().expect("close writer");
    // With no writer, any number of readers at once.
    let a = FileStore::open_read_only(dir.path()).expect("first reader");
    let b = FileStore::open_read_only(dir.path()).expect("second reader");
    assert_eq!(a.get(b"k/100").expect("get"), b.get(b"k/100").expect("get"));
    // ... and no writer meanwhile.
    assert!(matches!(FileStore::open(dir.path()), Err(StoreError::Locked { .. })));
    drop(a);
    b.close().expect("close reader");
    // Once they are gone, a writer opens.
    FileStore::open(dir.path()).expect("writer after the readers").close().expect("close");
}

#[test]
fn open_read_only_ignores_a_torn_tail_without_truncating_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = FileStore::open(dir.path()).expect("open");
        store.put(b"kept", b"value").expect("put");
        store.close().expect("close");
    }
    let segment = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let intact = std::fs::metadata(&segment).expect("stat").len();
    // A record header cut short by a crash.
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(b"RPKR\x10\x00\x00");
    std::fs::write(&segment, &bytes).expect("write");

    let ro = FileStore::open_read_only(dir.path()).expect("read-only open");
    assert_eq!(ro.get(b"kept").expect("get"), Some(b"value".to_vec()));
    let report = ro.recovery_report();
    assert_eq!(report.ignored_tail, Some((segment.clone(), intact)));
    assert_eq!(report.ignored_bytes, 7);
    assert_eq!(report.truncated_tail, None);
    ro.close().expect("close");
    assert_eq!(std::fs::metadata(&segment).expect("stat").len(), intact + 7, "the tail was truncated");

    // A writable open repairs it as before.
    let store = FileStore::open(dir.path()).expect("open");
    assert_eq!(store.recovery_report().truncated_tail, Some((segment.clone(), intact)));
    assert_eq!(store.recovery_report().ignored_tail, None);
    store.close().expect("close");
    assert_eq!(std::fs::metadata(&segment).expect("stat").len(), intact);
}

#[test]
fn open_read_only_without_a_lock_file_reads_and_creates_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    written_store(dir.path());
    std::fs::remove_file(dir.path().join("LOCK")).expect("remove LOCK");
    let ro = FileStore::open_read_only(dir.path()).expect("read-only open without LOCK");
    assert_eq!(ro.get(b"k/150").expect("get"), Some(vec![150u8; 40]));
    ro.close().expect("close");
    assert!(!dir.path().join("LOCK").exists(), "the read-only open created the lock file");
}
