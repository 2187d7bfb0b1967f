//! Reads answered inside the core: only the answer leaves it (reading one key of a large OR-Map
//! copies that key's values, not the map).

use replikativ_crdt::{Commit, ContentId, CrdtKind, Transaction, Value};

use super::command::{CommitValue, Query};
use super::state::CrdtState;
use super::{Peer, Reply, StageError};
use replikativ_crdt::Address;

impl Peer {
    pub(super) fn query(&self, address: &Address, query: Query) -> Result<Reply, StageError> {
        let kind = match query {
            Query::Get { .. } | Query::Keys | Query::Conflicts => CrdtKind::Ormap,
            Query::Heads | Query::History => CrdtKind::Cdvcs,
            Query::Register => CrdtKind::Lww,
            Query::Elements => CrdtKind::Gset,
        };
        Ok(match (self.replica_of(address, kind)?, query) {
            (CrdtState::Ormap(m), Query::Get { key }) => Reply::Commits(self.resolve_commits(&m.get(&key))?),
            (CrdtState::Ormap(m), Query::Keys) => Reply::Keys(m.keys().cloned().collect()),
            (CrdtState::Ormap(m), Query::Conflicts) => Reply::Conflicts(m.conflicts()),
            (CrdtState::Cdvcs(c), Query::Heads) => Reply::Heads(c.heads().clone()),
            (CrdtState::Cdvcs(c), Query::History) => Reply::Commits(self.resolve_commits(&c.linearize())?),
            (CrdtState::Lww(r), Query::Register) => Reply::Value(r.get().clone()),
            (CrdtState::Gset(s), Query::Elements) => Reply::Elements(s.elements().clone()),
            _ => unreachable!("replica_of checked the kind"),
        })
    }

    pub(super) fn read_values(&self, ids: Vec<ContentId>) -> Result<Reply, StageError> {
        let mut values = Vec::with_capacity(ids.len());
        for id in ids {
            let v = self.persist.value(&id)?.and_then(|b| Value::decode(&b).ok());
            values.push((id, v));
        }
        Ok(Reply::Values(values))
    }

    fn stored_value(&self, id: &ContentId) -> Result<Value, StageError> {
        let bytes = self.persist.value(id)?.ok_or(StageError::MissingValue(*id))?;
        Value::decode(&bytes).map_err(|e| StageError::CorruptValue { id: *id, reason: e.to_string() })
    }

    /// Commit records with their params, from the store.
    pub(super) fn resolve_commits(&self, ids: &[ContentId]) -> Result<Vec<CommitValue>, StageError> {
        ids.iter()
            .map(|id| {
                let commit = Commit::from_value(&self.stored_value(id)?)
                    .map_err(|e| StageError::CorruptValue { id: *id, reason: e.to_string() })?;
                let transactions = commit
                    .transactions
                    .into_iter()
                    .map(|t| Ok(Transaction { function: t.function, params: self.stored_value(&t.params)? }))
                    .collect::<Result<Vec<_>, StageError>>()?;
                Ok(CommitValue {
                    id: *id,
                    parents: commit.parents,
                    transactions,
                    author: commit.author,
                    ts: commit.ts,
                })
            })
            .collect()
    }
}
