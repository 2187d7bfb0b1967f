//! Sets of dots as ranges of counters per actor: a version vector with its gaps.
//!
//! An actor's counters are contiguous in the common case (a writer's dots `1..=n` all arrived), so
//! a [`DotSet`] stores, per actor, the maximal runs of counters it holds: one run is a version
//! vector entry, more runs are the "dot cloud" above a gap (Almeida et al., "Delta State
//! Replicated Data Types"). It is what an OR-Map tells a peer it already has, so the peer sends
//! only the entries whose dots are not in it.
//!
//! ```
//! use replikativ_crdt::{ActorId, Dot, DotSet};
//!
//! let a = ActorId::from_u128(1);
//! let mut s = DotSet::default();
//! for c in [1, 2, 3, 7] {
//!     s.insert(Dot::new(a, c));
//! }
//! assert_eq!(s.range_count(), 2); // 1..=3 and 7..=7
//! assert!(s.contains(&Dot::new(a, 2)) && !s.contains(&Dot::new(a, 5)));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ActorId, Dot, MAX_DOT_COUNTER};

/// Runs of counters per actor that a decoded [`DotSet`] may hold at most (what bounds one summary
/// from the wire: 65,536 runs take about 1 MiB).
pub const MAX_DOT_RUNS: usize = 1 << 16;

/// A set of dots (see the module docs).
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct DotSet {
    /// Per actor: run start -> run end (inclusive); runs are disjoint and never adjacent.
    actors: BTreeMap<ActorId, BTreeMap<u64, u64>>,
    runs: usize,
}

impl DotSet {
    /// Whether the set holds `dot`.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.actors
            .get(&dot.actor)
            .and_then(|runs| runs.range(..=dot.counter).next_back())
            .is_some_and(|(_, end)| *end >= dot.counter)
    }

    /// Adds a dot; returns whether it was new.
    pub fn insert(&mut self, dot: Dot) -> bool {
        let c = dot.counter;
        let runs = self.actors.entry(dot.actor).or_default();
        let below = runs.range(..=c).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, end)) = below
            && end >= c
        {
            return false;
        }
        let above = c.checked_add(1).and_then(|n| runs.get(&n).map(|e| (n, *e)));
        match (below.filter(|(_, e)| e + 1 == c), above) {
            (Some((start, _)), Some((next, next_end))) => {
                runs.remove(&next);
                runs.insert(start, next_end);
                self.runs -= 1;
            }
            (Some((start, _)), None) => {
                runs.insert(start, c);
            }
            (None, Some((next, next_end))) => {
                runs.remove(&next);
                runs.insert(c, next_end);
            }
            (None, None) => {
                runs.insert(c, c);
                self.runs += 1;
            }
        }
        true
    }

    /// Adds every dot of `other`.
    pub fn extend(&mut self, other: &DotSet) {
        for (actor, start, end) in other.runs() {
            self.insert_run(actor, start, end);
        }
    }

    /// Adds the run `start..=end` of `actor`.
    pub fn insert_run(&mut self, actor: ActorId, start: u64, end: u64) {
        if start > end {
            return;
        }
        let runs = self.actors.entry(actor).or_default();
        let mut lo = start;
        let mut hi = end;
        // Every run that overlaps or touches [start, end] merges into it.
        let touching: Vec<(u64, u64)> = runs
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, e)| e.saturating_add(1) >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in &touching {
            runs.remove(s);
            lo = lo.min(*s);
            hi = hi.max(*e);
        }
        runs.insert(lo, hi);
        self.runs = self.runs + 1 - touching.len();
    }

    /// Whether every dot of `other` is in this set.
    pub fn covers(&self, other: &DotSet) -> bool {
        other.runs().all(|(actor, start, end)| {
            self.actors
                .get(&actor)
                .and_then(|runs| runs.range(..=start).next_back())
                .is_some_and(|(_, e)| *e >= end)
        })
    }

    /// Every run as (actor, first counter, last counter), by actor and counter.
    pub fn runs(&self) -> impl Iterator<Item = (ActorId, u64, u64)> + '_ {
        self.actors.iter().flat_map(|(a, runs)| runs.iter().map(move |(s, e)| (*a, *s, *e)))
    }

    /// Number of runs (a version vector of n writers without gaps has n).
    pub fn range_count(&self) -> usize {
        self.runs
    }

    /// Number of dots.
    pub fn len(&self) -> u64 {
        self.runs().map(|(_, s, e)| e - s + 1).sum()
    }

    /// Whether the set holds no dot.
    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }
}

