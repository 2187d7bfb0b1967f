//! Catch-up answers: what a remote lacks, with the values inline (so catch-up needs no fetch
//! round trips), never as one message that grows with the state.
//!
//! - OR-Maps and CDVCSs answer with streams (`Stream`, `CommitStream`) of compact batches
//!   (`batch.rs`), each within `inline_limit` bytes, at most [`STREAM_WINDOW`] unacknowledged per
//!   connection: the receiver's acknowledgements pace the sender (design §6.5.1). An OR-Map stream
//!   walks the map in key order from a cursor, skipping what the remote's summary names and what
//!   is on its way to the remote (sent and not yet acknowledged: [`SentLog`]).
//! - G-Sets and LWW registers (and OR-Maps a remote summarized otherwise than by dots) answer with
//!   bounded publications: at most [`MAX_PART_ENTRIES`] entries and about `inline_limit` bytes each,
//!   at most `max_answer_bytes` per answer (the rest waits for the next round). Their parts go
//!   bucket by bucket (the buckets of `Summary::Buckets`), each answer on a connection starting at
//!   another bucket, so a receiver whose outbox drops the later parts still completes buckets every
//!   round. A part is a valid op on its own (entries join by union).

use std::collections::{BTreeMap, HashMap};

use std::borrow::Cow;

use replikativ_crdt::{
    Address, Commit, ContentId, Dot, DotSet, GSetOp, IdMap, IdSet, OrEntry, OrMapOp, Value,
};
use serde_bytes::ByteBuf;

use super::batch::{BatchEncoder, CommitSource};
use super::message::{AnyOp, Batch, Message, Publish};
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
    sent: IdSet,
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
            sent: IdSet::default(),
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
        self.value_group(cid, &IdMap::default(), &IdMap::default())
    }

    /// Splits a catch-up op into bounded parts with their inline values (see the module docs).
    pub(crate) fn catch_up_parts(&self, op: AnyOp, offset: usize) -> Vec<(AnyOp, Vec<ByteBuf>)> {
        let mut parts = Parts::new(self.config.inline_limit, self.config.max_answer_bytes);
        match op {
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
            // (CDVCS answers are streams: `publish_catch_up` never hands them here.)
            single @ (AnyOp::Lww(_) | AnyOp::Cdvcs(_)) => vec![(single, Vec::new())],
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

/// Dots sent on a connection for one address.
#[derive(Clone, Default, Debug)]
pub(crate) struct SentDots {
    pub(crate) adds: DotSet,
    pub(crate) removed: DotSet,
}

/// Anti-entropy ticks after which dots sent and still not acknowledged are forgotten (their
/// frames were lost: only the simulation loses frames on a live connection), so they go again.
pub const SENT_TICKS: u64 = 6;

/// The OR-Map dots on their way to one connection: those of every publication and batch sent and
/// not yet acknowledged. The remote acknowledges in order once it applied (or refused, or dropped)
/// a publication, and sends its summaries in order too: a summary that arrives before the
/// acknowledgement was made without those dots, one made after it includes them (if they were
/// applied). So anti-entropy never sends what is in flight, however long the stream lags, and sends
/// again at once what an acknowledgement shows was not applied. (Ids are taken in creation order,
/// and a relayed publication held for its barrier can leave after a later batch: an
/// acknowledgement of the batch then forgets the relay's dots early, which costs at most a resend.)
#[derive(Debug, Default)]
pub(crate) struct SentLog {
    /// Unacknowledged publication id -> its address and the tick it was sent in.
    by_id: BTreeMap<u64, (Address, u64)>,
    /// Per address, the dots of each of them.
    dots: HashMap<Address, BTreeMap<u64, SentDots>>,
}

impl SentLog {
    /// Notes dots of publication `id` (folded relays share one id) on `address`.
    fn note(&mut self, id: u64, address: &Address, tick: u64, f: impl FnOnce(&mut SentDots)) {
        self.by_id.entry(id).or_insert_with(|| (address.clone(), tick));
        let of = self.dots.entry(address.clone()).or_default();
        let entry = of.entry(id).or_default();
        f(entry);
        if entry.adds.range_count() + entry.removed.range_count() > MAX_SENT_RUNS {
            // Too scattered to keep: forgotten (costs at most a resend).
            of.remove(&id);
        }
    }

    /// Publications up to `id` were handled by the remote.
    fn acked(&mut self, id: u64) {
        let rest = self.by_id.split_off(&id.saturating_add(1));
        for (pid, (address, _)) in std::mem::replace(&mut self.by_id, rest) {
            self.forget(pid, &address);
        }
    }

    /// Forgets what was sent before tick `before`.
    fn expire(&mut self, before: u64) {
        while let Some((&pid, (_, tick))) = self.by_id.first_key_value() {
            if *tick >= before {
                break;
            }
            let (address, _) = self.by_id.remove(&pid).expect("present");
            self.forget(pid, &address);
        }
    }

    fn forget(&mut self, id: u64, address: &Address) {
        if let Some(of) = self.dots.get_mut(address) {
            of.remove(&id);
            if of.is_empty() {
                self.dots.remove(address);
            }
        }
    }

    /// Every dot of `address` on its way.
    fn of(&self, address: &Address) -> SentDots {
        let mut sent = SentDots::default();
        for s in self.dots.get(address).into_iter().flat_map(BTreeMap::values) {
            sent.adds.extend(&s.adds);
            sent.removed.extend(&s.removed);
        }
        sent
    }

    pub(crate) fn clear(&mut self) {
        self.by_id.clear();
        self.dots.clear();
    }
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

/// A commit record read for a batch: its encoding, parsed, its params, and an upper bound of what
/// it adds to a batch.
struct CommitInput<'a> {
    record: Option<Vec<u8>>,
    parsed: Option<Cow<'a, Commit>>,
    params: IdMap<Vec<u8>>,
    bound: usize,
}

impl CommitInput<'_> {
    fn source(&self) -> Option<CommitSource<'_>> {
        match (&self.record, &self.parsed) {
            (Some(record), Some(commit)) => Some(CommitSource { record, commit }),
            _ => None,
        }
    }
}

