//! Loading a peer from its store, robust against bad records.
//!
//! Opening never fails because one stored record is bad (a record written by an older version
//! that accepted input it should have refused, a damaged value, a missing chunk): the record is
//! skipped, moved aside under [`QUARANTINE_PREFIX`] (so nothing is lost and a later write to the
//! same key cannot overwrite it), logged at WARN with its key, and listed in
//! [`Peer::recovery`](super::Peer::recovery). Only a failing store (IO) fails the open.

use std::collections::{BTreeMap, BTreeSet};

use replikativ_crdt::Address;
use replikativ_store::{Batch, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::Replica;
use super::layout::{self, CHUNK_PREFIX, CONFIG_KEY, CRDT_PREFIX, Snapshot};
use crate::proto::PeerRecord;
use crate::proto::message::{AnyOp, from_msgpack};

/// Where records that could not be loaded are moved: `quarantine/` followed by the original key
/// (an op-log entry: `quarantine/log/`, the log name, the entry's sequence number as u64 BE).
/// Applications must not keep their own keys under it.
pub const QUARANTINE_PREFIX: &[u8] = b"quarantine/";

/// A stored record that could not be loaded when the peer opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The record's key (or op log and position), non-ASCII bytes escaped.
    pub key: String,
    /// Why it could not be loaded.
    pub reason: String,
    /// The key it was moved to (escaped), or `None` if it could not be moved (read-only store).
    pub moved_to: Option<String>,
}

/// What was loaded.
pub(super) struct Loaded {
    pub(super) record: PeerRecord,
    pub(super) crdts: BTreeMap<Address, Replica>,
    pub(super) recovery: Vec<Quarantined>,
}

/// A peer record as stored, read leniently so one bad address does not lose the others.
#[derive(Deserialize)]
struct LenientRecord {
    id: String,
    extend: bool,
    subscriptions: Vec<LenientAddress>,
}

#[derive(Deserialize)]
struct LenientAddress {
    user: String,
    id: uuid::Uuid,
}

