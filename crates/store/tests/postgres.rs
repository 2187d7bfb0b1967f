//! PgStore beyond the shared conformance suite: the namespace lease (second opener, another process, a
//! killed holder, a node that lost its session), reconnecting after lost sessions, a PostgreSQL restart in
//! the middle of writes, the versioned schema, size limits, contention.
#![cfg(feature = "postgres")]

#[path = "support/pg.rs"]
mod pg;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replikativ_store::{Batch, MAX_KEY_LEN, MAX_VALUE_LEN, PG_SCHEMA_VERSION, PgStore, Store, StoreError};

/// Runs SQL as an administrator on the server at `base` (one short-lived session).
fn admin(
    base: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<tokio_postgres::Row> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await.expect("admin connect");
        tokio::spawn(conn);
        tokio::time::timeout(Duration::from_secs(20), c.query(sql, params))
            .await
            .expect("admin query timed out")
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// Opens `url`, retrying while the namespace is still locked (a killed holder's session ends when the
/// server notices its closed socket, which takes a moment), for at most 10 s.
fn open_eventually(url: &str) -> PgStore {
    let start = Instant::now();
    loop {
        match PgStore::open_url(url) {
            Ok(s) => return s,
            Err(StoreError::NamespaceLocked { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {url}: {e}"),
        }
    }
}

#[test]
fn second_opener_is_refused_and_close_releases_the_lease() {
    let Some(base) = pg::base_url() else { return };
    let ns = pg::unique_ns("lock");
    let url = pg::url(&base, &ns);
    let store = PgStore::open_url(&url).expect("open");
    store.put(b"k", b"v").expect("put");
    match PgStore::open_url(&url) {
        Err(StoreError::NamespaceLocked { namespace, server }) => {
            assert_eq!(namespace, ns);
            assert!(server.contains(&ns));
        }
        other => panic!("expected NamespaceLocked, got {other:?}"),
    }
    // Another process is refused too (the crash child reports the error and exits with status 1).
    let out = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
        .args(["postgres", &url])
        .output()
        .expect("run child");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by another node"));
    // Other namespaces are independent.
    let other = PgStore::open_url(&pg::url(&base, &pg::unique_ns("lock-other"))).expect("other namespace");
    assert_eq!(other.get(b"k").expect("get"), None);

    store.close().expect("close");
    store.close().expect("closing twice is fine");
    assert!(matches!(store.get(b"k"), Err(StoreError::Closed)));
    assert!(matches!(store.put(b"k", b"v"), Err(StoreError::Closed)));
    assert!(matches!(store.put_blob(b"b", &mut &b"x"[..]), Err(StoreError::Closed)));
    assert!(matches!(store.sync(), Err(StoreError::Closed)));
    let again = PgStore::open_url(&url).expect("reopen after close");
    assert_eq!(again.get(b"k").expect("get"), Some(b"v".to_vec()));
    let epoch = again.lease_epoch();
    drop(again);
    let third = PgStore::open_url(&url).expect("reopen after drop");
    assert_eq!(third.lease_epoch(), epoch + 1, "every open takes a new lease epoch");
}

#[test]
fn a_killed_holder_frees_the_namespace() {
    let Some(base) = pg::base_url() else { return };
    let url = pg::url(&base, &pg::unique_ns("kill"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
        .args(["postgres", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the child holds the namespace (it prints its first synced batch).
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
    assert_eq!(line.trim(), "0", "the child synced batch 0");
    assert!(matches!(PgStore::open_url(&url), Err(StoreError::NamespaceLocked { .. })));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let store = open_eventually(&url);
    assert!(store.get(b"next").expect("get").is_some());
}

#[test]
fn a_node_that_lost_its_session_cannot_write_after_a_takeover() {
    let Some(base) = pg::base_url() else { return };
    let ns = pg::unique_ns("fence");
    let app = format!("fence-{}", std::process::id());
    let url_a = format!("{}&application_name={app}", pg::url(&base, &ns));
    let a = PgStore::open_url(&url_a).expect("open a");
    a.put(b"owner", b"a").expect("a writes");
    // The server ends a's lease session (an administrator, a network cut, a server-side timeout).
    let killed = admin(
        &base,
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid \
         WHERE l.locktype = 'advisory' AND s.application_name = $1",
        &[&app],
    );
    assert_eq!(killed.len(), 1, "a holds exactly one advisory lock");
    let b = open_eventually(&pg::url(&base, &ns));
    assert_eq!(b.lease_epoch(), a.lease_epoch() + 1);
    // a's write fails: its lease epoch is stale (or it cannot take the lock back); nothing is written.
    let err = a.put(b"owner", b"a-again").expect_err("a must not write after the takeover");
    assert!(
        matches!(err, StoreError::Poisoned { .. } | StoreError::NamespaceLocked { .. }),
        "unexpected error {err:?}"
    );
    assert_eq!(b.get(b"owner").expect("get"), Some(b"a".to_vec()));
    b.put(b"owner", b"b").expect("b writes");
    drop(b);
    // Even with the lock free again, a is fenced off for good: the namespace changed hands meanwhile.
    let start = Instant::now();
    let err = loop {
        match a.put(b"owner", b"a-late") {
            Err(e @ StoreError::Poisoned { .. }) => break e,
            Err(StoreError::NamespaceLocked { .. }) | Err(StoreError::Database { .. })
                if start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("expected Poisoned, got {other:?}"),
        }
    };
    assert!(err.to_string().contains("another node"), "{err}");
    let c = open_eventually(&pg::url(&base, &ns));
    assert_eq!(c.get(b"owner").expect("get"), Some(b"b".to_vec()));
}

#[test]
fn lost_sessions_are_reconnected_and_keep_the_lease() {
    let Some(base) = pg::base_url() else { return };
    let ns = pg::unique_ns("reconnect");
    let app = format!("reconnect-{}", std::process::id());
    let a = PgStore::open_url(&format!("{}&application_name={app}", pg::url(&base, &ns))).expect("open");
    a.put(b"before", b"1").expect("put");
    let epoch = a.lease_epoch();
    let killed = admin(
        &base,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&app],
    );
    assert_eq!(killed.len(), 3, "lease, writer and reader sessions");
    // The first operation may fail with a clear database error; a later one reconnects.
    let mut errors = Vec::new();
    let start = Instant::now();
    loop {
        match a.put(b"after", b"2") {
            Ok(()) => break,
            Err(e @ StoreError::Database { .. }) if start.elapsed() < Duration::from_secs(10) => {
                errors.push(e.to_string());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reconnect failed: {e} (after {errors:?})"),
        }
    }
    assert!(errors.len() <= 2, "at most the in-flight operations fail: {errors:?}");
    assert_eq!(a.lease_epoch(), epoch);
    assert_eq!(a.get(b"before").expect("get"), Some(b"1".to_vec()));
    assert_eq!(a.get(b"after").expect("get"), Some(b"2".to_vec()));
    // It still holds the namespace.
    assert!(matches!(PgStore::open_url(&pg::url(&base, &ns)), Err(StoreError::NamespaceLocked { .. })));

    // Only the writer and reader sessions die: the lease session (and with it the lock) is kept.
    let lease_pid = |app: &str| -> Vec<i32> {
        admin(
            &base,
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid \
             WHERE l.locktype = 'advisory' AND s.application_name = $1",
            &[&app],
        )
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let holder = lease_pid(&app);
    assert_eq!(holder.len(), 1);
    let killed = admin(
        &base,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 \
         AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
        &[&app],
    );
    assert_eq!(killed.len(), 2, "writer and reader sessions");
    let start = Instant::now();
    loop {
        match a.put(b"later", b"3") {
            Ok(()) => break,
            Err(e @ StoreError::Database { .. }) if start.elapsed() < Duration::from_secs(10) => {
                errors.push(e.to_string());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reconnect with the kept lease failed: {e} (after {errors:?})"),
        }
    }
    assert_eq!(a.get(b"later").expect("get"), Some(b"3".to_vec()));
    assert_eq!(a.lease_epoch(), epoch);
    assert_eq!(lease_pid(&app), holder, "the same lease session still holds the lock");
}

#[test]
fn schema_is_versioned_and_a_newer_one_is_refused() {
    let Some(base) = pg::base_url() else { return };
    // A database of its own, so changing its schema version cannot disturb the other tests.
    let db = pg::unique_ns("schema").replace(['-', '.'], "_");
    admin(&base, &format!("CREATE DATABASE {db}"), &[]);
    let db_base = format!("{}/{db}", base.rsplit_once('/').expect("base has a database").0);
    let url = pg::url(&db_base, "n1");
    let store = PgStore::open_url(&url).expect("open creates the schema");
    store.put(b"k", b"v").expect("put");
    drop(store);
    let version: i32 = admin(&db_base, "SELECT version FROM rk_schema", &[])[0].get(0);
    assert_eq!(version, PG_SCHEMA_VERSION);
    // Opening again migrates nothing and keeps the data.
    let store = PgStore::open_url(&url).expect("reopen");
    assert_eq!(store.get(b"k").expect("get"), Some(b"v".to_vec()));
    drop(store);
    admin(&db_base, "UPDATE rk_schema SET version = $1", &[&(PG_SCHEMA_VERSION + 1)]);
    match PgStore::open_url(&url) {
        Err(e @ StoreError::InvalidConfig { .. }) => assert!(e.to_string().contains("newer"), "{e}"),
        other => panic!("expected a refusal of the newer schema, got {other:?}"),
    }
    admin(&db_base, "UPDATE rk_schema SET version = $1", &[&PG_SCHEMA_VERSION]);
    // A database at version 1 (before the batch fence function) is migrated on open and keeps its data.
    admin(&db_base, "DROP FUNCTION rk_fence(text, bigint)", &[]);
    admin(&db_base, "UPDATE rk_schema SET version = 1", &[]);
    let store = PgStore::open_url(&url).expect("open migrates from version 1");
    assert_eq!(store.get(b"k").expect("get"), Some(b"v".to_vec()));
    store.apply(&Batch::new().put(b"k2".to_vec(), b"v2".to_vec())).expect("batch after the migration");
    drop(store);
    let version: i32 = admin(&db_base, "SELECT version FROM rk_schema", &[])[0].get(0);
    assert_eq!(version, PG_SCHEMA_VERSION);
    let tables: i64 = admin(
        &db_base,
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('rk_kv','rk_blob','rk_blob_chunk','rk_ns')",
        &[],
    )[0]
    .get(0);
    assert_eq!(tables, 4);
}

#[test]
fn limits_are_enforced_before_anything_is_sent() {
    let Some(base) = pg::base_url() else { return };
    let store = PgStore::open_url(&pg::url(&base, &pg::unique_ns("limits"))).expect("open");
    assert_eq!(store.limits().max_key_len, MAX_KEY_LEN);
    assert_eq!(store.limits().max_value_len, MAX_VALUE_LEN);
    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    assert!(
        matches!(store.put(&long_key, b"v"), Err(StoreError::KeyTooLarge { len, max }) if len == MAX_KEY_LEN + 1 && max == MAX_KEY_LEN)
    );
    assert!(matches!(store.get(&long_key), Err(StoreError::KeyTooLarge { .. })));
    assert!(matches!(
        store.apply(&Batch::new().put(b"a".to_vec(), b"ok".to_vec()).put(long_key.clone(), b"v".to_vec())),
        Err(StoreError::KeyTooLarge { .. })
    ));
    // Keys of the full length work (the btree row limit is 2,704 bytes).
    store.put(&vec![0xFFu8; MAX_KEY_LEN], b"max key").expect("max key");
    assert_eq!(store.scan_prefix(&[0xFF]).expect("scan").len(), 1);
    let big = vec![7u8; MAX_VALUE_LEN + 1];
    assert!(matches!(store.put(b"k", &big), Err(StoreError::ValueTooLarge { .. })));
    assert_eq!(store.get(b"a").expect("get"), None, "nothing of a refused batch was written");
    store.put(b"k", &big[..MAX_VALUE_LEN]).expect("max value");
    assert_eq!(store.get(b"k").expect("get").map(|v| v.len()), Some(MAX_VALUE_LEN));
    let long_name = vec![b'n'; replikativ_store::MAX_BLOB_NAME_LEN + 1];
    assert!(matches!(store.put_blob(&long_name, &mut &b"x"[..]), Err(StoreError::KeyTooLarge { .. })));
}

#[test]
fn blobs_stream_in_chunks_and_replace_atomically() {
    let Some(base) = pg::base_url() else { return };
    let store = Arc::new(PgStore::open_url(&pg::url(&base, &pg::unique_ns("blob"))).expect("open"));
    let data: Vec<u8> =
        (0..(3 * replikativ_store::PG_BLOB_CHUNK + 17)).map(|i| (i * 31 % 251) as u8).collect();
    assert_eq!(store.put_blob(b"big", &mut data.as_slice()).expect("put"), data.len() as u64);
    let mut r = store.open_blob(b"big").expect("open").expect("exists");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut got).expect("read");
    assert_eq!(got, data);
    // A failing source leaves the old blob in place.
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("source broke"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    assert!(store.put_blob(b"big", &mut Failing(replikativ_store::PG_BLOB_CHUNK + 5)).is_err());
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut store.open_blob(b"big").expect("open").expect("exists"), &mut got)
        .expect("read");
    assert_eq!(got, data, "the old blob survives a failed replacement");
    store.put(b"still", b"writable").expect("the writer session is usable after the rollback");
    assert!(store.delete_blob(b"big").expect("delete"));
    assert!(!store.delete_blob(b"big").expect("delete again"));
    assert!(store.open_blob(b"big").expect("open").is_none());
    // Empty blob.
    assert_eq!(store.put_blob(b"empty", &mut &b""[..]).expect("put"), 0);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut store.open_blob(b"empty").expect("open").expect("exists"), &mut got)
        .expect("read");
    assert!(got.is_empty());
}

#[test]
fn concurrent_writers_and_updates_are_serialized() {
    let Some(base) = pg::base_url() else { return };
    let store = Arc::new(PgStore::open_url(&pg::url(&base, &pg::unique_ns("contend"))).expect("open"));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for r in 0..50u64 {
                    store
                        .update(b"counter", &mut |old| {
                            let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().expect("u64")));
                            Some((n + 1).to_le_bytes().to_vec())
                        })
                        .expect("update");
                    let mut b = Batch::new();
                    for k in 0..5 {
                        b.push_put(format!("group/{k}"), (t << 32 | r).to_le_bytes().to_vec());
                    }
                    store.apply(&b).expect("batch");
                    let group = store.scan_prefix(b"group/").expect("scan");
                    assert!(group.windows(2).all(|w| w[0].1 == w[1].1), "a batch is seen whole");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let n = store.get(b"counter").expect("get").map(|v| u64::from_le_bytes(v.try_into().expect("u64")));
    assert_eq!(n, Some(200), "no update was lost");
}

const KEYS_PER_BATCH: u64 = 5;

/// Writes numbered batches (keys, counter and a log entry in one batch) and records each acknowledged one;
/// after an error it re-reads the counter, so a batch whose commit outcome was lost is never doubled.
fn writer(
    store: Arc<PgStore>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let next = match store.get(b"next") {
            Ok(v) => v.map_or(0, |v| u64::from_le_bytes(v.try_into().expect("u64"))),
            Err(e) => {
                errors.lock().expect("lock").push(e.to_string());
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut b = Batch::new();
        for j in 0..KEYS_PER_BATCH {
            b.push_put(format!("b/{next:08}/{j}"), next.to_le_bytes().to_vec());
        }
        b.push_put(b"next".to_vec(), (next + 1).to_le_bytes().to_vec());
        b.push_log_append(b"log".to_vec(), next.to_le_bytes().to_vec());
        match store.apply(&b).and_then(|_| store.sync()) {
            Ok(()) => acked.lock().expect("lock").push(next),
            Err(e) => {
                assert!(matches!(e, StoreError::Database { .. }), "a clear database error, got {e:?}");
                errors.lock().expect("lock").push(e.to_string());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn postgres_restart_mid_writes_loses_nothing_acknowledged() {
    let Some(_) = pg::base_url() else { return };
    let server = pg::PrivateServer::start();
    let store = Arc::new(PgStore::open_url(&pg::url(&server.url(), "restart")).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let w = {
        let (s, st, a, e) = (store.clone(), stop.clone(), acked.clone(), errors.clone());
        std::thread::spawn(move || writer(s, st, a, e))
    };
    let wait_for = |n: usize| {
        let start = Instant::now();
        while acked.lock().expect("lock").len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the writer stalled: {:?}",
                errors.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(20);
    server.stop_immediate();
    let acked_before_restart = acked.lock().expect("lock").len();
    std::thread::sleep(Duration::from_millis(300));
    server.start_again();
    wait_for(acked_before_restart + 20);
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    let errors = errors.lock().expect("lock").clone();
    eprintln!("{} batches acknowledged, {} failed clearly during the restart", acked.len(), errors.len());
    assert!(!errors.is_empty(), "the writer saw the restart");
    drop(store);
    // Everything acknowledged is there, nothing is partial, the log is dense.
    let store = PgStore::open_url(&pg::url(&server.url(), "restart")).expect("reopen");
    let next = u64::from_le_bytes(store.get(b"next").expect("get").expect("next").try_into().expect("u64"));
    assert!(acked.iter().all(|&i| i < next), "an acknowledged batch is missing");
    let keys = store.scan_prefix(b"b/").expect("scan");
    assert_eq!(keys.len() as u64, next * KEYS_PER_BATCH, "every batch complete, none partial");
    let log = store.log_read(b"log", 0, usize::MAX).expect("log");
    assert_eq!(log.len() as u64, next);
    assert!(log.iter().enumerate().all(|(i, e)| e.seq == i as u64 && e.data == (i as u64).to_le_bytes()));
}

/// A batch over 64 KiB goes through prepared statements with binary arrays instead of one query of
/// hex text: same semantics (later operations on a key win, deletes, log appends), same fence.
#[test]
fn large_batches_take_the_binary_path_with_the_same_semantics() {
    let Some(base) = pg::base_url() else { return };
    let ns = pg::unique_ns("large");
    let a = PgStore::open_url(&pg::url(&base, &ns)).expect("open");
    a.put(b"gone", b"x").expect("put");
    let mut b = Batch::new();
    for i in 0..200u32 {
        b.push_put(format!("big/{i:04}"), vec![i as u8; 1000]);
    }
    b.push_put(b"big/0000".to_vec(), b"overwritten".to_vec());
    b.push_delete(b"gone".to_vec());
    b.push_log_append(b"log".to_vec(), vec![1u8; 10]);
    a.apply(&b).expect("large batch");
    let got = a.scan_prefix(b"big/").expect("scan");
    assert_eq!(got.len(), 200);
    assert_eq!(got[0].1, b"overwritten");
    assert_eq!(got[1].1, vec![1u8; 1000]);
    assert_eq!(a.get(b"gone").expect("get"), None);
    assert_eq!(a.log_bounds(b"log").expect("bounds").next, 1);
    admin(&base, "UPDATE rk_ns SET epoch = epoch + 1 WHERE ns = $1", &[&ns]);
    let mut b = Batch::new();
    for i in 0..200u32 {
        b.push_put(format!("big/{i:04}"), vec![0u8; 1000]);
    }
    assert!(matches!(a.apply(&b), Err(StoreError::Poisoned { .. })), "the large path is fenced too");
    drop(a);
    let c = PgStore::open_url(&pg::url(&base, &ns)).expect("reopen");
    assert_eq!(c.get(b"big/0001").expect("get"), Some(vec![1u8; 1000]), "the fenced batch left nothing");
}

#[test]
fn every_write_checks_the_lease_epoch() {
    let Some(base) = pg::base_url() else { return };
    let ns = pg::unique_ns("epoch");
    let a = PgStore::open_url(&pg::url(&base, &ns)).expect("open");
    a.put(b"k", b"1").expect("put");
    // As if another node had taken the namespace over while every session of a stayed connected.
    admin(&base, "UPDATE rk_ns SET epoch = epoch + 1 WHERE ns = $1", &[&ns]);
    let err = a
        .apply(&Batch::new().put(b"k".to_vec(), b"2".to_vec()).put(b"other".to_vec(), b"x".to_vec()))
        .expect_err("the batch is fenced off");
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err:?}");
    assert!(matches!(a.put_blob(b"b", &mut &b"x"[..]), Err(StoreError::Poisoned { .. })));
    assert!(matches!(a.sync(), Err(StoreError::Poisoned { .. })), "the handle stays poisoned");
    drop(a);
    let b = PgStore::open_url(&pg::url(&base, &ns)).expect("reopen");
    assert_eq!(b.get(b"k").expect("get"), Some(b"1".to_vec()), "nothing of the fenced batch was written");
    assert_eq!(b.get(b"other").expect("get"), None);
}
