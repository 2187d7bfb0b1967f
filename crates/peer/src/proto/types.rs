//! The core's interface: what the driver feeds it ([`Input`]), what it asks the driver to do
//! ([`Output`]), its configuration, its status and its errors.

use std::collections::BTreeMap;
use std::time::Duration;

use replikativ_crdt::{Address, ContentId, OpError};
use replikativ_store::StoreError;

use super::{AnyOp, Command, CommandId, ConnId, Message, Quarantined, Reply, hooks, state};

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
    /// What was refused, by reason ([`Refusal::as_str`](super::Refusal::as_str)), since the node started (the core's and
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
    /// The connection's authenticated principal may not do this (authentication on: see
    /// `crate::auth::AuthPolicy`).
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// The node is shutting down or gone.
    #[error("the node is not running")]
    NodeGone,
    /// A value the operation needs is not in the store.
    #[error("value {0} is not in the store")]
    MissingValue(ContentId),
    /// An address the command names is not valid.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A stored value does not decode (or is not the commit record it should be).
    #[error("stored value {id} is damaged: {reason}")]
    CorruptValue {
        /// Its id.
        id: ContentId,
        /// The decoder's complaint.
        reason: String,
    },
    /// The node answered a command with a reply of another kind (a node of another version).
    #[error("unexpected reply from the node: {0}")]
    UnexpectedReply(String),
    /// The node could not do it (e.g. listen or connect).
    #[error("node: {0}")]
    Node(String),
    /// An import that does not pass the checks wire input gets.
    #[error("invalid import: {0}")]
    InvalidImport(String),
    /// The answer would be larger than the peer's limit.
    #[error("too large: {0}")]
    TooLarge(String),
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
    /// Connections that share more addresses than this reconcile them by fingerprints instead of a
    /// summary per address (see `recon.rs`). [`recon::RECON_ABOVE`](super::recon::RECON_ABOVE) = 64 by
    /// default.
    pub recon_above: usize,
    /// Pull hooks run by this peer.
    pub hooks: Vec<hooks::PullHook>,
    /// Bytes of entries and values one catch-up answer sends at most; the rest follows in later
    /// rounds (see `catch_up.rs`). 16 MiB by default.
    pub max_answer_bytes: usize,
    /// How far in the future of this peer's clock a received LWW stamp may be; a publication with
    /// a later stamp is refused ([`Refusal::ClockSkew`](super::Refusal::ClockSkew)), so a forged far-future write cannot win
    /// forever. 10 minutes by default.
    pub max_clock_skew: Duration,
    /// Addresses this peer subscribes to at most; addresses its connections subscribe to beyond
    /// it are not taken on (not stored, not forwarded; [`Refusal::SubscriptionsTotal`](super::Refusal::SubscriptionsTotal)).
    /// 100,000 by default.
    pub max_subscriptions: usize,
    /// Addresses one `subscribe` may name at most; a larger one closes the connection
    /// ([`Refusal::SubscriptionsPerConnection`](super::Refusal::SubscriptionsPerConnection)). 10,000 by default.
    pub max_subscriptions_per_connection: usize,
    /// Bytes of values that publications queued on one connection may hold; more closes it
    /// ([`Refusal::QueuedBytes`](super::Refusal::QueuedBytes)). 64 MiB by default.
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
            recon_above: super::recon::RECON_ABOVE,
            hooks: Vec::new(),
            max_answer_bytes: 16 << 20,
            max_clock_skew: Duration::from_secs(600),
            max_subscriptions: 100_000,
            max_subscriptions_per_connection: 10_000,
            max_queued_bytes: 64 << 20,
        }
    }
}

/// Why a peer could not be opened from its store (only the store failing: bad records are
/// skipped, see [`Peer::recovery`](super::Peer::recovery)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
