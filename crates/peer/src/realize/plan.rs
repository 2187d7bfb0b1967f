//! Pure planning for realization: given a datatype's current state and what an identity has
//! already applied (its [`AppliedLog`]), what to apply next and in which order. No IO, no tokio.
//!
//! The plan is a list of [`PlannedUnit`]s; each names the commits to replay (in order) and the
//! [`Record`] that marks it applied. A unit is the grain of atomicity: an identity applies a unit's
//! commits and records it together (or, for a sink, records it after delivery).

use std::collections::{BTreeMap, BTreeSet};

use replikativ_crdt::{
    Cdvcs, ContentId, Dot, GSet, LwwRegister, OrEntry, OrMap, OrMapOp, Transaction, Value,
};
use serde::{Deserialize, Serialize};

/// Name of the synthetic transaction an LWW register's value is applied with: params = the value.
pub const LWW_SET: &str = "lww/set";
/// Name of the synthetic transaction a new G-Set element is applied with: params = the element.
pub const GSET_ADD: &str = "gset/add";

const CHAIN_SEED: [u8; 32] = [0; 32];

/// The CDVCS applied-log, O(1) in size: how many commits of the linearized history were applied,
/// the last one, and a hash chain over all applied ids (`chain_k = blake3(chain_{k-1} || id_k)`,
/// `chain_0` = 32 zero bytes), so "the applied sequence is a prefix of this order" is checkable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CdvcsLog {
    /// Number of commits applied.
    pub count: u64,
    /// The last applied commit.
    pub last: Option<ContentId>,
    /// The hash chain over the applied ids.
    pub chain: ContentId,
}

impl Default for CdvcsLog {
    fn default() -> Self {
        CdvcsLog { count: 0, last: None, chain: ContentId::from_bytes(CHAIN_SEED) }
    }
}

impl CdvcsLog {
    /// The log after applying `id` next.
    pub fn advance(&self, id: ContentId) -> CdvcsLog {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(self.chain.as_bytes());
        buf[32..].copy_from_slice(id.as_bytes());
        CdvcsLog { count: self.count + 1, last: Some(id), chain: ContentId::hash_bytes(&buf) }
    }

    /// The log of having applied exactly `ids`, in order.
    pub fn of(ids: &[ContentId]) -> CdvcsLog {
        ids.iter().fold(CdvcsLog::default(), |log, id| log.advance(*id))
    }

    /// Whether the applied sequence is a prefix of `order` (costs one hash per applied commit).
    pub fn is_prefix_of(&self, order: &[ContentId]) -> bool {
        let Ok(n) = usize::try_from(self.count) else { return false };
        if n == 0 {
            return true;
        }
        n <= order.len() && Some(order[n - 1]) == self.last && CdvcsLog::of(&order[..n]).chain == self.chain
    }
}

/// What an identity has applied: one part per datatype (a stream uses the part of its datatype).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AppliedLog {
    /// CDVCS: position in the linearized history.
    pub cdvcs: CdvcsLog,
    /// OR-Map and G-Set: the applied entries (see [`ormap_entry_key`], [`gset_entry_key`]).
    pub entries: BTreeSet<Vec<u8>>,
    /// LWW register: the id of the applied write (see [`lww_write_id`]).
    pub lww: Option<ContentId>,
}

/// How applying one unit changes the applied-log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// The CDVCS log after the unit (absolute: it replaces the previous one).
    Cdvcs(CdvcsLog),
    /// Entries to add to the applied set.
    Entries(Vec<Vec<u8>>),
    /// The LWW write now applied (replaces the previous one).
    Lww(ContentId),
}

impl AppliedLog {
    /// Adds what `record` says.
    pub fn record(&mut self, record: &Record) {
        match record {
            Record::Cdvcs(log) => self.cdvcs = *log,
            Record::Entries(keys) => self.entries.extend(keys.iter().cloned()),
            Record::Lww(id) => self.lww = Some(*id),
        }
    }
}

/// One unit of a plan: commits to replay in order (possibly none) and its record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PlannedUnit {
    /// The unit's id, unique per unit of a datatype (a sink deduplicates by it): the commit id for a
    /// CDVCS, a hash of the recorded entries for an OR-Map, the write id for an LWW register, the
    /// element id for a G-Set.
    pub id: ContentId,
    /// Commits to replay, in order. For LWW and G-Set units this is the unit id, standing for the
    /// synthetic transaction ([`LWW_SET`], [`GSET_ADD`]).
    pub commits: Vec<ContentId>,
    /// What applying it records.
    pub record: Record,
}

