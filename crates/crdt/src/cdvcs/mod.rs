//! CDVCS: a confluent distributed version control system, git-like, as a CRDT.
//!
//! The state is a commit graph (a grow-only map `commit -> [parents]`, see [`CommitGraph`]) whose
//! heads are recomputed on every join. Several heads are a valid state (a conflict is part of the
//! value), resolved by an explicit [`Cdvcs::merge`]. Every replica that has the same graph agrees on
//! one total order of its commits ([`Cdvcs::linearize`]), so a CDVCS can feed a conventional database.
//!
//! Local operations ([`Cdvcs::commit`], [`Cdvcs::merge`], [`Cdvcs::pull`]) change the state and
//! return a [`Staged`] op (a delta: only the new graph entries) plus the new commit and params
//! values; other replicas [`Crdt::apply`] the op.
//!
//! ```
//! use replikativ_crdt::{Cdvcs, Crdt, Transaction};
//!
//! let (mut alice, root) = Cdvcs::new("mail:alice@example.org", 0);
//! let mut bob = Cdvcs::default();
//! bob.apply(&root.op).unwrap();
//!
//! // Both commit on the same head: two heads everywhere once they exchange ops.
//! let a = alice.transact("mail:alice@example.org", 1, vec![Transaction::new("add", 1)]).unwrap();
//! let b = bob.transact("mail:bob@example.org", 1, vec![Transaction::new("add", 2)]).unwrap();
//! alice.apply(&b.op).unwrap();
//! bob.apply(&a.op).unwrap();
//! assert_eq!(alice.heads().len(), 2);
//! assert_eq!(alice, bob);
//!
//! // One merge resolves the conflict on every replica.
//! let heads: Vec<_> = alice.heads().iter().copied().collect();
//! let m = alice.merge("mail:alice@example.org", 2, &heads, None, vec![]).unwrap();
//! bob.apply(&m.op).unwrap();
//! assert_eq!(bob.heads().len(), 1);
//! assert_eq!(alice.linearize(), bob.linearize());
//! ```

mod graph;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use graph::CommitGraph;

use crate::commit::{CrdtKind, Staged, Transaction, check_txs, make_commit};
use crate::error::{OpError, ValidationError};
use crate::{ContentId, Crdt};

/// A CDVCS replica: the commit graph and, locally, the transactions prepared for the next commit.
#[derive(Clone, Debug, Default)]
pub struct Cdvcs {
    graph: CommitGraph,
    /// Prepared, uncommitted transactions (local to this replica, never replicated).
    prepared: Vec<Transaction>,
}

/// Two replicas are equal when their commit graphs are (prepared transactions are local).
impl PartialEq for Cdvcs {
    fn eq(&self, other: &Self) -> bool {
        self.graph == other.graph
    }
}

impl Eq for Cdvcs {}

/// One graph entry on the wire: a commit id and its ordered parents.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GraphEntry {
    /// The commit.
    pub id: ContentId,
    /// Its parents, in order.
    pub parents: Vec<ContentId>,
}

/// What produced a CDVCS op (informational: applying ignores it).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdvcsMethod {
    /// A whole state (creation, fork, catch-up).
    Handshake,
    /// A new commit.
    Commit,
    /// A merge commit (with the remote commits it merged in).
    Merge,
    /// Commits pulled from another CDVCS.
    Pull,
}

/// A CDVCS op: graph entries to add. The heads are the sender's view after the op; receivers
/// recompute heads from the graph and never trust them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CdvcsOp {
    /// What produced the op.
    pub method: CdvcsMethod,
    /// New graph entries, parents before children.
    pub commits: Vec<GraphEntry>,
    /// The sender's heads after the op.
    pub heads: BTreeSet<ContentId>,
}

