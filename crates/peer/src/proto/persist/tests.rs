//! The crash-safe write order, tested against the simulator's crashing store: a flush is cut off
//! after every possible number of store writes (the process died there), the store goes back to
//! what its barriers saw, and the peer opens again with either the old or the new state, whole,
//! nothing reported bad, and no chunk left that no snapshot references.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use replikativ_crdt::{ActorId, Address, OrMap, Transaction};
use replikativ_store::{Batch, Limits, LogBounds, LogEntry, Store, StoreError, UpdateFn, Updated};

use super::{Replica, ReplicaStore, layout};
use crate::proto::message::AnyOp;
use crate::proto::state::CrdtState;
use crate::sim::SimStore;

/// A [`SimStore`] in which every write is followed by a barrier, and which "crashes" (refuses
/// every later write and goes back to the last barrier) once `left` writes are used up. Small
/// limits make snapshots chunked and chunk batches many.
#[derive(Debug)]
struct CrashAfter {
    inner: Arc<SimStore>,
    left: AtomicUsize,
    writes: AtomicUsize,
}

impl CrashAfter {
    fn new(inner: Arc<SimStore>, left: usize) -> CrashAfter {
        CrashAfter { inner, left: AtomicUsize::new(left), writes: AtomicUsize::new(0) }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&SimStore) -> replikativ_store::Result<T>,
    ) -> replikativ_store::Result<T> {
        if self.left.load(Ordering::SeqCst) == 0 {
            self.inner.crash();
            return Err(StoreError::Closed);
        }
        self.left.fetch_sub(1, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        let out = f(&self.inner)?;
        self.inner.sync()?;
        Ok(out)
    }
}

