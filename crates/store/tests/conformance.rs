//! One conformance suite for every backend: random operation sequences checked against a `BTreeMap`
//! model, with restarts (close and reopen) for the durable backends.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use proptest::prelude::*;
use replikativ_store::{Batch, FileStore, FileStoreOptions, LogBounds, MemoryStore, SledStore, Store};

type Key = Vec<u8>;

#[derive(Debug, Clone)]
enum Op {
    Get(Key),
    Put(Key, Vec<u8>),
    Delete(Key),
    Update(Key),
    Exists(Key),
    Batch(Vec<(Key, Option<Vec<u8>>)>),
    /// A batch of puts and deletes with log appends in it.
    BatchWithLog(Vec<(Key, Option<Vec<u8>>)>, Vec<(u8, Vec<u8>)>),
    Scan(Key),
    LogAppend(u8, Vec<u8>),
    LogRead(u8, u64, usize),
    LogPrune(u8, u64),
    BlobPut(u8, usize, u8),
    BlobGet(u8),
    BlobDelete(u8),
    Sync,
    Restart,
}

fn key() -> impl Strategy<Value = Key> {
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => key().prop_map(Op::Get),
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key().prop_map(Op::Delete),
        2 => key().prop_map(Op::Update),
        1 => key().prop_map(Op::Exists),
        2 => prop::collection::vec((key(), prop::option::of(value())), 0..6).prop_map(Op::Batch),
        2 => (
            prop::collection::vec((key(), prop::option::of(value())), 0..4),
            prop::collection::vec((0..2u8, value()), 1..4)
        )
            .prop_map(|(kv, logs)| Op::BatchWithLog(kv, logs)),
        2 => key().prop_map(Op::Scan),
        3 => (0..2u8, value()).prop_map(|(l, v)| Op::LogAppend(l, v)),
        2 => (0..2u8, 0..12u64, 0..6usize).prop_map(|(l, f, m)| Op::LogRead(l, f, m)),
        1 => (0..2u8, 0..12u64).prop_map(|(l, b)| Op::LogPrune(l, b)),
        1 => (0..3u8, prop_oneof![0..100usize, 60_000..200_000usize], any::<u8>())
            .prop_map(|(n, s, f)| Op::BlobPut(n, s, f)),
        1 => (0..3u8).prop_map(Op::BlobGet),
        1 => (0..3u8).prop_map(Op::BlobDelete),
        1 => Just(Op::Sync),
        1 => Just(Op::Restart),
    ]
}

/// A model log: first, next, entries.
type ModelLog = (u64, u64, BTreeMap<u64, Vec<u8>>);

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    kv: BTreeMap<Key, Vec<u8>>,
    logs: BTreeMap<u8, ModelLog>,
    blobs: BTreeMap<u8, Vec<u8>>,
}

fn update_fn(old: Option<&[u8]>) -> Option<Vec<u8>> {
    match old {
        None => Some(vec![1]),
        Some(v) if v.len() >= 3 => None,
        Some(v) => {
            let mut n = v.to_vec();
            n.push(v.len() as u8);
            Some(n)
        }
    }
}

fn log_name(l: u8) -> Vec<u8> {
    vec![b'L', l]
}

fn blob_name(n: u8) -> Vec<u8> {
    vec![b'B', n]
}

fn read_blob(store: &dyn Store, n: u8) -> Option<Vec<u8>> {
    let mut r = store.open_blob(&blob_name(n)).expect("open_blob")?;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).expect("read blob");
    Some(buf)
}

