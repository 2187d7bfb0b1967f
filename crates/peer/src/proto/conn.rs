//! Connections: their state, the handshake, and the dispatch of a connection's messages.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use replikativ_crdt::{Address, ContentId, IdMap};

use super::message::{self, Hello, Message, PROTOCOL_VERSION, Summary};
use super::{AnyOp, ConnId, Direction, FEATURE_BUCKETS, Output, Peer, Refusal};

/// A publication received (or made locally) that waits for values before it is applied.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The sender's publication id (remote) or the command id (local).
    pub(crate) id: u64,
    pub(crate) address: Address,
    pub(crate) op: AnyOp,
    /// Verified values received for it (canonical encodings), not yet stored.
    pub(crate) values: IdMap<Vec<u8>>,
    /// Commit records among `values` (or in the store) the op names, parsed once.
    pub(crate) commits: IdMap<replikativ_crdt::Commit>,
    /// Whether it is a catch-up answer (not echoed).
    pub(crate) catch_up: bool,
    /// Bytes of the values it arrived with (counted against `max_queued_bytes`).
    pub(crate) bytes: usize,
}

/// Per-connection state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) direction: Direction,
    /// The remote's hello, once received.
    pub(crate) remote: Option<Hello>,
    /// What the remote subscribed to here: the addresses published to it.
    pub(crate) interest: BTreeSet<Address>,
    /// Whether a subscription arrived yet.
    pub(crate) subscribed: bool,
    /// Whether the remote extends its subscriptions (a server).
    pub(crate) remote_extend: bool,
    /// The last subscription sent.
    pub(crate) sent: Option<BTreeSet<Address>>,
    /// Id of the last subscription sent, until its ack arrives (sent again on a timer tick), with
    /// its set's digest and whether it went as a `resubscribe`.
    pub(crate) unacked_sub: Option<u64>,
    pub(crate) unacked_digest: Option<(ContentId, bool)>,
    /// Inbound publications, applied in order.
    pub(crate) queue: VecDeque<Pending>,
    /// Bytes of values held by `queue`.
    pub(crate) queued_bytes: usize,
    /// The fetch in flight for the head of the queue: its id and the ids asked for.
    pub(crate) fetching: Option<(u64, BTreeSet<ContentId>)>,
    /// Anti-entropy ticks the fetch in flight has been waiting (a lost frame is asked again).
    pub(crate) fetch_ticks: u32,
    /// Anti-entropy ticks without the remote's hello (the connection is closed after two).
    pub(crate) hello_ticks: u32,
    /// Catch-up answers sent on this connection (rotates where the next one starts).
    pub(crate) answers: u32,
    /// Summaries answered with catch-up since the last tick: the same summary arriving again
    /// (both sides' syncs crossing) is not answered twice. Cleared on every tick, so a lost answer
    /// is sent again.
    pub(crate) answered: HashMap<Address, Summary>,
    /// OR-Map catch-up streams to this connection, served round-robin (see `catch_up.rs`).
    pub(crate) streams: VecDeque<super::catch_up::Stream>,
    /// CDVCS catch-up streams to this connection.
    pub(crate) commit_streams: VecDeque<super::catch_up::CommitStream>,
    /// Catch-up batches sent and not yet acknowledged (at most `STREAM_WINDOW`), with the
    /// anti-entropy ticks they have waited (forgotten after two: a lost batch does not stall the
    /// stream).
    pub(crate) in_flight: BTreeMap<u64, u32>,
    /// The OR-Map dots on their way to the remote (sent, live or catch-up, and not yet
    /// acknowledged): anti-entropy does not send them again. Forgotten at once when messages to
    /// the connection may have been lost (a full outbox) or refused.
    pub(crate) in_transit: super::catch_up::SentLog,
    /// Ids this peer named to the remote without sending their values: the only ids the remote
    /// may fetch (a content id is not a read token: see `Peer::on_fetch`).
    pub(crate) offered: Offered,
}

/// The ids a connection may fetch, at most [`MAX_OFFERED_IDS`] (the oldest are forgotten first:
/// a fetch of one is answered `missing`, and anti-entropy sends its publication again).
#[derive(Debug, Default)]
pub(crate) struct Offered {
    ids: replikativ_crdt::IdSet,
    order: VecDeque<ContentId>,
}

/// Ids one connection may fetch at most (see [`Offered`]).
pub const MAX_OFFERED_IDS: usize = 65_536;

impl Offered {
    pub(crate) fn insert(&mut self, id: ContentId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > MAX_OFFERED_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: &ContentId) -> bool {
        self.ids.contains(id)
    }
}