/// A publication's sent dots take more than this many runs (scattered removals): they are not
/// kept (costs at most a resend), so the log never grows without bound.
const MAX_SENT_RUNS: usize = 1 << 16;

impl Peer {
    /// Remembers that `op`'s OR-Map dots are on their way to `conn` in publication `id`.
    pub(crate) fn note_sent(&mut self, conn: ConnId, address: &Address, op: &AnyOp, id: u64) {
        let AnyOp::Ormap(o) = op else { return };
        let tick = self.ticks;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.in_transit.note(id, address, tick, |sent| {
            for e in &o.adds {
                sent.adds.insert(e.dot);
            }
            for e in &o.removals {
                sent.removed.insert(e.dot);
            }
        });
    }

    /// Forgets what was sent on `conn` and its streams: messages to it may have been lost.
    pub(crate) fn forget_sent(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.in_transit.clear();
            c.streams.clear();
            c.commit_streams.clear();
            c.in_flight.clear();
        }
    }

    /// An anti-entropy tick: dots unacknowledged for [`SENT_TICKS`] ticks and batches
    /// unacknowledged for two are forgotten (lost frames), and streams whose window freed go on.
    pub(crate) fn age_sent(&mut self) {
        self.ticks += 1;
        let before_tick = self.ticks.saturating_sub(SENT_TICKS);
        let mut freed = Vec::new();
        for (conn, c) in &mut self.conns {
            c.in_transit.expire(before_tick);
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

    /// The dots on their way to `conn` for `address`.
    fn sent_to(&self, conn: ConnId, address: &Address) -> SentDots {
        self.conns.get(&conn).map(|c| c.in_transit.of(address)).unwrap_or_default()
    }

    /// Answers an OR-Map summary: when the remote lacks entries (not counting those already on
    /// their way to it), a stream of batches sends them (see [`Stream`]).
    pub(crate) fn on_dots(&mut self, conn: ConnId, address: &Address, known: Known) {
        let Some(CrdtState::Ormap(m)) = self.crdts.get(address).map(|r| &r.state) else { return };
        if !self.conns.contains_key(&conn) {
            return;
        }
        let sent = self.sent_to(conn, address);
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
            let (data, taken, referenced) = self.stream_part(&mut stream, &sent);
            self.offer(conn, referenced);
            let address = stream.address.clone();
            let id = self.next_id();
            let tick = self.ticks;
            let c = self.conns.get_mut(&conn).expect("present");
            if !taken.is_empty() {
                c.in_transit.note(id, &address, tick, |now| {
                    for (removal, dot) in taken {
                        if removal {
                            now.removed.insert(dot);
                        } else {
                            now.adds.insert(dot);
                        }
                    }
                });
            }
            if stream.phase < 2 {
                c.streams.push_back(stream);
            }
            if let Some(data) = data {
                c.in_flight.insert(id, 0);
                self.batches_sent += 1;
                self.send(
                    conn,
                    Message::Batch(Batch { id, address, data: ByteBuf::from(data), live: false }),
                );
            }
        }
    }

    /// Reads a commit record and its params from the store for a batch.
    fn commit_input<'a>(&self, id: &ContentId, no_commits: &'a IdMap<Commit>) -> CommitInput<'a> {
        let record = self.persist.value(id).ok().flatten();
        let parsed = record.as_ref().and_then(|r| commit_of(id, r, no_commits));
        let params: IdMap<Vec<u8>> = parsed
            .iter()
            .flat_map(|c| c.transactions.iter())
            .filter_map(|t| self.persist.value(&t.params).ok().flatten().map(|v| (t.params, v)))
            .collect();
        let bound = record.as_ref().map_or(40, Vec::len)
            + params.values().map(|v| v.len().min(super::batch::MAX_INLINE_PARAMS) + 16).sum::<usize>();
        CommitInput { record, parsed, params, bound }
    }

    /// Sends the next part of the first CDVCS stream of `conn` as a compact batch; false if there
    /// is none.
    fn pump_commits(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        let Some(mut stream) = c.commit_streams.pop_front() else { return false };
        let limit = self.config.inline_limit;
        let mut enc = BatchEncoder::cdvcs();
        let no_commits = IdMap::default();
        while let Some(entry) = stream.commits.front() {
            let input = self.commit_input(&entry.id, &no_commits);
            // An upper bound of what the entry adds to the batch.
            let bound = 40 * (entry.parents.len() + 1) + input.bound;
            if enc.len() > 0 && (enc.len() >= MAX_BATCH_PART_ENTRIES || enc.raw_bytes() + bound > limit) {
                break;
            }
            enc.push_commit_entry(entry, input.source(), &|id| input.params.get(id).cloned());
            stream.commits.pop_front();
        }
        let address = stream.address.clone();
        let referenced = std::mem::take(&mut enc.referenced);
        let data = enc.finish_cdvcs(stream.method, &stream.heads);
        self.offer(conn, referenced);
        let id = self.next_id();
        let c = self.conns.get_mut(&conn).expect("present");
        if !stream.commits.is_empty() {
            c.commit_streams.push_back(stream);
        }
        c.in_flight.insert(id, 0);
        self.batches_sent += 1;
        self.send(conn, Message::Batch(Batch { id, address, data: ByteBuf::from(data), live: false }));
        true
    }

    /// The next batch of a stream (`None` if nothing was left), with the dots it carries.
    /// Also the ids it names without their values (what the receiver may fetch).
    fn stream_part(&self, stream: &mut Stream, sent: &SentDots) -> (Option<Vec<u8>>, Vec<(bool, Dot)>, Vec<ContentId>) {
        let Some(CrdtState::Ormap(m)) = self.crdts.get(&stream.address).map(|r| &r.state) else {
            stream.phase = 2;
            return (None, Vec::new(), Vec::new());
        };
        let limit = self.config.inline_limit;
        let mut enc = BatchEncoder::default();
        let mut taken = Vec::new();
        let no_commits = IdMap::default();
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
                // A commit the batch holds already (one dissoc's removal commit for several
                // entries) is not read again.
                let input = (!enc.has_commit(commit)).then(|| self.commit_input(commit, &no_commits));
                // An upper bound of what the entry adds to the batch.
                let bound = key.encoded_len() + 40 + input.as_ref().map_or(0, |i| i.bound);
                if enc.len() > 0 && (enc.len() >= MAX_BATCH_PART_ENTRIES || enc.raw_bytes() + bound > limit) {
                    stream.cursor = Some(key.clone());
                    break 'phases;
                }
                let no_params = IdMap::default();
                let params = input.as_ref().map_or(&no_params, |i| &i.params);
                enc.push(removals, &entry, input.as_ref().and_then(CommitInput::source), &|id| {
                    params.get(id).cloned()
                });
                taken.push((removals, *dot));
            }
            stream.phase += 1;
            stream.cursor = None;
        }
        if enc.len() == 0 {
            return (None, taken, Vec::new());
        }
        let referenced = std::mem::take(&mut enc.referenced);
        (Some(enc.finish()), taken, referenced)
    }

    /// A publication (or batch) of this peer was applied by the remote: catch-up batches up to it
    /// are done, and the streams go on.
    pub(crate) fn on_publish_ack(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        // An acknowledgement covers every earlier publication of this peer on the connection.
        let before = c.in_flight.len();
        c.in_flight.retain(|x, _| *x > id);
        c.in_transit.acked(id);
        if c.in_flight.len() != before || !c.streams.is_empty() || !c.commit_streams.is_empty() {
            self.pump_streams(conn);
        }
    }

    /// A publication of this peer was refused: what was sent on the connection may not all have
    /// arrived, so it is forgotten (the next anti-entropy round sends what is missing).
    pub(crate) fn on_refused(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.in_transit.clear();
        if c.in_flight.remove(&id).is_some() {
            self.pump_streams(conn);
        }
    }
}