fn escaped(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

fn quarantine_key(key: &[u8]) -> Vec<u8> {
    let mut k = QUARANTINE_PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

/// Collects repairs: records moved aside and keys deleted, written as one batch at the end.
struct Repairs {
    read_only: bool,
    batch: Batch,
    report: Vec<Quarantined>,
}

impl Repairs {
    /// Moves the record at `key` aside (or only reports it on a read-only store).
    fn quarantine(&mut self, key: &[u8], bytes: Vec<u8>, delete: bool, reason: String) {
        tracing::warn!(key = %escaped(key), %reason, "skipping a stored record that does not load (quarantined)");
        let moved_to = (!self.read_only).then(|| {
            let to = quarantine_key(key);
            self.batch.push_put(to.clone(), bytes);
            if delete {
                self.batch.push_delete(key.to_vec());
            }
            escaped(&to)
        });
        self.report.push(Quarantined { key: escaped(key), reason, moved_to });
    }
}

/// Loads the peer record and every replica (see the module docs).
pub(super) fn load(store: &dyn Store, peer_id: &str, extend: bool) -> Result<Loaded, StoreError> {
    let mut repairs = Repairs { read_only: store.is_read_only(), batch: Batch::new(), report: Vec::new() };
    // Whether the stored record was lost (its subscriptions are rebuilt from the stored addresses).
    let mut config_lost = false;
    let (mut record, rewrite) = match store.get(CONFIG_KEY)? {
        None => (PeerRecord { id: peer_id.to_owned(), extend, subscriptions: BTreeSet::new() }, true),
        Some(bytes) => match from_msgpack::<PeerRecord>(&bytes) {
            Ok(record) => (record, false),
            Err(strict) => match from_msgpack::<LenientRecord>(&bytes) {
                Ok(lenient) => {
                    let mut subscriptions = BTreeSet::new();
                    for a in lenient.subscriptions {
                        match Address::new(a.user.clone(), a.id) {
                            Ok(address) => {
                                subscriptions.insert(address);
                            }
                            Err(e) => {
                                let key = format!("peer/config subscription {:?}/{}", a.user, a.id);
                                tracing::warn!(%key, error = %e, "dropping an invalid stored subscription");
                                repairs.report.push(Quarantined {
                                    key,
                                    reason: e.to_string(),
                                    moved_to: None,
                                });
                            }
                        }
                    }
                    (PeerRecord { id: lenient.id, extend: lenient.extend, subscriptions }, true)
                }
                Err(_) => {
                    repairs.quarantine(CONFIG_KEY, bytes, false, strict);
                    config_lost = true;
                    // Start afresh; the stored addresses are subscribed again below.
                    let record =
                        PeerRecord { id: peer_id.to_owned(), extend, subscriptions: BTreeSet::new() };
                    (record, true)
                }
            },
        },
    };

    // Chunks of large snapshots, by key: the referenced ones are read from here, the others (left
    // by a crash between writing chunks and the record naming them) are deleted.
    let mut chunks: BTreeMap<Vec<u8>, Vec<u8>> = store.scan_prefix(CHUNK_PREFIX)?.into_iter().collect();
    let mut crdts = BTreeMap::new();
    for (key, bytes) in store.scan_prefix(CRDT_PREFIX)? {
        match load_replica(store, &key, &bytes, &mut chunks, &mut repairs)? {
            Ok((address, replica)) => {
                crdts.insert(address, replica);
            }
            Err(reason) => repairs.quarantine(&key, bytes, true, reason),
        }
    }
    if config_lost {
        record.subscriptions.extend(crdts.keys().cloned());
    }
    if !repairs.read_only {
        for key in chunks.into_keys() {
            repairs.batch.push_delete(key);
        }
        if rewrite {
            repairs.batch.push_put(CONFIG_KEY.to_vec(), rmp_serde::to_vec_named(&record).expect("encodes"));
        }
        if !repairs.batch.is_empty() {
            store.apply_owned(std::mem::take(&mut repairs.batch))?;
        }
    }
    Ok(Loaded { record, crdts, recovery: repairs.report })
}

/// Loads one `crdt/<uuid>/<user>` record and replays its op log. The outer error is the store's;
/// the inner one says why the record is bad (bad op-log entries are skipped and reported here).
#[allow(clippy::type_complexity)]
fn load_replica(
    store: &dyn Store,
    key: &[u8],
    bytes: &[u8],
    chunks: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    repairs: &mut Repairs,
) -> Result<Result<(Address, Replica), String>, StoreError> {
    let Some(address) = layout::address_of_key(key) else {
        return Ok(Err("the key does not name a valid address".into()));
    };
    let mut snapshot: Snapshot = match from_msgpack(bytes) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("the snapshot does not decode: {e}"))),
    };
    let stored_chunks = (snapshot.chunks > 0).then_some((snapshot.log_from, snapshot.chunks));
    if snapshot.chunks > 0 {
        // A large snapshot: its chunks, concatenated, are the whole record.
        let mut whole = Vec::new();
        for i in 0..snapshot.chunks {
            match chunks.remove(&layout::chunk_key(&address, snapshot.log_from, i)) {
                Some(part) => whole.extend_from_slice(&part),
                None => return Ok(Err(format!("chunk {i} of {} is missing", snapshot.chunks))),
            }
        }
        snapshot = match from_msgpack(&whole) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("the chunked snapshot does not decode: {e}"))),
        };
    }
    let Some(mut state) = snapshot.state else {
        return Ok(Err("a snapshot without a state".into()));
    };
    let log = layout::log_name(&address);
    let mut from = snapshot.log_from;
    let mut since_snapshot = 0;
    loop {
        let entries = store.log_read(&log, from, 1024)?;
        let Some(last) = entries.last() else { break };
        from = last.seq + 1;
        for entry in entries {
            let applied = from_msgpack::<AnyOp>(&entry.data)
                .map_err(|e| format!("does not decode: {e}"))
                .and_then(|op| {
                    state.apply(&op).map(|_| op.len().max(1)).map_err(|e| format!("does not apply: {e}"))
                });
            match applied {
                Ok(entries) => since_snapshot += entries as u64,
                Err(reason) => {
                    // The op is skipped; a copy is kept (the log itself is pruned at the next snapshot).
                    let mut at = b"log/".to_vec();
                    at.extend_from_slice(&log);
                    at.extend_from_slice(&entry.seq.to_be_bytes());
                    repairs.quarantine(&at, entry.data, false, format!("op-log entry of {address} {reason}"));
                }
            }
        }
    }
    let snapshot_after = state.size();
    Ok(Ok((address, Replica { state, since_snapshot, snapshot_after, chunks: stored_chunks })))
}