impl Peer {
    /// Lets `conn` fetch these ids: this peer named them to it without their values.
    pub(crate) fn offer(&mut self, conn: ConnId, ids: Vec<ContentId>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            for id in ids {
                c.offered.insert(id);
            }
        }
    }

    /// Closes a connection with a reason (sent to the remote first) and forgets it; counts the
    /// refusal.
    pub(crate) fn close(&mut self, conn: ConnId, why: Refusal, detail: String) {
        if self.conns.remove(&conn).is_some() {
            self.refusals.count(why);
            let reason = super::refusal::CloseReason::new(why, detail).to_string();
            tracing::warn!(peer = %self.record.id, conn, refusal = %why, %reason, "closing connection");
            self.outbox.send(conn, Message::Close { reason: reason.clone() });
            self.outbox.push(Output::Close { conn, reason });
        }
    }

    pub(super) fn connected(&mut self, conn: ConnId, direction: Direction) {
        self.conns.insert(
            conn,
            Conn {
                direction,
                remote: None,
                interest: BTreeSet::new(),
                subscribed: false,
                remote_extend: false,
                sent: None,
                unacked_sub: None,
                unacked_digest: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
                fetching: None,
                fetch_ticks: 0,
                hello_ticks: 0,
                answered: HashMap::new(),
                answers: 0,
                streams: VecDeque::new(),
                commit_streams: VecDeque::new(),
                in_flight: BTreeMap::new(),
                in_transit: Default::default(),
                offered: Offered::default(),
            },
        );
        let hello = Hello {
            version: PROTOCOL_VERSION,
            peer_id: self.record.id.clone(),
            features: vec![FEATURE_BUCKETS.to_owned()],
        };
        self.send(conn, Message::Hello(hello));
    }

    pub(super) fn received(&mut self, conn: ConnId, frame: &[u8]) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        // The one decode policy, shared with every driver's `Connection`.
        match crate::connection::decode_frame(frame) {
            Ok(msg) => self.message(conn, msg),
            Err(crate::connection::BadFrame::Answer(msg)) => {
                self.refusals.count(Refusal::UnknownKind);
                self.send(conn, *msg);
            }
            Err(crate::connection::BadFrame::Close(why, reason)) => self.close(conn, why, reason),
        }
    }

    /// Handles a decoded message.
    pub(super) fn message(&mut self, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.remote.is_none() {
            match msg {
                Message::Hello(hello) if hello.version == PROTOCOL_VERSION => {
                    if let Err(reason) = message::check_hello(&hello) {
                        return self.close(conn, Refusal::BadHello, reason);
                    }
                    let c = self.conns.get_mut(&conn).expect("checked above");
                    let outbound = c.direction == Direction::Outbound;
                    c.remote = Some(hello);
                    if outbound {
                        self.send_subscription(conn, true);
                    }
                }
                Message::Hello(hello) => self.close(
                    conn,
                    Refusal::UnsupportedVersion,
                    format!(
                        "incompatible protocol version {} (this peer speaks version {PROTOCOL_VERSION})",
                        hello.version
                    ),
                ),
                other => self.close(
                    conn,
                    Refusal::ExpectedHello,
                    format!("expected hello first, got {}", other.kind()),
                ),
            }
            return;
        }
        match msg {
            Message::Hello(_) => self.close(conn, Refusal::HelloTwice, "hello sent twice".into()),
            Message::Subscribe(sub) => self.on_subscribe(conn, sub),
            Message::Resubscribe(r) => self.on_resubscribe(conn, r),
            Message::SubscribeAck { id } => self.on_subscribe_ack(conn, id),
            Message::Error { .. } => {}
            Message::PublishAck { id } => self.on_publish_ack(conn, id),
            Message::Refused { id, reason } => {
                let reason = message::clip(&reason);
                tracing::info!(peer = %self.record.id, conn, id, %reason, "publication refused by remote");
                self.on_refused(conn, id);
                self.on_subscription_refused(conn, id);
            }
            Message::Unsubscribe { addresses } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.interest.retain(|a| !addresses.contains(a));
                }
            }
            Message::Publish(p) => self.on_publish(conn, p),
            Message::Batch(b) => self.on_batch(conn, b),
            Message::Fetch { id, ids } => self.on_fetch(conn, id, ids),
            Message::FetchReply { id, values, missing } => self.on_fetch_reply(conn, id, values, missing),
            Message::Summaries { summaries, reply } => self.on_sync(conn, summaries, reply),
            Message::Recon(r) => self.on_recon(conn, r),
            Message::Close { reason } => {
                let reason = message::clip(&reason);
                tracing::info!(peer = %self.record.id, conn, %reason, "remote closed");
                self.conns.remove(&conn);
                self.outbox.push(Output::Close { conn, reason: format!("remote closed: {reason}") });
            }
            Message::Custom { tag, .. } => {
                tracing::debug!(peer = %self.record.id, conn, %tag, "custom message ignored by the core");
            }
        }
    }

    /// Closes connections whose remote did not say hello for two anti-entropy intervals.
    pub(super) fn expire_handshakes(&mut self) {
        let mut stale = Vec::new();
        for (conn, c) in &mut self.conns {
            if c.remote.is_none() {
                c.hello_ticks += 1;
                if c.hello_ticks >= 2 {
                    stale.push(*conn);
                }
            }
        }
        for conn in stale {
            self.close(conn, Refusal::NoHello, "no hello from the remote in time".into());
        }
    }
}