impl Cdvcs {
    /// Creates a CDVCS with a root commit (no transactions, no parents) by `author` at `ts`.
    pub fn new(author: &str, ts: u64) -> (Cdvcs, Staged<CdvcsOp>) {
        let (mut values, mut records) = (BTreeMap::new(), BTreeMap::new());
        let root = make_commit(CrdtKind::Cdvcs, vec![], &[], author, ts, &mut values, &mut records);
        let mut cdvcs = Cdvcs::default();
        cdvcs.graph.insert(root, &[]).expect("a fresh root is valid");
        let op = CdvcsOp {
            method: CdvcsMethod::Handshake,
            commits: vec![GraphEntry { id: root, parents: vec![] }],
            heads: cdvcs.heads().clone(),
        };
        (cdvcs, Staged { op, values, commits: records })
    }

    /// The commit graph.
    pub fn graph(&self) -> &CommitGraph {
        &self.graph
    }

    /// The current heads; more than one is a conflict to merge.
    pub fn heads(&self) -> &BTreeSet<ContentId> {
        self.graph.heads()
    }

    /// The single head, if there is exactly one.
    pub fn head(&self) -> Option<ContentId> {
        let mut heads = self.heads().iter();
        match (heads.next(), heads.next()) {
            (Some(h), None) => Some(*h),
            _ => None,
        }
    }

    /// Deterministic linearization of the whole history (see [`CommitGraph::linearize`]).
    pub fn linearize(&self) -> Vec<ContentId> {
        self.graph.linearize(self.heads())
    }

    /// Transactions prepared for the next [`Cdvcs::commit`].
    pub fn prepared(&self) -> &[Transaction] {
        &self.prepared
    }

    /// Prepares a transaction for the next commit.
    pub fn prepare(&mut self, tx: Transaction) {
        self.prepared.push(tx);
    }

    /// Commits the prepared transactions on the single head.
    ///
    /// Refuses with [`OpError::MultipleHeads`] when there are several heads, [`OpError::Empty`] when
    /// there is no commit, and [`OpError::NoTransactions`] when nothing is prepared. On success the
    /// prepared list is empty.
    pub fn commit(&mut self, author: &str, ts: u64) -> Result<Staged<CdvcsOp>, OpError> {
        let head = self.single_head()?;
        if self.prepared.is_empty() {
            return Err(OpError::NoTransactions);
        }
        check_txs(&self.prepared)?;
        let txs = std::mem::take(&mut self.prepared);
        Ok(self.raw_commit(CdvcsMethod::Commit, vec![head], &txs, author, ts, Vec::new()))
    }

    /// Prepares `txs` and commits them in one step (replikativ's `transact!`). On error nothing is
    /// prepared.
    pub fn transact(
        &mut self,
        author: &str,
        ts: u64,
        txs: Vec<Transaction>,
    ) -> Result<Staged<CdvcsOp>, OpError> {
        self.single_head()?;
        if txs.is_empty() && self.prepared.is_empty() {
            return Err(OpError::NoTransactions);
        }
        check_txs(&txs)?;
        self.prepared.extend(txs);
        self.commit(author, ts)
    }

    fn single_head(&self) -> Result<ContentId, OpError> {
        match self.heads().len() {
            0 => Err(OpError::Empty),
            1 => Ok(*self.heads().first().expect("one head")),
            _ => Err(OpError::MultipleHeads { heads: self.heads().iter().copied().collect() }),
        }
    }

    fn raw_commit(
        &mut self,
        method: CdvcsMethod,
        parents: Vec<ContentId>,
        txs: &[Transaction],
        author: &str,
        ts: u64,
        mut commits: Vec<GraphEntry>,
    ) -> Staged<CdvcsOp> {
        let (mut values, mut records) = (BTreeMap::new(), BTreeMap::new());
        let id = make_commit(CrdtKind::Cdvcs, parents.clone(), txs, author, ts, &mut values, &mut records);
        for entry in &commits {
            self.graph.insert(entry.id, &entry.parents).expect("entries were validated");
        }
        self.graph.insert(id, &parents).expect("a new commit on present parents is valid");
        commits.push(GraphEntry { id, parents });
        Staged { op: CdvcsOp { method, commits, heads: self.heads().clone() }, values, commits: records }
    }

