//! OR-Map: an observed-remove, multi-value map.
//!
//! Each [`OrMap::assoc`] adds an entry under a fresh tag, a [`Dot`] `(actor, counter)`; the
//! entry's value lives in a content-addressed commit record (its transactions). [`OrMap::dissoc`]
//! removes exactly the entries it has observed for the key, recording a removal commit (revert
//! transactions) per removed tag. So a concurrent assoc survives a concurrent dissoc (add wins), and
//! concurrent assocs of one key keep several live values: [`OrMap::get`] returns them all and
//! [`OrMap::conflicts`] reports such keys.
//!
//! State and ops have one shape, `adds: key -> {dot -> commit}` and `removals: key -> {dot ->
//! removal commit}`, and the join is their union, so it is commutative, associative and idempotent
//! and a removal that arrives before its add still hides it. An add's tag names one commit
//! forever (an op reusing it for another commit is refused); when two replicas remove one entry
//! concurrently, the join keeps the removal commit with the larger id. Removed entries are kept as
//! tombstones (the removal commits are needed to replay history in order).
//!
//! ```
//! use replikativ_crdt::{ActorId, Crdt, OrMap, Transaction, Value};
//!
//! let (alice, bob) = (ActorId::from_u128(1), ActorId::from_u128(2));
//! let mut a = OrMap::default();
//! let mut b = OrMap::default();
//! let x = a.assoc("title".into(), vec![Transaction::new("set", "Draft")], alice, "alice", 1).unwrap();
//! let y = b.assoc("title".into(), vec![Transaction::new("set", "Final")], bob, "bob", 1).unwrap();
//! a.apply(&y.op).unwrap();
//! b.apply(&x.op).unwrap();
//! assert_eq!(a, b);
//! assert_eq!(a.get(&Value::from("title")).len(), 2); // both values live: a conflict
//! assert_eq!(a.conflicts().len(), 1);
//!
//! let rm = a.dissoc(&"title".into(), vec![], "alice", 2).unwrap();
//! b.apply(&rm.op).unwrap();
//! assert!(b.get(&Value::from("title")).is_empty());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::commit::{CrdtKind, Staged, Transaction, check_txs, make_commit};
use crate::error::{OpError, ValidationError};
use crate::{ActorId, ContentId, Crdt, Dot, DotSet, Value};

type Tagged = BTreeMap<Value, DotMap>;

/// The tags of one key: (dot, commit) pairs sorted by dot. Almost every key has one or two, so a
/// sorted vector (one small allocation) instead of a `BTreeMap` (a ~600-byte node per key).
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct DotMap(Vec<(Dot, ContentId)>);

impl DotMap {
    fn find(&self, dot: &Dot) -> Result<usize, usize> {
        self.0.binary_search_by(|(d, _)| d.cmp(dot))
    }

    fn get(&self, dot: &Dot) -> Option<&ContentId> {
        self.find(dot).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, dot: &Dot) -> Option<&mut ContentId> {
        self.find(dot).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, dot: &Dot) -> bool {
        self.find(dot).is_ok()
    }

