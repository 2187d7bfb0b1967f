//! Publications: receiving ops, fetching the values they need, applying, storing, acknowledging
//! after the barrier, and relaying what changed the state.
//!
//! Publications from one connection are applied in order. Before an op is applied every commit
//! record it names, and every params value those commits name, is in the store (fetched if it did
//! not travel inline), so nothing ever reads a dangling id. Every value is verified against its
//! content id before it is kept. The acknowledgement, and the relay to other subscribers, wait for
//! the barrier that makes the op durable; a peer relays only ops that changed its state, which ends
//! echo loops in any graph.

use std::borrow::Cow;
use std::collections::BTreeSet;

use replikativ_crdt::{Address, Commit, ContentId, IdMap, IdSet, Value};
use serde_bytes::ByteBuf;

use super::message::{AnyOp, MAX_FETCH_IDS, Message, Publish};
use super::outbox::{FoldLimits, Sources};
use super::persist::commit_of;
use super::state::{CrdtState, commit_ids};
use super::{ConnId, Event, Output, Peer, Pending, Refusal, Replica, StageError};

/// Entries folded into one relayed publication (LWW, G-Set) at most.
pub(crate) const MAX_RELAY_ENTRIES: usize = 1024;
/// Entries folded into one live batch (OR-Map, CDVCS) at most.
pub(crate) const MAX_BATCH_RELAY_ENTRIES: usize = 8192;

/// Where an op came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A live publication from a connection (not sent back to it).
    Remote(ConnId),
    /// A catch-up answer from a connection (not echoed: it answers this peer's own summary).
    CatchUp(ConnId),
    Local,
}

impl Peer {
    /// Refuses publication `id` of `conn` without closing the connection.
    fn refuse(&mut self, conn: ConnId, id: u64, why: Refusal, reason: String) {
        self.refusals.count(why);
        tracing::debug!(peer = %self.record.id, conn, id, refusal = %why, %reason, "publication refused");
        self.send(conn, Message::Refused { id, reason });
    }

    /// The checks every publication (and batch) passes before it is queued: both sides subscribe
    /// to the address, the op is of the address's kind and passes `check_remote_op`. Returns
    /// false when the publication was answered already (refused, closed, or acknowledged as a
    /// duplicate this peer holds entirely).
    fn admit(&mut self, conn: ConnId, id: u64, address: &Address, op: &AnyOp) -> bool {
        // Only addresses both sides subscribe to: this peer (it holds them) and the connection
        // (it asked for them here; a peer publishes only what its remote subscribed to, and never
        // to what it did not itself subscribe to).
        let asked = self.conns.get(&conn).is_some_and(|c| c.interest.contains(address));
        if !self.record.subscriptions.contains(address) || !asked {
            let reason = if asked {
                format!("this peer does not subscribe to {address}")
            } else {
                format!("publication for {address}, which this connection did not subscribe to")
            };
            self.refuse(conn, id, Refusal::NotSubscribed, reason);
            return false;
        }
        if let Some(replica) = self.crdts.get(address)
            && replica.state.kind() != op.kind()
        {
            let reason =
                format!("{:?} op for {address}, which holds a {:?}", op.kind(), replica.state.kind());
            self.close(conn, Refusal::WrongKind, reason);
            return false;
        }
        if let Err((why, reason)) = self.check_remote_op(address, op) {
            self.refuse(conn, id, why, reason);
            return false;
        }
        // An op this peer already holds entirely (the echo of its own publication, a duplicate):
        // nothing to fetch, store or relay, only the acknowledgement once what holds it is durable.
        // Only when nothing waits ahead of it, so acknowledgements keep their order.
        let idle = self.conns.get(&conn).is_some_and(|c| c.queue.is_empty() && c.fetching.is_none());
        if idle && self.crdts.get(address).is_some_and(|r| r.state.includes(op)) {
            self.ack(conn, id);
            return false;
        }
        true
    }

