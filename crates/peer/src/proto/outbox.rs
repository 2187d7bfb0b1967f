//! The core's outbox: outputs to hand the driver now, and outputs held back until the barrier of
//! their epoch has passed (acknowledgements, relays, replies and change events of writes), with
//! the folding of relays and acknowledgements per barrier (`docs/design.md` §6.4).
//!
//! Invariants (unit-tested below):
//! - Held outputs are released in the order they were held, and only once a barrier covering
//!   their epoch is done; messages to connections closed meanwhile are dropped.
//! - Within one epoch, relays of one address to one connection fold into one publication (within
//!   the entry and byte limits) and acknowledgements of one connection into one (the latest id);
//!   never across epochs, and never into an output already released or failed.
//! - A failed epoch releases nothing of its own: its replies become errors, the rest is dropped.
//! - OR-Map and CDVCS relays fold the same way into live batches (`relay_batch`), held as a
//!   placeholder and encoded when the epoch's barrier is requested, so a released batch always
//!   carries its data and decodes to the union of the ops folded into it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};

use replikativ_crdt::cdvcs::CdvcsMethod;
use replikativ_crdt::{Address, Commit, ContentId, IdMap, Value};
use serde_bytes::ByteBuf;

use super::batch::{BatchEncoder, CommitSource};
use super::message::{AnyOp, Batch, Message, Publish};
use super::state::commit_ids;
use super::{ConnId, Output, StageError};

/// An open publication or acknowledgement of the current epoch: its position among all outputs
/// ever held (so releasing older ones does not move it).
#[derive(Debug, Clone, Copy)]
struct Open {
    at: u64,
    entries: usize,
    bytes: usize,
}

/// Bounds of one folded relay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldLimits {
    /// Op entries in one publication at most.
    pub(crate) entries: usize,
    /// Bytes of op entries and inline values in one publication at most.
    pub(crate) bytes: usize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Outputs for the driver now.
    now: Vec<Output>,
    /// Outputs waiting for the barrier of their epoch.
    held: VecDeque<(u64, Output)>,
    /// How many outputs have left `held` (the position of its front among all ever held).
    released: u64,
    /// The epoch the next barrier request gets (outputs held now wait for it).
    epoch: u64,
    /// Whether something was held since the last barrier request.
    dirty: bool,
    /// Relays of the current epoch, per connection and address: later ops fold into them.
    relays: HashMap<(ConnId, Address), Open>,
    /// Acknowledgements of the current epoch, per connection.
    acks: HashMap<ConnId, u64>,
    /// Live batches of the current epoch being built, by the position of their held placeholder
    /// (a `Batch` without data until the epoch ends).
    building: HashMap<u64, Building>,
    /// Ids the finished live batches named without their values, per connection: what those
    /// connections may fetch (taken by `Peer::handle_batch`, see `Peer::offer`).
    pub(crate) offered: Vec<(ConnId, Vec<ContentId>)>,
}

/// A live batch of the current epoch: its encoder, and for a CDVCS the method and heads of the
/// latest op folded in (as `AnyOp::absorb` folds them).
struct Building {
    enc: BatchEncoder,
    cdvcs: Option<(CdvcsMethod, BTreeSet<ContentId>)>,
}

impl std::fmt::Debug for Building {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Building").field("entries", &self.enc.len()).finish_non_exhaustive()
    }
}

/// Where a live batch reads an op's commit records and params: their bytes by id, and the
/// records already parsed.
pub(crate) struct Sources<'a> {
    pub(crate) bytes: &'a dyn Fn(&ContentId) -> Option<Cow<'a, [u8]>>,
    pub(crate) commits: &'a IdMap<Commit>,
}

/// An op's commit records with their params, read once for sizing and encoding (borrowed where
/// the applied op's values hold them).
struct Gathered<'a> {
    records: IdMap<(Cow<'a, [u8]>, Cow<'a, Commit>)>,
    params: IdMap<Cow<'a, [u8]>>,
    bytes: usize,
}