impl Store for CrashAfter {
    fn get(&self, key: &[u8]) -> replikativ_store::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> replikativ_store::Result<()> {
        self.write(|s| s.put(key, value))
    }
    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> replikativ_store::Result<Updated> {
        self.write(|s| s.update(key, f))
    }
    fn delete(&self, key: &[u8]) -> replikativ_store::Result<()> {
        self.write(|s| s.delete(key))
    }
    fn exists(&self, key: &[u8]) -> replikativ_store::Result<bool> {
        self.inner.exists(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> replikativ_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(prefix)
    }
    fn apply(&self, batch: &Batch) -> replikativ_store::Result<()> {
        self.write(|s| s.apply(batch))
    }
    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> replikativ_store::Result<u64> {
        self.write(|s| s.put_blob(name, data))
    }
    fn open_blob(&self, name: &[u8]) -> replikativ_store::Result<Option<Box<dyn Read + Send>>> {
        self.inner.open_blob(name)
    }
    fn delete_blob(&self, name: &[u8]) -> replikativ_store::Result<bool> {
        self.write(|s| s.delete_blob(name))
    }
    fn log_append(&self, log: &[u8], entry: &[u8]) -> replikativ_store::Result<u64> {
        self.write(|s| s.log_append(log, entry))
    }
    fn log_read(&self, log: &[u8], from: u64, max: usize) -> replikativ_store::Result<Vec<LogEntry>> {
        self.inner.log_read(log, from, max)
    }
    fn log_prune(&self, log: &[u8], before: u64) -> replikativ_store::Result<()> {
        self.write(|s| s.log_prune(log, before))
    }
    fn log_bounds(&self, log: &[u8]) -> replikativ_store::Result<LogBounds> {
        self.inner.log_bounds(log)
    }
    fn sync(&self) -> replikativ_store::Result<()> {
        self.inner.sync()
    }
    fn close(&self) -> replikativ_store::Result<()> {
        Ok(())
    }
    fn limits(&self) -> Limits {
        Limits { max_value_len: 2 << 10, max_batch_bytes: 16 << 10, ..Limits::default() }
    }
}

fn address() -> Address {
    Address::new("mail:alice@example.org", uuid::Uuid::from_u128(1)).unwrap()
}

/// An OR-Map with keys `from..to`, the ops that made it, and their values.
fn assocs(map: &mut OrMap, from: u32, to: u32) -> Vec<(AnyOp, replikativ_crdt::IdMap<Vec<u8>>)> {
    (from..to)
        .map(|i| {
            let staged = map
                .assoc(
                    format!("key-{i}").into(),
                    vec![Transaction::new("set", i as i64)],
                    ActorId::from_u128(1),
                    "a",
                    0,
                )
                .unwrap();
            let values = staged.values.iter().map(|(id, v)| (*id, v.encode())).collect();
            (AnyOp::Ormap(staged.op), values)
        })
        .collect()
}

/// Records `ops` on `replicas[a]` (already applied to `state`) and flushes.
fn record_and_flush(
    store: &mut ReplicaStore,
    replicas: &mut BTreeMap<Address, Replica>,
    state: &OrMap,
    ops: Vec<(AnyOp, replikativ_crdt::IdMap<Vec<u8>>)>,
) -> Result<(), StoreError> {
    let a = address();
    let replica =
        replicas.entry(a.clone()).or_insert_with(|| Replica::new(CrdtState::Ormap(OrMap::default())));
    replica.state = CrdtState::Ormap(state.clone());
    for (op, values) in ops {
        store.record(&a, replica, &op, values, &Default::default());
    }
    store.flush(replicas, &crate::proto::PeerRecord::default())
}

#[test]
fn a_flush_cut_off_after_any_write_opens_as_the_old_or_the_new_state() {
    // The old state: 300 entries, snapshotted (chunked: the store's values hold 2 KiB), then 5
    // logged ops on top. The new: 300 more, which take a new chunked snapshot (the old chunks are
    // deleted and the log pruned after the record that replaces them).
    let mut map = OrMap::default();
    let first = assocs(&mut map, 0, 300);
    let mut second = assocs(&mut map, 300, 305);
    let old = map.clone();
    second.extend(assocs(&mut map, 305, 600));
    let new = map.clone();
    let mut total = None;
    for cut in 0.. {
        let sim = Arc::new(SimStore::new());
        let setup: Arc<dyn Store> = Arc::new(CrashAfter::new(sim.clone(), usize::MAX));
        let opened = ReplicaStore::open(setup, "p", true, 4).unwrap();
        let (mut store, mut replicas) = (opened.store, opened.replicas);
        let mut partial = OrMap::default();
        for (op, _) in &first {
            let AnyOp::Ormap(o) = op else { unreachable!() };
            replikativ_crdt::Crdt::apply(&mut partial, o).unwrap();
        }
        record_and_flush(&mut store, &mut replicas, &partial, first.clone()).unwrap();
        // Five small ops: logged, not snapshotted.
        let mut with_log = partial.clone();
        for (op, _) in &second[..5] {
            let AnyOp::Ormap(o) = op else { unreachable!() };
            replikativ_crdt::Crdt::apply(&mut with_log, o).unwrap();
        }
        record_and_flush(&mut store, &mut replicas, &with_log, second[..5].to_vec()).unwrap();
        assert_eq!(with_log, old);

        // The flush that is cut off.
        let crashing = Arc::new(CrashAfter::new(sim.clone(), cut));
        let mut cut_store = ReplicaStore { store: crashing.clone(), ..store };
        let result = record_and_flush(&mut cut_store, &mut replicas, &new, second[5..].to_vec());
        let writes = crashing.writes.load(Ordering::SeqCst);

        // Open what the barriers kept.
        let reopened = ReplicaStore::open(sim.clone(), "p", true, 4).unwrap();
        assert!(reopened.recovery.is_empty(), "cut after {cut}: {:?}", reopened.recovery);
        let state = match &reopened.replicas[&address()].state {
            CrdtState::Ormap(m) => m.clone(),
            other => panic!("{other:?}"),
        };
        assert!(state == old || state == new, "cut after {cut} writes: {} entries", state.tag_count());
        // No chunk is left that the loaded snapshot does not reference.
        let chunks = sim.scan_prefix(layout::CHUNK_PREFIX).unwrap().len();
        let referenced = reopened.replicas[&address()].chunks.map_or(0, |(_, n)| n as usize);
        assert_eq!(chunks, referenced, "cut after {cut}");
        if result.is_ok() {
            assert_eq!(state, new, "a flush that succeeded is whole");
            total = Some(writes);
            break;
        }
    }
    let total = total.expect("some cut lets the flush finish");
    assert!(total >= 4, "the flush writes chunks, the batch, stale chunks and the prune: {total} writes");
}

/// Snapshots are due by logged entries, not ops: a replica filled by a few large ops (catch-up
/// batches of thousands of entries) is snapshotted as it grows, so its op log holds less than
/// its state (before, only the first op was snapshotted and the rest of a catch-up stayed in the
/// log, replayed on every open).
#[test]
fn large_ops_are_snapshotted_by_their_entries() {
    let sim = Arc::new(SimStore::new());
    let mut store = ReplicaStore::open(sim.clone(), "p", true, 1024).unwrap().store;
    let mut replicas = BTreeMap::new();
    let mut map = OrMap::default();
    for round in 0..8u32 {
        // One op of 2,000 entries, as a catch-up batch would be.
        let ops = assocs(&mut map, round * 2000, (round + 1) * 2000);
        let mut op = replikativ_crdt::OrMapOp::default();
        let mut values = replikativ_crdt::IdMap::default();
        for (o, v) in ops {
            if let AnyOp::Ormap(o) = o {
                op.adds.extend(o.adds);
            }
            values.extend(v);
        }
        record_and_flush(&mut store, &mut replicas, &map, vec![(AnyOp::Ormap(op), values)]).unwrap();
    }
    let bounds = sim.log_bounds(&layout::log_name(&address())).unwrap();
    let logged_ops = bounds.next - bounds.first;
    // 8 ops of 2,000 entries into a state of 16,000: snapshots at 2k, 4k, 8k and 16k entries
    // (each once as many entries as the state were logged since): nothing left in the log.
    assert!(logged_ops <= 1, "{logged_ops} ops in the log after snapshots");
    let reopened = ReplicaStore::open(sim, "p", true, 1024).unwrap();
    assert_eq!(reopened.replicas[&address()].state, CrdtState::Ormap(map));
}
