//! The sans-IO protocol core: a [`Peer`] takes [`Input`]s (connections opening and closing, frames
//! received, stage commands, barrier completions, timer ticks) and produces [`Output`]s (frames to
//! send, connections to close, barriers to run, timers to schedule, replies, change events). It
//! never does network IO, never reads a clock and never draws randomness: time and the actor id are
//! arguments. It reads and writes its [`Store`] directly (sync calls); the driver runs the store's
//! durability barrier when asked ([`Output::Barrier`]) and reports back ([`Input::BarrierDone`]).
//!
//! What goes on the wire is specified in `docs/design.md` (§ Protocol).

mod command;
pub mod hooks;
pub mod message;
mod outbox;
pub mod persist;
mod publish;
pub mod refusal;
pub mod state;
mod subscribe;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use replikativ_crdt::{ActorId, Address, ContentId, OpError};
use replikativ_store::{Store, StoreError};

pub use command::{Command, CommitValue, Reply};
pub use message::{AnyOp, FrameError, Hello, Message, PROTOCOL_VERSION, Publish, Subscribe, Summary};
pub use persist::{QUARANTINE_PREFIX, Quarantined, StoredValues};
pub use refusal::{Refusal, Refusals};
pub use state::{ApplyError, CrdtState, PeerRecord};

use persist::{Replica, ReplicaStore};

/// The hello feature a peer announces when it understands bucketed summaries (`Summary::Buckets`);
/// peers that do not announce it are sent digests.
pub const FEATURE_BUCKETS: &str = "buckets";

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// A stage command's id, chosen by the driver; its reply carries it.
pub type CommandId = u64;

/// Who opened a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// This peer connected out (it subscribes first).
    Outbound,
    /// The remote connected in.
    Inbound,
}

/// Timers the core schedules.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timer {
    /// Periodic anti-entropy: summaries to every open connection.
    AntiEntropy,
}

/// What happens to the peer.
#[derive(Clone, Debug)]
pub enum Input {
    /// A transport connection opened.
    Connected {
        /// Its number.
        conn: ConnId,
        /// Who opened it.
        direction: Direction,
    },
    /// A frame arrived.
    Received {
        /// On which connection.
        conn: ConnId,
        /// The raw frame.
        frame: Vec<u8>,
    },
    /// A message arrived, already decoded (by the node's transport and middleware chain).
    Message {
        /// On which connection.
        conn: ConnId,
        /// The message.
        msg: Message,
    },
    /// A connection closed.
    Closed {
        /// Which.
        conn: ConnId,
    },
    /// A stage command.
    Command {
        /// Its id.
        id: CommandId,
        /// What to do.
        cmd: Command,
    },
    /// The barrier requested by `Output::Barrier { epoch }` (and all before it) completed.
    BarrierDone {
        /// The epoch.
        epoch: u64,
    },
    /// The barrier failed: the store is poisoned; waiting acknowledgements are dropped.
    BarrierFailed {
        /// The epoch.
        epoch: u64,
        /// Why.
        error: String,
    },
    /// A scheduled timer fired.
    Timer(Timer),
    /// Messages to this connection were dropped (its outbox was full): send it summaries now so
    /// it asks for what it missed, instead of waiting for the next anti-entropy tick.
    Resync {
        /// The connection.
        conn: ConnId,
    },
}

/// What the peer asks its driver to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send a message.
    Send {
        /// On which connection.
        conn: ConnId,
        /// What.
        msg: Message,
    },
    /// Close a connection, telling the remote why.
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// Run the store's durability barrier, then report `Input::BarrierDone { epoch }`. Several
    /// requests may share one barrier (report the highest epoch it covers).
    Barrier {
        /// The epoch.
        epoch: u64,
    },
    /// Deliver `Input::Timer(timer)` after a while.
    Schedule {
        /// The delay.
        after: Duration,
        /// Which timer.
        timer: Timer,
    },
    /// A stage command finished (for writes: durably).
    Reply {
        /// The command.
        id: CommandId,
        /// Its result.
        result: Result<Reply, StageError>,
    },
    /// A state changed (after its barrier).
    Event(Event),
}

/// A change notification for the stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Where.
    pub address: Address,
    /// The op that changed the state.
    pub op: AnyOp,
    /// Whether it came from this peer's stage (or from the network).
    pub local: bool,
}