/// Several CDVCS heads: what the application is told (replikativ's `summarize-conflict`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CdvcsConflict {
    /// The heads, sorted.
    pub heads: Vec<ContentId>,
    /// Their merge bases (the best common ancestors of all heads).
    pub merge_bases: Vec<ContentId>,
    /// Per head, the commits reachable from it and from no other head, parents first.
    pub sides: Vec<(ContentId, Vec<ContentId>)>,
}

/// What to do with a CDVCS.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CdvcsPlan {
    /// No commit yet, or history still incomplete (missing parents are being fetched).
    Wait,
    /// The identity reflects the single head.
    UpToDate,
    /// Several heads: report and wait for a merge.
    Conflict(CdvcsConflict),
    /// Apply `order[from..]`; with `reset`, from a fresh identity (the applied sequence is not a
    /// prefix of the new order: rebuild), and then `from` is 0.
    Apply {
        /// Rebuild from scratch.
        reset: bool,
        /// The linearized history of the head.
        order: Vec<ContentId>,
        /// The first commit to apply.
        from: usize,
    },
}

/// Plans a CDVCS: with one head and complete history, the linearized history of the head
/// ([`replikativ_crdt::CommitGraph::history`]), continued where the applied sequence is a prefix of
/// it and rebuilt otherwise; with several heads, a conflict.
pub fn plan_cdvcs(cdvcs: &Cdvcs, log: &CdvcsLog) -> CdvcsPlan {
    let graph = cdvcs.graph();
    if graph.is_empty() || !graph.is_complete() {
        return CdvcsPlan::Wait;
    }
    let heads: Vec<ContentId> = cdvcs.heads().iter().copied().collect();
    if heads.len() > 1 {
        let mut bases = vec![heads[0]];
        for h in &heads[1..] {
            bases = graph.merge_bases(&bases, &[*h]).unwrap_or_default();
        }
        let sides = heads
            .iter()
            .map(|h| {
                let others: Vec<ContentId> = heads.iter().filter(|o| *o != h).copied().collect();
                (*h, graph.commits_since(&BTreeSet::from([*h]), &others))
            })
            .collect();
        return CdvcsPlan::Conflict(CdvcsConflict { heads, merge_bases: bases, sides });
    }
    let order = graph.history(&heads[0]);
    if log.is_prefix_of(&order) {
        let from = usize::try_from(log.count).unwrap_or(usize::MAX);
        if from == order.len() { CdvcsPlan::UpToDate } else { CdvcsPlan::Apply { reset: false, order, from } }
    } else {
        CdvcsPlan::Apply { reset: true, order, from: 0 }
    }
}

/// The units of a [`CdvcsPlan::Apply`]: one per commit of `order[from..]`, each recording the
/// applied-log after it, starting from `log` (or an empty log with `reset`).
pub fn cdvcs_units(reset: bool, order: &[ContentId], from: usize, log: CdvcsLog) -> Vec<PlannedUnit> {
    let mut log = if reset { CdvcsLog::default() } else { log };
    order[from..]
        .iter()
        .map(|id| {
            log = log.advance(*id);
            PlannedUnit { id: *id, commits: vec![*id], record: Record::Cdvcs(log) }
        })
        .collect()
}

/// The applied-log key of an OR-Map entry: `a` (add) or `r` (removal), then the blake3 of the
/// entry's msgpack encoding.
pub fn ormap_entry_key(removal: bool, entry: &OrEntry) -> Vec<u8> {
    let bytes = rmp_serde::to_vec(entry).expect("an OR-Map entry encodes");
    let mut key = vec![if removal { b'r' } else { b'a' }];
    key.extend_from_slice(ContentId::hash_bytes(&bytes).as_bytes());
    key
}

/// The applied-log key of a G-Set element: `g`, then the element's content id.
pub fn gset_entry_key(element: &Value) -> Vec<u8> {
    let mut key = vec![b'g'];
    key.extend_from_slice(element.content_id().as_bytes());
    key
}

/// The id of an LWW register's current write (blake3 of its msgpack state), `None` if never written.
pub fn lww_write_id(register: &LwwRegister) -> Option<ContentId> {
    register.stamp()?;
    let bytes = rmp_serde::to_vec(register).expect("a register encodes");
    Some(ContentId::hash_bytes(&bytes))
}

/// An OR-Map plan: the not yet applied part of the state as an op, and the units.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct OrMapPlan {
    /// The entries of the state not in the applied-log (the "op" being realized).
    pub diff: OrMapOp,
    /// The units, in order.
    pub units: Vec<PlannedUnit>,
}

fn unit_id(keys: &[Vec<u8>]) -> ContentId {
    ContentId::hash_bytes(&keys.concat())
}

