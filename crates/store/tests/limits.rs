//! Size limits, the directory lock and closed handles, for every backend.

use std::path::Path;
use std::process::Command;

use replikativ_store::{
    Batch, FileStore, MAX_BLOB_NAME_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, MemoryStore, SLED_MAX_VALUE_LEN,
    SledStore, Store, StoreError,
};

fn check_limits(store: &dyn Store, max_value: usize) {
    assert_eq!(store.limits().max_key_len, MAX_KEY_LEN);
    assert_eq!(store.limits().max_value_len, max_value);
    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    let too_large_key = |r: Result<_, StoreError>| {
        assert!(
            matches!(r, Err(StoreError::KeyTooLarge { len, max }) if len == MAX_KEY_LEN + 1 && max == MAX_KEY_LEN)
        )
    };
    too_large_key(store.put(&long_key, b"v"));
    too_large_key(store.get(&long_key).map(|_| ()));
    too_large_key(store.delete(&long_key));
    too_large_key(store.apply(&Batch::new().put(long_key.clone(), b"v".to_vec())));
    too_large_key(store.log_append(&long_key, b"v").map(|_| ()));
    store.put(&vec![b'k'; MAX_KEY_LEN], b"max key is fine").expect("max key");

    let big = vec![0u8; max_value + 1];
    let too_large_value = |r: Result<_, StoreError>| {
        assert!(
            matches!(r, Err(StoreError::ValueTooLarge { len, max }) if len == max_value + 1 && max == max_value)
        )
    };
    too_large_value(store.put(b"k", &big));
    too_large_value(
        store.apply(&Batch::new().put(b"a".to_vec(), b"ok".to_vec()).put(b"k".to_vec(), big.clone())),
    );
    too_large_value(store.log_append(b"log", &big).map(|_| ()));
    too_large_value(store.update(b"k", &mut |_| Some(big.clone())).map(|_| ()));
    // Nothing of the rejected batch was applied.
    assert_eq!(store.get(b"a").expect("get"), None);
    store.put(b"k", &big[..max_value]).expect("max value is fine");
    assert_eq!(store.get(b"k").expect("get").map(|v| v.len()), Some(max_value));

    let long_name = vec![b'n'; MAX_BLOB_NAME_LEN + 1];
    assert!(matches!(store.put_blob(&long_name, &mut &b"x"[..]), Err(StoreError::KeyTooLarge { .. })));
}

#[test]
fn memory_limits() {
    check_limits(&MemoryStore::new(), MAX_VALUE_LEN);
}

#[test]
fn file_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_limits(&FileStore::open(dir.path()).expect("open"), MAX_VALUE_LEN);
}

#[test]
fn sled_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_limits(&SledStore::open(dir.path()).expect("open"), SLED_MAX_VALUE_LEN);
}

type Opener = dyn Fn(&Path) -> Result<Box<dyn Store>, StoreError>;

fn check_lock_and_close(open: &Opener) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).expect("open");
    store.put(b"k", b"v").expect("put");
    match open(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Another process is refused too (the crash child reports the error and exits with status 1).
    let out = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
        .args(["file", dir.path().to_str().expect("utf8")])
        .output()
        .expect("run child");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    store.close().expect("close");
    store.close().expect("closing twice is fine");
    assert!(matches!(store.get(b"k"), Err(StoreError::Closed)));
    assert!(matches!(store.put(b"k", b"v"), Err(StoreError::Closed)));
    assert!(matches!(store.put_blob(b"b", &mut &b"x"[..]), Err(StoreError::Closed)));
    // close released the lock although the handle is still alive.
    let again = open(dir.path()).expect("reopen after close");
    assert_eq!(again.get(b"k").expect("get"), Some(b"v".to_vec()));
    drop(again);
    // Dropping releases it as well.
    open(dir.path()).expect("reopen after drop");
}

#[test]
fn file_lock_and_close() {
    check_lock_and_close(&|p| FileStore::open(p).map(|s| Box::new(s) as Box<dyn Store>));
}

#[test]
fn sled_lock_and_close() {
    check_lock_and_close(&|p| SledStore::open(p).map(|s| Box::new(s) as Box<dyn Store>));
}

#[test]
fn memory_close() {
    let store = MemoryStore::new();
    store.close().expect("close");
    assert!(matches!(store.get(b"k"), Err(StoreError::Closed)));
    assert!(matches!(store.sync(), Err(StoreError::Closed)));
}

#[test]
fn errors_render_with_context() {
    let e = StoreError::Corruption {
        file: "/x/0000000001.seg".into(),
        offset: 42,
        key: Some(b"user/alice".to_vec()),
        reason: "value checksum mismatch".into(),
    };
    assert_eq!(
        e.to_string(),
        "corruption in /x/0000000001.seg at offset 42 (key \"user/alice\"): value checksum mismatch"
    );
    assert!(e.is_corruption());
}
