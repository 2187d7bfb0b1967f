//! Local operations of the stage, per datatype: each runs the datatype's operation on the
//! replica and enters the path remote publications take from applying on (`record_applied`:
//! store, relay, acknowledge after the barrier).

use std::collections::BTreeSet;

use replikativ_crdt::{
    Address, Cdvcs, Commit, ContentId, CrdtKind, GSet, IdMap, LwwRegister, OpError, OrMap, Staged,
};
use replikativ_crdt::{Transaction, Value};

use super::message::AnyOp;
use super::persist::Replica;
use super::publish::Origin;
use super::state::CrdtState;
use super::{Peer, Reply, StageError};

/// New values of a local op as canonical encodings, and its commit records parsed (the staged
/// op's own records are encoded directly; other values that are records are parsed).
fn bytes_of<O>(staged: &mut Staged<O>) -> Known {
    let mut commits: IdMap<Commit> = std::mem::take(&mut staged.commits).into_iter().collect();
    let mut bytes = IdMap::with_capacity_and_hasher(staged.values.len(), Default::default());
    for (id, v) in std::mem::take(&mut staged.values) {
        let encoded = match commits.get(&id) {
            Some(c) => c.encode(),
            None => {
                if let Ok(c) = Commit::from_value(&v) {
                    commits.insert(id, c);
                }
                v.encode()
            }
        };
        bytes.insert(id, encoded);
    }
    (bytes, commits)
}

type Known = (IdMap<Vec<u8>>, IdMap<Commit>);

/// The typed replica of a kind, mutably.
macro_rules! typed_mut {
    ($peer:expr, $address:expr, $kind:ident, $variant:ident) => {
        match $peer.replica_mut($address, CrdtKind::$kind)? {
            CrdtState::$variant(s) => s,
            _ => unreachable!("replica_mut checked the kind"),
        }
    };
}

impl Peer {
    fn local(&mut self, address: &Address, op: AnyOp, (values, commits): Known) -> Result<(), StageError> {
        self.record_applied(address, op, values, &commits, Origin::Local)
    }

    /// A new replica at `address` (subscribed), and the op it starts with.
    fn insert_local(
        &mut self,
        address: &Address,
        state: CrdtState,
        op: AnyOp,
        known: Known,
    ) -> Result<(), StageError> {
        self.crdts.insert(address.clone(), Replica::new(state));
        self.extend_subscriptions(&BTreeSet::from([address.clone()]), None);
        self.local(address, op, known)
    }

    pub(super) fn create(
        &mut self,
        address: Address,
        kind: CrdtKind,
        author: &str,
    ) -> Result<Reply, StageError> {
        if self.crdts.contains_key(&address) {
            return Err(StageError::AlreadyExists(address));
        }
        let (state, op, known) = match kind {
            CrdtKind::Cdvcs => {
                let (cdvcs, mut staged) = Cdvcs::new(author, self.now_ms);
                let known = bytes_of(&mut staged);
                (CrdtState::Cdvcs(cdvcs), AnyOp::Cdvcs(staged.op), known)
            }
            other => {
                let state = CrdtState::empty(other);
                let op = state.state_op();
                (state, op, Known::default())
            }
        };
        self.insert_local(&address, state, op, known)?;
        Ok(Reply::Done)
    }

    pub(super) fn assoc(
        &mut self,
        address: &Address,
        key: Value,
        txs: Vec<Transaction>,
        author: &str,
    ) -> Result<Reply, StageError> {
        self.add(address, key, txs, author, false)
    }

    pub(super) fn put(
        &mut self,
        address: &Address,
        key: Value,
        txs: Vec<Transaction>,
        author: &str,
    ) -> Result<Reply, StageError> {
        self.add(address, key, txs, author, true)
    }

    /// `OrMap::assoc` (or with `replace`, `OrMap::put`) on the replica, stored and relayed.
    fn add(
        &mut self,
        address: &Address,
        key: Value,
        txs: Vec<Transaction>,
        author: &str,
        replace: bool,
    ) -> Result<Reply, StageError> {
        let (now, actor) = (self.now_ms, self.actor);
        let m: &mut OrMap = typed_mut!(self, address, Ormap, Ormap);
        let mut staged = if replace {
            m.put(key, txs, actor, author, now)
        } else {
            m.assoc(key, txs, actor, author, now)
        }?;
        let commit = staged.op.adds[0].commit;
        let known = bytes_of(&mut staged);
        self.local(address, AnyOp::Ormap(staged.op), known)?;
        Ok(Reply::Commit(commit))
    }