/// What a peer reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// The peer id.
    pub peer_id: String,
    /// Whether it extends its subscriptions (a server).
    pub extend: bool,
    /// Peer ids of the open connections (hello exchanged).
    pub connections: Vec<String>,
    /// Its subscriptions.
    pub subscriptions: Vec<Address>,
    /// Addresses it holds a state for.
    pub addresses: usize,
    /// Addresses it listens on (filled in by the node).
    pub listen: Vec<String>,
    /// Bytes its store occupies on disk, if the store can tell.
    pub store_bytes: Option<u64>,
    /// What was refused, by reason ([`Refusal::as_str`]), since the node started (the core's and
    /// the node's counters).
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
    /// Stored records that could not be loaded when the peer opened (skipped and moved aside).
    #[serde(default)]
    pub recovery: Vec<Quarantined>,
}

/// Why a stage command failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum StageError {
    /// No datatype at the address (not created, not subscribed, or nothing arrived yet).
    #[error("no replicated datatype at {0}")]
    NotFound(Address),
    /// The address holds another kind.
    #[error("{address} holds a {found}, not a {expected}")]
    WrongKind {
        /// Where.
        address: Address,
        /// What the command needs.
        expected: replikativ_crdt::CrdtKind,
        /// What is there.
        found: replikativ_crdt::CrdtKind,
    },
    /// Creating an address that already holds a datatype.
    #[error("{0} already exists")]
    AlreadyExists(Address),
    /// The datatype refused the operation.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The access policy denies the operation on this address.
    #[error("access to {0} denied")]
    Denied(Address),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeGone,
    /// A value the operation needs is not in the store.
    #[error("value {0} is not in the store")]
    MissingValue(ContentId),
    /// An address the command names is not valid.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        StageError::Store(e.to_string())
    }
}

/// Tuning of the core.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Write the whole state and prune the op log every this many applied ops.
    pub snapshot_every: u64,
    /// Inbound publications queued per connection before it is closed as a flood.
    pub max_queued_publications: usize,
    /// Bytes of values carried inline in one publication; the rest is fetched.
    pub inline_limit: usize,
    /// Bytes of values in one fetch reply.
    pub fetch_reply_limit: usize,
    /// Interval of anti-entropy summaries (`None`: only on connect and subscribe).
    pub anti_entropy: Option<Duration>,
    /// OR-Maps and G-Sets of more entries than this summarize themselves by bucket digests, so
    /// catch-up sends only the differing buckets (see `Summary::Buckets`).
    pub bucketed_above: u64,
    /// Pull hooks run by this peer.
    pub hooks: Vec<hooks::PullHook>,
    /// How far in the future of this peer's clock a received LWW stamp may be; a publication with
    /// a later stamp is refused ([`Refusal::ClockSkew`]), so a forged far-future write cannot win
    /// forever. 10 minutes by default.
    pub max_clock_skew: Duration,
    /// Addresses this peer subscribes to at most; addresses its connections subscribe to beyond
    /// it are not taken on (not stored, not forwarded; [`Refusal::SubscriptionsTotal`]).
    /// 100,000 by default.
    pub max_subscriptions: usize,
    /// Addresses one `subscribe` may name at most; a larger one closes the connection
    /// ([`Refusal::SubscriptionsPerConnection`]). 10,000 by default.
    pub max_subscriptions_per_connection: usize,
    /// Bytes of values that publications queued on one connection may hold; more closes it
    /// ([`Refusal::QueuedBytes`]). 64 MiB by default.
    pub max_queued_bytes: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            snapshot_every: 1024,
            max_queued_publications: 4096,
            inline_limit: 1 << 20,
            fetch_reply_limit: 4 << 20,
            anti_entropy: Some(Duration::from_secs(10)),
            bucketed_above: state::BUCKETED_ABOVE,
            hooks: Vec::new(),
            max_clock_skew: Duration::from_secs(600),
            max_subscriptions: 100_000,
            max_subscriptions_per_connection: 10_000,
            max_queued_bytes: 64 << 20,
        }
    }
}

/// Why a peer could not be opened from its store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored {what} does not decode: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
}