    /// Merges the given heads with a merge commit whose parents are `heads` in the given order
    /// (their order decides the linearization), carrying optional correcting transactions.
    ///
    /// With `remote`, the remote replica's commits are merged in as well (replikativ's merge of a
    /// remote state), and `heads` must be the union of both replicas' heads. Refuses with
    /// [`OpError::TransactionsPending`] when transactions are prepared, [`OpError::HeadsDontMatch`]
    /// unless `heads` are exactly the current heads, and [`OpError::NothingToMerge`] for one head.
    pub fn merge(
        &mut self,
        author: &str,
        ts: u64,
        heads: &[ContentId],
        remote: Option<&Cdvcs>,
        correcting: Vec<Transaction>,
    ) -> Result<Staged<CdvcsOp>, OpError> {
        if !self.prepared.is_empty() {
            return Err(OpError::TransactionsPending);
        }
        let mut expected: BTreeSet<ContentId> = self.heads().clone();
        let mut remote_commits = Vec::new();
        if let Some(remote) = remote {
            let (new, _) = remote
                .graph
                .unknown_to(remote.heads(), &self.graph)
                .map_err(|tip| OpError::BadRemoteTip { tip })?;
            for id in new {
                let parents = remote.graph.parents(&id).expect("walked commits are present").collect();
                remote_commits.push(GraphEntry { id, parents });
            }
            // Heads after taking in the remote commits: a local head stays a head unless a remote
            // commit descends from it.
            let mut trial = self.graph.clone();
            for e in &remote_commits {
                trial.insert(e.id, &e.parents).map_err(|_| OpError::BadRemoteTip { tip: e.id })?;
            }
            expected = trial.heads().clone();
        }
        let given: BTreeSet<ContentId> = heads.iter().copied().collect();
        if given != expected || given.len() != heads.len() {
            return Err(OpError::HeadsDontMatch { expected: expected.into_iter().collect() });
        }
        if heads.len() < 2 {
            return Err(OpError::NothingToMerge);
        }
        check_txs(&correcting)?;
        Ok(self.raw_commit(CdvcsMethod::Merge, heads.to_vec(), &correcting, author, ts, remote_commits))
    }

    /// Pulls `remote`'s history up to `tip` into this CDVCS.
    ///
    /// Without `allow_induced_conflict` the pull must be a fast-forward: every local head must be
    /// an ancestor of `tip` ([`OpError::NotSuperset`] otherwise); with it, the pull may leave
    /// several heads. Refuses with [`OpError::PullUnnecessary`] when `tip` is already known and
    /// [`OpError::BadRemoteTip`] when the remote does not have `tip` with complete history.
    pub fn pull(
        &mut self,
        remote: &Cdvcs,
        tip: ContentId,
        allow_induced_conflict: bool,
    ) -> Result<Staged<CdvcsOp>, OpError> {
        if self.graph.contains(&tip) {
            return Err(OpError::PullUnnecessary { tip });
        }
        let (new, boundary) = remote
            .graph
            .unknown_to(&BTreeSet::from([tip]), &self.graph)
            .map_err(|_| OpError::BadRemoteTip { tip })?;
        // A local head stays a head unless a pulled commit descends from it, i.e. it is on the
        // boundary of the walk from `tip`.
        if !allow_induced_conflict && !self.heads().is_subset(&boundary) {
            return Err(OpError::NotSuperset { tip });
        }
        let commits: Vec<GraphEntry> = new
            .into_iter()
            .map(|id| GraphEntry { id, parents: remote.graph.parents(&id).expect("present").collect() })
            .collect();
        for e in &commits {
            self.graph.insert(e.id, &e.parents).map_err(|_| OpError::BadRemoteTip { tip })?;
        }
        Ok(Staged {
            op: CdvcsOp { method: CdvcsMethod::Pull, commits, heads: self.heads().clone() },
            values: BTreeMap::new(),
            commits: BTreeMap::new(),
        })
    }