    pub(super) fn dissoc(
        &mut self,
        address: &Address,
        key: &Value,
        revert: Vec<Transaction>,
        author: &str,
    ) -> Result<Reply, StageError> {
        let now = self.now_ms;
        let m: &mut OrMap = typed_mut!(self, address, Ormap, Ormap);
        let mut staged = m.dissoc(key, revert, author, now)?;
        let commit = staged.op.removals[0].commit;
        let known = bytes_of(&mut staged);
        self.local(address, AnyOp::Ormap(staged.op), known)?;
        Ok(Reply::Commit(commit))
    }

    pub(super) fn transact(
        &mut self,
        address: &Address,
        txs: Vec<Transaction>,
        author: &str,
    ) -> Result<Reply, StageError> {
        let now = self.now_ms;
        let c: &mut Cdvcs = typed_mut!(self, address, Cdvcs, Cdvcs);
        let mut staged = c.transact(author, now, txs)?;
        let commit = staged.op.commits.last().expect("a commit").id;
        let known = bytes_of(&mut staged);
        self.local(address, AnyOp::Cdvcs(staged.op), known)?;
        Ok(Reply::Commit(commit))
    }

    pub(super) fn merge(
        &mut self,
        address: &Address,
        heads: &[ContentId],
        correcting: Vec<Transaction>,
        author: &str,
    ) -> Result<Reply, StageError> {
        let now = self.now_ms;
        let c: &mut Cdvcs = typed_mut!(self, address, Cdvcs, Cdvcs);
        let mut staged = c.merge(author, now, heads, None, correcting)?;
        let commit = staged.op.commits.last().expect("a merge commit").id;
        let known = bytes_of(&mut staged);
        self.local(address, AnyOp::Cdvcs(staged.op), known)?;
        Ok(Reply::Commit(commit))
    }

    pub(super) fn pull(
        &mut self,
        from: &Address,
        into: &Address,
        tip: Option<ContentId>,
        allow_induced_conflict: bool,
    ) -> Result<Reply, StageError> {
        let remote: Cdvcs = typed_mut!(self, from, Cdvcs, Cdvcs).clone();
        let tip = match tip {
            Some(t) => t,
            None => remote
                .head()
                .ok_or_else(|| OpError::MultipleHeads { heads: remote.heads().iter().copied().collect() })?,
        };
        if !self.crdts.contains_key(into) {
            self.crdts.insert(into.clone(), Replica::new(CrdtState::Cdvcs(Cdvcs::default())));
            self.extend_subscriptions(&BTreeSet::from([into.clone()]), None);
        }
        let c: &mut Cdvcs = typed_mut!(self, into, Cdvcs, Cdvcs);
        let staged = c.pull(&remote, tip, allow_induced_conflict)?;
        self.local(into, AnyOp::Cdvcs(staged.op), Known::default())?;
        Ok(Reply::Commit(tip))
    }

    pub(super) fn fork(&mut self, from: &Address, into: &Address) -> Result<Reply, StageError> {
        if self.crdts.contains_key(into) {
            return Err(OpError::ForkTargetExists.into());
        }
        let c: &mut Cdvcs = typed_mut!(self, from, Cdvcs, Cdvcs);
        let (fork, op) = c.fork();
        self.insert_local(into, CrdtState::Cdvcs(fork), AnyOp::Cdvcs(op), Known::default())?;
        Ok(Reply::Done)
    }

    pub(super) fn lww_set(&mut self, address: &Address, value: Value) -> Result<Reply, StageError> {
        let (now, actor) = (self.now_ms, self.actor);
        let r: &mut LwwRegister = typed_mut!(self, address, Lww, Lww);
        let op = r.set(value, now, actor)?;
        self.local(address, AnyOp::Lww(op), Known::default())?;
        Ok(Reply::Done)
    }

    pub(super) fn gset_add(&mut self, address: &Address, element: Value) -> Result<Reply, StageError> {
        let s: &mut GSet = typed_mut!(self, address, Gset, Gset);
        let op = s.add(element)?;
        self.local(address, AnyOp::Gset(op), Known::default())?;
        Ok(Reply::Done)
    }
}