/// A publication received (or made locally) that waits for values before it is applied.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The sender's publication id (remote) or the command id (local).
    pub(crate) id: u64,
    pub(crate) address: Address,
    pub(crate) op: AnyOp,
    /// Verified values received for it (canonical encodings), not yet stored.
    pub(crate) values: HashMap<ContentId, Vec<u8>>,
    /// Commit records among `values` (or in the store) the op names, parsed once.
    pub(crate) commits: HashMap<ContentId, replikativ_crdt::Commit>,
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
    /// Id of the last subscription sent, until its ack arrives (sent again on a timer tick).
    pub(crate) unacked_sub: Option<u64>,
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
    /// Summaries answered with catch-up since the last tick: the same summary arriving again
    /// (both sides' syncs crossing) is not answered twice. Cleared on every tick, so a lost answer
    /// is sent again.
    pub(crate) answered: HashMap<Address, Summary>,
}

/// A replication peer's protocol core (see the module docs).
#[derive(Debug)]
pub struct Peer {
    pub(crate) record: PeerRecord,
    pub(crate) actor: ActorId,
    pub(crate) config: PeerConfig,
    /// The store: pending writes, loading, the key layout.
    pub(crate) persist: ReplicaStore,
    pub(crate) crdts: BTreeMap<Address, Replica>,
    pub(crate) conns: BTreeMap<ConnId, Conn>,
    /// Outputs now and after their barrier, with the folding of relays and acknowledgements.
    pub(crate) outbox: outbox::Outbox,
    pub(crate) next_id: u64,
    /// Wall time of the current input, in ms since the epoch.
    pub(crate) now_ms: u64,
    /// What was refused, by reason.
    pub(crate) refusals: Refusals,
    /// Stored records skipped when the peer opened.
    pub(crate) recovery: Vec<Quarantined>,
}

impl Peer {
    /// Opens the peer stored in `store`, or creates one with `peer_id` and `extend` if the store
    /// holds none. `actor` must be fresh for this session (two live replicas must never share one).
    ///
    /// A stored record that does not load is skipped and moved aside, never fatal (see
    /// [`Peer::recovery`]); only a failing store fails the open. On a read-only store nothing is
    /// written (repairs are only reported).
    pub fn open(
        store: Arc<dyn Store>,
        peer_id: &str,
        extend: bool,
        actor: ActorId,
        config: PeerConfig,
    ) -> Result<Peer, OpenError> {
        let persist::Opened { store: persist, record, replicas: crdts, recovery } =
            ReplicaStore::open(store, peer_id, extend, config.snapshot_every)?;
        Ok(Peer {
            record,
            actor,
            config,
            persist,
            crdts,
            conns: BTreeMap::new(),
            outbox: outbox::Outbox::default(),
            next_id: 1,
            now_ms: 0,
            refusals: Refusals::default(),
            recovery,
        })
    }

    /// The peer id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// What the core refused since it opened, by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Stored records that could not be loaded when the peer opened (skipped, moved aside under
    /// [`QUARANTINE_PREFIX`] and logged at WARN).
    pub fn recovery(&self) -> &[Quarantined] {
        &self.recovery
    }

    /// The peer's subscriptions.
    pub fn subscriptions(&self) -> &BTreeSet<Address> {
        &self.record.subscriptions
    }

    /// The state at an address.
    pub fn state(&self, address: &Address) -> Option<&CrdtState> {
        self.crdts.get(address).map(|r| &r.state)
    }