impl<'a> Gathered<'a> {
    /// The op's commit records and params, as many as fit `budget` bytes (the rest travels by id
    /// and the receiver fetches it).
    fn of(op: &AnyOp, sources: &Sources<'a>, budget: usize) -> Gathered<'a> {
        let mut g = Gathered { records: IdMap::default(), params: IdMap::default(), bytes: 0 };
        let mut inline = 0;
        for cid in commit_ids(op) {
            if g.records.contains_key(&cid) {
                continue;
            }
            let Some(record) = (sources.bytes)(&cid) else { continue };
            let commit = match sources.commits.get(&cid) {
                Some(c) => Cow::Borrowed(c),
                None => match Value::decode(&record).ok().and_then(|v| Commit::from_value(&v).ok()) {
                    Some(c) => Cow::Owned(c),
                    // Not a commit record: the batch names it by id (the receiver fetches it).
                    None => continue,
                },
            };
            if inline + record.len() > budget {
                continue;
            }
            inline += record.len();
            for tx in &commit.transactions {
                if !g.params.contains_key(&tx.params)
                    && let Some(v) = (sources.bytes)(&tx.params)
                    && inline + v.len() <= budget
                {
                    inline += v.len();
                    g.params.insert(tx.params, v);
                }
            }
            g.records.insert(cid, (record, commit));
        }
        g.bytes = op.approx_bytes() + inline;
        g
    }

    fn source(&self, cid: &ContentId) -> Option<CommitSource<'_>> {
        self.records.get(cid).map(|(record, commit)| CommitSource { record, commit })
    }

    /// Adds the op's entries to `b`.
    fn push(&self, b: &mut Building, op: &AnyOp) {
        let params = |id: &ContentId| self.params.get(id).map(|v| v.to_vec());
        match op {
            AnyOp::Ormap(o) => {
                for (removal, e) in
                    o.adds.iter().map(|e| (false, e)).chain(o.removals.iter().map(|e| (true, e)))
                {
                    b.enc.push(removal, e, self.source(&e.commit), &params);
                }
            }
            AnyOp::Cdvcs(o) => {
                for e in &o.commits {
                    if !b.enc.has_commit(&e.id) {
                        b.enc.push_commit_entry(e, self.source(&e.id), &params);
                    }
                }
                b.cdvcs = Some((o.method, o.heads.clone()));
            }
            AnyOp::Lww(_) | AnyOp::Gset(_) => unreachable!("only OR-Map and CDVCS ops travel in batches"),
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            now: Vec::new(),
            held: VecDeque::new(),
            released: 0,
            epoch: 1,
            dirty: false,
            relays: HashMap::new(),
            acks: HashMap::new(),
            building: HashMap::new(),
            offered: Vec::new(),
        }
    }
}

impl Outbox {
    /// An output for the driver now.
    pub(crate) fn push(&mut self, output: Output) {
        self.now.push(output);
    }

    /// A message to send now.
    pub(crate) fn send(&mut self, conn: ConnId, msg: Message) {
        self.now.push(Output::Send { conn, msg });
    }

    /// An output to release once everything written so far is durable.
    pub(crate) fn after_barrier(&mut self, output: Output) {
        self.dirty = true;
        self.held.push_back((self.epoch, output));
    }

    fn position_of_last(&self) -> u64 {
        self.released + self.held.len() as u64 - 1
    }

    fn held_mut(&mut self, at: u64) -> Option<&mut Output> {
        let i = at.checked_sub(self.released)? as usize;
        self.held.get_mut(i).map(|(_, o)| o)
    }

    /// Relays `op` on `address` to `conn` after the barrier, folded into this epoch's publication
    /// of the address to the connection if there is one with room ([`AnyOp::absorb`]); otherwise
    /// a new publication with the id `new_id` gives. Returns the publication's id.
    pub(crate) fn relay(
        &mut self,
        conn: ConnId,
        address: &Address,
        op: &AnyOp,
        values: Vec<ByteBuf>,
        limits: FoldLimits,
        new_id: impl FnOnce() -> u64,
    ) -> u64 {
        // The op's own bytes count with its values: entries with large keys fold into fewer.
        let size: usize = values.iter().map(|v| v.len()).sum::<usize>() + op.approx_bytes();
        let key = (conn, address.clone());
        if let Some(open) = self.relays.get(&key).copied()
            && open.entries + op.len() <= limits.entries
            && open.bytes + size <= limits.bytes
            && let Some(Output::Send { msg: Message::Publish(p), .. }) = self.held_mut(open.at)
            && p.op.absorb(op.clone()).is_ok()
        {
            p.values.extend(values);
            let id = p.id;
            let open = self.relays.get_mut(&key).expect("present");
            open.entries += op.len();
            open.bytes += size;
            return id;
        }
        let id = new_id();
        let msg = Message::Publish(Publish {
            id,
            address: address.clone(),
            op: op.clone(),
            values,
            catch_up: false,
        });
        self.after_barrier(Output::Send { conn, msg });
        let at = self.position_of_last();
        self.relays.insert(key, Open { at, entries: op.len(), bytes: size });
        id
    }