    /// A copy of this CDVCS for another owner (replikativ's `fork`): the same graph, as a
    /// handshake op to publish under the new address.
    pub fn fork(&self) -> (Cdvcs, CdvcsOp) {
        let fork = Cdvcs { graph: self.graph.clone(), prepared: Vec::new() };
        let op = fork.state_op();
        (fork, op)
    }

    /// Lowest common ancestors of two replicas' heads, with what each side would have to ship
    /// (see [`Lca`]).
    pub fn lowest_common_ancestors(
        a: &CommitGraph,
        heads_a: &BTreeSet<ContentId>,
        b: &CommitGraph,
        heads_b: &BTreeSet<ContentId>,
    ) -> Lca {
        if heads_a == heads_b {
            return Lca { lcas: heads_a.clone(), visited_a: heads_a.clone(), visited_b: heads_b.clone() };
        }
        let walk = |from: &CommitGraph, heads: &BTreeSet<ContentId>, other: &CommitGraph| {
            let (new, boundary) = from.unknown_to(heads, other).unwrap_or_default();
            let visited: BTreeSet<ContentId> = new.into_iter().chain(boundary.iter().copied()).collect();
            (visited, boundary)
        };
        let (visited_b, lcas) = walk(b, heads_b, a);
        let (visited_a, _) = walk(a, heads_a, b);
        Lca { lcas, visited_a, visited_b }
    }
}

/// Result of [`Cdvcs::lowest_common_ancestors`] (replikativ's `lowest-common-ancestors`).
///
/// `visited_b` is b's history that a lacks plus the cut where it meets a's history: exactly what a
/// pull or merge of b into a ships. `lcas` is that cut (the commits a and b share, reached
/// directly from b's new commits). `visited_a` is the same walk from a's side. The walks stop at
/// the cut, so the cost is the new part, never the whole history.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lca {
    /// The common commits where the walk from b's heads meets a's history.
    pub lcas: BTreeSet<ContentId>,
    /// a's commits unknown to b, plus the cut on a's side.
    pub visited_a: BTreeSet<ContentId>,
    /// b's commits unknown to a, plus `lcas`.
    pub visited_b: BTreeSet<ContentId>,
}

impl Crdt for Cdvcs {
    type Op = CdvcsOp;
    const KIND: CrdtKind = CrdtKind::Cdvcs;

    fn validate_op(&self, op: &CdvcsOp) -> Result<(), ValidationError> {
        let mut in_op: BTreeMap<ContentId, &[ContentId]> = BTreeMap::new();
        for e in &op.commits {
            self.graph.check(&e.id, &e.parents)?;
            if in_op.insert(e.id, &e.parents).is_some_and(|prev| prev != e.parents.as_slice()) {
                return Err(ValidationError::ConflictingParents { id: e.id });
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &CdvcsOp) -> Result<bool, ValidationError> {
        self.validate_op(op)?;
        let mut changed = false;
        for e in &op.commits {
            changed |= self.graph.insert(e.id, &e.parents)?;
        }
        Ok(changed)
    }

    fn state_op(&self) -> CdvcsOp {
        CdvcsOp {
            method: CdvcsMethod::Handshake,
            commits: self.graph.entries().map(|(id, parents)| GraphEntry { id, parents }).collect(),
            heads: self.heads().clone(),
        }
    }

    fn commit_ids(op: &CdvcsOp) -> Vec<ContentId> {
        op.commits.iter().map(|e| e.id).collect()
    }
}

impl Serialize for Cdvcs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.state_op().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Cdvcs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let op = CdvcsOp::deserialize(deserializer)?;
        let mut cdvcs = Cdvcs::default();
        cdvcs.apply(&op).map_err(serde::de::Error::custom)?;
        Ok(cdvcs)
    }
}

#[cfg(test)]
mod tests;
