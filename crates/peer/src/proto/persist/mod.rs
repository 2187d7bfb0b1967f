//! Persistence of a peer: one home for the store handle, the key layout, loading, the write batcher
//! and the crash-safe write order.
//!
//! The core hands each applied op to `ReplicaStore::record`, which keeps the op's values and its
//! op-log entry (or a snapshot of the state) pending; `ReplicaStore::flush` writes everything
//! pending as one atomic store batch just before the barrier request (`flush.rs` documents the
//! order). Reads see pending values first. Nothing outside this module knows a key: pull hooks
//! and tests read through [`StoredValues`], [`stored_value`] and [`stored_op_log`].

mod flush;
mod layout;
mod load;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use replikativ_crdt::{Address, Commit, ContentId, IdMap, Value};
use replikativ_store::{LogEntry, Store, StoreError};

use super::message::AnyOp;
use super::state::{CrdtState, PeerRecord, commit_ids};

pub use load::{QUARANTINE_PREFIX, Quarantined};

/// Bytes of pending writes after which they are written without waiting for the end of the batch
/// (a store batch has a size limit).
const WRITE_BATCH_BYTES: usize = 8 << 20;

/// One address's state and its op-log bookkeeping.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) state: CrdtState,
    /// Ops appended to the log since the last snapshot (`u64::MAX`: never snapshotted).
    since_snapshot: u64,
    /// The state's size at the last snapshot: the next waits for at least this many ops.
    snapshot_after: u64,
    /// The chunks the stored snapshot occupies, if it is chunked: its generation (`log_from`) and
    /// their number (deleted when the next snapshot is written).
    chunks: Option<(u64, u32)>,
}

impl Replica {
    /// A replica never snapshotted.
    pub(crate) fn new(state: CrdtState) -> Replica {
        Replica { state, since_snapshot: u64::MAX, snapshot_after: 0, chunks: None }
    }
}

/// What [`ReplicaStore::open`] loaded.
pub(crate) struct Opened {
    pub(crate) store: ReplicaStore,
    pub(crate) record: PeerRecord,
    pub(crate) replicas: BTreeMap<Address, Replica>,
    pub(crate) recovery: Vec<Quarantined>,
}

/// A peer's store: the handle, pending writes, and the snapshot policy (see the module docs).
#[derive(Debug)]
pub(crate) struct ReplicaStore {
    store: Arc<dyn Store>,
    writes: flush::Writes,
    /// Snapshot after at least this many logged ops (and at least the state's size).
    snapshot_every: u64,
    /// Whether anything was written since the last barrier request.
    unsynced: bool,
}

impl ReplicaStore {
    /// Loads the peer stored in `store` (or a fresh record with `peer_id` and `extend`); bad
    /// records are skipped and reported (`load.rs`). Only a failing store fails.
    pub(crate) fn open(
        store: Arc<dyn Store>,
        peer_id: &str,
        extend: bool,
        snapshot_every: u64,
    ) -> Result<Opened, StoreError> {
        let loaded = load::load(store.as_ref(), peer_id, extend)?;
        Ok(Opened {
            store: ReplicaStore { store, writes: flush::Writes::default(), snapshot_every, unsynced: false },
            record: loaded.record,
            replicas: loaded.crdts,
            recovery: loaded.recovery,
        })
    }

    /// Bytes the store occupies on disk, if it can tell.
    pub(crate) fn size_on_disk(&self) -> Option<u64> {
        self.store.size_on_disk()
    }

    /// A value by content id: pending or stored.
    pub(crate) fn value(&self, id: &ContentId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.values.get(id) {
            Some(bytes) => Ok(Some(bytes.clone())),
            None => self.store.get(&layout::value_key(id)),
        }
    }

    /// Whether a value is pending or stored.
    pub(crate) fn has_value(&self, id: &ContentId) -> bool {
        self.writes.values.contains_key(id) || self.store.exists(&layout::value_key(id)).unwrap_or(false)
    }