    /// Relays an OR-Map or CDVCS `op` on `address` to `conn` after the barrier as a live batch
    /// (ids left out, the commit records and params inline, compressed: see `batch`), folded into
    /// this epoch's batch of the address to the connection if there is one with room; otherwise a
    /// new batch with the id `new_id` gives. Returns the batch's id.
    pub(crate) fn relay_batch(
        &mut self,
        conn: ConnId,
        address: &Address,
        op: &AnyOp,
        sources: &Sources<'_>,
        limits: FoldLimits,
        new_id: impl FnOnce() -> u64,
    ) -> u64 {
        let g = Gathered::of(op, sources, limits.bytes);
        let key = (conn, address.clone());
        let method = |op: &AnyOp| match op {
            AnyOp::Cdvcs(o) => Some(o.method),
            _ => None,
        };
        if let Some(open) = self.relays.get(&key).copied()
            && open.entries + op.len() <= limits.entries
            && open.bytes + g.bytes <= limits.bytes
            && let Some(b) = self.building.get_mut(&open.at)
            && b.cdvcs.as_ref().map(|(m, _)| *m) == method(op)
        {
            g.push(b, op);
            let open = self.relays.get_mut(&key).expect("present");
            open.entries += op.len();
            open.bytes += g.bytes;
            let at = open.at;
            return match self.held_mut(at) {
                Some(Output::Send { msg: Message::Batch(b), .. }) => b.id,
                _ => unreachable!("a building batch holds a batch placeholder"),
            };
        }
        let id = new_id();
        let mut b = Building {
            enc: if matches!(op, AnyOp::Cdvcs(_)) { BatchEncoder::cdvcs() } else { BatchEncoder::default() },
            cdvcs: None,
        };
        g.push(&mut b, op);
        let msg = Message::Batch(Batch { id, address: address.clone(), data: ByteBuf::new(), live: true });
        self.after_barrier(Output::Send { conn, msg });
        let at = self.position_of_last();
        self.building.insert(at, b);
        self.relays.insert(key, Open { at, entries: op.len(), bytes: g.bytes });
        id
    }

    /// Encodes the live batches of the epoch that ends (nothing folds into them any more).
    fn finish_batches(&mut self) {
        for (at, mut b) in std::mem::take(&mut self.building) {
            let referenced = std::mem::take(&mut b.enc.referenced);
            if !referenced.is_empty()
                && let Some(Output::Send { conn, .. }) = self.held_mut(at)
            {
                let conn = *conn;
                self.offered.push((conn, referenced));
            }
            let data = match b.cdvcs {
                Some((method, heads)) => b.enc.finish_cdvcs(method, &heads),
                None => b.enc.finish(),
            };
            if let Some(Output::Send { msg: Message::Batch(batch), .. }) = self.held_mut(at) {
                batch.data = ByteBuf::from(data);
            }
        }
    }

    /// Acknowledges publication `id` of `conn` after the barrier. An acknowledgement covers every
    /// earlier publication of the connection (they are handled in order), so one already held in
    /// this epoch is advanced instead of holding another.
    pub(crate) fn ack(&mut self, conn: ConnId, id: u64) {
        if let Some(at) = self.acks.get(&conn).copied()
            && let Some(Output::Send { msg: Message::PublishAck { id: acked }, .. }) = self.held_mut(at)
        {
            *acked = id;
            return;
        }
        self.after_barrier(Output::Send { conn, msg: Message::PublishAck { id } });
        let at = self.position_of_last();
        self.acks.insert(conn, at);
    }

    /// Ends a batch of inputs: if anything was held or written (`written`) since the last request,
    /// asks the driver for a barrier of the current epoch, and starts the next one (nothing folds
    /// across it). Returns the outputs for the driver.
    pub(crate) fn end_batch(&mut self, written: bool) -> Vec<Output> {
        if self.dirty || written {
            self.dirty = false;
            self.finish_batches();
            self.now.push(Output::Barrier { epoch: self.epoch });
            self.epoch += 1;
            self.relays.clear();
            self.acks.clear();
        }
        std::mem::take(&mut self.now)
    }

