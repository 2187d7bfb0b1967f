//! Replicated states of any datatype: apply, validate, compare with a summary, and the peer record.

use std::collections::BTreeSet;

use replikativ_crdt::{
    Address, Cdvcs, ContentId, Crdt, CrdtKind, Dot, GSet, LwwRegister, OrMap, ValidationError, Value,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::message::{AnyOp, DotSummary, Removed, Summary};

/// The state of one replicated datatype.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrdtState {
    /// An OR-Map.
    Ormap(OrMap),
    /// A CDVCS.
    Cdvcs(Cdvcs),
    /// An LWW register.
    Lww(LwwRegister),
    /// A G-Set.
    Gset(GSet),
}

impl CrdtState {
    /// An empty state of a kind.
    pub fn empty(kind: CrdtKind) -> CrdtState {
        match kind {
            CrdtKind::Ormap => CrdtState::Ormap(OrMap::default()),
            CrdtKind::Cdvcs => CrdtState::Cdvcs(Cdvcs::default()),
            CrdtKind::Lww => CrdtState::Lww(LwwRegister::default()),
            CrdtKind::Gset => CrdtState::Gset(GSet::default()),
        }
    }

    /// The datatype's kind.
    pub fn kind(&self) -> CrdtKind {
        match self {
            CrdtState::Ormap(_) => CrdtKind::Ormap,
            CrdtState::Cdvcs(_) => CrdtKind::Cdvcs,
            CrdtState::Lww(_) => CrdtKind::Lww,
            CrdtState::Gset(_) => CrdtKind::Gset,
        }
    }

    /// Checks an op of the same kind.
    pub fn validate(&self, op: &AnyOp) -> Result<(), ApplyError> {
        match (self, op) {
            (CrdtState::Ormap(s), AnyOp::Ormap(o)) => s.validate_op(o)?,
            (CrdtState::Cdvcs(s), AnyOp::Cdvcs(o)) => s.validate_op(o)?,
            (CrdtState::Lww(s), AnyOp::Lww(o)) => s.validate_op(o)?,
            (CrdtState::Gset(s), AnyOp::Gset(o)) => s.validate_op(o)?,
            _ => return Err(ApplyError::WrongKind { state: self.kind(), op: op.kind() }),
        }
        Ok(())
    }

    /// Validates and applies an op; returns whether the state changed.
    pub fn apply(&mut self, op: &AnyOp) -> Result<bool, ApplyError> {
        let kind = self.kind();
        Ok(match (self, op) {
            (CrdtState::Ormap(s), AnyOp::Ormap(o)) => s.apply(o)?,
            (CrdtState::Cdvcs(s), AnyOp::Cdvcs(o)) => s.apply(o)?,
            (CrdtState::Lww(s), AnyOp::Lww(o)) => s.apply(o)?,
            (CrdtState::Gset(s), AnyOp::Gset(o)) => s.apply(o)?,
            _ => return Err(ApplyError::WrongKind { state: kind, op: op.kind() }),
        })
    }

    /// The whole state as an op.
    pub fn state_op(&self) -> AnyOp {
        match self {
            CrdtState::Ormap(s) => AnyOp::Ormap(s.state_op()),
            CrdtState::Cdvcs(s) => AnyOp::Cdvcs(s.state_op()),
            CrdtState::Lww(s) => AnyOp::Lww(s.state_op()),
            CrdtState::Gset(s) => AnyOp::Gset(s.state_op()),
        }
    }

    /// The summary this replica sends in anti-entropy: heads for a CDVCS, bucket digests for an
    /// OR-Map or G-Set of more than [`BUCKETED_ABOVE`] entries, else a digest of the state.
    pub fn summary(&self) -> Summary {
        self.summary_bucketed_above(BUCKETED_ABOVE)
    }

    /// [`CrdtState::summary`] with another size from which OR-Maps and G-Sets are bucketed.
    pub fn summary_bucketed_above(&self, bucketed_above: u64) -> Summary {
        match self {
            CrdtState::Cdvcs(c) => {
                let heads = c.graph().complete_frontier();
                let samples = c.graph().samples(&heads, super::message::MAX_SAMPLES);
                Summary::Graph { heads, samples }
            }
            CrdtState::Ormap(m) => Summary::Dots(dot_summary(m)),
            other if other.size() > bucketed_above => match other.bucket_digests() {
                Some(digests) => Summary::Buckets(ByteBuf::from(digests)),
                None => Summary::Digest(other.digest()),
            },
            other => Summary::Digest(other.digest()),
        }
    }