    pub(crate) fn on_publish(&mut self, conn: ConnId, p: Publish) {
        if !self.admit(conn, p.id, &p.address, &p.op) {
            return;
        }
        // Every inline value must decode; the op's commit records are parsed right away (once).
        let records: IdSet = commit_ids(&p.op).into_iter().collect();
        let mut values = IdMap::with_capacity_and_hasher(p.values.len(), Default::default());
        let mut commits = IdMap::default();
        for bytes in p.values {
            let value = match Value::decode(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    let reason = format!("inline value in publication {} does not decode: {e}", p.id);
                    return self.close(conn, Refusal::BadValue, reason);
                }
            };
            let id = ContentId::hash_bytes(&bytes);
            // (A record that does not parse is reported when the publication is processed.)
            if records.contains(&id)
                && let Ok(commit) = Commit::from_value(&value)
            {
                commits.insert(id, commit);
            }
            values.insert(id, bytes.into_vec());
        }
        self.enqueue(conn, p.id, p.address, p.op, values, commits, p.catch_up);
    }

    /// A compact batch: decoded (every id computed here), then handled like a publication of its
    /// op with its values inline (a catch-up one unless it is `live`).
    pub(crate) fn on_batch(&mut self, conn: ConnId, b: super::message::Batch) {
        let decoded = match super::batch::decode(&b.data) {
            Ok(d) => d,
            Err(e) => return self.close(conn, Refusal::BadBatch, format!("batch {}: {e}", b.id)),
        };
        let op = decoded.op;
        if !self.admit(conn, b.id, &b.address, &op) {
            return;
        }
        self.enqueue(conn, b.id, b.address, op, decoded.values, decoded.commits, !b.live);
    }

    /// Queues a publication whose inline values are decoded and verified (keyed by the hash of
    /// their bytes), within the connection's queue limits.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        conn: ConnId,
        id: u64,
        address: Address,
        op: AnyOp,
        values: IdMap<Vec<u8>>,
        commits: IdMap<Commit>,
        catch_up: bool,
    ) {
        let limit = self.config.max_queued_publications;
        let max_bytes = self.config.max_queued_bytes;
        let bytes: usize = values.values().map(Vec::len).sum();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.queue.len() >= limit {
            let reason = format!("publication flood: more than {limit} publications waiting");
            return self.close(conn, Refusal::PublicationFlood, reason);
        }
        if c.queued_bytes + bytes > max_bytes && !c.queue.is_empty() {
            let reason = format!("publication flood: more than {max_bytes} bytes of values waiting");
            return self.close(conn, Refusal::QueuedBytes, reason);
        }
        c.queued_bytes += bytes;
        c.queue.push_back(Pending { bytes, id, address, op, values, commits, catch_up });
        if c.fetching.is_none() {
            self.process_queue(conn);
        }
    }

    /// The checks a remote op needs beyond the datatype's own validation (which runs when it is
    /// applied), because they depend on this peer: an LWW stamp may be at most `max_clock_skew`
    /// in the future of this peer's clock (else a forged far-future write would win forever), and
    /// an OR-Map op may name this peer's own writer's dots only for entries it made (it is their
    /// only writer; a forged one could take its counter or collide with its next write).
    pub(super) fn check_remote_op(&self, address: &Address, op: &AnyOp) -> Result<(), (Refusal, String)> {
        match op {
            AnyOp::Lww(w) => {
                let bound = self.now_ms.saturating_add(self.config.max_clock_skew.as_millis() as u64);
                if let Some(stamp) = &w.stamp
                    && stamp.wall_ms > bound
                {
                    let ahead = stamp.wall_ms - self.now_ms;
                    return Err((
                        Refusal::ClockSkew,
                        format!(
                            "LWW stamp {} ms ahead of this peer's clock (at most {} ms)",
                            ahead,
                            self.config.max_clock_skew.as_millis()
                        ),
                    ));
                }
            }
            AnyOp::Ormap(o) => {
                let state = match self.crdts.get(address).map(|r| &r.state) {
                    Some(CrdtState::Ormap(m)) => Some(m),
                    _ => None,
                };
                let ours = |e: &&replikativ_crdt::OrEntry| e.dot.actor == self.actor;
                let forged = o
                    .adds
                    .iter()
                    .chain(&o.removals)
                    .filter(ours)
                    .find(|e| !state.is_some_and(|m| m.has_add(&e.key, &e.dot)));
                if let Some(e) = forged {
                    return Err((
                        Refusal::ForgedDot,
                        format!(
                            "OR-Map entry tagged {:?}, a write of this peer's own writer it never made",
                            e.dot
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies queued publications of `conn` until one needs values (then fetches them).
    fn process_queue(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get(&conn) else { return };
            if c.fetching.is_some() {
                return;
            }
            let Some(head) = c.queue.front() else { return };
            let (need, parsed) = match self.missing_values(head) {
                Ok(r) => r,
                Err(reason) => return self.close(conn, Refusal::BadValue, reason),
            };
            let head = self.conns.get_mut(&conn).expect("present").queue.front_mut().expect("head");
            head.commits.extend(parsed);
            if !need.is_empty() {
                let ids: Vec<ContentId> = need.into_iter().take(MAX_FETCH_IDS).collect();
                let id = self.next_id();
                let c = self.conns.get_mut(&conn).expect("present");
                c.fetching = Some((id, ids.iter().copied().collect()));
                c.fetch_ticks = 0;
                self.send(conn, Message::Fetch { id, ids });
                return;
            }
            let c = self.conns.get_mut(&conn).expect("present");
            let pending = c.queue.pop_front().expect("head");
            c.queued_bytes -= pending.bytes;
            self.apply_remote(conn, pending);
        }
    }

    /// Ids of the values a publication still needs (its commit records, then their params), and
    /// the commit records newly parsed from its values.
    #[allow(clippy::type_complexity)]
    pub(super) fn missing_values(
        &self,
        p: &Pending,
    ) -> Result<(BTreeSet<ContentId>, Vec<(ContentId, Commit)>), String> {
        let mut need = BTreeSet::new();
        let mut parsed = Vec::new();
        for cid in commit_ids(&p.op) {
            let commit = match (p.commits.get(&cid), p.values.get(&cid)) {
                (Some(commit), _) => commit,
                (None, Some(bytes)) => {
                    let value =
                        Value::decode(bytes).map_err(|e| format!("commit {cid} does not decode: {e}"))?;
                    let commit = Commit::from_value(&value).map_err(|e| format!("commit {cid}: {e}"))?;
                    parsed.push((cid, commit));
                    &parsed.last().expect("pushed").1
                }
                // Stored commits have their params stored.
                (None, None) if self.persist.has_value(&cid) => continue,
                (None, None) => {
                    need.insert(cid);
                    continue;
                }
            };
            for tx in &commit.transactions {
                if !p.values.contains_key(&tx.params) && !self.persist.has_value(&tx.params) {
                    need.insert(tx.params);
                }
            }
        }
        Ok((need, parsed))
    }

    /// Checks that the commit records an op names belong to its datatype and, for a CDVCS, that
    /// every new graph entry has the parents its record names (the record's id covers them).
    pub(super) fn check_records(&self, p: &Pending) -> Result<(), String> {
        let kind = p.op.kind();
        let record = |cid: &ContentId| -> Result<Option<Commit>, String> {
            if let Some(c) = p.commits.get(cid) {
                return Ok(Some(c.clone()));
            }
            match self.persist.value(cid) {
                Ok(Some(bytes)) => {
                    let value = Value::decode(&bytes).map_err(|e| format!("stored commit {cid}: {e}"))?;
                    Commit::from_value(&value).map(Some).map_err(|e| format!("stored commit {cid}: {e}"))
                }
                _ => Ok(None),
            }
        };
        for (cid, commit) in &p.commits {
            if commit.crdt != kind {
                return Err(format!("commit {cid} is a {:?} commit, named by a {kind:?} op", commit.crdt));
            }
        }
        if let AnyOp::Cdvcs(op) = &p.op {
            let known = |id: &ContentId| match self.crdts.get(&p.address).map(|r| &r.state) {
                Some(CrdtState::Cdvcs(c)) => c.graph().contains(id),
                _ => false,
            };
            for entry in op.commits.iter().filter(|e| !known(&e.id)) {
                match record(&entry.id)? {
                    Some(c) if c.parents == entry.parents && c.crdt == kind => {}
                    Some(_) => {
                        return Err(format!(
                            "graph entry of commit {} names other parents than its commit record",
                            entry.id
                        ));
                    }
                    None => return Err(format!("commit record {} is missing", entry.id)),
                }
            }
        }
        Ok(())
    }

    /// Asks again for fetches unanswered for two anti-entropy intervals (their frames were lost).
    pub(crate) fn retry_fetches(&mut self) {
        let mut retry = Vec::new();
        for (conn, c) in &mut self.conns {
            if let Some((_, ids)) = &c.fetching {
                c.fetch_ticks += 1;
                if c.fetch_ticks >= 2 {
                    retry.push((*conn, ids.iter().copied().collect::<Vec<_>>()));
                }
            }
        }
        for (conn, ids) in retry {
            let id = self.next_id();
            let c = self.conns.get_mut(&conn).expect("present");
            c.fetching = Some((id, ids.iter().copied().collect()));
            c.fetch_ticks = 0;
            self.send(conn, Message::Fetch { id, ids });
        }
    }

    pub(crate) fn on_fetch(&mut self, conn: ConnId, id: u64, ids: Vec<ContentId>) {
        if ids.len() > MAX_FETCH_IDS {
            let reason = format!("fetch of {} ids (at most {MAX_FETCH_IDS})", ids.len());
            return self.close(conn, Refusal::FetchTooLarge, reason);
        }
        let mut values = Vec::new();
        let mut missing = Vec::new();
        let mut bytes_total = 0;
        let offered = |cid: &ContentId| self.conns.get(&conn).is_some_and(|c| c.offered.contains(cid));
        // The params of a commit record sent now are named to the remote by that record.
        let mut named = Vec::new();
        let mut not_offered = false;
        for cid in ids {
            // Only what this peer named to the remote without sending it: a content id is not a
            // read token (an id of an address the remote may not read is answered `missing`,
            // exactly like an id this peer does not hold).
            if !offered(&cid) {
                not_offered = true;
                missing.push(cid);
                continue;
            }
            match self.persist.value(&cid) {
                Ok(Some(bytes))
                    if bytes_total + bytes.len() <= self.config.fetch_reply_limit || values.is_empty() =>
                {
                    bytes_total += bytes.len();
                    if let Some(commit) = commit_of(&cid, &bytes, &IdMap::default()) {
                        named.extend(commit.transactions.iter().map(|t| t.params));
                    }
                    values.push(ByteBuf::from(bytes));
                }
                // Over the reply budget: the fetcher asks again for what is left.
                Ok(Some(_)) => {}
                _ => missing.push(cid),
            }
        }
        if not_offered {
            self.refusals.count(Refusal::FetchNotOffered);
        }
        self.offer(conn, named);
        self.send(conn, Message::FetchReply { id, values, missing });
    }

    pub(crate) fn on_fetch_reply(
        &mut self,
        conn: ConnId,
        id: u64,
        values: Vec<ByteBuf>,
        missing: Vec<ContentId>,
    ) {
        let c = self.conns.get_mut(&conn).expect("caller checked");
        let asked = match &c.fetching {
            Some((fid, asked)) if *fid == id => asked.clone(),
            _ => {
                let reason = format!("fetch reply {id} answers no fetch of this peer");
                return self.close(conn, Refusal::StrayFetchReply, reason);
            }
        };
        c.fetching = None;
        let mut received = Vec::with_capacity(values.len());
        for bytes in values {
            let cid = ContentId::hash_bytes(&bytes);
            if !asked.contains(&cid) {
                return self.close(
                    conn,
                    Refusal::WrongHash,
                    format!("fetched value hashes to {cid}, which was not asked for (wrong hash)"),
                );
            }
            if let Err(e) = Value::decode(&bytes) {
                return self.close(
                    conn,
                    Refusal::BadValue,
                    format!("fetched value {cid} does not decode: {e}"),
                );
            }
            received.push((cid, bytes.into_vec()));
        }
        let c = self.conns.get_mut(&conn).expect("present");
        let Some(head) = c.queue.front_mut() else { return };
        head.values.extend(received);
        if !missing.is_empty() {
            // The publisher does not have what its op needs: drop this publication (anti-entropy
            // brings the op again from a peer that can serve it).
            let dropped = c.queue.pop_front().expect("head");
            c.queued_bytes -= dropped.bytes;
            tracing::warn!(peer = %self.record.id, conn, id = dropped.id, missing = missing.len(), "dropping a publication whose values the sender lacks");
        }
        self.process_queue(conn);
    }

    fn apply_remote(&mut self, conn: ConnId, p: Pending) {
        if let Err(reason) = self.check_records(&p) {
            return self.close(conn, Refusal::InvalidOp, format!("invalid op for {}: {reason}", p.address));
        }
        let fresh = !self.crdts.contains_key(&p.address);
        let replica = self
            .crdts
            .entry(p.address.clone())
            .or_insert_with(|| Replica::new(CrdtState::empty(p.op.kind())));
        let result = replica.state.apply(&p.op);
        let incomplete = replica.state.is_incomplete();
        match result {
            Err(e) => {
                if fresh {
                    self.crdts.remove(&p.address);
                }
                self.close(conn, Refusal::InvalidOp, format!("invalid op for {}: {e}", p.address));
            }
            Ok(changed) => {
                // A new address is recorded even if the op changed nothing (an empty state).
                let stored = !(changed || fresh) || {
                    let origin = if p.catch_up { Origin::CatchUp(conn) } else { Origin::Remote(conn) };
                    self.record_applied(&p.address, p.op, p.values, &p.commits, origin).is_ok()
                };
                // (An op whose writes failed is not acknowledged.)
                if stored {
                    self.ack(conn, p.id);
                }
                if incomplete {
                    // History is missing under what arrived: ask the sender for it now.
                    let summary = self.crdts[&p.address].state.summary();
                    self.send(
                        conn,
                        Message::Summaries { summaries: vec![(p.address.clone(), summary)], reply: true },
                    );
                }
            }
        }
    }

    /// Stores what an applied op needs and produced (values, op log, snapshot), then schedules the
    /// relay and the change event for after the barrier.
    pub(crate) fn record_applied(
        &mut self,
        address: &Address,
        op: AnyOp,
        values: IdMap<Vec<u8>>,
        commits: &IdMap<Commit>,
        origin: Origin,
    ) -> Result<(), StageError> {
        // Every subscribed connection but the one the op came from (which has it: unlike the
        // original, no echo) gets it.
        let targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                c.remote.is_some()
                    && c.interest.contains(address)
                    && origin != Origin::CatchUp(**id)
                    && origin != Origin::Remote(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        // Relayed before the values move into the store's pending writes (a live batch reads
        // them); if those writes fail, the whole epoch's outputs are dropped (`fail_epoch`), these
        // relays with them.
        for conn in targets {
            self.relay(conn, address, &op, &values, commits);
        }
        // A failed write is neither relayed nor reported (nor acknowledged: see `fail_epoch`).
        let replica = self.crdts.get_mut(address).expect("applied state exists");
        if self.persist.record(address, replica, &op, values, commits) && !self.flush_writes() {
            return Err(StageError::Store("cannot store applied ops (see the log)".into()));
        }
        let cdvcs = matches!(op, AnyOp::Cdvcs(_));
        let event = Event { address: address.clone(), op, local: origin == Origin::Local };
        self.after_barrier(Output::Event(event));
        if cdvcs && !self.config.hooks.is_empty() {
            // Integrity checks read the store: give them what is pending.
            if self.flush_writes() {
                self.run_hooks(address);
            }
        }
        Ok(())
    }

    /// Sends `op` to `conn` after the barrier, folded into the publication of the same address
    /// already waiting for this barrier if there is one (within [`MAX_RELAY_ENTRIES`] entries and
    /// the inline limit): under load many ops travel in one frame. OR-Map and CDVCS ops travel as
    /// live batches (`Outbox::relay_batch`), the others as publications.
    fn relay(
        &mut self,
        conn: ConnId,
        address: &Address,
        op: &AnyOp,
        values: &IdMap<Vec<u8>>,
        commits: &IdMap<Commit>,
    ) {
        let next_id = &mut self.next_id;
        let new_id = || {
            *next_id += 1;
            *next_id
        };
        let id = match op {
            AnyOp::Ormap(_) | AnyOp::Cdvcs(_) => {
                let persist = &self.persist;
                let bytes = |id: &ContentId| match values.get(id) {
                    Some(v) => Some(Cow::Borrowed(v.as_slice())),
                    None => persist.value(id).ok().flatten().map(Cow::Owned),
                };
                let sources = Sources { bytes: &bytes, commits };
                let limits = FoldLimits { entries: MAX_BATCH_RELAY_ENTRIES, bytes: self.config.inline_limit };
                self.outbox.relay_batch(conn, address, op, &sources, limits, new_id)
            }
            // (LWW and G-Set ops name no commit records: nothing travels beside them.)
            AnyOp::Lww(_) | AnyOp::Gset(_) => {
                let limits = FoldLimits { entries: MAX_RELAY_ENTRIES, bytes: self.config.inline_limit };
                self.outbox.relay(conn, address, op, Vec::new(), limits, new_id)
            }
        };
        self.note_sent(conn, address, op, id);
    }

    /// Acknowledges publication `id` of `conn` after the barrier (folded: see `Outbox::ack`).
    pub(crate) fn ack(&mut self, conn: ConnId, id: u64) {
        self.outbox.ack(conn, id);
    }

    /// Writes what the ops handled since the last call stored (values, op-log entries,
    /// snapshots, the peer record) as one atomic store batch (see `persist`). Runs before every
    /// barrier request, and before code that reads the store (pull hooks' integrity checks). If the
    /// store refuses the writes, nothing waiting for this barrier is acknowledged (see
    /// `fail_epoch`). Returns whether the writes (if any) succeeded.
    pub(crate) fn flush_writes(&mut self) -> bool {
        match self.persist.flush(&mut self.crdts, &self.record) {
            Ok(()) => true,
            Err(e) => {
                self.fail_epoch(format!("cannot store applied ops: {e}"));
                false
            }
        }
    }

    /// The writes of the current epoch failed: nothing waiting for its barrier is sent; stage
    /// commands get the error. (The ops stay applied in memory; the store keeps what it had.)
    pub(crate) fn fail_epoch(&mut self, error: String) {
        tracing::error!(peer = %self.record.id, %error, "store write failed; not acknowledging");
        self.outbox.fail_current(&error);
    }

    /// A commit record and its params with their ids (from `known` or the store), as they travel
    /// inline; empty if the record is not at hand.
    pub(super) fn value_group(
        &self,
        cid: &ContentId,
        known: &IdMap<Vec<u8>>,
        commits: &IdMap<Commit>,
    ) -> Vec<(ContentId, Vec<u8>)> {
        let fetch = |id: &ContentId| -> Option<(ContentId, Vec<u8>)> {
            known.get(id).cloned().or_else(|| self.persist.value(id).ok().flatten()).map(|b| (*id, b))
        };
        let Some((_, bytes)) = fetch(cid) else { return Vec::new() };
        let params: Vec<(ContentId, Vec<u8>)> = commit_of(cid, &bytes, commits)
            .map(|c| c.transactions.iter().filter_map(|tx| fetch(&tx.params)).collect())
            .unwrap_or_default();
        std::iter::once((*cid, bytes)).chain(params).collect()
    }
}