    /// Inserts or replaces.
    fn insert(&mut self, dot: Dot, commit: ContentId) {
        match self.find(&dot) {
            Ok(i) => self.0[i].1 = commit,
            Err(i) => {
                // Exactly one more: most keys hold one value, and a first push would reserve room
                // for four (224 bytes a key instead of 56).
                self.0.reserve_exact(1);
                self.0.insert(i, (dot, commit))
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Dot, &ContentId)> + '_ {
        self.0.iter().map(|(d, c)| (d, c))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl<'a> IntoIterator for &'a DotMap {
    type Item = (&'a Dot, &'a ContentId);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Dot, ContentId)>,
        fn(&'a (Dot, ContentId)) -> (&'a Dot, &'a ContentId),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(d, c)| (d, c))
    }
}

/// An OR-Map replica (see the module docs).
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct OrMap {
    adds: Tagged,
    removals: Tagged,
    /// Highest counter seen per actor (derived from the dots above; makes fresh dots).
    clock: BTreeMap<ActorId, u64>,
    /// The dots of every recorded add (derived: what a peer is told this replica has).
    add_dots: DotSet,
    /// The add dots whose removal is recorded (derived).
    removed_dots: DotSet,
    /// Sum (wrapping) of a 64-bit hash of every removal (key, dot, commit) (derived): tells two
    /// replicas with the same removed dots whether they also hold the same removal commits.
    removal_digest: u64,
}

/// A 64-bit hash of one removal entry.
fn removal_hash(key: &Value, dot: &Dot, commit: &ContentId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&key.encode());
    h.update(dot.actor.as_bytes());
    h.update(&dot.counter.to_be_bytes());
    h.update(commit.as_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// One tagged entry on the wire: key, tag and commit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct OrEntry {
    /// The map key.
    pub key: Value,
    /// The entry's tag.
    pub dot: Dot,
    /// The commit: the value's transactions for an add, the revert transactions for a removal.
    pub commit: ContentId,
}

/// An OR-Map op (a delta, or a whole state): entries added and entries removed.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct OrMapOp {
    /// Added entries.
    pub adds: Vec<OrEntry>,
    /// Removed entries: the dot of the removed add and the removal commit.
    pub removals: Vec<OrEntry>,
}

fn tagged(entries: &[OrEntry]) -> Tagged {
    let mut t = Tagged::new();
    for e in entries {
        let dots = t.entry(e.key.clone()).or_default();
        let commit = dots.get(&e.dot).map_or(e.commit, |c| (*c).max(e.commit));
        dots.insert(e.dot, commit);
    }
    t
}

fn flatten(t: &Tagged) -> Vec<OrEntry> {
    t.iter()
        .flat_map(|(k, dots)| dots.iter().map(|(d, c)| OrEntry { key: k.clone(), dot: *d, commit: *c }))
        .collect()
}

impl OrMap {
    /// Live entries of a key: added and not removed, by tag order.
    pub fn entries(&self, key: &Value) -> Vec<(Dot, ContentId)> {
        let removed = self.removals.get(key);
        self.adds
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(d, _)| !removed.is_some_and(|r| r.contains_key(d)))
            .map(|(d, c)| (*d, *c))
            .collect()
    }

    /// The commits of a key's live values, by tag order. Empty if the key has none.
    pub fn get(&self, key: &Value) -> Vec<ContentId> {
        self.entries(key).into_iter().map(|(_, c)| c).collect()
    }