fn check_full_state(store: &dyn Store, model: &Model) {
    let all = store.scan_prefix(b"").expect("scan");
    let expected: Vec<_> = model.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, expected, "full key/value state");
    for l in 0..2u8 {
        let (first, next, entries) = model.logs.get(&l).cloned().unwrap_or_default();
        assert_eq!(store.log_bounds(&log_name(l)).expect("bounds"), LogBounds { first, next });
        let got: Vec<_> = store
            .log_read(&log_name(l), 0, usize::MAX)
            .expect("log read")
            .into_iter()
            .map(|e| (e.seq, e.data))
            .collect();
        assert_eq!(got, entries.into_iter().collect::<Vec<_>>(), "log {l}");
    }
    for n in 0..3u8 {
        assert_eq!(read_blob(store, n), model.blobs.get(&n).cloned(), "blob {n}");
    }
}

/// A batch of puts and deletes, applied to the model as it is built.
fn kv_batch(ops: &[(Key, Option<Vec<u8>>)], model: &mut Model) -> Batch {
    let mut b = Batch::new();
    for (k, v) in ops {
        match v {
            Some(v) => {
                b.push_put(k.clone(), v.clone());
                model.kv.insert(k.clone(), v.clone());
            }
            None => {
                b.push_delete(k.clone());
                model.kv.remove(k);
            }
        }
    }
    b
}

fn apply_op(store: &dyn Store, model: &mut Model, op: &Op) {
    match op {
        Op::Get(k) => assert_eq!(store.get(k).expect("get"), model.kv.get(k).cloned()),
        Op::Exists(k) => assert_eq!(store.exists(k).expect("exists"), model.kv.contains_key(k)),
        Op::Put(k, v) => {
            store.put(k, v).expect("put");
            model.kv.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            store.delete(k).expect("delete");
            model.kv.remove(k);
        }
        Op::Update(k) => {
            let u = store.update(k, &mut update_fn).expect("update");
            let old = model.kv.get(k).cloned();
            let new = update_fn(old.as_deref());
            assert_eq!((u.old, u.new.clone()), (old, new.clone()));
            match new {
                Some(v) => model.kv.insert(k.clone(), v),
                None => model.kv.remove(k),
            };
        }
        Op::Batch(ops) => {
            let b = kv_batch(ops, model);
            store.apply(&b).expect("batch");
        }
        Op::BatchWithLog(ops, appends) => {
            let mut b = kv_batch(ops, model);
            for (l, entry) in appends {
                b.push_log_append(log_name(*l), entry.clone());
                let log = model.logs.entry(*l).or_default();
                log.2.insert(log.1, entry.clone());
                log.1 += 1;
            }
            store.apply(&b).expect("batch with log appends");
        }
        Op::Scan(p) => {
            let expected: Vec<_> = model
                .kv
                .iter()
                .filter(|(k, _)| k.starts_with(p))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(store.scan_prefix(p).expect("scan"), expected);
        }
        Op::LogAppend(l, v) => {
            let seq = store.log_append(&log_name(*l), v).expect("append");
            let log = model.logs.entry(*l).or_default();
            assert_eq!(seq, log.1);
            log.2.insert(log.1, v.clone());
            log.1 += 1;
        }
        Op::LogRead(l, from, max) => {
            let got: Vec<_> = store
                .log_read(&log_name(*l), *from, *max)
                .expect("log read")
                .into_iter()
                .map(|e| (e.seq, e.data))
                .collect();
            let expected: Vec<_> = model
                .logs
                .get(l)
                .map(|log| log.2.range(*from..).take(*max).map(|(s, d)| (*s, d.clone())).collect())
                .unwrap_or_default();
            assert_eq!(got, expected);
        }
        Op::LogPrune(l, before) => {
            store.log_prune(&log_name(*l), *before).expect("prune");
            if let Some(log) = model.logs.get_mut(l) {
                let new_first = (*before).min(log.1);
                if new_first > log.0 {
                    log.0 = new_first;
                    log.2 = log.2.split_off(&new_first);
                }
            }
            let (first, next, _) = model.logs.get(l).cloned().unwrap_or_default();
            assert_eq!(store.log_bounds(&log_name(*l)).expect("bounds"), LogBounds { first, next });
        }
        Op::BlobPut(n, size, fill) => {
            let data: Vec<u8> = (0..*size).map(|i| fill.wrapping_add(i as u8)).collect();
            let written = store.put_blob(&blob_name(*n), &mut data.as_slice()).expect("put_blob");
            assert_eq!(written, *size as u64);
            model.blobs.insert(*n, data);
        }
        Op::BlobGet(n) => assert_eq!(read_blob(store, *n), model.blobs.get(n).cloned()),
        Op::BlobDelete(n) => {
            assert_eq!(
                store.delete_blob(&blob_name(*n)).expect("delete_blob"),
                model.blobs.remove(n).is_some()
            );
        }
        Op::Sync => store.sync().expect("sync"),
        Op::Restart => unreachable!("handled by the runner"),
    }
}