    /// Outputs for the driver now, without ending the batch.
    pub(crate) fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.now)
    }

    /// The barrier of `epoch` (and every earlier one) is done: releases what waited for it,
    /// except messages to connections `open` says are closed.
    pub(crate) fn barrier_done(&mut self, epoch: u64, open: impl Fn(ConnId) -> bool) {
        while self.held.front().is_some_and(|(e, _)| *e <= epoch) {
            let (_, output) = self.held.pop_front().expect("checked");
            self.released += 1;
            if let Output::Send { conn, .. } = &output
                && !open(*conn)
            {
                continue;
            }
            self.now.push(output);
        }
    }

    /// The barrier of `epoch` failed (the store is poisoned): what waited for it is dropped, and
    /// stage commands get the error.
    pub(crate) fn barrier_failed(&mut self, epoch: u64, error: &str) {
        while self.held.front().is_some_and(|(e, _)| *e <= epoch) {
            let (_, output) = self.held.pop_front().expect("checked");
            self.released += 1;
            if let Output::Reply { id, .. } = output {
                self.now.push(Output::Reply { id, result: Err(StageError::Store(error.to_owned())) });
            }
        }
    }

    /// The writes of the current epoch failed: nothing held in it is released; stage commands
    /// get the error. (Nothing folds into what was dropped.)
    pub(crate) fn fail_current(&mut self, error: &str) {
        while self.held.back().is_some_and(|(e, _)| *e == self.epoch) {
            let (_, output) = self.held.pop_back().expect("checked");
            if let Output::Reply { id, .. } = output {
                self.now.push(Output::Reply { id, result: Err(StageError::Store(error.to_owned())) });
            }
        }
        self.relays.clear();
        self.acks.clear();
        self.building.clear();
    }
}

#[cfg(test)]
mod tests {
    use replikativ_crdt::{GSetOp, Value};

    use super::*;

    const LIMITS: FoldLimits = FoldLimits { entries: 3, bytes: 1000 };

    fn address(n: u128) -> Address {
        Address::new("mail:a@b", uuid::Uuid::from_u128(n)).unwrap()
    }

    fn gset(e: i64) -> AnyOp {
        AnyOp::Gset(GSetOp { elements: [Value::from(e)].into_iter().collect() })
    }