    /// Keys with at least one live value, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &Value> + '_ {
        self.adds.keys().filter(|k| !self.entries(k).is_empty())
    }

    /// Number of keys with live values.
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    /// Whether every entry of `op` is recorded here with the same commit (applying it changes
    /// nothing).
    pub fn includes(&self, op: &OrMapOp) -> bool {
        let has = |t: &Tagged, e: &OrEntry| t.get(&e.key).and_then(|d| d.get(&e.dot)) == Some(&e.commit);
        op.adds.iter().all(|e| has(&self.adds, e)) && op.removals.iter().all(|e| has(&self.removals, e))
    }

    /// Whether an add of `key` under `dot` is recorded (live or removed).
    pub fn has_add(&self, key: &Value, dot: &Dot) -> bool {
        self.adds.get(key).is_some_and(|d| d.contains_key(dot))
    }

    /// Every recorded add, live or removed, as (key, tag, commit), by key and tag: the `adds` of
    /// [`Crdt::state_op`] without copying them.
    pub fn add_tags(&self) -> impl Iterator<Item = (&Value, &Dot, &ContentId)> + '_ {
        self.adds.iter().flat_map(|(k, dots)| dots.iter().map(move |(d, c)| (k, d, c)))
    }

    /// Every recorded removal as (key, tag of the removed add, removal commit), by key and tag.
    pub fn removal_tags(&self) -> impl Iterator<Item = (&Value, &Dot, &ContentId)> + '_ {
        self.removals.iter().flat_map(|(k, dots)| dots.iter().map(move |(d, c)| (k, d, c)))
    }

    /// The dots of every recorded add, live or removed.
    pub fn add_dots(&self) -> &DotSet {
        &self.add_dots
    }

    /// The dots of the adds whose removal is recorded.
    pub fn removed_dots(&self) -> &DotSet {
        &self.removed_dots
    }

    /// A digest of every removal with its commit (an order-independent sum of 64-bit hashes):
    /// replicas with the same removed dots and the same digest hold the same removals.
    pub fn removal_digest(&self) -> u64 {
        self.removal_digest
    }

    /// Adds (or, with `removals`, removals) from key `from` on (inclusive) in key order, as (key,
    /// tag, commit): where a catch-up stream resumes.
    pub fn tags_from<'a>(
        &'a self,
        removals: bool,
        from: Option<&Value>,
    ) -> impl Iterator<Item = (&'a Value, &'a Dot, &'a ContentId)> + 'a {
        let t = if removals { &self.removals } else { &self.adds };
        let range = match from {
            Some(k) => t.range::<Value, _>((std::ops::Bound::Included(k), std::ops::Bound::Unbounded)),
            None => t.range::<Value, _>(..),
        };
        range.flat_map(|(k, dots)| dots.iter().map(move |(d, c)| (k, d, c)))
    }

    /// Number of tags recorded (adds and removals), live or not: the size of the state.
    pub fn tag_count(&self) -> usize {
        self.adds.values().chain(self.removals.values()).map(DotMap::len).sum()
    }

    /// Whether no key has a live value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys with several live values (concurrent assocs), with their commits.
    pub fn conflicts(&self) -> BTreeMap<Value, Vec<ContentId>> {
        self.adds
            .keys()
            .filter_map(|k| {
                let live = self.get(k);
                (live.len() > 1).then(|| (k.clone(), live))
            })
            .collect()
    }

    /// Keys that the given (already applied) op added to and that now have several live values
    /// (replikativ's `new-conflicts`).
    pub fn new_conflicts(&self, op: &OrMapOp) -> BTreeMap<Value, BTreeSet<ContentId>> {
        op.adds
            .iter()
            .map(|e| &e.key)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|k| {
                let live: BTreeSet<ContentId> = self.get(k).into_iter().collect();
                (live.len() > 1).then(|| (k.clone(), live))
            })
            .collect()
    }

    /// The commits to replay, in order, to realize an (already applied) op on top of the state
    /// before it (replikativ's OR-Map `commit-history`):
    ///
    /// 1. each add of the op that is live (the op does not also remove it, and no removal of it
    ///    arrived earlier);
    /// 2. for each removal of the op whose add is not in the op: the removal commit (its revert
    ///    transactions, once even when one dissoc removed several values), then every value still
    ///    live under that key that step 1 or an earlier removal did not already replay, so the key
    ///    ends up showing a live value again.
    pub fn realization_order(&self, op: &OrMapOp) -> Vec<ContentId> {
        let op_adds = tagged(&op.adds);
        let op_removals = tagged(&op.removals);
        let mut out = Vec::new();
        let mut replayed = BTreeSet::new();
        for (key, dots) in &op_adds {
            for (dot, commit) in dots {
                // An add removed in the same op, or already removed in the state (its removal
                // arrived first), is never live: nothing to replay.
                let removed = op_removals.get(key).is_some_and(|r| r.contains_key(dot))
                    || self.removals.get(key).is_some_and(|r| r.contains_key(dot));
                if !removed && replayed.insert(*commit) {
                    out.push(*commit);
                }
            }
        }
        for (key, dots) in &op_removals {
            for (dot, removal) in dots {
                if op_adds.get(key).is_some_and(|a| a.contains_key(dot)) {
                    continue; // added and removed in one op: never applied, nothing to revert
                }
                // One dissoc of several values names one removal commit: revert it once.
                if !replayed.insert(*removal) {
                    continue;
                }
                out.push(*removal);
                for live in self.get(key) {
                    if replayed.insert(live) {
                        out.push(live);
                    }
                }
            }
        }
        out
    }

    fn next_dot(&self, actor: ActorId) -> Result<Dot, OpError> {
        let counter = self.clock.get(&actor).copied().unwrap_or(0) + 1;
        if counter > crate::causal::MAX_DOT_COUNTER {
            return Err(OpError::ClockExhausted("dot counter".into()));
        }
        Ok(Dot::new(actor, counter))
    }

    /// Adds a value (as transactions in a new commit) under `key` with a fresh tag of `actor`.
    /// Earlier values of the key stay live until removed.
    pub fn assoc(
        &mut self,
        key: Value,
        txs: Vec<Transaction>,
        actor: ActorId,
        author: &str,
        ts: u64,
    ) -> Result<Staged<OrMapOp>, OpError> {
        self.add(key, txs, actor, author, ts, false)
    }

    /// Replaces the values of `key`: one op that removes every live value observed here and adds
    /// `txs` as the key's new value (`dissoc` and `assoc` in one op, so no replica ever sees the
    /// key empty between them). Like a dissoc it removes only what it has seen: a concurrent
    /// assoc elsewhere survives beside the new value. The removal commit has no transactions; a
    /// key without values just gets the new one.
    pub fn put(
        &mut self,
        key: Value,
        txs: Vec<Transaction>,
        actor: ActorId,
        author: &str,
        ts: u64,
    ) -> Result<Staged<OrMapOp>, OpError> {
        self.add(key, txs, actor, author, ts, true)
    }

    /// `assoc`, and with `replace` also the removal of the key's observed values (`put`).
    fn add(
        &mut self,
        key: Value,
        txs: Vec<Transaction>,
        actor: ActorId,
        author: &str,
        ts: u64,
        replace: bool,
    ) -> Result<Staged<OrMapOp>, OpError> {
        if txs.is_empty() {
            return Err(OpError::NoTransactions);
        }
        check_txs(&txs)?;
        if !key.within_depth_limit() {
            return Err(OpError::TooDeep);
        }
        let dot = self.next_dot(actor)?;
        let observed: Vec<Dot> =
            if replace { self.entries(&key).into_iter().map(|(d, _)| d).collect() } else { Vec::new() };
        let (mut values, mut commits) = (BTreeMap::new(), BTreeMap::new());
        let removals = if observed.is_empty() {
            Vec::new()
        } else {
            let removal = make_commit(CrdtKind::Ormap, vec![], &[], author, ts, &mut values, &mut commits);
            observed.iter().map(|&d| OrEntry { key: key.clone(), dot: d, commit: removal }).collect()
        };
        let commit = make_commit(CrdtKind::Ormap, vec![], &txs, author, ts, &mut values, &mut commits);
        let op = OrMapOp { adds: vec![OrEntry { key, dot, commit }], removals };
        self.apply(&op).expect("a fresh dot and observed tags are valid");
        Ok(Staged { op, values, commits })
    }

    /// Removes every live value of `key` observed here, recording `revert` as the removal commit.
    /// Refuses with [`OpError::NoSuchKey`] when the key has no live value.
    pub fn dissoc(
        &mut self,
        key: &Value,
        revert: Vec<Transaction>,
        author: &str,
        ts: u64,
    ) -> Result<Staged<OrMapOp>, OpError> {
        let dots: Vec<Dot> = self.entries(key).into_iter().map(|(d, _)| d).collect();
        if dots.is_empty() {
            return Err(OpError::NoSuchKey);
        }
        check_txs(&revert)?;
        Ok(self.remove(key, &dots, &revert, author, ts))
    }

    /// Removes one chosen live value of `key` (by its tag), keeping the others.
    pub fn dissoc_entry(
        &mut self,
        key: &Value,
        dot: Dot,
        revert: Vec<Transaction>,
        author: &str,
        ts: u64,
    ) -> Result<Staged<OrMapOp>, OpError> {
        if !self.entries(key).iter().any(|(d, _)| *d == dot) {
            return Err(OpError::NoSuchEntry);
        }
        check_txs(&revert)?;
        Ok(self.remove(key, &[dot], &revert, author, ts))
    }

    fn remove(
        &mut self,
        key: &Value,
        dots: &[Dot],
        revert: &[Transaction],
        author: &str,
        ts: u64,
    ) -> Staged<OrMapOp> {
        let (mut values, mut commits) = (BTreeMap::new(), BTreeMap::new());
        let commit = make_commit(CrdtKind::Ormap, vec![], revert, author, ts, &mut values, &mut commits);
        let removals = dots.iter().map(|&dot| OrEntry { key: key.clone(), dot, commit }).collect();
        let op = OrMapOp { adds: vec![], removals };
        self.apply(&op).expect("removing observed tags is valid");
        Staged { op, values, commits }
    }

    /// An add's dot names one key and one commit forever: an add reusing a recorded dot (or one
    /// of the same op) for another key or commit is refused. (So the dots a replica holds tell
    /// exactly which adds it holds.)
    fn check(existing: &Tagged, existing_dots: &DotSet, entries: &[OrEntry]) -> Result<(), ValidationError> {
        if !entries.iter().all(|e| e.key.within_depth_limit()) {
            return Err(ValidationError::TooDeep);
        }
        let mut seen: BTreeMap<Dot, (&Value, ContentId)> = BTreeMap::new();
        for e in entries {
            if e.dot.counter > crate::causal::MAX_DOT_COUNTER {
                return Err(ValidationError::BadOp { reason: "a dot counter beyond 2^53 - 1" });
            }
            let known = existing.get(&e.key).and_then(|d| d.get(&e.dot)).copied();
            let elsewhere = known.is_none() && existing_dots.contains(&e.dot);
            let earlier = seen.insert(e.dot, (&e.key, e.commit));
            if elsewhere
                || known.is_some_and(|c| c != e.commit)
                || earlier.is_some_and(|(k, c)| k != &e.key || c != e.commit)
            {
                return Err(ValidationError::DotReused { dot: format!("{:?}", e.dot) });
            }
        }
        Ok(())
    }

    fn join_into(
        target: &mut Tagged,
        clock: &mut BTreeMap<ActorId, u64>,
        seen: &mut DotSet,
        mut digest: Option<&mut u64>,
        entries: &[OrEntry],
    ) -> bool {
        let mut changed = false;
        for e in entries {
            let c = clock.entry(e.dot.actor).or_default();
            *c = (*c).max(e.dot.counter);
            let dots = match target.get_mut(&e.key) {
                Some(dots) => dots,
                None => target.entry(e.key.clone()).or_default(),
            };
            match dots.get_mut(&e.dot) {
                None => {
                    dots.insert(e.dot, e.commit);
                    seen.insert(e.dot);
                    if let Some(d) = digest.as_deref_mut() {
                        *d = d.wrapping_add(removal_hash(&e.key, &e.dot, &e.commit));
                    }
                    changed = true;
                }
                // Concurrent removals of one entry (or, for adds, only ops that failed
                // validation): keep the larger commit id, so the join is deterministic.
                Some(c) if *c < e.commit => {
                    if let Some(d) = digest.as_deref_mut() {
                        *d = d
                            .wrapping_sub(removal_hash(&e.key, &e.dot, c))
                            .wrapping_add(removal_hash(&e.key, &e.dot, &e.commit));
                    }
                    *c = e.commit;
                    changed = true;
                }
                Some(_) => {}
            }
        }
        changed
    }
}

