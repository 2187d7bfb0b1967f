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

use replikativ_crdt::{Address, CdvcsOp, ContentId, Dot, DotSet, GSetOp, OrEntry, OrMapOp, Value};
use serde_bytes::ByteBuf;

use super::batch::{BatchEncoder, CommitSource};
use super::message::{AnyOp, Batch, DotSummary, Message, Publish};
use super::persist::commit_of;
use super::state::{CrdtState, Known};
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

    /// Answers a summary with what the remote lacks, in bounded parts (see the module docs). A
    /// CDVCS answer goes as a stream paced by acknowledgements (one per connection and address:
    /// while it runs, newer summaries are not answered again; new commits travel live).
    pub(crate) fn publish_catch_up(&mut self, conn: ConnId, address: &Address, op: AnyOp) {
        let op = match op {
            AnyOp::Cdvcs(o) => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                if !c.commit_streams.iter().any(|s| &s.address == address) && !o.commits.is_empty() {
                    c.commit_streams.push_back(CommitStream {
                        address: address.clone(),
                        method: o.method,
                        heads: o.heads,
                        commits: o.commits.into(),
                    });
                    self.pump_streams(conn);
                }
                return;
            }
            other => other,
        };
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
            self.catch_up_publications += 1;
            self.send(
                conn,
                Message::Publish(Publish { id, address: address.clone(), op, values, catch_up: true }),
            );
        }
    }
}

/// Catch-up batches one connection may have unacknowledged at most: the receiver's
/// acknowledgements (sent once a batch is applied and durable) pace the sender, so a slow receiver
/// slows its sender and never makes it queue more than this many batches.
pub const STREAM_WINDOW: usize = 4;
/// Entries in one catch-up batch at most (the byte bound, `inline_limit`, usually comes first).
pub const MAX_BATCH_PART_ENTRIES: usize = 8192;

/// Dots sent on a connection for one address (see `Conn::sent_dots`).
#[derive(Clone, Default, Debug)]
pub(crate) struct SentDots {
    pub(crate) adds: DotSet,
    pub(crate) removed: DotSet,
}

/// What remains to send of one OR-Map to one connection: the entries whose dots the remote did
/// not name in its summary, in key order from `cursor` (adds first, then removals).
#[derive(Debug)]
pub(crate) struct Stream {
    address: Address,
    known: Known,
    /// 0 adds, 1 removals, 2 done.
    phase: u8,
    cursor: Option<Value>,
}

/// What remains to send of a CDVCS catch-up answer to one connection: the graph entries (parents
/// first) not reachable from the remote's heads, sent in bounded publications with their commit
/// records and params inline, paced by acknowledgements like batches.
#[derive(Debug)]
pub(crate) struct CommitStream {
    address: Address,
    method: replikativ_crdt::cdvcs::CdvcsMethod,
    heads: std::collections::BTreeSet<ContentId>,
    commits: std::collections::VecDeque<replikativ_crdt::cdvcs::GraphEntry>,
}

/// A sent-dots set grows past this many runs (scattered removals): it is forgotten (costs at most
/// a resend), so it never grows without bound.
const MAX_SENT_RUNS: usize = 1 << 16;

impl Peer {
    /// Remembers that `op`'s OR-Map dots are on their way to `conn`.
    pub(crate) fn note_sent(&mut self, conn: ConnId, address: &Address, op: &AnyOp) {
        let AnyOp::Ormap(o) = op else { return };
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let sent = c.sent_dots.entry(address.clone()).or_default();
        for e in &o.adds {
            sent.adds.insert(e.dot);
        }
        for e in &o.removals {
            sent.removed.insert(e.dot);
        }
        if sent.adds.range_count() + sent.removed.range_count() > MAX_SENT_RUNS {
            c.sent_dots.remove(address);
        }
    }