/// Runs `ops` against a store from `open` (`durable`: restarts reopen it); for the file store, the
/// final state is also checked through a read-only open.
fn run(ops: &[Op], open: &dyn Fn(&Path) -> Box<dyn Store>, durable: bool, file: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path());
    let mut model = Model::default();
    for op in ops {
        if let Op::Restart = op {
            if durable {
                drop(store);
                store = open(dir.path());
                check_full_state(&*store, &model);
            }
            continue;
        }
        apply_op(&*store, &mut model, op);
    }
    check_full_state(&*store, &model);
    if durable {
        store.sync().expect("sync");
        store.close().expect("close");
        drop(store);
        let store = open(dir.path());
        check_full_state(&*store, &model);
        store.close().expect("close");
        if file {
            let ro = FileStore::open_read_only(dir.path()).expect("read-only open");
            check_full_state(&ro, &model);
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, max_shrink_iters: 2000, ..ProptestConfig::default() }
}

macro_rules! conformance {
    ($name:ident, $durable:expr, $file:expr, $open:expr) => {
        proptest! {
            #![proptest_config(config())]
            #[test]
            fn $name(ops in prop::collection::vec(op(), 1..60)) {
                run(&ops, &$open, $durable, $file);
            }
        }
    };
}

conformance!(memory_matches_model, false, false, |_: &Path| Box::new(MemoryStore::new()) as Box<dyn Store>);
conformance!(file_matches_model, true, true, |p: &Path| Box::new(FileStore::open(p).expect("open"))
    as Box<dyn Store>);
// Tiny segments and an eager compaction threshold: rolls and compactions happen inside short sequences.
conformance!(file_small_segments_matches_model, true, true, |p: &Path| Box::new(
    FileStore::open_with(
        p,
        FileStoreOptions::default()
            .with_segment_size(1)
            .with_compaction_min_bytes(0)
            .with_compaction_garbage_ratio(0.3)
    )
    .expect("open")
) as Box<dyn Store>);
conformance!(sled_matches_model, true, false, |p: &Path| Box::new(SledStore::open(p).expect("open"))
    as Box<dyn Store>);

#[cfg(feature = "postgres")]
#[path = "support/pg.rs"]
mod pg;

/// The same model test against a PostgreSQL namespace (one fresh namespace per case; restarts drop the
/// store, releasing its lease, and reopen the namespace).
#[cfg(feature = "postgres")]
#[test]
fn postgres_matches_model() {
    let Some(base) = pg::base_url() else { return };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 32, ..config() });
    runner
        .run(&prop::collection::vec(op(), 1..60), |ops| {
            let ns = pg::unique_ns("conf");
            let open = |_: &Path| {
                Box::new(replikativ_store::PgStore::open_url(&pg::url(&base, &ns)).expect("open"))
                    as Box<dyn Store>
            };
            run(&ops, &open, true, false);
            Ok(())
        })
        .expect("postgres conformance");
}

#[test]
fn stores_are_send_sync_and_object_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MemoryStore>();
    assert_send_sync::<FileStore>();
    assert_send_sync::<SledStore>();
    assert_send_sync::<std::sync::Arc<dyn Store>>();
}
