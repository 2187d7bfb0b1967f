//! Export and import of addresses (`replikativ export` / `import`): an address's state as an op
//! (`CrdtState::state_op`) with every commit record and params value it names, as canonical
//! encodings. An import goes through the checks a publication from the wire gets (values decode
//! canonically and are keyed by the hash of their bytes, every record the op names is present and
//! of the op's kind, CDVCS parents match their records, the datatype validates the op, LWW clock
//! skew and forged own-writer dots are refused), so a restored history keeps its ids, authors and
//! timestamps, and nothing unverifiable enters the store (`docs/design.md` §6.8).

use std::collections::BTreeSet;

use replikativ_crdt::{Address, Commit, ContentId, CrdtKind, IdMap, Value};
use serde_bytes::ByteBuf;

use super::message::AnyOp;
use super::persist::Replica;
use super::publish::Origin;
use super::state::{CrdtState, commit_ids};
use super::{Peer, Pending, Reply, StageError};

/// Op and value bytes one [`Command::Export`](super::Command::Export) answers at most (or
/// `max_answer_bytes`, if smaller): below the default 16 MiB frame limit, so a remote export fits
/// one frame with its envelope.
pub const MAX_EXPORT_BYTES: usize = 12 << 20;

/// One exported address.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Export {
    /// Where.
    pub address: Address,
    /// Its datatype.
    pub kind: CrdtKind,
    /// The whole state as an op.
    pub op: AnyOp,
    /// Every commit record the op names and every params value those name (canonical encodings;
    /// their ids are the hashes of these bytes).
    pub values: Vec<ByteBuf>,
}

fn too_large(limit: usize) -> StageError {
    StageError::TooLarge(format!(
        "the export holds more than {limit} bytes (MAX_EXPORT_BYTES or max_answer_bytes); export fewer addresses at a time"
    ))
}

impl Peer {
    /// [`Command::Export`](super::Command::Export): the addresses (all held ones if empty), at most
    /// [`MAX_EXPORT_BYTES`] (or `max_answer_bytes`) of ops and values in all.
    pub(super) fn export(&self, addresses: BTreeSet<Address>) -> Result<Reply, StageError> {
        let addresses: Vec<Address> = if addresses.is_empty() {
            self.crdts.keys().cloned().collect()
        } else {
            addresses.into_iter().collect()
        };
        let limit = self.config.max_answer_bytes.min(MAX_EXPORT_BYTES);
        let mut total = 0usize;
        let mut out = Vec::with_capacity(addresses.len());
        for address in addresses {
            let replica = self.crdts.get(&address).ok_or_else(|| StageError::NotFound(address.clone()))?;
            let op = replica.state.state_op();
            total += op.approx_bytes();
            let mut values = Vec::new();
            for cid in commit_ids(&op) {
                let record = self.stored(&cid)?;
                let commit = Commit::from_value(
                    &Value::decode(&record)
                        .map_err(|e| StageError::CorruptValue { id: cid, reason: e.to_string() })?,
                )
                .map_err(|e| StageError::CorruptValue { id: cid, reason: e.to_string() })?;
                total += record.len();
                values.push(ByteBuf::from(record));
                for tx in &commit.transactions {
                    let params = self.stored(&tx.params)?;
                    total += params.len();
                    values.push(ByteBuf::from(params));
                }
                if total > limit {
                    return Err(too_large(limit));
                }
            }
            if total > limit {
                return Err(too_large(limit));
            }
            out.push(Export { kind: op.kind(), address, op, values });
        }
        Ok(Reply::Exported(out))
    }

    fn stored(&self, id: &ContentId) -> Result<Vec<u8>, StageError> {
        self.persist.value(id)?.ok_or(StageError::MissingValue(*id))
    }

    /// [`Command::Import`](super::Command::Import): applies an exported address like a publication
    /// from the wire, and stores, relays and reports it like a local op.
    pub(super) fn import(&mut self, export: Export) -> Result<Reply, StageError> {
        let Export { address, kind, op, values } = export;
        let bad = |why: String| StageError::InvalidImport(format!("{address}: {why}"));
        if op.kind() != kind {
            return Err(bad(format!("a {:?} op for a {kind:?}", op.kind())));
        }
        if let Some(replica) = self.crdts.get(&address)
            && replica.state.kind() != kind
        {
            return Err(StageError::WrongKind { address, expected: kind, found: replica.state.kind() });
        }
        let mut known = IdMap::with_capacity_and_hasher(values.len(), Default::default());
        let mut commits = IdMap::default();
        let records: replikativ_crdt::IdSet = commit_ids(&op).into_iter().collect();
        for bytes in values {
            let value = Value::decode(&bytes).map_err(|e| bad(format!("a value does not decode: {e}")))?;
            let id = ContentId::hash_bytes(&bytes);
            if records.contains(&id) {
                let commit =
                    Commit::from_value(&value).map_err(|e| bad(format!("commit record {id}: {e}")))?;
                commits.insert(id, commit);
            }
            known.insert(id, bytes.into_vec());
        }
        self.check_remote_op(&address, &op).map_err(|(_, reason)| bad(reason))?;
        let mut pending = Pending {
            bytes: 0,
            id: 0,
            address: address.clone(),
            op,
            values: known,
            commits,
            catch_up: false,
        };
        let (need, parsed) = self.missing_values(&pending).map_err(bad)?;
        if let Some(id) = need.into_iter().next() {
            return Err(bad(format!(
                "value {id}, which the op needs, is neither in the export nor in the store"
            )));
        }
        pending.commits.extend(parsed);
        self.check_records(&pending).map_err(bad)?;
        let Pending { op, values, commits, .. } = pending;
        let fresh = !self.crdts.contains_key(&address);
        let replica =
            self.crdts.entry(address.clone()).or_insert_with(|| Replica::new(CrdtState::empty(kind)));
        if let Err(e) = replica.state.apply(&op) {
            if fresh {
                self.crdts.remove(&address);
            }
            return Err(bad(format!("the op does not apply: {e}")));
        }
        if fresh {
            self.extend_subscriptions(&BTreeSet::from([address.clone()]), None);
        }
        self.record_applied(&address, op, values, &commits, Origin::Local)?;
        Ok(Reply::Done)
    }
}