/// Plans an OR-Map with the original's commit-history semantics
/// ([`OrMap::realization_order`]) applied to `diff`, the entries not applied yet:
///
/// 1. each add of the diff whose entry is not removed in the state: its commit (a commit already
///    replayed in this plan is not replayed again);
/// 2. each removal of the diff whose add was applied earlier: the removal commit (revert
///    transactions), then every live value of the key not replayed yet in this plan.
///
/// A unit is one add (with further adds of the same commit), or one removal with its replays.
/// Entries with nothing to apply (an add already removed, a removal of an add never applied) are
/// recorded in a final unit without commits. In the causal case (every removal's add applied or in
/// the diff) the concatenated commits equal `state.realization_order(&diff)`.
pub fn plan_ormap(state: &OrMap, applied: &BTreeSet<Vec<u8>>) -> OrMapPlan {
    let full = replikativ_crdt::Crdt::state_op(state);
    let keyed = |removal: bool, entries: Vec<OrEntry>| -> Vec<(Vec<u8>, OrEntry)> {
        entries
            .into_iter()
            .map(|e| (ormap_entry_key(removal, &e), e))
            .filter(|(k, _)| !applied.contains(k))
            .collect()
    };
    let removed_in_state: BTreeSet<(Value, Dot)> =
        full.removals.iter().map(|e| (e.key.clone(), e.dot)).collect();
    let add_keys: BTreeMap<(Value, Dot), Vec<u8>> =
        full.adds.iter().map(|e| ((e.key.clone(), e.dot), ormap_entry_key(false, e))).collect();
    let adds = keyed(false, full.adds);
    let removals = keyed(true, full.removals);
    let adds_in_diff: BTreeSet<(Value, Dot)> = adds.iter().map(|(_, e)| (e.key.clone(), e.dot)).collect();

    let mut units: Vec<PlannedUnit> = Vec::new();
    let mut keys_of: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut replayed: BTreeMap<ContentId, usize> = BTreeMap::new();
    let mut silent: Vec<Vec<u8>> = Vec::new();
    for (key, e) in &adds {
        if removed_in_state.contains(&(e.key.clone(), e.dot)) {
            silent.push(key.clone());
        } else if let Some(&i) = replayed.get(&e.commit) {
            keys_of[i].push(key.clone());
        } else {
            replayed.insert(e.commit, units.len());
            units.push(PlannedUnit {
                id: e.commit,
                commits: vec![e.commit],
                record: Record::Entries(vec![]),
            });
            keys_of.push(vec![key.clone()]);
        }
    }
    for (key, e) in &removals {
        let add_applied = !adds_in_diff.contains(&(e.key.clone(), e.dot))
            && add_keys.get(&(e.key.clone(), e.dot)).is_some_and(|k| applied.contains(k));
        if !add_applied {
            silent.push(key.clone());
            continue;
        }
        let mut commits = vec![e.commit];
        for live in state.get(&e.key) {
            if let std::collections::btree_map::Entry::Vacant(slot) = replayed.entry(live) {
                slot.insert(units.len());
                commits.push(live);
            }
        }
        units.push(PlannedUnit { id: e.commit, commits, record: Record::Entries(vec![]) });
        keys_of.push(vec![key.clone()]);
    }
    if !silent.is_empty() {
        units.push(PlannedUnit {
            id: ContentId::from_bytes([0; 32]),
            commits: vec![],
            record: Record::Entries(vec![]),
        });
        keys_of.push(silent);
    }
    for (unit, keys) in units.iter_mut().zip(keys_of) {
        unit.id = unit_id(&keys);
        unit.record = Record::Entries(keys);
    }
    let diff = OrMapOp {
        adds: adds.into_iter().map(|(_, e)| e).collect(),
        removals: removals.into_iter().map(|(_, e)| e).collect(),
    };
    OrMapPlan { diff, units }
}

/// The synthetic transactions of units without commit records (LWW writes, G-Set elements), by
/// unit id.
pub type Synthetic = BTreeMap<ContentId, Vec<Transaction>>;

/// Plans an LWW register: one unit applying the current value ([`LWW_SET`]), unless it is the
/// applied one.
pub fn plan_lww(register: &LwwRegister, applied: Option<ContentId>) -> Option<(PlannedUnit, Synthetic)> {
    let id = lww_write_id(register)?;
    (applied != Some(id)).then(|| {
        let synthetic = BTreeMap::from([(id, vec![Transaction::new(LWW_SET, register.get().clone())])]);
        (PlannedUnit { id, commits: vec![id], record: Record::Lww(id) }, synthetic)
    })
}

