//! Subscriptions and anti-entropy.
//!
//! A peer's subscriptions only grow (as in replikativ): a subscription from a connection joins
//! them. What a peer tells a connection it subscribes to depends on the remote: a server-like
//! remote (`extend`) gets every subscription, a client only the overlap with what it asked for.
//! Subscriptions are sent only when they changed, so propagation through any graph stops once
//! nothing new is learned.
//!
//! Catch-up is a `Sync` exchange of summaries (a CDVCS's heads, a digest of other states): the
//! receiver publishes what the sender lacks (for a CDVCS, only the commits it lacks) and, if it
//! lacks something itself, answers with its own summaries once.

use std::collections::BTreeSet;

use replikativ_crdt::Address;

use replikativ_crdt::DotSet;

use super::message::{DotSummary, Message, Removed, Resubscribe, Subscribe, Summary};
use super::{ConnId, FEATURE_BUCKETS, Peer};

impl Peer {
    /// What this peer subscribes to, as told to `conn`.
    fn subscription_for(&self, conn: ConnId) -> BTreeSet<Address> {
        let c = &self.conns[&conn];
        if c.remote_extend || !c.subscribed {
            self.record.subscriptions.clone()
        } else {
            self.record.subscriptions.intersection(&c.interest).cloned().collect()
        }
    }

    /// Sends this peer's subscription to `conn` if it changed since the last one (or `force`), with
    /// the summaries of those addresses so the remote sends what is missing here.
    pub(crate) fn send_subscription(&mut self, conn: ConnId, force: bool) {
        let Some(c) = self.conns.get(&conn) else { return };
        // Not before the hello, and not to a remote that connected in and has not subscribed yet:
        // the side that connected out subscribes first and gets the back-subscription (so a flood
        // of idle connections is not sent every change of this peer's subscriptions).
        if c.remote.is_none() || (c.direction == super::Direction::Inbound && !c.subscribed) {
            return;
        }
        let addresses = self.subscription_for(conn);
        let previous = self.conns[&conn].sent.clone();
        if !force && previous.as_ref() == Some(&addresses) {
            return;
        }
        let new: Vec<Address> =
            addresses.iter().filter(|a| previous.as_ref().is_none_or(|p| !p.contains(*a))).cloned().collect();
        let digest = super::message::set_digest(&addresses);
        // The remote acknowledged this very set from this peer before (on an earlier connection):
        // name it by its digest. (Not when sent again: a retry or the fallback goes in full.)
        let first = c.sent.is_none();
        let resume = (first || !force)
            && c.remote.as_ref().is_some_and(|h| self.told.get(&h.peer_id) == Some(&digest));
        let id = self.next_id();
        let c = self.conns.get_mut(&conn).expect("checked");
        c.sent = Some(addresses.clone());
        c.unacked_sub = Some(id);
        c.unacked_digest = Some((digest, resume));
        let extend = self.record.extend;
        if resume {
            self.send(conn, Message::Resubscribe(Resubscribe { id, digest, extend }));
        } else {
            self.send(conn, Message::Subscribe(Subscribe { id, addresses, extend }));
        }
        if new.len() > self.config.recon_above {
            // Many addresses: fingerprints, not a summary each (see `recon.rs`). The exchange
            // settles both directions, so only the side that connected out starts it.
            if self.conns.get(&conn).is_some_and(|c| c.direction == super::Direction::Outbound) {
                self.start_recon(conn);
            }
            return;
        }
        let summaries = self.summaries(conn, new.iter());
        if !summaries.is_empty() {
            self.send(conn, Message::Summaries { summaries, reply: false });
        }
    }