    /// The bucket digests of an OR-Map or G-Set (see [`Summary::Buckets`]).
    fn bucket_digests(&self) -> Option<Vec<u8>> {
        let mut hashers: Vec<blake3::Hasher> = match self {
            CrdtState::Ormap(_) | CrdtState::Gset(_) => vec![blake3::Hasher::new(); BUCKETS],
            _ => return None,
        };
        self.for_each_entry(|bucket, bytes| {
            hashers[bucket].update(bytes);
        });
        let mut out = Vec::with_capacity(BUCKETS * BUCKET_DIGEST);
        for h in hashers {
            out.extend_from_slice(&h.finalize().as_bytes()[..BUCKET_DIGEST]);
        }
        Some(out)
    }

    /// Calls `f` with the bucket and a canonical byte string of every entry of an OR-Map (adds, then
    /// removals) or G-Set, in a fixed order. The bucket is the first byte of the content id of the
    /// entry's key (element), so all entries of a key share one.
    fn for_each_entry(&self, mut f: impl FnMut(usize, &[u8])) {
        let bucket_of = |key: &Value| -> (usize, Vec<u8>) {
            let encoded = key.encode();
            (bucket_of_encoded(&encoded), encoded)
        };
        match self {
            CrdtState::Ormap(m) => {
                let mut buf = Vec::new();
                for (tag, entries) in
                    [(0u8, m.add_tags().collect::<Vec<_>>()), (1u8, m.removal_tags().collect())]
                {
                    let mut current: Option<(&Value, usize, Vec<u8>)> = None;
                    for (key, dot, commit) in entries {
                        if current.as_ref().is_none_or(|(k, _, _)| *k != key) {
                            let (bucket, encoded) = bucket_of(key);
                            current = Some((key, bucket, encoded));
                        }
                        let (_, bucket, encoded) = current.as_ref().expect("set above");
                        buf.clear();
                        buf.push(tag);
                        buf.extend_from_slice(encoded);
                        buf.extend_from_slice(dot.actor.as_bytes());
                        buf.extend_from_slice(&dot.counter.to_be_bytes());
                        buf.extend_from_slice(commit.as_bytes());
                        f(*bucket, &buf);
                    }
                }
            }
            CrdtState::Gset(g) => {
                for element in g.elements() {
                    let (bucket, encoded) = bucket_of(element);
                    f(bucket, &encoded);
                }
            }
            _ => {}
        }
    }

    /// The part of the state in the given buckets, as one op (`None` if it has no entries there).
    fn buckets_op(&self, wanted: &[bool]) -> Option<AnyOp> {
        let in_wanted = |key: &Value| wanted[bucket_of_encoded(&key.encode())];
        let op = match self {
            CrdtState::Ormap(m) => {
                // Entries come by key: each key's bucket is computed once.
                let pick = |tags: &mut dyn Iterator<Item = (&Value, &Dot, &ContentId)>| {
                    let mut out = Vec::new();
                    let mut last: Option<(Value, bool)> = None;
                    for (key, dot, commit) in tags {
                        let wanted = match &last {
                            Some((k, w)) if k == key => *w,
                            _ => {
                                let w = in_wanted(key);
                                last = Some((key.clone(), w));
                                w
                            }
                        };
                        if wanted {
                            out.push(replikativ_crdt::OrEntry {
                                key: key.clone(),
                                dot: *dot,
                                commit: *commit,
                            });
                        }
                    }
                    out
                };
                let adds = pick(&mut m.add_tags());
                let removals = pick(&mut m.removal_tags());
                AnyOp::Ormap(replikativ_crdt::OrMapOp { adds, removals })
            }
            CrdtState::Gset(g) => AnyOp::Gset(replikativ_crdt::GSetOp {
                elements: g.elements().iter().filter(|e| in_wanted(e)).cloned().collect(),
            }),
            _ => return None,
        };
        (!op.is_empty()).then_some(op)
    }