/// Plans a G-Set: one unit per element not applied yet ([`GSET_ADD`]), in element order.
pub fn plan_gset(set: &GSet, applied: &BTreeSet<Vec<u8>>) -> (Vec<PlannedUnit>, Synthetic) {
    let mut synthetic = Synthetic::new();
    let units = set
        .elements()
        .iter()
        .filter_map(|e| {
            let key = gset_entry_key(e);
            (!applied.contains(&key)).then(|| {
                let id = e.content_id();
                synthetic.insert(id, vec![Transaction::new(GSET_ADD, e.clone())]);
                PlannedUnit { id, commits: vec![id], record: Record::Entries(vec![key]) }
            })
        })
        .collect();
    (units, synthetic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use replikativ_crdt::{ActorId, Crdt};

    fn cid(n: u8) -> ContentId {
        let mut b = [0u8; 32];
        b[31] = n;
        ContentId::from_bytes(b)
    }

    fn entry(key: &str, d: u64, c: u8) -> OrEntry {
        OrEntry { key: key.into(), dot: Dot::new(ActorId::from_u128(7), d), commit: cid(c) }
    }

    fn flat(plan: &OrMapPlan) -> Vec<ContentId> {
        plan.units.iter().flat_map(|u| u.commits.iter().copied()).collect()
    }

    fn applied_after(plan: &OrMapPlan, mut applied: BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
        for u in &plan.units {
            if let Record::Entries(k) = &u.record {
                applied.extend(k.iter().cloned());
            }
        }
        applied
    }

    #[test]
    fn ormap_plans_follow_realization_order() {
        // The original's three commit-history cases (1 = [:a "bar"], 2 = [:a "baz"], 3 = [:a "2"],
        // 11 = [:r "bar"]).
        let op = OrMapOp {
            adds: vec![entry("foo", 1, 1), entry("foo", 2, 2)],
            removals: vec![entry("foo", 1, 11)],
        };
        let mut m = OrMap::default();
        m.apply(&op).unwrap();
        let plan = plan_ormap(&m, &BTreeSet::new());
        assert_eq!(flat(&plan), m.realization_order(&op));
        assert_eq!(flat(&plan), vec![cid(2)]);
        assert!(plan_ormap(&m, &applied_after(&plan, BTreeSet::new())).units.is_empty());

        // The adds applied, then the removal arrives.
        let mut adds_only = OrMap::default();
        adds_only.apply(&OrMapOp { adds: op.adds.clone(), removals: vec![] }).unwrap();
        let first = plan_ormap(&adds_only, &BTreeSet::new());
        assert_eq!(flat(&first), vec![cid(1), cid(2)]);
        let applied = applied_after(&first, BTreeSet::new());
        let removal = OrMapOp { adds: vec![], removals: vec![entry("foo", 1, 11)] };
        let plan = plan_ormap(&m, &applied);
        assert_eq!(flat(&plan), m.realization_order(&removal));
        assert_eq!(flat(&plan), vec![cid(11), cid(2)]);

        let mut m3 = m.clone();
        let op3 = OrMapOp { adds: vec![entry("foo2", 3, 3)], removals: vec![entry("foo", 1, 11)] };
        m3.apply(&op3).unwrap();
        let plan = plan_ormap(&m3, &applied);
        assert_eq!(flat(&plan), m3.realization_order(&op3));
        assert_eq!(flat(&plan), vec![cid(3), cid(11), cid(2)]);
    }

    #[test]
    fn removal_of_an_add_never_applied_applies_nothing() {
        let mut late = OrMap::default();
        late.apply(&OrMapOp { adds: vec![], removals: vec![entry("foo", 1, 11)] }).unwrap();
        let plan = plan_ormap(&late, &BTreeSet::new());
        assert!(flat(&plan).is_empty());
        let applied = applied_after(&plan, BTreeSet::new());
        late.apply(&OrMapOp { adds: vec![entry("foo", 1, 1)], removals: vec![] }).unwrap();
        let plan = plan_ormap(&late, &applied);
        assert!(flat(&plan).is_empty(), "an add removed before it arrived is never applied");
        assert_eq!(plan.units.len(), 1);
    }

    #[test]
    fn cdvcs_log_prefix() {
        let order = vec![cid(1), cid(2), cid(3)];
        assert!(CdvcsLog::default().is_prefix_of(&order));
        assert!(CdvcsLog::of(&order[..2]).is_prefix_of(&order));
        assert!(CdvcsLog::of(&order).is_prefix_of(&order));
        assert!(!CdvcsLog::of(&[cid(1), cid(3)]).is_prefix_of(&order));
        assert!(!CdvcsLog::of(&[cid(2), cid(1)]).is_prefix_of(&[cid(1), cid(2)]));
        assert!(!CdvcsLog::of(&[cid(1), cid(2), cid(3), cid(4)]).is_prefix_of(&order));
    }
}
