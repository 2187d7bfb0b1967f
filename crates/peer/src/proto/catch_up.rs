//! Catch-up answers: what a remote lacks, sent as a sequence of bounded publications whose values
//! travel inline (so catch-up needs no fetch round trips), each marked `catch_up` so it is not
//! echoed back.
//!
//! Every part carries at most [`MAX_PART_ENTRIES`] op entries and about `inline_limit` bytes of
//! inline values, whatever the size of the state (an OR-Map of 200,000 entries used to go as one
//! publication of ~16 MiB, which the websocket refused, and the connection was re-established and the
//! same message sent again, forever). A part is a valid op on its own: OR-Map adds and removals
//! and G-Set elements join by union (a removal that arrives before its add still hides it); CDVCS
//! commits come parents first, so each part's parents are in earlier parts or at the receiver.
//!
//! One answer takes at most `max_answer_bytes` (16 MiB, the outbox's budget): what does not fit
//! waits for the next round (the receiver's next summary), so answering a peer that lacks a state of
//! millions of entries costs one budget per round, not the whole state at once (most of which a
//! full outbox would drop anyway).
//!
//! OR-Map and G-Set parts go bucket by bucket (the buckets of `Summary::Buckets`): if the later
//! parts of an answer are lost (a slow receiver's full outbox drops them), the receiver's first
//! buckets are complete, match the next summary and are not sent again, so every round makes
//! progress. (In key order, each round would complete no bucket and send the same first parts
//! again.) Each answer on a connection starts at another bucket (a rotating offset), so even a
//! receiver too small to send bucketed summaries (a digest names no bucket) gets other parts each
//! round.

use std::collections::{HashMap, HashSet};

use replikativ_crdt::{Address, CdvcsOp, ContentId, GSetOp, OrEntry, OrMapOp, Value};
use serde_bytes::ByteBuf;

use super::message::{AnyOp, Message, Publish};
use super::{ConnId, Peer};

/// Op entries in one catch-up publication at most.
pub const MAX_PART_ENTRIES: usize = 2048;

/// Gathers the parts of one answer.
struct Parts {
    limit: usize,
    /// Bytes the whole answer may take (`max_answer_bytes`), and what it takes so far.
    budget: usize,
    total: usize,
    parts: Vec<(Vec<usize>, Vec<ByteBuf>)>,
    entries: Vec<usize>,
    values: Vec<ByteBuf>,
    bytes: usize,
    /// Values already in the current part (entries may share a commit record or params).
    sent: HashSet<ContentId>,
}

impl Parts {
    fn new(limit: usize, budget: usize) -> Parts {
        Parts {
            limit,
            budget,
            total: 0,
            parts: Vec::new(),
            entries: Vec::new(),
            values: Vec::new(),
            bytes: 0,
            sent: HashSet::new(),
        }
    }

    /// Whether the answer has used its budget (the rest waits for the next round).
    fn full(&self) -> bool {
        self.total >= self.budget
    }

    /// Adds entry `i` costing `size` bytes in the op, with its values (id and encoding): a new part
    /// starts when this one is full. A group of values larger than a whole part goes without them
    /// (the receiver fetches it).
    fn push(&mut self, i: usize, size: usize, group: Vec<(ContentId, Vec<u8>)>) {
        let fresh: Vec<(ContentId, Vec<u8>)> =
            group.into_iter().filter(|(id, _)| !self.sent.contains(id)).collect();
        let mut group_bytes: usize = fresh.iter().map(|(_, v)| v.len()).sum();
        let fresh = if group_bytes > self.limit {
            group_bytes = 0;
            Vec::new()
        } else {
            fresh
        };
        if !self.entries.is_empty()
            && (self.entries.len() >= MAX_PART_ENTRIES || self.bytes + size + group_bytes > self.limit)
        {
            self.cut();
        }
        self.bytes += size + group_bytes;
        self.total += size + group_bytes;
        self.entries.push(i);
        for (id, v) in fresh {
            self.sent.insert(id);
            self.values.push(ByteBuf::from(v));
        }
    }

    fn cut(&mut self) {
        self.parts.push((std::mem::take(&mut self.entries), std::mem::take(&mut self.values)));
        self.bytes = 0;
        self.sent.clear();
    }

    fn finish(mut self) -> Vec<(Vec<usize>, Vec<ByteBuf>)> {
        if !self.entries.is_empty() || self.parts.is_empty() {
            self.cut();
        }
        self.parts
    }
}