    fn publications(out: &[Output]) -> Vec<(ConnId, Vec<i64>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn, msg: Message::Publish(p) } => {
                    let AnyOp::Gset(g) = &p.op else { return None };
                    let mut es: Vec<i64> = g.elements.iter().map(|v| v.as_i64().unwrap()).collect();
                    es.sort();
                    Some((*conn, es))
                }
                _ => None,
            })
            .collect()
    }

    fn acks(out: &[Output]) -> Vec<(ConnId, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn, msg: Message::PublishAck { id } } => Some((*conn, *id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn relays_fold_per_connection_and_address_within_an_epoch_and_its_limits() {
        let mut o = Outbox::default();
        let mut ids = 0..;
        let mut id = || ids.next().unwrap();
        for e in 0..4 {
            o.relay(1, &address(1), &gset(e), vec![], LIMITS, &mut id);
        }
        o.relay(2, &address(1), &gset(9), vec![], LIMITS, &mut id);
        o.relay(1, &address(2), &gset(8), vec![], LIMITS, &mut id);
        let out = o.end_batch(false);
        assert!(matches!(out.as_slice(), [Output::Barrier { epoch: 1 }]));
        assert!(publications(&o.take()).is_empty(), "nothing before the barrier");
        // A relay after the barrier request does not fold into the previous epoch's.
        o.relay(1, &address(1), &gset(5), vec![], LIMITS, &mut id);
        o.barrier_done(1, |_| true);
        assert_eq!(
            publications(&o.take()),
            vec![(1, vec![0, 1, 2]), (1, vec![3]), (2, vec![9]), (1, vec![8])],
            "three entries fit one publication; other connections and addresses get their own"
        );
        o.end_batch(false);
        o.barrier_done(2, |_| true);
        assert_eq!(publications(&o.take()), vec![(1, vec![5])]);
    }

    #[test]
    fn a_relay_over_the_byte_limit_starts_a_new_publication() {
        let mut o = Outbox::default();
        let mut n = 0;
        let value = || vec![ByteBuf::from(vec![0u8; 600])];
        o.relay(1, &address(1), &gset(1), value(), LIMITS, || {
            n += 1;
            n
        });
        o.relay(1, &address(1), &gset(2), value(), LIMITS, || 7);
        o.end_batch(false);
        o.barrier_done(1, |_| true);
        assert_eq!(publications(&o.take()), vec![(1, vec![1]), (1, vec![2])]);
    }

    #[test]
    fn the_ops_own_bytes_count_toward_the_fold_limit() {
        let mut o = Outbox::default();
        let big = |n: i64| {
            AnyOp::Gset(GSetOp { elements: [Value::from(vec![n as u8; 600])].into_iter().collect() })
        };
        let mut ids = 0..;
        o.relay(1, &address(1), &big(1), vec![], LIMITS, || ids.next().unwrap());
        o.relay(1, &address(1), &big(2), vec![], LIMITS, || ids.next().unwrap());
        o.end_batch(false);
        o.barrier_done(1, |_| true);
        let out = o.take();
        assert_eq!(out.len(), 2, "two elements of 600 bytes do not fit one publication of 1000: {out:?}");
    }

    #[test]
    fn acknowledgements_advance_within_an_epoch_and_survive_released_outputs() {
        let mut o = Outbox::default();
        o.ack(1, 10);
        o.ack(1, 11);
        o.ack(2, 3);
        o.end_batch(false);
        // Epoch 2: a held reply, then the barrier of epoch 1 completes while epoch 2 is open;
        // positions of epoch 2's outputs stay valid.
        o.after_barrier(Output::Reply { id: 1, result: Ok(super::super::Reply::Done) });
        o.ack(1, 12);
        o.barrier_done(1, |_| true);
        o.ack(1, 13);
        assert_eq!(acks(&o.take()), vec![(1, 11), (2, 3)]);
        o.end_batch(false);
        o.barrier_done(2, |_| true);
        let out = o.take();
        assert_eq!(acks(&out), vec![(1, 13)]);
        assert!(matches!(out[0], Output::Reply { id: 1, .. }), "released in order: {out:?}");
    }

    #[test]
    fn messages_to_closed_connections_are_dropped_at_release() {
        let mut o = Outbox::default();
        o.ack(1, 1);
        o.ack(2, 1);
        o.end_batch(false);
        o.barrier_done(1, |c| c == 2);
        assert_eq!(acks(&o.take()), vec![(2, 1)]);
    }

    #[test]
    fn a_failed_epoch_releases_nothing_and_fails_its_replies() {
        let mut o = Outbox::default();
        o.ack(1, 1);
        o.end_batch(false);
        o.ack(1, 2);
        o.after_barrier(Output::Reply { id: 5, result: Ok(super::super::Reply::Done) });
        o.relay(1, &address(1), &gset(1), vec![], LIMITS, || 1);
        o.fail_current("disk full");
        // Nothing folds into what was dropped.
        o.relay(1, &address(1), &gset(2), vec![], LIMITS, || 2);
        o.ack(1, 3);
        let failed = o.take();
        assert!(
            matches!(&failed[..], [Output::Reply { id: 5, result: Err(StageError::Store(e)) }] if e == "disk full"),
            "{failed:?}"
        );
        o.end_batch(false);
        o.barrier_done(2, |_| true);
        let out = o.take();
        assert_eq!(acks(&out), vec![(1, 1), (1, 3)]);
        assert_eq!(publications(&out), vec![(1, vec![2])]);
    }

    /// An op with its values (records and params) and its records parsed.
    type Made = (AnyOp, IdMap<Vec<u8>>, IdMap<Commit>);

    /// OR-Map assocs `from..to` by one writer, with their records and params, as stage commands
    /// make them.
    fn assocs(from: i64, to: i64) -> Vec<Made> {
        let mut m = replikativ_crdt::OrMap::default();
        (from..to)
            .map(|i| {
                let txs = vec![replikativ_crdt::Transaction::new("set", i)];
                let staged =
                    m.assoc(Value::from(i), txs, replikativ_crdt::ActorId::from_u128(1), "a", 0).unwrap();
                let values = staged.values.iter().map(|(id, v)| (*id, v.encode())).collect();
                let commits = staged.commits.into_iter().collect();
                (AnyOp::Ormap(staged.op), values, commits)
            })
            .collect()
    }

    fn relay_all(o: &mut Outbox, conn: ConnId, ops: &[Made], ids: &mut u64) {
        for (op, values, commits) in ops {
            let bytes = |id: &ContentId| values.get(id).map(|v| Cow::Borrowed(v.as_slice()));
            let sources = Sources { bytes: &bytes, commits };
            o.relay_batch(conn, &address(1), op, &sources, LIMITS, || {
                *ids += 1;
                *ids
            });
        }
    }

    /// The keys of the live batches in `out`, per batch, decoded as a receiver does.
    fn batches(out: &[Output]) -> Vec<(ConnId, Vec<i64>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn, msg: Message::Batch(b) } => {
                    assert!(b.live);
                    let decoded = super::super::batch::decode(&b.data).expect("a released batch decodes");
                    let AnyOp::Ormap(op) = decoded.op else { panic!("an OR-Map batch") };
                    assert_eq!(decoded.values.len(), 2 * op.adds.len(), "records and params inline");
                    Some((*conn, op.adds.iter().map(|e| e.key.as_i64().unwrap()).collect()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn live_batches_fold_within_an_epoch_and_its_limits_and_carry_their_data() {
        let mut o = Outbox::default();
        let mut ids = 0;
        relay_all(&mut o, 1, &assocs(0, 4), &mut ids);
        relay_all(&mut o, 2, &assocs(10, 11), &mut ids);
        assert!(o.end_batch(false).iter().all(|x| matches!(x, Output::Barrier { .. })));
        // A relay after the barrier request starts a batch of the next epoch.
        relay_all(&mut o, 1, &assocs(20, 21), &mut ids);
        o.barrier_done(1, |_| true);
        assert_eq!(
            batches(&o.take()),
            vec![(1, vec![0, 1, 2]), (1, vec![3]), (2, vec![10])],
            "three entries fit one batch; other connections get their own"
        );
        o.end_batch(false);
        o.barrier_done(2, |_| true);
        assert_eq!(batches(&o.take()), vec![(1, vec![20])]);
    }

    #[test]
    fn a_failed_epoch_drops_its_live_batches_and_nothing_folds_into_them() {
        let mut o = Outbox::default();
        let mut ids = 0;
        relay_all(&mut o, 1, &assocs(0, 2), &mut ids);
        o.fail_current("disk full");
        relay_all(&mut o, 1, &assocs(5, 6), &mut ids);
        o.end_batch(false);
        o.barrier_done(1, |_| true);
        assert_eq!(batches(&o.take()), vec![(1, vec![5])]);
    }

    #[test]
    fn values_beyond_the_inline_limit_travel_by_id() {
        let mut o = Outbox::default();
        let ops = assocs(0, 1);
        let (op, values, commits) = &ops[0];
        let bytes = |id: &ContentId| values.get(id).map(|v| Cow::Borrowed(v.as_slice()));
        let none = FoldLimits { entries: 10, bytes: 0 };
        o.relay_batch(1, &address(1), op, &Sources { bytes: &bytes, commits }, none, || 1);
        o.end_batch(false);
        o.barrier_done(1, |_| true);
        let out = o.take();
        let Some(Output::Send { msg: Message::Batch(b), .. }) = out.first() else { panic!("{out:?}") };
        let decoded = super::super::batch::decode(&b.data).unwrap();
        assert!(decoded.values.is_empty(), "nothing inline with an inline limit of 0");
        assert_eq!(&decoded.op, op, "the op names its commit by id");
    }

    #[test]
    fn a_barrier_is_requested_only_when_something_waits_or_was_written() {
        let mut o = Outbox::default();
        assert!(o.end_batch(false).is_empty());
        assert!(matches!(o.end_batch(true).as_slice(), [Output::Barrier { epoch: 1 }]));
        o.send(1, Message::PublishAck { id: 1 });
        assert!(matches!(o.end_batch(false).as_slice(), [Output::Send { .. }]), "sent now, no barrier");
        o.barrier_failed(1, "x");
        o.after_barrier(Output::Reply { id: 9, result: Ok(super::super::Reply::Done) });
        assert!(matches!(o.end_batch(false).as_slice(), [Output::Barrier { epoch: 2 }]));
        o.barrier_failed(2, "poisoned");
        assert!(matches!(&o.take()[..], [Output::Reply { id: 9, result: Err(_) }]));
    }
}