    /// A digest of the whole state: blake3 of its msgpack encoding (deterministic: every
    /// collection in a state is ordered).
    pub fn digest(&self) -> ContentId {
        ContentId::hash_bytes(&rmp_serde::to_vec_named(self).expect("states always encode"))
    }

    /// Whether applying `op` would change nothing (every entry of it is here already). Cheap: no
    /// values are looked at, so an op that passes is one this replica applied before.
    pub fn includes(&self, op: &AnyOp) -> bool {
        match (self, op) {
            (CrdtState::Cdvcs(c), AnyOp::Cdvcs(o)) => o.commits.iter().all(|e| {
                c.graph().parents(&e.id).is_some_and(|mut p| p.by_ref().eq(e.parents.iter().copied()))
            }),
            (CrdtState::Ormap(m), AnyOp::Ormap(o)) => m.includes(o),
            (CrdtState::Gset(g), AnyOp::Gset(o)) => o.elements.iter().all(|e| g.contains(e)),
            (CrdtState::Lww(r), AnyOp::Lww(o)) => r.stamp() == o.stamp.as_ref() && r.get() == &o.value,
            _ => false,
        }
    }

    /// Compares with a peer's summary: what the peer lacks, as one op (computed only if `answer`),
    /// and whether the summary names something this replica lacks. A digest is computed once.
    pub fn compare(&self, summary: &Summary, answer: bool) -> (Option<AnyOp>, bool) {
        match (self, summary) {
            (CrdtState::Cdvcs(c), Summary::Heads(theirs) | Summary::Graph { heads: theirs, .. }) => {
                let lacks = theirs.iter().any(|h| !c.graph().contains(h));
                if !answer {
                    return (None, lacks);
                }
                // Their heads and the samples of their ancestry this replica knows: everything
                // reachable from those they have.
                let samples = match summary {
                    Summary::Graph { samples, .. } => samples.iter().take(super::message::MAX_SAMPLES),
                    _ => [].iter().take(0),
                };
                let exclude: Vec<ContentId> = theirs.iter().chain(samples).copied().collect();
                let ids = c.graph().commits_since(c.heads(), &exclude);
                if ids.is_empty() {
                    return (None, lacks);
                }
                let commits = ids
                    .into_iter()
                    .map(|id| replikativ_crdt::cdvcs::GraphEntry {
                        id,
                        parents: c.graph().parents(&id).expect("present").collect(),
                    })
                    .collect();
                let op = AnyOp::Cdvcs(replikativ_crdt::CdvcsOp {
                    method: replikativ_crdt::cdvcs::CdvcsMethod::Handshake,
                    commits,
                    heads: c.heads().clone(),
                });
                (Some(op), lacks)
            }
            (state, Summary::Digest(d)) => {
                let differs = *d != state.digest();
                (if differs && answer { Some(state.state_op()) } else { None }, differs)
            }
            (state @ (CrdtState::Ormap(_) | CrdtState::Gset(_)), Summary::Buckets(theirs))
                if theirs.len() == BUCKETS * BUCKET_DIGEST =>
            {
                let ours = state.bucket_digests().expect("an OR-Map or G-Set");
                let differing: Vec<bool> = ours
                    .chunks(BUCKET_DIGEST)
                    .zip(theirs.chunks(BUCKET_DIGEST))
                    .map(|(a, b)| a != b)
                    .collect();
                let differs = differing.iter().any(|d| *d);
                (if differs && answer { state.buckets_op(&differing) } else { None }, differs)
            }
            // A peer answers with a stream of batches (`catch_up.rs`) of the same entries.
            (CrdtState::Ormap(m), Summary::Dots(theirs)) => {
                let known = Known::new(m, theirs.clone());
                let lacks = known.lacks(m);
                if !answer {
                    return (None, lacks);
                }
                let mut op = replikativ_crdt::OrMapOp::default();
                for (removal, list) in [(false, &mut op.adds), (true, &mut op.removals)] {
                    let mut cache = None;
                    for (key, dot, commit) in m.tags_from(removal, None) {
                        if !known.has(removal, key, dot, &mut cache) {
                            list.push(replikativ_crdt::OrEntry {
                                key: key.clone(),
                                dot: *dot,
                                commit: *commit,
                            });
                        }
                    }
                }
                let op = AnyOp::Ormap(op);
                (if op.is_empty() { None } else { Some(op) }, lacks)
            }
            // Empty, or a summary of another kind: send everything, lack nothing.
            (state, _) => (answer.then(|| state.state_op()), false),
        }
    }