/// The positions of `keys`, ordered by their bucket starting at bucket `offset` (then by
/// position).
fn by_bucket<'a>(keys: impl Iterator<Item = &'a Value>, offset: usize) -> Vec<usize> {
    let buckets = super::state::BUCKETS;
    let rotated = |b: usize| (b + buckets - offset % buckets) % buckets;
    // Entries of one key come together (adds and removals are by key): hash each key once.
    let mut last: Option<(&Value, usize)> = None;
    let mut order: Vec<(usize, usize)> = keys
        .enumerate()
        .map(|(i, k)| {
            let bucket = match last {
                Some((lk, b)) if lk == k => b,
                _ => rotated(super::state::bucket_of_encoded(&k.encode())),
            };
            last = Some((k, bucket));
            (bucket, i)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// Bytes an OR-Map entry takes in an op (roughly: key, dot, commit id, framing).
fn entry_size(e: &OrEntry) -> usize {
    e.key.encoded_len() + 64
}

impl Peer {
    /// A commit record and its params with their ids (known: nothing is hashed again), as they
    /// travel inline.
    fn group_of(&self, cid: &ContentId) -> Vec<(ContentId, Vec<u8>)> {
        self.value_group(cid, &HashMap::new(), &HashMap::new())
    }

    /// Splits a catch-up op into bounded parts with their inline values (see the module docs).
    pub(crate) fn catch_up_parts(&self, op: AnyOp, offset: usize) -> Vec<(AnyOp, Vec<ByteBuf>)> {
        let mut parts = Parts::new(self.config.inline_limit, self.config.max_answer_bytes);
        match op {
            AnyOp::Cdvcs(op) => {
                for (i, entry) in op.commits.iter().enumerate() {
                    if parts.full() {
                        break;
                    }
                    parts.push(i, 34 * (entry.parents.len() + 1) + 8, self.group_of(&entry.id));
                }
                let CdvcsOp { method, commits, heads } = op;
                let mut commits: Vec<Option<_>> = commits.into_iter().map(Some).collect();
                parts
                    .finish()
                    .into_iter()
                    .map(|(idx, values)| {
                        let commits = idx.iter().filter_map(|&i| commits[i].take()).collect();
                        (AnyOp::Cdvcs(CdvcsOp { method, commits, heads: heads.clone() }), values)
                    })
                    .collect()
            }
            AnyOp::Ormap(op) => {
                let n_adds = op.adds.len();
                let all: Vec<&OrEntry> = op.adds.iter().chain(&op.removals).collect();
                for i in by_bucket(all.iter().map(|e| &e.key), offset) {
                    if parts.full() {
                        break;
                    }
                    parts.push(i, entry_size(all[i]), self.group_of(&all[i].commit));
                }
                let mut entries: Vec<Option<OrEntry>> =
                    op.adds.into_iter().chain(op.removals).map(Some).collect();
                parts
                    .finish()
                    .into_iter()
                    .map(|(idx, values)| {
                        let (mut adds, mut removals) = (Vec::new(), Vec::new());
                        for i in idx {
                            let e = entries[i].take().expect("each entry in one part");
                            if i < n_adds { adds.push(e) } else { removals.push(e) }
                        }
                        (AnyOp::Ormap(OrMapOp { adds, removals }), values)
                    })
                    .collect()
            }
            AnyOp::Gset(op) => {
                let elements: Vec<Value> = op.elements.into_iter().collect();
                for i in by_bucket(elements.iter(), offset) {
                    if parts.full() {
                        break;
                    }
                    parts.push(i, elements[i].encoded_len() + 8, Vec::new());
                }
                let mut elements: Vec<Option<Value>> = elements.into_iter().map(Some).collect();
                parts
                    .finish()
                    .into_iter()
                    .map(|(idx, _)| {
                        let elements = idx.iter().filter_map(|&i| elements[i].take()).collect();
                        (AnyOp::Gset(GSetOp { elements }), Vec::new())
                    })
                    .collect()
            }
            lww @ AnyOp::Lww(_) => vec![(lww, Vec::new())],
        }
    }

    /// Answers a summary with what the remote lacks, in bounded parts (see the module docs).
    pub(crate) fn publish_catch_up(&mut self, conn: ConnId, address: &Address, op: AnyOp) {
        // A different first bucket for every answer on the connection (97 is prime to 256).
        let offset = match self.conns.get_mut(&conn) {
            Some(c) => {
                c.answers = c.answers.wrapping_add(1);
                c.answers as usize * 97
            }
            None => return,
        };
        for (op, values) in self.catch_up_parts(op, offset) {
            let id = self.next_id();
            self.send(
                conn,
                Message::Publish(Publish { id, address: address.clone(), op, values, catch_up: true }),
            );
        }
    }
}