    /// Every address with a state.
    pub fn addresses(&self) -> impl Iterator<Item = &Address> + '_ {
        self.crdts.keys()
    }

    /// Open connections (hello exchanged), with the remote peer ids.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &str)> + '_ {
        self.conns.iter().filter_map(|(c, conn)| conn.remote.as_ref().map(|h| (*c, h.peer_id.as_str())))
    }

    /// Outputs to schedule the first timers (call once after [`Peer::open`]).
    pub fn start(&mut self) -> Vec<Output> {
        if let Some(after) = self.config.anti_entropy {
            self.outbox.push(Output::Schedule { after, timer: Timer::AntiEntropy });
        }
        self.outbox.take()
    }

    /// Handles one input at wall time `now_ms` and returns what to do.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        self.handle_batch([input], now_ms)
    }

    /// Handles several inputs and returns what to do for all of them: their writes share one
    /// barrier request (the node feeds the core whatever queued up meanwhile this way).
    pub fn handle_batch(&mut self, inputs: impl IntoIterator<Item = Input>, now_ms: u64) -> Vec<Output> {
        self.now_ms = now_ms;
        for input in inputs {
            self.handle_one(input);
        }
        self.flush_writes();
        let written = self.persist.take_unsynced();
        let out = self.outbox.end_batch(written);
        tracing::trace!(peer = %self.record.id, ?out, "out");
        out
    }

    fn handle_one(&mut self, input: Input) {
        tracing::trace!(peer = %self.record.id, ?input, "in");
        match input {
            Input::Connected { conn, direction } => self.connected(conn, direction),
            Input::Received { conn, frame } => self.received(conn, &frame),
            Input::Message { conn, msg } => self.message(conn, msg),
            Input::Resync { conn } => self.resync(conn),
            Input::Closed { conn } => {
                self.conns.remove(&conn);
            }
            Input::Command { id, cmd } => self.command(id, cmd),
            Input::BarrierDone { epoch } => {
                let conns = &self.conns;
                self.outbox.barrier_done(epoch, |c| conns.contains_key(&c));
            }
            Input::BarrierFailed { epoch, error } => {
                tracing::error!(peer = %self.record.id, epoch, %error, "barrier failed; dropping acknowledgements");
                self.outbox.barrier_failed(epoch, &error);
            }
            Input::Timer(Timer::AntiEntropy) => {
                self.expire_handshakes();
                self.retry_fetches();
                self.retry_subscriptions();
                self.anti_entropy();
                if let Some(after) = self.config.anti_entropy {
                    self.outbox.push(Output::Schedule { after, timer: Timer::AntiEntropy });
                }
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn send(&mut self, conn: ConnId, msg: Message) {
        self.outbox.send(conn, msg);
    }

    /// Closes a connection with a reason (sent to the remote first) and forgets it; counts the
    /// refusal.
    pub(crate) fn close(&mut self, conn: ConnId, why: Refusal, reason: String) {
        if self.conns.remove(&conn).is_some() {
            self.refusals.count(why);
            tracing::warn!(peer = %self.record.id, conn, refusal = %why, %reason, "closing connection");
            self.outbox.send(conn, Message::Close { reason: reason.clone() });
            self.outbox.push(Output::Close { conn, reason });
        }
    }

    /// Runs `output` once everything written so far is durable.
    pub(crate) fn after_barrier(&mut self, output: Output) {
        self.outbox.after_barrier(output);
    }

    fn connected(&mut self, conn: ConnId, direction: Direction) {
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
                queue: VecDeque::new(),
                queued_bytes: 0,
                fetching: None,
                fetch_ticks: 0,
                hello_ticks: 0,
                answered: HashMap::new(),
            },
        );
        let hello = Hello {
            version: PROTOCOL_VERSION,
            peer_id: self.record.id.clone(),
            features: vec![FEATURE_BUCKETS.to_owned()],
        };
        self.send(conn, Message::Hello(hello));
    }

    fn received(&mut self, conn: ConnId, frame: &[u8]) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        match Message::decode(frame) {
            Ok(msg) => self.message(conn, msg),
            Err(FrameError::UnknownKind(kind)) => {
                self.refusals.count(Refusal::UnknownKind);
                self.send(conn, Message::Error { reason: format!("unknown message kind {kind:?}; ignored") });
            }
            Err(FrameError::UnsupportedVersion(v)) => self.close(
                conn,
                Refusal::UnsupportedVersion,
                format!("frame of protocol version {v}; this peer speaks version {PROTOCOL_VERSION}"),
            ),
            Err(e) => self.close(conn, Refusal::MalformedFrame, e.to_string()),
        }
    }

    /// Handles a decoded message.
    fn message(&mut self, conn: ConnId, msg: Message) {
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
            Message::SubscribeAck { id } => {
                if let Some(c) = self.conns.get_mut(&conn)
                    && c.unacked_sub == Some(id)
                {
                    c.unacked_sub = None;
                }
            }
            Message::PublishAck { .. } | Message::Error { .. } => {}
            Message::Refused { id, reason } => {
                let reason = message::clip(&reason);
                tracing::info!(peer = %self.record.id, conn, id, %reason, "publication refused by remote");
            }
            Message::Unsubscribe { addresses } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.interest.retain(|a| !addresses.contains(a));
                }
            }
            Message::Publish(p) => self.on_publish(conn, p),
            Message::Fetch { id, ids } => self.on_fetch(conn, id, ids),
            Message::FetchReply { id, values, missing } => self.on_fetch_reply(conn, id, values, missing),
            Message::Sync { summaries, reply } => self.on_sync(conn, summaries, reply),
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
    fn expire_handshakes(&mut self) {
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

    /// The peer record changed: it is written with this batch's writes.
    pub(crate) fn save_record(&mut self) {
        self.persist.record_changed(&self.record);
    }
}