    /// The read API pull hooks get.
    pub(crate) fn values(&self) -> StoredValues<'_> {
        StoredValues { store: self }
    }

    /// Keeps what an applied op needs and produced: its commit records and their params (moved
    /// out of `values`; other values that travelled along are not kept), and its op-log entry, or
    /// a snapshot of the state once max(`snapshot_every`, state size) op entries were logged since
    /// the last (so a snapshot's cost per entry stays constant as the state grows). Returns whether the
    /// pending writes are large enough to flush now.
    pub(crate) fn record(
        &mut self,
        address: &Address,
        replica: &mut Replica,
        op: &AnyOp,
        mut values: IdMap<Vec<u8>>,
        commits: &IdMap<Commit>,
    ) -> bool {
        let mut keep = Vec::new();
        for cid in commit_ids(op) {
            if let Some(bytes) = values.get(&cid) {
                if let Some(commit) = commit_of(&cid, bytes, commits) {
                    keep.extend(commit.transactions.iter().map(|tx| tx.params));
                }
                keep.push(cid);
            }
        }
        for id in keep {
            if let Some(bytes) = values.remove(&id) {
                self.writes.put_value(id, bytes);
            }
        }
        // Counted in entries, not ops: a catch-up batch of 8,192 entries is one op, and counting
        // ops left a caught-up replica as one snapshot of its first batch plus the whole rest in
        // the op log (replayed on every open).
        let entries = op.len().max(1) as u64;
        if replica.since_snapshot == u64::MAX
            || replica.since_snapshot + entries >= self.snapshot_every.max(replica.snapshot_after)
        {
            replica.since_snapshot = 0;
            replica.snapshot_after = replica.state.size();
            self.writes.snapshot(address, replica.snapshot_after);
        } else {
            self.writes.log(address, op);
            replica.since_snapshot += entries;
        }
        self.unsynced = true;
        self.writes.bytes >= WRITE_BATCH_BYTES
    }

    /// The peer record changed: it is written (encoded once) with the next flush.
    pub(crate) fn record_changed(&mut self) {
        self.writes.record = true;
        self.unsynced = true;
    }

    /// Writes everything pending (`flush.rs`). On an error the pending writes are dropped; the
    /// store keeps what it had.
    pub(crate) fn flush(
        &mut self,
        replicas: &mut BTreeMap<Address, Replica>,
        record: &PeerRecord,
    ) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        flush::flush(self.store.as_ref(), &mut self.writes, replicas, record)
    }

    /// Whether anything was written since the last call (a barrier is needed); resets it.
    pub(crate) fn take_unsynced(&mut self) -> bool {
        std::mem::take(&mut self.unsynced)
    }
}

/// Read access to a peer's stored values (commit records, params), for pull hooks' integrity
/// checks: no keys, no writes.
#[derive(Debug, Clone, Copy)]
pub struct StoredValues<'a> {
    store: &'a ReplicaStore,
}

impl StoredValues<'_> {
    /// A value by content id (pending writes included), `None` if absent or undecodable.
    pub fn value(&self, id: &ContentId) -> Option<Value> {
        self.store.value(id).ok().flatten().and_then(|b| Value::decode(&b).ok())
    }

    /// A commit record by content id, `None` if absent or not a commit.
    pub fn commit(&self, id: &ContentId) -> Option<Commit> {
        self.value(id).and_then(|v| Commit::from_value(&v).ok())
    }
}

/// The canonical encoding of a stored value (commit record or params), read from a peer's store
/// (for tests and tools; a running peer's pending writes are not seen).
pub fn stored_value(store: &dyn Store, id: &ContentId) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(&layout::value_key(id))
}

/// The entries of an address's op log in a peer's store (msgpack ops since its snapshot).
pub fn stored_op_log(store: &dyn Store, address: &Address) -> Result<Vec<LogEntry>, StoreError> {
    store.log_read(&layout::log_name(address), 0, usize::MAX)
}

/// Appends a raw entry to an address's op log in a peer's store (for tests of damaged stores).
pub fn append_raw_op(store: &dyn Store, address: &Address, entry: &[u8]) -> Result<u64, StoreError> {
    store.log_append(&layout::log_name(address), entry)
}

/// A commit record: parsed already, or decoded from its bytes.
pub(crate) fn commit_of<'a>(
    cid: &ContentId,
    bytes: &[u8],
    commits: &'a IdMap<Commit>,
) -> Option<Cow<'a, Commit>> {
    match commits.get(cid) {
        Some(c) => Some(Cow::Borrowed(c)),
        None => Value::decode(bytes).ok().and_then(|v| Commit::from_value(&v).ok()).map(Cow::Owned),
    }
}