impl Crdt for OrMap {
    type Op = OrMapOp;
    const KIND: CrdtKind = CrdtKind::Ormap;

    fn validate_op(&self, op: &OrMapOp) -> Result<(), ValidationError> {
        // Removals may differ in their commit: two replicas may remove one entry concurrently,
        // each with its own removal commit; the join keeps the larger id (see `join_into`).
        if !op.removals.iter().all(|e| e.key.within_depth_limit()) {
            return Err(ValidationError::TooDeep);
        }
        // Removal dots enter the version vector too.
        if op.removals.iter().any(|e| e.dot.counter > crate::causal::MAX_DOT_COUNTER) {
            return Err(ValidationError::BadOp { reason: "a dot counter beyond 2^53 - 1" });
        }
        Self::check(&self.adds, &self.add_dots, &op.adds)
    }

    fn apply(&mut self, op: &OrMapOp) -> Result<bool, ValidationError> {
        self.validate_op(op)?;
        let added = Self::join_into(&mut self.adds, &mut self.clock, &mut self.add_dots, None, &op.adds);
        let removed = Self::join_into(
            &mut self.removals,
            &mut self.clock,
            &mut self.removed_dots,
            Some(&mut self.removal_digest),
            &op.removals,
        );
        Ok(added || removed)
    }

