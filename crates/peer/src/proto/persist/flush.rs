//! Pending writes and how they reach the store: one atomic batch per flush, in the crash-safe
//! order (`docs/design.md` §6.6).
//!
//! 1. Chunks of snapshots too large for one store value, in batches of their own, under keys of
//!    their own generation (`log_from`): a crash here leaves only unreferenced chunks, which
//!    opening deletes.
//! 2. One batch with the values, the op-log entries and the snapshot records (which reference
//!    the chunks of step 1) and the peer record: all or nothing.
//! 3. The chunks of the snapshots replaced in step 2, and the op-log entries a new snapshot
//!    covers: a crash before this only leaves garbage (stale chunks are found by generation, log
//!    entries below a snapshot's `log_from` are never replayed).
//!
//! Values are written before or with the ops that name them, so a stored op never names a
//! missing value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use replikativ_crdt::{Address, ContentId, IdMap};
use replikativ_store::{Batch, Store, StoreError};

use super::Replica;
use super::layout::{self, MAX_CHUNK, Snapshot, SnapshotRef};
use crate::proto::PeerRecord;
use crate::proto::message::AnyOp;

/// Store writes of the ops handled since the last flush, written as one batch.
#[derive(Default, Debug)]
pub(super) struct Writes {
    /// Values by id (commit records, params).
    pub(super) values: IdMap<Vec<u8>>,
    /// Ops to append to op logs; ops on one address are folded into one entry where they can be.
    logs: Vec<(Address, AnyOp)>,
    /// Index into `logs` of each address's last entry.
    last_log: HashMap<Address, usize>,
    /// Addresses to snapshot (their state covers their pending ops).
    snapshots: BTreeSet<Address>,
    /// Whether the peer record changed (it is encoded once, at the flush).
    pub(super) record: bool,
    /// Bytes pending (roughly).
    pub(super) bytes: usize,
}

impl Writes {
    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.logs.is_empty() && self.snapshots.is_empty() && !self.record
    }

    pub(super) fn put_value(&mut self, id: ContentId, bytes: Vec<u8>) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.values.entry(id) {
            self.bytes += bytes.len() + 34;
            slot.insert(bytes);
        }
    }

    /// Appends `op` to the address's op log (folded into its pending entry where it can be).
    pub(super) fn log(&mut self, address: &Address, op: &AnyOp) {
        self.bytes += 64;
        if let Some(&i) = self.last_log.get(address)
            && self.logs[i].1.absorb(op.clone()).is_ok()
        {
            return;
        }
        self.last_log.insert(address.clone(), self.logs.len());
        self.logs.push((address.clone(), op.clone()));
    }

    /// Snapshots `address` when the writes are flushed: its pending log entries are dropped (the
    /// state covers them).
    pub(super) fn snapshot(&mut self, address: &Address, size: u64) {
        if self.last_log.contains_key(address) {
            self.logs.retain(|(a, _)| a != address);
            self.last_log.clear();
            for (i, (a, _)) in self.logs.iter().enumerate() {
                self.last_log.insert(a.clone(), i);
            }
        }
        self.bytes += 64 * size as usize;
        self.snapshots.insert(address.clone());
    }
}

/// A snapshot written by step 2, to finish in step 3.
struct Written {
    address: Address,
    log_from: u64,
    chunks: u32,
}