    /// Forgets what was sent on `conn` and its streams: messages to it may have been lost.
    pub(crate) fn forget_sent(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sent_dots.clear();
            c.sent_before.clear();
            c.streams.clear();
            c.commit_streams.clear();
            c.in_flight.clear();
        }
    }

    /// An anti-entropy tick: what was sent two ticks ago and batches unacknowledged for two ticks
    /// are forgotten (see `Conn::sent_dots`), and streams whose window freed go on.
    pub(crate) fn age_sent(&mut self) {
        let mut freed = Vec::new();
        for (conn, c) in &mut self.conns {
            c.sent_before = std::mem::take(&mut c.sent_dots);
            let before = c.in_flight.len();
            c.in_flight.retain(|_, ticks| {
                *ticks += 1;
                *ticks < 2
            });
            if c.in_flight.len() != before && !(c.streams.is_empty() && c.commit_streams.is_empty()) {
                freed.push(*conn);
            }
        }
        for conn in freed {
            self.pump_streams(conn);
        }
    }

    /// The dots sent on `conn` for `address` in this tick and the one before.
    fn sent_to(&self, conn: ConnId, address: &Address) -> SentDots {
        let mut sent = SentDots::default();
        if let Some(c) = self.conns.get(&conn) {
            for s in [c.sent_dots.get(address), c.sent_before.get(address)].into_iter().flatten() {
                sent.adds.extend(&s.adds);
                sent.removed.extend(&s.removed);
            }
        }
        sent
    }

    /// Answers an OR-Map summary: when the remote lacks entries (not counting those already on
    /// their way to it), a stream of batches sends them (see [`Stream`]).
    pub(crate) fn on_dots(&mut self, conn: ConnId, address: &Address, theirs: DotSummary) {
        let Some(CrdtState::Ormap(m)) = self.crdts.get(address).map(|r| &r.state) else { return };
        if !self.conns.contains_key(&conn) {
            return;
        }
        let sent = self.sent_to(conn, address);
        let known = Known::new(m, theirs);
        let (adds_covered, removals_covered) = known.covers(m, &sent.adds, &sent.removed);
        if adds_covered && removals_covered {
            return;
        }
        let c = self.conns.get_mut(&conn).expect("checked");
        if let Some(s) = c.streams.iter_mut().find(|s| &s.address == address) {
            // A stream is on its way: what the remote now says it has is skipped too.
            s.known.merge(m, known.theirs);
        } else {
            let phase = if adds_covered { 1 } else { 0 };
            c.streams.push_back(Stream { address: address.clone(), known, phase, cursor: None });
        }
        self.pump_streams(conn);
    }

    /// Sends catch-up batches to `conn` while fewer than [`STREAM_WINDOW`] are unacknowledged.
    pub(crate) fn pump_streams(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            if c.in_flight.len() >= STREAM_WINDOW {
                return;
            }
            let Some(mut stream) = c.streams.pop_front() else {
                if !self.pump_commits(conn) {
                    return;
                }
                continue;
            };
            let sent = self.sent_to(conn, &stream.address);
            let (data, taken) = self.stream_part(&mut stream, &sent);
            let address = stream.address.clone();
            let id = self.next_id();
            let c = self.conns.get_mut(&conn).expect("present");
            let now = c.sent_dots.entry(address.clone()).or_default();
            for (removal, dot) in taken {
                if removal {
                    now.removed.insert(dot);
                } else {
                    now.adds.insert(dot);
                }
            }
            if stream.phase < 2 {
                c.streams.push_back(stream);
            }
            if let Some(data) = data {
                c.in_flight.insert(id, 0);
                self.batches_sent += 1;
                self.send(conn, Message::Batch(Batch { id, address, data: ByteBuf::from(data) }));
            }
        }
    }

    /// Sends the next part of the first CDVCS stream of `conn` as a compact batch; false if there
    /// is none.
    fn pump_commits(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        let Some(mut stream) = c.commit_streams.pop_front() else { return false };
        let limit = self.config.inline_limit;
        let mut enc = BatchEncoder::cdvcs();
        let no_commits = HashMap::new();
        while let Some(entry) = stream.commits.front() {
            let record = self.persist.value(&entry.id).ok().flatten();
            let parsed = record.as_ref().and_then(|r| commit_of(&entry.id, r, &no_commits));
            let params: HashMap<ContentId, Vec<u8>> = parsed
                .iter()
                .flat_map(|c| c.transactions.iter())
                .filter_map(|t| self.persist.value(&t.params).ok().flatten().map(|v| (t.params, v)))
                .collect();
            // An upper bound of what the entry adds to the batch.
            let bound = 40 * (entry.parents.len() + 1)
                + record.as_ref().map_or(40, |r| r.len())
                + params.values().map(|v| v.len().min(super::batch::MAX_INLINE_PARAMS) + 16).sum::<usize>();
            if enc.len() > 0 && (enc.len() >= MAX_BATCH_PART_ENTRIES || enc.raw_bytes() + bound > limit) {
                break;
            }
            let source = match (&record, &parsed) {
                (Some(r), Some(c)) => Some(CommitSource { record: r, commit: c }),
                _ => None,
            };
            enc.push_commit_entry(entry, source, &|id| params.get(id).cloned());
            stream.commits.pop_front();
        }
        let address = stream.address.clone();
        let data = enc.finish_cdvcs(stream.method, &stream.heads);
        let id = self.next_id();
        let c = self.conns.get_mut(&conn).expect("present");
        if !stream.commits.is_empty() {
            c.commit_streams.push_back(stream);
        }
        c.in_flight.insert(id, 0);
        self.batches_sent += 1;
        self.send(conn, Message::Batch(Batch { id, address, data: ByteBuf::from(data) }));
        true
    }

    /// The next batch of a stream (`None` if nothing was left), with the dots it carries.
    fn stream_part(&self, stream: &mut Stream, sent: &SentDots) -> (Option<Vec<u8>>, Vec<(bool, Dot)>) {
        let Some(CrdtState::Ormap(m)) = self.crdts.get(&stream.address).map(|r| &r.state) else {
            stream.phase = 2;
            return (None, Vec::new());
        };
        let limit = self.config.inline_limit;
        let mut enc = BatchEncoder::default();
        let mut taken = Vec::new();
        let no_commits = HashMap::new();
        'phases: while stream.phase < 2 {
            let removals = stream.phase == 1;
            let mut cache = None;
            for (key, dot, commit) in m.tags_from(removals, stream.cursor.as_ref()) {
                let sent_already =
                    if removals { sent.removed.contains(dot) } else { sent.adds.contains(dot) };
                if sent_already || stream.known.has(removals, key, dot, &mut cache) {
                    continue;
                }
                let entry = OrEntry { key: key.clone(), dot: *dot, commit: *commit };
                let record = self.persist.value(commit).ok().flatten();
                let parsed = record.as_ref().and_then(|r| commit_of(commit, r, &no_commits));
                let params: HashMap<ContentId, Vec<u8>> = parsed
                    .iter()
                    .flat_map(|c| c.transactions.iter())
                    .filter_map(|t| self.persist.value(&t.params).ok().flatten().map(|v| (t.params, v)))
                    .collect();
                // An upper bound of what the entry adds to the batch.
                let bound = key.encoded_len()
                    + 40
                    + record.as_ref().map_or(40, |r| r.len())
                    + params
                        .values()
                        .map(|v| v.len().min(super::batch::MAX_INLINE_PARAMS) + 16)
                        .sum::<usize>();
                if enc.len() > 0 && (enc.len() >= MAX_BATCH_PART_ENTRIES || enc.raw_bytes() + bound > limit) {
                    stream.cursor = Some(key.clone());
                    break 'phases;
                }
                let source = match (&record, &parsed) {
                    (Some(r), Some(c)) => Some(CommitSource { record: r, commit: c }),
                    _ => None,
                };
                enc.push(removals, &entry, source, &|id| params.get(id).cloned());
                taken.push((removals, *dot));
            }
            stream.phase += 1;
            stream.cursor = None;
        }
        if enc.len() == 0 {
            return (None, taken);
        }
        (Some(enc.finish()), taken)
    }

    /// A publication (or batch) of this peer was applied by the remote: catch-up batches up to it
    /// are done, and the streams go on.
    pub(crate) fn on_publish_ack(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        // An acknowledgement covers every earlier publication of this peer on the connection.
        let before = c.in_flight.len();
        c.in_flight.retain(|x, _| *x > id);
        if c.in_flight.len() != before || !c.streams.is_empty() || !c.commit_streams.is_empty() {
            self.pump_streams(conn);
        }
    }

    /// A publication of this peer was refused: what was sent on the connection may not all have
    /// arrived, so it is forgotten (the next anti-entropy round sends what is missing).
    pub(crate) fn on_refused(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.sent_dots.clear();
        c.sent_before.clear();
        if c.in_flight.remove(&id).is_some() {
            self.pump_streams(conn);
        }
    }
}