    fn state_op(&self) -> OrMapOp {
        OrMapOp { adds: flatten(&self.adds), removals: flatten(&self.removals) }
    }

    fn commit_ids(op: &OrMapOp) -> Vec<ContentId> {
        let ids: BTreeSet<ContentId> = op.adds.iter().chain(&op.removals).map(|e| e.commit).collect();
        ids.into_iter().collect()
    }
}

/// Serializes like `state_op()` (an [`OrMapOp`] of every entry), straight from the maps: a snapshot
/// of a large map copies no entry.
impl Serialize for OrMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// Encodes like [`OrEntry`].
        #[derive(Serialize)]
        struct EntryRef<'a> {
            key: &'a Value,
            dot: &'a Dot,
            commit: &'a ContentId,
        }
        struct Entries<'a>(&'a Tagged);
        impl Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let len = self.0.values().map(DotMap::len).sum();
                let mut seq = serializer.serialize_seq(Some(len))?;
                for (key, dots) in self.0 {
                    for (dot, commit) in dots {
                        serde::ser::SerializeSeq::serialize_element(
                            &mut seq,
                            &EntryRef { key, dot, commit },
                        )?;
                    }
                }
                serde::ser::SerializeSeq::end(seq)
            }
        }
        /// Encodes like [`OrMapOp`].
        #[derive(Serialize)]
        struct OpRef<'a> {
            adds: Entries<'a>,
            removals: Entries<'a>,
        }
        OpRef { adds: Entries(&self.adds), removals: Entries(&self.removals) }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OrMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let op = OrMapOp::deserialize(deserializer)?;
        let mut map = OrMap::default();
        map.apply(&op).map_err(serde::de::Error::custom)?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> ContentId {
        let mut b = [0u8; 32];
        b[31] = n;
        ContentId::from_bytes(b)
    }

    fn dot(n: u64) -> Dot {
        Dot::new(ActorId::from_u128(7), n)
    }

    fn entry(key: &str, d: u64, c: u8) -> OrEntry {
        OrEntry { key: key.into(), dot: dot(d), commit: cid(c) }
    }

    #[test]
    fn put_replaces_the_observed_values_in_one_op_and_a_concurrent_assoc_survives() {
        let (alice, bob) = (ActorId::from_u128(1), ActorId::from_u128(2));
        let mut a = OrMap::default();
        let first = a.assoc("k".into(), vec![Transaction::new("set", 1)], alice, "alice", 1).unwrap();
        let second = a.assoc("k".into(), vec![Transaction::new("set", 2)], alice, "alice", 2).unwrap();
        assert_eq!(a.get(&"k".into()).len(), 2, "two sequential assocs keep both values");
        // Bob has seen the first value only, and adds his own concurrently.
        let mut b = OrMap::default();
        b.apply(&first.op).unwrap();
        let concurrent = b.assoc("k".into(), vec![Transaction::new("set", 9)], bob, "bob", 3).unwrap();
        // Alice replaces what she has seen: one op with both removals and the new value.
        let put = a.put("k".into(), vec![Transaction::new("set", 3)], alice, "alice", 4).unwrap();
        assert_eq!(put.op.removals.len(), 2);
        assert_eq!(put.op.adds.len(), 1);
        let new = put.op.adds[0].commit;
        assert_eq!(a.get(&"k".into()), vec![new]);
        // Both replicas converge: the new value and Bob's concurrent one.
        a.apply(&concurrent.op).unwrap();
        b.apply(&second.op).unwrap();
        b.apply(&put.op).unwrap();
        let mut expected = vec![new, concurrent.op.adds[0].commit];
        expected.sort();
        let (mut got_a, mut got_b) = (a.get(&"k".into()), b.get(&"k".into()));
        got_a.sort();
        got_b.sort();
        assert_eq!(got_a, expected);
        assert_eq!(got_b, expected);
        // A put of a key without values is an assoc; a put without transactions is refused.
        let fresh = a.put("other".into(), vec![Transaction::new("set", 1)], alice, "alice", 5).unwrap();
        assert!(fresh.op.removals.is_empty());
        assert!(matches!(a.put("k".into(), vec![], alice, "alice", 6), Err(OpError::NoTransactions)));
    }

    #[test]
    fn a_map_encodes_exactly_like_its_state_op() {
        let mut m = OrMap::default();
        let op = OrMapOp {
            adds: vec![entry("a", 1, 1), entry("b", 2, 2), entry("b", 3, 3), entry("c", 4, 4)],
            removals: vec![entry("b", 2, 12)],
        };
        m.apply(&op).unwrap();
        let direct = rmp_serde::to_vec_named(&m).unwrap();
        assert_eq!(direct, rmp_serde::to_vec_named(&m.state_op()).unwrap());
        assert_eq!(rmp_serde::to_vec(&m).unwrap(), rmp_serde::to_vec(&m.state_op()).unwrap());
        assert_eq!(serde_json::to_string(&m).unwrap(), serde_json::to_string(&m.state_op()).unwrap());
        assert_eq!(rmp_serde::from_slice::<OrMap>(&direct).unwrap(), m);
        let empty = OrMap::default();
        assert_eq!(
            rmp_serde::to_vec_named(&empty).unwrap(),
            rmp_serde::to_vec_named(&empty.state_op()).unwrap()
        );
    }

    // The original's test map, with commits standing in as ids:
    // 1 = [:a "bar"], 2 = [:a "baz"], 3 = [:a "2"], 11 = [:r "bar"].
    fn test_map() -> (OrMap, OrMapOp) {
        let op = OrMapOp {
            adds: vec![entry("foo", 1, 1), entry("foo", 2, 2)],
            removals: vec![entry("foo", 1, 11)],
        };
        let mut m = OrMap::default();
        m.apply(&op).unwrap();
        (m, op)
    }

    #[test]
    fn ormap_commit_history() {
        let (m, op) = test_map();
        assert_eq!(m.realization_order(&op), vec![cid(2)]);
        let removal = OrMapOp { adds: vec![], removals: vec![entry("foo", 1, 11)] };
        assert_eq!(m.realization_order(&removal), vec![cid(11), cid(2)]);
        let mut m3 = m.clone();
        let op3 = OrMapOp { adds: vec![entry("foo2", 3, 3)], removals: vec![entry("foo", 1, 11)] };
        m3.apply(&op3).unwrap();
        assert_eq!(m3.realization_order(&op3), vec![cid(3), cid(11), cid(2)]);
    }

    #[test]
    fn realization_replays_a_dissoc_once_and_skips_adds_removed_before_they_arrived() {
        let (a, b) = (ActorId::from_u128(1), ActorId::from_u128(2));
        let mut m = OrMap::default();
        let k = Value::from("k");
        m.assoc(k.clone(), vec![Transaction::new("set", 1)], a, "a", 1).unwrap();
        m.assoc(k.clone(), vec![Transaction::new("set", 2)], b, "b", 1).unwrap();
        let rm = m.dissoc(&k, vec![Transaction::new("unset", Value::Nil)], "a", 2).unwrap();
        assert_eq!(rm.op.removals.len(), 2);
        assert_eq!(m.realization_order(&rm.op), vec![rm.op.removals[0].commit]);
        // A removal that arrives before its add: the add is never replayed.
        let (_, op) = test_map();
        let mut late = OrMap::default();
        late.apply(&OrMapOp { adds: vec![], removals: op.removals.clone() }).unwrap();
        let adds = OrMapOp { adds: op.adds.clone(), removals: vec![] };
        late.apply(&adds).unwrap();
        assert_eq!(late.realization_order(&adds), vec![cid(2)]);
    }

    #[test]
    fn conflict_summarization() {
        let state = OrMapOp {
            adds: vec![entry("foo", 1, 1), entry("foo", 2, 2), entry("foos", 3, 1), entry("foos", 4, 2)],
            removals: vec![entry("foo", 3, 11)],
        };
        let mut m = OrMap::default();
        m.apply(&state).unwrap();
        let op = OrMapOp { adds: vec![entry("foo", 2, 2)], removals: vec![entry("foo", 3, 11)] };
        assert_eq!(
            m.new_conflicts(&op),
            BTreeMap::from([(Value::from("foo"), BTreeSet::from([cid(1), cid(2)]))])
        );
        assert_eq!(m.conflicts().len(), 2);
    }

    #[test]
    fn dissoc_removes_every_observed_value_and_entry_removes_one() {
        let a = ActorId::from_u128(1);
        let b = ActorId::from_u128(2);
        let mut m = OrMap::default();
        let k = Value::from("k");
        m.assoc(k.clone(), vec![Transaction::new("set", 1)], a, "a", 1).unwrap();
        let second = m.assoc(k.clone(), vec![Transaction::new("set", 2)], b, "b", 1).unwrap();
        assert_eq!(m.get(&k).len(), 2);
        let d = second.op.adds[0].dot;
        m.dissoc_entry(&k, d, vec![], "a", 2).unwrap();
        assert_eq!(m.entries(&k).len(), 1);
        assert_eq!(m.dissoc_entry(&k, d, vec![], "a", 2), Err(OpError::NoSuchEntry));
        m.assoc(k.clone(), vec![Transaction::new("set", 3)], b, "b", 3).unwrap();
        let rm = m.dissoc(&k, vec![Transaction::new("unset", Value::Nil)], "a", 4).unwrap();
        assert_eq!(rm.op.removals.len(), 2);
        assert!(m.get(&k).is_empty());
        assert_eq!(m.dissoc(&k, vec![], "a", 5), Err(OpError::NoSuchKey));
        assert!(m.is_empty());
    }

    #[test]
    fn concurrent_assoc_survives_dissoc() {
        let (a, b) = (ActorId::from_u128(1), ActorId::from_u128(2));
        let k = Value::from("k");
        let mut x = OrMap::default();
        let first = x.assoc(k.clone(), vec![Transaction::new("set", 1)], a, "a", 1).unwrap();
        let mut y = x.clone();
        let rm = x.dissoc(&k, vec![], "a", 2).unwrap();
        let add = y.assoc(k.clone(), vec![Transaction::new("set", 2)], b, "b", 2).unwrap();
        x.apply(&add.op).unwrap();
        y.apply(&rm.op).unwrap();
        assert_eq!(x, y);
        assert_eq!(x.get(&k), vec![add.op.adds[0].commit]);
        assert_ne!(first.op.adds[0].commit, add.op.adds[0].commit);
    }

    #[test]
    fn removal_before_add_still_hides_it() {
        let (m, op) = test_map();
        let mut late = OrMap::default();
        late.apply(&OrMapOp { adds: vec![], removals: op.removals.clone() }).unwrap();
        late.apply(&OrMapOp { adds: op.adds.clone(), removals: vec![] }).unwrap();
        assert_eq!(late, m);
        assert_eq!(late.get(&"foo".into()), vec![cid(2)]);
    }

    #[test]
    fn reused_dot_is_refused() {
        let (mut m, _) = test_map();
        let before = m.clone();
        let forged = OrMapOp { adds: vec![entry("foo", 2, 9)], removals: vec![] };
        assert!(matches!(m.apply(&forged), Err(ValidationError::DotReused { .. })));
        let twice = OrMapOp { adds: vec![entry("new", 5, 1), entry("new", 5, 2)], removals: vec![] };
        assert!(matches!(m.apply(&twice), Err(ValidationError::DotReused { .. })));
        assert_eq!(m, before);
    }

    #[test]
    fn concurrent_removals_of_one_entry_converge() {
        let (m, _) = test_map();
        let mut x = m.clone();
        let mut y = m.clone();
        let rx = x.dissoc(&"foo".into(), vec![Transaction::new("undo", 1)], "x", 5).unwrap();
        let ry = y.dissoc(&"foo".into(), vec![Transaction::new("undo", 2)], "y", 5).unwrap();
        x.apply(&ry.op).unwrap();
        y.apply(&rx.op).unwrap();
        assert_eq!(x, y);
        let winner = rx.op.removals[0].commit.max(ry.op.removals[0].commit);
        assert_eq!(x.state_op().removals.iter().find(|e| e.dot == dot(2)).unwrap().commit, winner);
    }

    #[test]
    fn fresh_dots_follow_the_highest_seen_counter() {
        let (mut m, _) = test_map();
        let s = m.assoc("z".into(), vec![Transaction::new("set", 0)], ActorId::from_u128(7), "a", 0).unwrap();
        assert_eq!(s.op.adds[0].dot.counter, 3);
    }

    /// A forged dot at the end of the counter's range is refused, so no writer's next dot can
    /// overflow; at the bound itself, the next local write fails instead of wrapping.
    #[test]
    fn dot_counters_beyond_the_bound_are_refused() {
        let actor = ActorId::from_u128(9);
        let commit = ContentId::hash_bytes(b"c");
        let entry = |counter| OrEntry { key: Value::from("k"), dot: Dot::new(actor, counter), commit };
        let mut m = OrMap::default();
        for op in [
            OrMapOp { adds: vec![entry(u64::MAX)], removals: vec![] },
            OrMapOp { adds: vec![], removals: vec![entry(crate::MAX_DOT_COUNTER + 1)] },
        ] {
            assert!(matches!(m.apply(&op), Err(ValidationError::BadOp { .. })), "{op:?}");
        }
        assert_eq!(m, OrMap::default());
        m.apply(&OrMapOp { adds: vec![entry(crate::MAX_DOT_COUNTER)], removals: vec![] }).unwrap();
        let next = m.assoc("z".into(), vec![Transaction::new("set", 0)], actor, "a", 0);
        assert!(matches!(next, Err(OpError::ClockExhausted(_))), "{next:?}");
    }
}