    /// Number of entries (OR-Map tags, CDVCS commits, G-Set elements; 1 for a register): what a
    /// snapshot costs.
    pub fn size(&self) -> u64 {
        match self {
            CrdtState::Ormap(m) => m.tag_count() as u64,
            CrdtState::Cdvcs(c) => c.graph().len() as u64,
            CrdtState::Lww(_) => 1,
            CrdtState::Gset(g) => g.elements().len() as u64,
        }
    }

    /// A CDVCS that still misses parents of commits it has (it needs catch-up).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, CrdtState::Cdvcs(c) if !c.graph().is_complete())
    }
}

/// The commit records an op refers to.
pub fn commit_ids(op: &AnyOp) -> Vec<ContentId> {
    match op {
        AnyOp::Ormap(o) => OrMap::commit_ids(o),
        AnyOp::Cdvcs(o) => Cdvcs::commit_ids(o),
        AnyOp::Lww(o) => LwwRegister::commit_ids(o),
        AnyOp::Gset(o) => GSet::commit_ids(o),
    }
}

/// Why an op could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The op is for another kind of datatype than the address holds.
    #[error("a {op:?} op for an address that holds a {state:?}")]
    WrongKind {
        /// The state's kind.
        state: CrdtKind,
        /// The op's kind.
        op: CrdtKind,
    },
    /// The op does not validate.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The peer's persistent configuration.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer id.
    pub id: String,
    /// Whether the peer extends its subscriptions with its peers' (a server).
    pub extend: bool,
    /// The peer's subscriptions.
    pub subscriptions: BTreeSet<Address>,
}

/// Runs of removed dots an OR-Map summary lists at most; beyond, it sends removal bucket digests.
pub const MAX_SUMMARY_RUNS: usize = 256;

/// An OR-Map's summary: its add dots, and its removed dots or, when they are too scattered,
/// bucket digests of its removals.
pub(crate) fn dot_summary(m: &OrMap) -> DotSummary {
    let removed = if m.removed_dots().range_count() <= MAX_SUMMARY_RUNS {
        Removed::Dots { dots: m.removed_dots().clone(), digest: m.removal_digest() }
    } else {
        Removed::Buckets(ByteBuf::from(removal_bucket_digests(m)))
    };
    DotSummary { adds: m.add_dots().clone(), removed }
}

/// What a peer said it holds of an OR-Map (its [`DotSummary`], with the differing removal buckets
/// worked out): which entries it need not be sent.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    pub(crate) theirs: DotSummary,
    /// With bucketed removals: which buckets differ from this replica's. With removed dots equal
    /// to this replica's but another digest: all of them.
    pub(crate) differing: Option<Vec<bool>>,
}

impl Known {
    pub(crate) fn new(m: &OrMap, theirs: DotSummary) -> Known {
        let differing = match &theirs.removed {
            // Concurrent removals of one entry with different commits: every removal is sent
            // (the join keeps the larger commit on both sides).
            Removed::Dots { dots, digest } if dots == m.removed_dots() && *digest != m.removal_digest() => {
                Some(vec![true; BUCKETS])
            }
            Removed::Dots { .. } => None,
            Removed::Buckets(b) if b.len() == BUCKETS * BUCKET_DIGEST => Some(
                removal_bucket_digests(m)
                    .chunks(BUCKET_DIGEST)
                    .zip(b.chunks(BUCKET_DIGEST))
                    .map(|(a, b)| a != b)
                    .collect(),
            ),
            // Malformed digests: every removal is sent.
            Removed::Buckets(_) => Some(vec![true; BUCKETS]),
        };
        Known { theirs, differing }
    }

    /// Whether the peer holds the add (or removal) of `dot` under `key`, as far as its summary
    /// tells. `cache` keeps the last key's bucket (entries come by key).
    pub(crate) fn has<'a>(
        &self,
        removal: bool,
        key: &'a Value,
        dot: &Dot,
        cache: &mut Option<(&'a Value, bool)>,
    ) -> bool {
        if !removal {
            return self.theirs.adds.contains(dot);
        }
        match (&self.theirs.removed, &self.differing) {
            (Removed::Dots { dots, .. }, None) => dots.contains(dot),
            (_, Some(differing)) => {
                let wanted = match cache {
                    Some((k, w)) if *k == key => *w,
                    _ => {
                        let w = differing[bucket_of_encoded(&key.encode())];
                        *cache = Some((key, w));
                        w
                    }
                };
                !wanted
            }
            (Removed::Buckets(_), None) => false,
        }
    }

