//! The commit graph: a grow-only map `commit id -> [parent ids]` with heads and generation numbers.
//!
//! Ids are interned to dense `u32` indices, so walks touch small integers and flat vectors. A
//! commit may arrive before its parents (the graph is then *incomplete*: the missing parents are
//! placeholders); the heads are always exactly the present commits without a present child, which
//! makes the join of two graphs a plain union, whatever the order of arrival.
//!
//! Every commit whose ancestry is complete has a generation number, `1 + max(parent generations)`
//! (0 for a root). Ancestry questions walk only commits whose generation lies between the two ends,
//! so asking about the newest commits of a million-commit history touches only the new part.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::error::ValidationError;
use crate::{ContentId, IdMap};

const UNKNOWN: u32 = u32::MAX;

/// A commit graph with heads and generation numbers (see the module docs).
#[derive(Clone, Default)]
pub struct CommitGraph {
    ids: Vec<ContentId>,
    index: IdMap<u32>,
    /// Parents per index; `None` for a placeholder (referenced as a parent, not yet present).
    parents: Vec<Option<Box<[u32]>>>,
    /// Generation per index, `UNKNOWN` while some ancestor is missing.
    generation: Vec<u32>,
    /// Present commits that no present commit names as parent.
    heads: BTreeSet<ContentId>,
    /// Placeholders: referenced but not present.
    missing: BTreeSet<u32>,
    /// Commits whose generation waits for this (unresolved) index.
    waiting: HashMap<u32, Vec<u32>>,
    /// Present commits in arrival order.
    order: Vec<u32>,
}

impl std::fmt::Debug for CommitGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitGraph")
            .field("commits", &self.len())
            .field("heads", &self.heads)
            .field("missing", &self.missing.len())
            .finish()
    }
}

impl PartialEq for CommitGraph {
    /// Graphs are equal when they hold the same commits with the same parents.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.heads == other.heads
            && self.entries().all(|(id, parents)| {
                other.parents(&id).is_some_and(|theirs| theirs.eq(parents.iter().copied()))
            })
    }
}

impl Eq for CommitGraph {}

impl CommitGraph {
    /// An empty graph.
    pub fn new() -> CommitGraph {
        CommitGraph::default()
    }

    /// Number of present commits.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no commit is present.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The heads: present commits without a present child, sorted.
    pub fn heads(&self) -> &BTreeSet<ContentId> {
        &self.heads
    }

    /// Whether the commit is present.
    pub fn contains(&self, id: &ContentId) -> bool {
        self.present_index(id).is_some()
    }