/// Writes everything pending (see the module docs). On an error the store keeps what it had
/// before the failing step; the pending writes are gone either way.
pub(super) fn flush(
    store: &dyn Store,
    writes: &mut Writes,
    replicas: &mut BTreeMap<Address, Replica>,
    record: &PeerRecord,
) -> Result<(), StoreError> {
    let chunk = store.limits().max_value_len.min(MAX_CHUNK);
    let mut batch = Batch::new();
    batch.ops.reserve(writes.values.len() + writes.logs.len() + 2);
    // Drained, not replaced: the maps keep their capacity from batch to batch.
    for (id, bytes) in writes.values.drain() {
        batch.push_put(layout::value_key(&id), bytes);
    }
    if std::mem::take(&mut writes.record) {
        batch.push_put(layout::CONFIG_KEY.to_vec(), rmp_serde::to_vec_named(record).expect("encodes"));
    }
    let mut snapshots = std::mem::take(&mut writes.snapshots);
    let mut logs = Vec::with_capacity(writes.logs.len());
    writes.last_log.clear();
    writes.bytes = 0;
    for (address, op) in writes.logs.drain(..) {
        let bytes = rmp_serde::to_vec_named(&op).expect("ops encode");
        // An entry larger than a store value (a large catch-up) becomes a snapshot instead.
        if bytes.len() > chunk {
            snapshots.insert(address);
        } else {
            logs.push((address, bytes));
        }
    }
    let mut written = Vec::new();
    for address in snapshots {
        let Some(replica) = replicas.get_mut(&address) else { continue };
        let (header, log_from, chunks) = write_snapshot(store, &address, replica, chunk)?;
        batch.push_put(layout::crdt_key(&address), header);
        written.push(Written { address, log_from, chunks });
    }
    for (address, bytes) in logs {
        if !written.iter().any(|w| w.address == address) {
            batch.push_log_append(layout::log_name(&address), bytes);
        }
    }
    store.apply_owned(batch)?;
    for w in written {
        let replica = replicas.get_mut(&w.address).expect("snapshotted above");
        finish_snapshot(store, &w, replica)?;
    }
    Ok(())
}

/// Step 1 for one snapshot: encodes the state and writes its chunks if it is larger than `chunk`.
/// Returns the record to write in step 2, its `log_from` and its number of chunks.
fn write_snapshot(
    store: &dyn Store,
    address: &Address,
    replica: &mut Replica,
    chunk: usize,
) -> Result<(Vec<u8>, u64, u32), StoreError> {
    replica.since_snapshot = 0;
    replica.snapshot_after = replica.state.size();
    let log_from = store.log_bounds(&layout::log_name(address))?.next;
    // Sized for ~128 bytes per entry up front: growing a buffer of megabytes by doubling copies it
    // again and again.
    let mut record = Vec::with_capacity((replica.snapshot_after as usize).saturating_mul(128).min(64 << 20));
    rmp_serde::encode::write_named(&mut record, &SnapshotRef { state: &replica.state, log_from })
        .expect("encodes");
    if record.len() <= chunk {
        return Ok((record, log_from, 0));
    }
    // Chunks first, in batches within the store's batch limit; the record of step 2 references
    // them, so a crash before it leaves only unreferenced chunks.
    let max_batch = store.limits().max_batch_bytes / 2;
    let mut chunks = Batch::new();
    let (mut pending, mut n) = (0, 0u32);
    for part in record.chunks(chunk) {
        if pending + part.len() > max_batch {
            store.apply_owned(std::mem::take(&mut chunks))?;
            pending = 0;
        }
        pending += part.len();
        chunks.push_put(layout::chunk_key(address, log_from, n), part.to_vec());
        n += 1;
    }
    store.apply_owned(chunks)?;
    let header = rmp_serde::to_vec_named(&Snapshot { state: None, log_from, chunks: n }).expect("encodes");
    Ok((header, log_from, n))
}

/// Step 3 for one snapshot: deletes the chunks of the snapshot it replaced (the replica remembers
/// their generation and number, so no scan is needed) and prunes the log it covers.
fn finish_snapshot(store: &dyn Store, w: &Written, replica: &mut Replica) -> Result<(), StoreError> {
    let current = (w.chunks > 0).then_some((w.log_from, w.chunks));
    let previous = std::mem::replace(&mut replica.chunks, current);
    if let Some((old, count)) = previous.filter(|(old, _)| *old != w.log_from) {
        let mut stale = Batch::new();
        for i in 0..count {
            stale.push_delete(layout::chunk_key(&w.address, old, i));
        }
        store.apply_owned(stale)?;
    }
    store.log_prune(&layout::log_name(&w.address), w.log_from)
}