    /// Whether the peer's summary names entries `m` lacks (the differing removal buckets were
    /// worked out once, in [`Known::new`]).
    pub(crate) fn lacks(&self, m: &OrMap) -> bool {
        !m.add_dots().covers(&self.theirs.adds)
            || match (&self.theirs.removed, &self.differing) {
                (Removed::Dots { dots, digest }, _) => {
                    !m.removed_dots().covers(dots)
                        || (dots == m.removed_dots() && *digest != m.removal_digest())
                }
                (Removed::Buckets(_), differing) => differing.as_ref().is_none_or(|d| d.iter().any(|x| *x)),
            }
    }

    /// Whether the peer holds every entry of `m` but those in `sent` (on their way to it).
    pub(crate) fn covers(
        &self,
        m: &OrMap,
        sent_adds: &replikativ_crdt::DotSet,
        sent_removed: &replikativ_crdt::DotSet,
    ) -> (bool, bool) {
        let mut adds = self.theirs.adds.clone();
        adds.extend(sent_adds);
        let adds_covered = adds.covers(m.add_dots());
        let removals_covered = match (&self.theirs.removed, &self.differing) {
            (Removed::Dots { dots, .. }, None) => {
                let mut known = dots.clone();
                known.extend(sent_removed);
                known.covers(m.removed_dots())
            }
            (_, Some(differing)) => !differing.iter().any(|d| *d),
            (Removed::Buckets(_), None) => false,
        };
        (adds_covered, removals_covered)
    }

    /// Adds what a newer summary of the same peer says it holds.
    pub(crate) fn merge(&mut self, m: &OrMap, newer: DotSummary) {
        self.theirs.adds.extend(&newer.adds);
        match (&mut self.theirs.removed, newer.removed) {
            (Removed::Dots { dots: a, .. }, Removed::Dots { dots: b, .. }) if self.differing.is_none() => {
                a.extend(&b)
            }
            (_, other) => {
                let adds = std::mem::take(&mut self.theirs.adds);
                *self = Known::new(m, DotSummary { adds, removed: other });
            }
        }
    }
}

/// Digests of an OR-Map's removals in [`BUCKETS`] buckets by key.
pub(crate) fn removal_bucket_digests(m: &OrMap) -> Vec<u8> {
    let mut hashers = vec![blake3::Hasher::new(); BUCKETS];
    let mut current: Option<(&Value, usize, Vec<u8>)> = None;
    for (key, dot, commit) in m.removal_tags() {
        if current.as_ref().is_none_or(|(k, _, _)| *k != key) {
            let encoded = key.encode();
            current = Some((key, bucket_of_encoded(&encoded), encoded));
        }
        let (_, bucket, encoded) = current.as_ref().expect("set above");
        let h = &mut hashers[*bucket];
        h.update(encoded);
        h.update(dot.actor.as_bytes());
        h.update(&dot.counter.to_be_bytes());
        h.update(commit.as_bytes());
    }
    let mut out = Vec::with_capacity(BUCKETS * BUCKET_DIGEST);
    for h in hashers {
        out.extend_from_slice(&h.finalize().as_bytes()[..BUCKET_DIGEST]);
    }
    out
}

/// OR-Maps and G-Sets of more entries than this summarize themselves by bucket digests.
pub const BUCKETED_ABOVE: u64 = 1024;
/// Buckets of a bucketed summary.
pub const BUCKETS: usize = 256;
/// Bytes of one bucket's digest (a prefix of the blake3 of its entries).
pub const BUCKET_DIGEST: usize = 16;

/// The bucket of a key (an OR-Map key, a G-Set element) given its canonical encoding: the first
/// byte of its content id.
pub(crate) fn bucket_of_encoded(encoded: &[u8]) -> usize {
    ContentId::hash_bytes(encoded).as_bytes()[0] as usize
}