    /// Parents referenced by present commits that are not present themselves. Empty when the
    /// history is complete.
    pub fn missing(&self) -> impl Iterator<Item = ContentId> + '_ {
        self.missing.iter().map(|&i| self.ids[i as usize])
    }

    /// Whether every referenced parent is present.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The parents of a present commit, in order.
    pub fn parents(&self, id: &ContentId) -> Option<impl Iterator<Item = ContentId> + '_> {
        let i = self.present_index(id)?;
        Some(self.parent_indices(i).iter().map(|&p| self.ids[p as usize]))
    }

    /// The generation number of a present commit with complete ancestry.
    pub fn generation(&self, id: &ContentId) -> Option<u32> {
        let i = self.present_index(id)?;
        let g = self.generation[i as usize];
        (g != UNKNOWN).then_some(g)
    }

    /// Present commits with their parents, in arrival order.
    pub fn entries(&self) -> impl Iterator<Item = (ContentId, Vec<ContentId>)> + '_ {
        self.order.iter().map(|&i| {
            (self.ids[i as usize], self.parent_indices(i).iter().map(|&p| self.ids[p as usize]).collect())
        })
    }

    /// Checks that a commit could be inserted: it is new or known with the same parents, and its
    /// parent list names neither itself nor a parent twice.
    pub fn check(&self, id: &ContentId, parents: &[ContentId]) -> Result<(), ValidationError> {
        if parents.contains(id) || (1..parents.len()).any(|k| parents[..k].contains(&parents[k])) {
            return Err(ValidationError::BadParents { id: *id });
        }
        if let Some(known) = self.parents(id)
            && !known.eq(parents.iter().copied())
        {
            return Err(ValidationError::ConflictingParents { id: *id });
        }
        Ok(())
    }

    /// Inserts a commit. Returns whether it was new.
    pub fn insert(&mut self, id: ContentId, parents: &[ContentId]) -> Result<bool, ValidationError> {
        self.check(&id, parents)?;
        if self.contains(&id) {
            return Ok(false);
        }
        let (i, was_placeholder) = match self.index.get(&id) {
            Some(&i) => (i, true),
            None => (self.intern(id), false),
        };
        if was_placeholder {
            self.missing.remove(&i);
        }
        let pidx: Box<[u32]> = parents
            .iter()
            .map(|p| match self.index.get(p) {
                Some(&j) => j,
                None => {
                    let j = self.intern(*p);
                    self.missing.insert(j);
                    j
                }
            })
            .collect();
        for &p in pidx.iter() {
            if self.parents[p as usize].is_some() {
                self.heads.remove(&self.ids[p as usize]);
            }
        }
        self.parents[i as usize] = Some(pidx);
        self.order.push(i);
        // A commit that was a placeholder is some present commit's parent: never a head.
        if !was_placeholder {
            self.heads.insert(id);
        }
        self.resolve_generation(i);
        Ok(true)
    }

    fn intern(&mut self, id: ContentId) -> u32 {
        let i = u32::try_from(self.ids.len()).expect("commit graph exceeds u32::MAX commits");
        self.ids.push(id);
        self.index.insert(id, i);
        self.parents.push(None);
        self.generation.push(UNKNOWN);
        i
    }

    /// Sets the generation of `start` if all its parents have one, then of every commit that was
    /// waiting for it; otherwise parks `start` under its first unresolved parent.
    fn resolve_generation(&mut self, start: u32) {
        let mut work = vec![start];
        while let Some(i) = work.pop() {
            let Some(parents) = self.parents[i as usize].as_deref() else { continue };
            match parents.iter().find(|&&p| self.generation[p as usize] == UNKNOWN) {
                Some(&blocker) => self.waiting.entry(blocker).or_default().push(i),
                None => {
                    let g = parents.iter().map(|&p| self.generation[p as usize] + 1).max().unwrap_or(0);
                    self.generation[i as usize] = g;
                    if let Some(children) = self.waiting.remove(&i) {
                        work.extend(children);
                    }
                }
            }
        }
    }

    pub(crate) fn present_index(&self, id: &ContentId) -> Option<u32> {
        self.index.get(id).copied().filter(|&i| self.parents[i as usize].is_some())
    }

    pub(crate) fn parent_indices(&self, i: u32) -> &[u32] {
        self.parents[i as usize].as_deref().unwrap_or(&[])
    }

    pub(crate) fn id_of(&self, i: u32) -> ContentId {
        self.ids[i as usize]
    }

    fn gen_of(&self, i: u32) -> u32 {
        self.generation[i as usize]
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors (both must be present).
    ///
    /// Walks back from `descendant` only through commits whose generation is above `ancestor`'s,
    /// so the cost is the number of commits between the two, not the length of the history.
    pub fn is_ancestor(&self, ancestor: &ContentId, descendant: &ContentId) -> bool {
        let (Some(a), Some(d)) = (self.present_index(ancestor), self.present_index(descendant)) else {
            return false;
        };
        let floor = self.gen_of(a);
        let mut seen = HashSet::from([d]);
        let mut stack = vec![d];
        while let Some(i) = stack.pop() {
            if i == a {
                return true;
            }
            let g = self.gen_of(i);
            // With both generations known, nothing at or below the ancestor's generation can lead
            // to it (except itself, checked above).
            if floor != UNKNOWN && g != UNKNOWN && g <= floor {
                continue;
            }
            for &p in self.parent_indices(i) {
                if seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        false
    }

    /// The merge bases (best common ancestors) of two sets of present commits: the common
    /// ancestors that are not ancestors of other common ancestors. `None` if an id is not present
    /// or the ancestry involved is incomplete.
    ///
    /// A generation-ordered walk from both sides, which stops once every queued commit is below a
    /// found base: the cost is the commits above the bases, not the history.
    pub fn merge_bases(&self, a: &[ContentId], b: &[ContentId]) -> Option<Vec<ContentId>> {
        const P1: u8 = 1;
        const P2: u8 = 2;
        const STALE: u8 = 4;
        const RESULT: u8 = 8;
        let mut flags: HashMap<u32, u8> = HashMap::new();
        let mut queue: BinaryHeap<(u32, Reverse<u32>)> = BinaryHeap::new();
        for (side, set) in [(P1, a), (P2, b)] {
            for id in set {
                let i = self.present_index(id)?;
                if self.gen_of(i) == UNKNOWN {
                    return None;
                }
                *flags.entry(i).or_default() |= side;
                queue.push((self.gen_of(i), Reverse(i)));
            }
        }
        let mut results = Vec::new();
        while queue.iter().any(|&(_, Reverse(i))| flags[&i] & STALE == 0) {
            let (_, Reverse(i)) = queue.pop().expect("queue is not empty");
            let f = flags[&i];
            let mut paint = f & (P1 | P2 | STALE);
            if paint == P1 | P2 {
                if f & RESULT == 0 {
                    flags.insert(i, f | RESULT);
                    results.push(i);
                }
                paint |= STALE;
            }
            for &p in self.parent_indices(i) {
                let pf = flags.entry(p).or_default();
                if *pf & paint == paint {
                    continue;
                }
                *pf |= paint;
                queue.push((self.gen_of(p), Reverse(p)));
            }
        }
        // Drop results that are ancestors of other results.
        let ids: Vec<ContentId> = results.iter().map(|&i| self.id_of(i)).collect();
        let mut bases: Vec<ContentId> =
            ids.iter().filter(|x| !ids.iter().any(|y| y != *x && self.is_ancestor(x, y))).copied().collect();
        bases.sort();
        Some(bases)
    }

    /// The newest commits whose whole ancestry is present: the heads when the graph is complete;
    /// otherwise the commits of complete ancestry with no child of complete ancestry. A replica
    /// that misses history summarizes itself with these, so a peer sends it everything above them
    /// (the missing part included). Costs a scan of the graph when it is incomplete.
    pub fn complete_frontier(&self) -> BTreeSet<ContentId> {
        if self.is_complete() {
            return self.heads.clone();
        }
        let complete = |i: u32| self.parents[i as usize].is_some() && self.generation[i as usize] != UNKNOWN;
        let mut has_complete_child = HashSet::new();
        for &i in &self.order {
            if complete(i) {
                has_complete_child.extend(self.parent_indices(i).iter().copied());
            }
        }
        self.order
            .iter()
            .filter(|&&i| complete(i) && !has_complete_child.contains(&i))
            .map(|&i| self.id_of(i))
            .collect()
    }

    /// Ancestors of `heads` at exponentially growing first-parent distances (1, 2, 4, 8, ... from
    /// the head of the highest generation, at most `max`), ending with the root: what a replica
    /// sends beside its heads so that a peer whose history diverged from it finds a recent common
    /// ancestor (the highest sample it knows) without either side shipping its whole history. A
    /// divergence `d` commits deep costs the peer at most about `2d` commits sent (git's
    /// "skipping" negotiation). The walk costs the first-parent depth of the history.
    pub fn samples(&self, heads: &BTreeSet<ContentId>, max: usize) -> Vec<ContentId> {
        let start = heads
            .iter()
            .filter_map(|h| self.present_index(h))
            .max_by_key(|&i| (self.gen_of(i) != UNKNOWN, self.gen_of(i)));
        let Some(mut i) = start else { return Vec::new() };
        let (mut out, mut distance, mut next) = (Vec::new(), 0u64, 1u64);
        while let Some(&p) = self.parent_indices(i).first() {
            if self.parents[p as usize].is_none() {
                break;
            }
            i = p;
            distance += 1;
            if distance == next {
                if out.len() + 1 < max {
                    out.push(self.ids[i as usize]);
                }
                next *= 2;
            }
        }
        if out.last() != Some(&self.ids[i as usize]) && distance > 0 {
            out.push(self.ids[i as usize]);
        }
        out
    }

    /// The present commits reachable from `heads` but not from any present commit of `exclude`
    /// (git's `rev-list heads ^exclude`), parents before children: what a replica whose heads are
    /// `exclude` lacks. Unknown ids in `exclude` are ignored.
    ///
    /// A generation-ordered walk from both sides that stops once every queued commit is reachable
    /// from `exclude`: the cost is the difference plus the commits near it, not the history.
    /// Commits of incomplete ancestry are treated as newest.
    pub fn commits_since(&self, heads: &BTreeSet<ContentId>, exclude: &[ContentId]) -> Vec<ContentId> {
        const WANT: u8 = 1;
        const HAVE: u8 = 2;
        let key = |g: u32| if g == UNKNOWN { u32::MAX } else { g };
        let mut flags: HashMap<u32, u8> = HashMap::new();
        let mut queue: BinaryHeap<(u32, Reverse<u32>)> = BinaryHeap::new();
        let push =
            |i: u32, f: u8, flags: &mut HashMap<u32, u8>, queue: &mut BinaryHeap<(u32, Reverse<u32>)>| {
                let e = flags.entry(i).or_default();
                if *e & f != f {
                    *e |= f;
                    queue.push((key(self.gen_of(i)), Reverse(i)));
                }
            };
        for id in exclude {
            if let Some(i) = self.present_index(id) {
                push(i, HAVE, &mut flags, &mut queue);
            }
        }
        for id in heads {
            if let Some(i) = self.present_index(id) {
                push(i, WANT, &mut flags, &mut queue);
            }
        }
        let mut out = Vec::new();
        let mut emitted = HashSet::new();
        while queue.iter().any(|&(_, Reverse(i))| flags[&i] & HAVE == 0) {
            let (_, Reverse(i)) = queue.pop().expect("queue is not empty");
            let f = flags[&i];
            if f & HAVE == 0 && emitted.insert(i) {
                out.push(i);
            }
            let paint = if f & HAVE != 0 { HAVE } else { WANT };
            for &p in self.parent_indices(i) {
                if self.parents[p as usize].is_some() {
                    push(p, paint, &mut flags, &mut queue);
                }
            }
        }
        // A commit emitted as wanted may have been painted `have` later through another path only if
        // it has a lower generation than that path's start, which the max-first order rules out for
        // complete ancestry; drop any such commit all the same.
        out.retain(|i| flags[i] & HAVE == 0);
        out.sort_by_key(|&i| (key(self.gen_of(i)), i));
        out.into_iter().map(|i| self.id_of(i)).collect()
    }

    /// The deterministic linearization of the history of `heads`: depth first, parents in their
    /// stored order, every commit once, each after all its ancestors. With several heads they are
    /// taken in sorted order, as if a merge commit had them as parents. Missing parents are skipped.
    pub fn linearize(&self, heads: &BTreeSet<ContentId>) -> Vec<ContentId> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for head in heads {
            if let Some(h) = self.present_index(head) {
                self.linearize_from(h, &mut seen, &mut out);
            }
        }
        out
    }

    /// Linearization of one commit's history (see [`CommitGraph::linearize`]).
    pub fn history(&self, head: &ContentId) -> Vec<ContentId> {
        let mut out = Vec::new();
        if let Some(h) = self.present_index(head) {
            self.linearize_from(h, &mut HashSet::new(), &mut out);
        }
        out
    }

    fn linearize_from(&self, start: u32, seen: &mut HashSet<u32>, out: &mut Vec<ContentId>) {
        self.postorder(start, seen, |p| self.parents[p as usize].is_some(), out);
    }

    /// Depth-first post-order from `start` over parents (in their order) that `follow` admits and
    /// `seen` does not hold yet: every commit after its admitted ancestors. Iterative, so a
    /// million-commit chain does not overflow the stack.
    fn postorder(
        &self,
        start: u32,
        seen: &mut HashSet<u32>,
        follow: impl Fn(u32) -> bool,
        out: &mut Vec<ContentId>,
    ) {
        if !seen.insert(start) {
            return;
        }
        // (commit, index of the next parent to visit)
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (i, next) = *top;
            let parents = self.parent_indices(i);
            if next < parents.len() {
                top.1 += 1;
                let p = parents[next];
                if follow(p) && seen.insert(p) {
                    stack.push((p, 0));
                }
            } else {
                out.push(self.id_of(i));
                stack.pop();
            }
        }
    }

    /// The commits of `self` reachable from `heads` that `other` does not contain, in an order
    /// where parents come before children, and the `boundary`: the commits of `other` where the
    /// walk stopped (known commits reached directly from unknown ones, or heads `other` already
    /// has). Fails with the first commit whose parent is missing from both graphs.
    pub fn unknown_to(
        &self,
        heads: &BTreeSet<ContentId>,
        other: &CommitGraph,
    ) -> Result<(Vec<ContentId>, BTreeSet<ContentId>), ContentId> {
        let mut boundary = BTreeSet::new();
        let mut seen = HashSet::new();
        let mut found: Vec<u32> = Vec::new();
        let mut stack = Vec::new();
        for head in heads {
            if other.contains(head) {
                boundary.insert(*head);
            } else {
                let h = self.present_index(head).ok_or(*head)?;
                if seen.insert(h) {
                    stack.push(h);
                }
            }
        }
        while let Some(i) = stack.pop() {
            found.push(i);
            for &p in self.parent_indices(i) {
                let pid = self.id_of(p);
                if other.contains(&pid) {
                    boundary.insert(pid);
                } else if self.parents[p as usize].is_none() {
                    return Err(self.id_of(i));
                } else if seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        // Parents before children: a post-order restricted to the commits found.
        let in_found: HashSet<u32> = found.iter().copied().collect();
        let mut ordered = Vec::with_capacity(found.len());
        let mut done = HashSet::new();
        for &start in &found {
            self.postorder(start, &mut done, |p| in_found.contains(&p), &mut ordered);
        }
        Ok((ordered, boundary))
    }
}