/// On the wire: `[[actor, [start, end, start, end, ...]], ...]`, checked when decoded (runs
/// ordered, disjoint, not adjacent, counters in `1..=MAX_DOT_COUNTER`, at most [`MAX_DOT_RUNS`]).
impl Serialize for DotSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire: Vec<(ActorId, Vec<u64>)> = self
            .actors
            .iter()
            .filter(|(_, runs)| !runs.is_empty())
            .map(|(a, runs)| (*a, runs.iter().flat_map(|(s, e)| [*s, *e]).collect()))
            .collect();
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DotSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = Vec::<(ActorId, Vec<u64>)>::deserialize(deserializer)?;
        let mut set = DotSet::default();
        let mut last_actor: Option<ActorId> = None;
        for (actor, bounds) in wire {
            if last_actor.is_some_and(|l| l >= actor) {
                return Err(D::Error::custom("dot set actors out of order"));
            }
            last_actor = Some(actor);
            if bounds.is_empty() || bounds.len() % 2 != 0 {
                return Err(D::Error::custom("dot set runs must be start/end pairs"));
            }
            let mut runs = BTreeMap::new();
            let mut prev_end: Option<u64> = None;
            for pair in bounds.chunks(2) {
                let (s, e) = (pair[0], pair[1]);
                if s == 0 || s > e || e > MAX_DOT_COUNTER || prev_end.is_some_and(|p| p + 1 >= s) {
                    return Err(D::Error::custom("dot set runs out of order, empty or out of range"));
                }
                prev_end = Some(e);
                runs.insert(s, e);
            }
            set.runs += runs.len();
            if set.runs > MAX_DOT_RUNS {
                return Err(D::Error::custom(format!("a dot set of more than {MAX_DOT_RUNS} runs")));
            }
            set.actors.insert(actor, runs);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn d(a: u128, c: u64) -> Dot {
        Dot::new(ActorId::from_u128(a), c)
    }

    proptest! {
        #[test]
        fn a_dot_set_holds_exactly_what_was_inserted(dots in proptest::collection::vec((0u128..3, 1u64..40), 0..120)) {
            let mut s = DotSet::default();
            let mut model = BTreeSet::new();
            for (a, c) in &dots {
                prop_assert_eq!(s.insert(d(*a, *c)), model.insert((*a, *c)));
            }
            for a in 0..3 {
                for c in 1..45 {
                    prop_assert_eq!(s.contains(&d(a, c)), model.contains(&(a, c)));
                }
            }
            prop_assert_eq!(s.len(), model.len() as u64);
            prop_assert_eq!(s.range_count(), s.runs().count());
            let back: DotSet = rmp_serde::from_slice(&rmp_serde::to_vec(&s).unwrap()).unwrap();
            prop_assert_eq!(&back, &s);
            // Runs inserted whole equal dots inserted one by one, and covering is subset.
            let mut by_runs = DotSet::default();
            for (a, st, e) in s.runs() {
                by_runs.insert_run(a, st, e);
            }
            prop_assert_eq!(&by_runs, &s);
            let mut half = DotSet::default();
            for (a, c) in dots.iter().step_by(2) {
                half.insert(d(*a, *c));
            }
            prop_assert!(s.covers(&half));
            let mut merged = half.clone();
            merged.extend(&s);
            prop_assert_eq!(&merged, &s);
            prop_assert_eq!(half.covers(&s), half == s);
        }
    }

    #[test]
    fn malformed_dot_sets_do_not_decode() {
        let a = ActorId::from_u128(1);
        for bad in [
            vec![(a, vec![3u64, 2])],
            vec![(a, vec![0, 2])],
            vec![(a, vec![1, 2, 3, 4])],
            vec![(a, vec![1])],
            vec![(a, vec![])],
            vec![(a, vec![1, MAX_DOT_COUNTER + 1])],
            vec![(a, vec![1, 2]), (a, vec![5, 6])],
        ] {
            let bytes = rmp_serde::to_vec(&bad).unwrap();
            assert!(rmp_serde::from_slice::<DotSet>(&bytes).is_err(), "{bad:?}");
        }
        let too_many: Vec<u64> = (0..=MAX_DOT_RUNS as u64).flat_map(|i| [3 * i + 1, 3 * i + 1]).collect();
        let bytes = rmp_serde::to_vec(&vec![(a, too_many)]).unwrap();
        assert!(rmp_serde::from_slice::<DotSet>(&bytes).is_err());
    }
}