    /// Sends again subscriptions whose ack did not arrive by the next tick (their frames were lost).
    pub(crate) fn retry_subscriptions(&mut self) {
        let conns: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| c.unacked_sub.is_some()).map(|(conn, _)| *conn).collect();
        for conn in conns {
            self.send_subscription(conn, true);
        }
    }

    /// Summaries of addresses (an address without state is summarized as `Empty`).
    /// Summaries for `conn`: bucketed ones only if its hello announced [`FEATURE_BUCKETS`] (a peer
    /// that does not know the variant gets digests).
    pub(crate) fn summaries<'a>(
        &self,
        conn: ConnId,
        addresses: impl Iterator<Item = &'a Address>,
    ) -> Vec<(Address, Summary)> {
        let buckets = self
            .conns
            .get(&conn)
            .and_then(|c| c.remote.as_ref())
            .is_some_and(|h| h.features.iter().any(|f| f == FEATURE_BUCKETS));
        let above = if buckets { self.config.bucketed_above } else { u64::MAX };
        addresses
            .map(|a| {
                (
                    a.clone(),
                    self.crdts.get(a).map_or(Summary::Empty, |r| r.state.summary_bucketed_above(above)),
                )
            })
            .collect()
    }

    /// Adds subscriptions (from the stage, or from connection `except`) and propagates them. A
    /// connection's take the peer to at most `max_subscriptions`: addresses beyond it are not
    /// taken on (returned as the second value: how many were left out). The stage's own are not
    /// limited.
    pub(crate) fn extend_subscriptions(
        &mut self,
        addresses: &BTreeSet<Address>,
        except: Option<ConnId>,
    ) -> (bool, usize) {
        let before = self.record.subscriptions.len();
        let max = if except.is_some() { self.config.max_subscriptions } else { usize::MAX };
        let mut left_out = 0;
        for a in addresses {
            if self.record.subscriptions.contains(a) {
                continue;
            }
            if self.record.subscriptions.len() >= max {
                left_out += 1;
                continue;
            }
            self.record.subscriptions.insert(a.clone());
        }
        if left_out > 0 {
            self.refusals.add(super::Refusal::SubscriptionsTotal, left_out as u64);
            tracing::warn!(
                peer = %self.record.id,
                left_out,
                max,
                "subscriptions not taken on: the peer holds max_subscriptions already"
            );
        }
        if self.record.subscriptions.len() == before {
            return (false, left_out);
        }
        self.save_record();
        let conns: Vec<ConnId> = self.conns.keys().copied().filter(|c| Some(*c) != except).collect();
        for conn in conns {
            self.send_subscription(conn, false);
        }
        (true, left_out)
    }

    /// Removes subscriptions and tells every connection that was sent them.
    pub(crate) fn remove_subscriptions(&mut self, addresses: &BTreeSet<Address>) {
        let before = self.record.subscriptions.len();
        self.record.subscriptions.retain(|a| !addresses.contains(a));
        if self.record.subscriptions.len() != before {
            self.save_record();
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            let c = self.conns.get_mut(&conn).expect("present");
            let Some(sent) = c.sent.as_mut() else { continue };
            let dropped: BTreeSet<Address> = sent.intersection(addresses).cloned().collect();
            if !dropped.is_empty() {
                sent.retain(|a| !dropped.contains(a));
                self.send(conn, Message::Unsubscribe { addresses: dropped });
            }
        }
    }

    /// A subscription was acknowledged: the remote now knows its set (a later connection may
    /// `resubscribe` to it).
    pub(crate) fn on_subscribe_ack(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.unacked_sub != Some(id) {
            return;
        }
        c.unacked_sub = None;
        if let (Some((digest, _)), Some(h)) = (c.unacked_digest.take(), c.remote.as_ref()) {
            if self.told.len() >= super::MAX_REMEMBERED_SETS && !self.told.contains_key(&h.peer_id) {
                self.told.clear();
            }
            self.told.insert(h.peer_id.clone(), digest);
        }
    }

    /// A `resubscribe` was refused (the remote does not remember the set): subscribe in full.
    pub(crate) fn on_subscription_refused(&mut self, conn: ConnId, id: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.unacked_sub != Some(id) || !c.unacked_digest.is_some_and(|(_, resume)| resume) {
            return;
        }
        if let Some(h) = c.remote.as_ref() {
            self.told.remove(&h.peer_id);
        }
        self.send_subscription(conn, true);
    }

    /// A subscription by digest: the set this remote peer last subscribed to here in full, if this
    /// peer remembers it; else refused, and the remote subscribes in full.
    pub(crate) fn on_resubscribe(&mut self, conn: ConnId, r: Resubscribe) {
        let peer = self.conns.get(&conn).and_then(|c| c.remote.as_ref()).map(|h| h.peer_id.clone());
        match peer.and_then(|p| self.remembered.get(&p)) {
            Some((digest, set)) if *digest == r.digest => {
                let addresses = set.clone();
                self.on_subscribe(conn, Subscribe { id: r.id, addresses, extend: r.extend });
            }
            _ => {
                let reason = "resubscribe to a subscription this peer does not remember".to_owned();
                self.send(conn, Message::Refused { id: r.id, reason });
            }
        }
    }

    pub(crate) fn on_subscribe(&mut self, conn: ConnId, sub: Subscribe) {
        let max = self.config.max_subscriptions_per_connection;
        if sub.addresses.len() > max {
            let reason =
                format!("subscription of {} addresses (at most {max} per connection)", sub.addresses.len());
            return self.close(conn, super::Refusal::SubscriptionsPerConnection, reason);
        }
        if let Some(h) = self.conns.get(&conn).and_then(|c| c.remote.as_ref()) {
            let peer = h.peer_id.clone();
            if self.remembered.len() >= super::MAX_REMEMBERED_SETS && !self.remembered.contains_key(&peer) {
                self.remembered.clear();
            }
            self.remembered.insert(peer, (super::message::set_digest(&sub.addresses), sub.addresses.clone()));
        }
        let c = self.conns.get_mut(&conn).expect("caller checked");
        let redundant = c.subscribed && c.interest == sub.addresses && c.remote_extend == sub.extend;
        c.interest = sub.addresses.clone();
        c.remote_extend = sub.extend;
        c.subscribed = true;
        if !redundant {
            let (_, left_out) = self.extend_subscriptions(&sub.addresses, Some(conn));
            if left_out > 0 {
                let reason = format!(
                    "{left_out} of the subscribed addresses were not taken on: this peer holds its maximum of {} subscriptions",
                    self.config.max_subscriptions
                );
                self.send(conn, Message::Error { reason });
            }
            // The back-subscription, when the remote's subscription changed what this peer tells it
            // (always on a new connection).
            self.send_subscription(conn, false);
        }
        self.send(conn, Message::SubscribeAck { id: sub.id });
    }

    pub(crate) fn on_sync(&mut self, conn: ConnId, summaries: Vec<(Address, Summary)>, reply: bool) {
        let mut lacking = Vec::new();
        for (address, summary) in summaries {
            let interested = self.conns.get(&conn).is_some_and(|c| c.interest.contains(&address));
            match self.crdts.get(&address) {
                // An OR-Map is answered by a stream of batches (an empty summary: all of it).
                // (An empty map to a peer without it goes as one empty publication: that creates it.)
                Some(replica)
                    if matches!(&replica.state, super::state::CrdtState::Ormap(m) if m.tag_count() > 0)
                        && matches!(summary, Summary::Dots(_) | Summary::Empty) =>
                {
                    let theirs = match summary {
                        Summary::Dots(d) => d,
                        _ => DotSummary {
                            adds: DotSet::default(),
                            removed: Removed::Dots { dots: DotSet::default(), digest: 0 },
                        },
                    };
                    if let super::state::CrdtState::Ormap(m) = &replica.state {
                        let known = super::state::Known::new(m, theirs);
                        if known.lacks(m) {
                            lacking.push(address.clone());
                        }
                        if interested {
                            self.on_dots(conn, &address, known);
                        }
                    }
                }
                Some(replica) => {
                    let (missing, lacks) = replica.state.compare(&summary, interested);
                    if lacks || replica.state.is_incomplete() {
                        lacking.push(address.clone());
                    }
                    let repeated =
                        self.conns.get(&conn).is_some_and(|c| c.answered.get(&address) == Some(&summary));
                    if let Some(op) = missing.filter(|_| !repeated) {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.answered.insert(address.clone(), summary.clone());
                        }
                        self.publish_catch_up(conn, &address, op);
                    }
                }
                None if summary != Summary::Empty && self.record.subscriptions.contains(&address) => {
                    lacking.push(address)
                }
                None => {}
            }
        }
        if !reply && !lacking.is_empty() {
            let summaries = self.summaries(conn, lacking.iter());
            self.send(conn, Message::Summaries { summaries, reply: true });
        }
    }

    /// Sends summaries of every shared address to every open connection.
    pub(crate) fn anti_entropy(&mut self) {
        for c in self.conns.values_mut() {
            c.answered.clear();
        }
        self.age_sent();
        let conns: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| c.remote.is_some()).map(|(c, _)| *c).collect();
        for conn in conns {
            self.resync_summaries(conn);
        }
    }

    /// Sends summaries of every address shared with one connection (anti-entropy for one peer, e.g.
    /// after messages to it were dropped).
    pub(crate) fn resync(&mut self, conn: ConnId) {
        self.forget_sent(conn);
        self.resync_summaries(conn);
    }

    /// Sends summaries of every address shared with one connection (fingerprints when there are
    /// many: `recon.rs`).
    fn resync_summaries(&mut self, conn: ConnId) {
        if self.conns.get(&conn).is_none_or(|c| c.remote.is_none()) {
            return;
        }
        let shared = self.shared_with(conn);
        if shared.len() > self.config.recon_above {
            self.start_recon(conn);
        } else if !shared.is_empty() {
            let summaries = self.summaries(conn, shared.iter());
            self.send(conn, Message::Summaries { summaries, reply: false });
        }
    }
}
