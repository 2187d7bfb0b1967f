//! The sans-IO protocol core: a [`Peer`] takes [`Input`]s (connections opening and closing, frames
//! received, stage commands, barrier completions, timer ticks) and produces [`Output`]s (frames to
//! send, connections to close, barriers to run, timers to schedule, replies, change events). It
//! never does network IO, never reads a clock and never draws randomness: time and the actor id are
//! arguments. It reads and writes its [`Store`] directly (sync calls); the driver runs the store's
//! durability barrier when asked ([`Output::Barrier`]) and reports back ([`Input::BarrierDone`]).
//!
//! What goes on the wire is specified in `docs/design.md` (§ Protocol).

pub mod backup;
pub mod batch;
mod catch_up;
mod command;
mod conn;
pub mod hooks;
mod local;
pub mod message;
mod outbox;
pub mod persist;
mod publish;
mod query;
pub mod recon;
pub mod refusal;
pub mod state;
mod subscribe;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, ContentId};
use replikativ_store::Store;

pub use catch_up::{MAX_BATCH_PART_ENTRIES, MAX_PART_ENTRIES, SENT_TICKS, STREAM_WINDOW};
pub use command::{Command, CommitValue, Query, Reply};
pub use message::{
    AnyOp, Batch, Bucket, DotSummary, FrameError, Hello, Message, PROTOCOL_VERSION, Publish, Recon, Removed,
    Resubscribe, Subscribe, Summary,
};
pub use persist::{QUARANTINE_PREFIX, Quarantined, StoredValues};
pub use refusal::{CloseReason, Refusal, Refusals};
pub use state::{ApplyError, CrdtState, PeerRecord};
pub use types::{Direction, Event, Input, OpenError, Output, PeerConfig, PeerStatus, StageError, Timer};

pub(crate) use conn::{Conn, Pending};
pub use conn::MAX_OFFERED_IDS;

use persist::{Replica, ReplicaStore};

/// The hello feature a peer announces when it understands bucketed summaries (`Summary::Buckets`);
/// peers that do not announce it are sent digests.
pub const FEATURE_BUCKETS: &str = "buckets";

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// A stage command's id, chosen by the driver; its reply carries it.
pub type CommandId = u64;

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
    /// Catch-up batches sent (see `catch_up.rs`).
    pub(crate) batches_sent: u64,
    /// Catch-up publications sent (CDVCS, G-Set, LWW and empty-map answers).
    pub(crate) catch_up_publications: u64,
    /// Anti-entropy ticks so far (what sent dots are aged by).
    pub(crate) ticks: u64,
    /// Per remote peer id, the last address set it subscribed to here in full, by digest (so it
    /// may `resubscribe` to it after a reconnect). At most [`MAX_REMEMBERED_SETS`] peers.
    pub(crate) remembered: HashMap<String, (ContentId, BTreeSet<Address>)>,
    /// Per remote peer id, the digest of the last subscription it acknowledged from this peer.
    pub(crate) told: HashMap<String, ContentId>,
}

/// Remote peers whose last subscription set a peer remembers for `resubscribe`.
pub const MAX_REMEMBERED_SETS: usize = 1024;

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
            batches_sent: 0,
            catch_up_publications: 0,
            ticks: 0,
            remembered: HashMap::new(),
            told: HashMap::new(),
        })
    }

    /// The peer id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Catch-up batches this peer sent since it opened.
    pub fn batches_sent(&self) -> u64 {
        self.batches_sent
    }

    /// Catch-up publications (not batches) this peer sent since it opened.
    pub fn catch_up_publications(&self) -> u64 {
        self.catch_up_publications
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
        for (conn, ids) in std::mem::take(&mut self.outbox.offered) {
            self.offer(conn, ids);
        }
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

    /// Runs `output` once everything written so far is durable.
    pub(crate) fn after_barrier(&mut self, output: Output) {
        self.outbox.after_barrier(output);
    }

    /// The peer record changed: it is written with this batch's writes.
    pub(crate) fn save_record(&mut self) {
        self.persist.record_changed();
    }
}
