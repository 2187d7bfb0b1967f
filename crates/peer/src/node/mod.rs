//! The networked node: the protocol core on its own thread, websocket connections as tokio tasks,
//! a barrier thread for group commit, and the in-process stage connection.
//!
//! ```text
//!  websocket ──► [frame limit + decode] ──► chain (metrics, trace, app middleware, access) ──┐
//!  websocket ◄── [encode]               ◄── chain                                      ◄──┤
//!  stage     ◄─► chain (metrics, trace, app middleware, access)                        ◄─►┤
//!                                                                        core thread (Peer::handle)
//!                                                       barrier thread (store.sync, many ops per sync)
//! ```
//!
//! Queues are bounded: connection readers wait when the core is busy (TCP backpressure reaches the
//! sender); each connection's outbox holds `outbox` items, and when a slow peer lets it fill, further
//! messages to that peer are dropped and counted instead of growing memory or closing the
//! connection: the protocol tolerates lost messages (subscriptions and fetches are retried,
//! anti-entropy resends what is missing), so the slow peer catches up once it drains.

mod conn;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use replikativ_crdt::ActorId;
use replikativ_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::middleware::{ConnMetrics, Item, MetricsRegistry, MiddlewareFactory, Policy, Remote};
use crate::proto::{
    CommandId, ConnId, Input, OpenError, Output, Peer, PeerConfig, Quarantined, Refusal, Refusals, StageError,
};

pub use conn::WsConfig;
pub(crate) use conn::chain as conn_chain;

/// Reconnection backoff: doubles from `initial` up to `max`, with up to 50 % random jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

/// Configuration of a node.
#[derive(Clone)]
pub struct NodeConfig {
    /// The peer id (used when the store holds none yet).
    pub peer_id: String,
    /// Whether the peer extends its subscriptions with its peers' (a server; see the design doc).
    pub extend: bool,
    /// Protocol core tuning.
    pub peer: PeerConfig,
    /// Websocket limits, keep-alive and idle timeout.
    pub ws: WsConfig,
    /// Items a connection's outbox holds before messages to it are dropped (see the module docs;
    /// 8192 by default).
    pub outbox: usize,
    /// Bytes of messages a connection's outbox holds at most (roughly, [`Message::approx_size`]);
    /// beyond it further messages to that connection are dropped like on a full outbox (one
    /// message is always let through to an empty outbox). 16 MiB by default: a client that asks
    /// and never reads cannot make the node hold more for it.
    ///
    /// [`Message::approx_size`]: crate::proto::Message::approx_size
    pub outbox_bytes: usize,
    /// Bytes all outboxes together hold at most: beyond it, messages to connections holding more
    /// than 1 MiB already are dropped. 1 GiB by default.
    pub outbox_total_bytes: usize,
    /// Reconnection backoff of outgoing connections.
    pub reconnect: Backoff,
    /// Application middleware, in order (nearest the network first), built per connection.
    pub middleware: Vec<MiddlewareFactory>,
    /// Access policy for every connection (remote and stage); `None` allows everything.
    pub policy: Option<Policy>,
    /// Incoming connections open at once at most, from accept to close (the websocket handshake
    /// included); more are refused at once with an HTTP 503 ([`Refusal::MaxConnections`]).
    /// `None`: the process's descriptor limit less 64 (for the store and outgoing connections), at
    /// most 10,000 and at least 16.
    pub max_connections: Option<usize>,
    /// Whether remote connections may run stage commands ([`crate::middleware::RemoteStage`]):
    /// what the command line's data commands use. Anyone who can connect can then read and write
    /// as any user, within the access policy; off by default.
    pub remote_commands: bool,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("peer_id", &self.peer_id)
            .field("extend", &self.extend)
            .field("peer", &self.peer)
            .field("ws", &self.ws)
            .field("outbox", &self.outbox)
            .field("outbox_bytes", &self.outbox_bytes)
            .field("outbox_total_bytes", &self.outbox_total_bytes)
            .field("reconnect", &self.reconnect)
            .field("middleware", &self.middleware.len())
            .field("policy", &self.policy.is_some())
            .field("remote_commands", &self.remote_commands)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            peer_id: String::new(),
            extend: true,
            peer: PeerConfig::default(),
            ws: WsConfig::default(),
            outbox: 8192,
            outbox_bytes: 16 << 20,
            outbox_total_bytes: 1 << 30,
            reconnect: Backoff::default(),
            middleware: Vec::new(),
            policy: None,
            remote_commands: false,
            max_connections: None,
        }
    }
}

/// Why a node could not start or connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store could not be opened as a peer.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Binding or accepting failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// The node is shut down.
    #[error("the node is not running")]
    Gone,
}

/// What the core thread receives.
#[derive(Debug)]
pub(crate) enum CoreMsg {
    Input(Input),
    /// A connection's outbox and who is on the other end.
    Attach {
        conn: ConnId,
        tx: mpsc::Sender<ConnCmd>,
        remote: Remote,
        /// Bytes queued in the outbox (the writer takes off what it sends).
        queued: Arc<AtomicUsize>,
    },
    /// A stage command, with the connection to reply on.
    Command {
        conn: ConnId,
        id: CommandId,
        cmd: crate::proto::Command,
    },
    Status(oneshot::Sender<Status>),
    Shutdown(oneshot::Sender<()>),
}

/// What a connection task receives from the core.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    Item(Item),
    Close(String),
}

/// A node's state as seen from outside.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The peer id.
    pub peer_id: String,
    /// Open connections: id, remote, and the remote's peer id once it said hello.
    pub connections: Vec<(ConnId, Remote, Option<String>)>,
    /// The peer's subscriptions.
    pub subscriptions: Vec<replikativ_crdt::Address>,
    /// Addresses with a state.
    pub addresses: usize,
    /// Messages dropped because a connection's outbox was full.
    pub dropped: u64,
    /// What was refused since the node started, by reason (the core's and the transport's).
    pub refusals: Refusals,
    /// Stored records that could not be loaded when the peer opened (skipped and moved aside).
    pub recovery: Vec<Quarantined>,
    /// The effective cap on incoming connections.
    pub max_connections: usize,
}

pub(crate) struct Shared {
    pub(crate) core: mpsc::Sender<CoreMsg>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: NodeConfig,
    pub(crate) next_conn: AtomicU64,
    /// Command ids, unique in the node (stages and remote clients share the core).
    pub(crate) next_command: AtomicU64,
    pub(crate) metrics: MetricsRegistry,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Outgoing connections by URL: their supervisor task.
    pub(crate) outgoing: Mutex<HashMap<String, JoinHandle<()>>>,
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// Addresses the node listens on.
    pub(crate) listening: Arc<Mutex<Vec<String>>>,
    /// Fires when the core thread has stopped (after its final barrier).
    pub(crate) finished: Mutex<Option<oneshot::Receiver<()>>>,
    /// Permits for incoming connections (`max_connections`).
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// What the transport refused, by reason (the core counts its own).
    pub(crate) refusals: Arc<Mutex<Refusals>>,
}

impl Shared {
    /// Counts a refusal of the transport.
    pub(crate) fn refuse(&self, why: Refusal) {
        self.refusals.lock().expect("poisoned").count(why);
    }
}

/// The process's soft limit of open file descriptors, if it can be read (Linux: `/proc`).
fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The default `max_connections` (see [`NodeConfig::max_connections`]).
fn default_max_connections() -> usize {
    match descriptor_limit() {
        Some(n) => (n.saturating_sub(64) as usize).clamp(16, 10_000),
        None => 1024,
    }
}

/// A running node (cheap to clone).
#[derive(Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("peer_id", &self.shared.config.peer_id).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Node {
    /// Starts a node on `store` (inside a tokio runtime). `actor` must be fresh for this session.
    pub fn start(store: Arc<dyn Store>, config: NodeConfig, actor: ActorId) -> Result<Node, NodeError> {
        let mut peer = Peer::open(store.clone(), &config.peer_id, config.extend, actor, config.peer.clone())?;
        let mut config = config;
        config.peer_id = peer.id().to_owned();
        let (core_tx, core_rx) = mpsc::channel(1024);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let max_connections = config.max_connections.unwrap_or_else(default_max_connections).max(1);
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        let (outbox_bytes, outbox_total_bytes) = (config.outbox_bytes, config.outbox_total_bytes);
        let shared = Arc::new(Shared {
            core: core_tx.clone(),
            store: store.clone(),
            config,
            next_conn: AtomicU64::new(1),
            next_command: AtomicU64::new(1),
            metrics: Arc::new(Mutex::new(BTreeMap::new())),
            tasks: Mutex::new(Vec::new()),
            outgoing: Mutex::new(HashMap::new()),
            shutdown,
            listening: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            finished: Mutex::new(None),
            refusals: refusals.clone(),
        });
        let (barrier_tx, barrier_rx) = std::sync::mpsc::channel::<u64>();
        {
            let store = store.clone();
            let core = core_tx.clone();
            std::thread::Builder::new()
                .name("replikativ-barrier".into())
                .spawn(move || barrier_loop(store, barrier_rx, core))
                .expect("spawn barrier thread");
        }
        let runtime = tokio::runtime::Handle::current();
        let listening = shared.listening.clone();
        let (finished_tx, finished_rx) = oneshot::channel();
        *shared.finished.lock().expect("poisoned") = Some(finished_rx);
        let start = peer.start();
        std::thread::Builder::new()
            .name(format!("replikativ-core-{}", peer.id()))
            .spawn(move || {
                let mut core = Core {
                    instant: store.sync_is_instant().then(|| store.clone()),
                    conns: BTreeMap::new(),
                    commands: HashMap::new(),
                    barrier: barrier_tx,
                    runtime,
                    tx: core_tx,
                    dropped: 0,
                    listening,
                    lagging: Default::default(),
                    refusals,
                    max_connections,
                    queued_total: 0,
                    outbox_bytes,
                    outbox_total_bytes,
                };
                core.dispatch(&mut peer, start);
                core.run(&mut peer, core_rx);
                // Shut down: everything acknowledged is durable already; flush the rest.
                if let Err(e) = store.sync() {
                    tracing::error!(error = %e, "final barrier failed");
                }
                drop(core);
                drop(peer);
                let _ = finished_tx.send(());
            })
            .expect("spawn core thread");
        Ok(Node { shared })
    }

    /// The node's store (applications may keep their own keys in it, outside the peer's
    /// key prefixes `peer/`, `crdt/`, `s/` (snapshot chunks: unreferenced ones are deleted on open),
    /// `v/` and `quarantine/` (records skipped on open), and its logs named `o/...`).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The peer id.
    pub fn peer_id(&self) -> &str {
        &self.shared.config.peer_id
    }

    /// Listens for websocket connections on `addr` (e.g. `127.0.0.1:0`); returns the bound address.
    pub async fn listen(&self, addr: &str) -> Result<SocketAddr, NodeError> {
        conn::listen(self.shared.clone(), addr).await
    }

    /// Connects to a peer at a `ws://` URL. Fails if the first connection cannot be made; once
    /// made, the connection is re-established with backoff whenever it drops, until
    /// [`Node::disconnect`].
    pub async fn connect(&self, url: &str) -> Result<(), NodeError> {
        conn::connect(self.shared.clone(), url).await
    }

    /// Connects to a peer at a `ws://` URL in the background: returns at once (an error only for a
    /// URL that is not `ws://`), and keeps trying with backoff until the connection is made, then
    /// re-establishes it whenever it drops, until [`Node::disconnect`] or shutdown. Each failed
    /// attempt is logged at WARN with the delay before the next one. What `serve --connect` uses: a
    /// peer that is down when this one starts is normal in a peer-to-peer system.
    pub fn connect_retrying(&self, url: &str) -> Result<(), NodeError> {
        conn::connect_retrying(self.shared.clone(), url)
    }

    /// Stops reconnecting to `url` and closes its connection. Returns whether it was connected.
    pub fn disconnect(&self, url: &str) -> bool {
        match self.shared.outgoing.lock().expect("poisoned").remove(url) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.shared.core.send(CoreMsg::Status(tx)).await.map_err(|_| NodeError::Gone)?;
        rx.await.map_err(|_| NodeError::Gone)
    }

    /// Per-connection counters (messages, bytes, publications, fetches, errors).
    pub fn metrics(&self) -> BTreeMap<ConnId, crate::middleware::MetricsSnapshot> {
        self.shared.metrics.lock().expect("poisoned").iter().map(|(c, m)| (*c, m.snapshot())).collect()
    }

    /// Shuts down gracefully: stops accepting and reconnecting, closes every connection with a
    /// reason, lets the core finish what it is doing, runs a final barrier, stops, and closes the
    /// store ([`Store::close`]: its directory lock is released when this returns, so the same
    /// process may reopen it at once; later store calls through [`Node::store`] fail with
    /// `Closed`).
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        for (_, task) in self.shared.outgoing.lock().expect("poisoned").drain() {
            task.abort();
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.core.send(CoreMsg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.shared.tasks.lock().expect("poisoned"));
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let finished = self.shared.finished.lock().expect("poisoned").take();
        if let Some(finished) = finished {
            let _ = finished.await;
            if let Err(e) = self.shared.store.close() {
                tracing::error!(error = %e, "closing the store failed");
            }
        }
    }

    pub(crate) fn register_metrics(&self, conn: ConnId) -> Arc<ConnMetrics> {
        register_metrics(&self.shared, conn)
    }
}

pub(crate) fn register_metrics(shared: &Shared, conn: ConnId) -> Arc<ConnMetrics> {
    let m = Arc::new(ConnMetrics::default());
    shared.metrics.lock().expect("poisoned").insert(conn, m.clone());
    m
}

/// Runs barriers: many requests queued meanwhile share one `sync`.
fn barrier_loop(store: Arc<dyn Store>, rx: std::sync::mpsc::Receiver<u64>, core: mpsc::Sender<CoreMsg>) {
    while let Ok(mut epoch) = rx.recv() {
        while let Ok(later) = rx.try_recv() {
            epoch = epoch.max(later);
        }
        let input = match store.sync() {
            Ok(()) => Input::BarrierDone { epoch },
            Err(e) => Input::BarrierFailed { epoch, error: e.to_string() },
        };
        if core.blocking_send(CoreMsg::Input(input)).is_err() {
            return;
        }
    }
}

/// Inputs the core handles as one batch at most: big enough to share a barrier among many ops,
/// small enough that replies flow back while the next batch is handled.
const MAX_BATCH: usize = 32;

struct Core {
    /// The store, if its barrier costs nothing (in memory): run inline, not on the barrier thread.
    instant: Option<Arc<dyn Store>>,
    conns: BTreeMap<ConnId, (mpsc::Sender<ConnCmd>, Remote, Arc<AtomicUsize>)>,
    /// Connections that lost messages to a full outbox: resynchronized once it drains to half.
    lagging: std::collections::BTreeSet<ConnId>,
    /// Which connection (stage) sent each pending command.
    commands: HashMap<CommandId, ConnId>,
    barrier: std::sync::mpsc::Sender<u64>,
    runtime: tokio::runtime::Handle,
    tx: mpsc::Sender<CoreMsg>,
    dropped: u64,
    listening: Arc<Mutex<Vec<String>>>,
    /// The transport's refusal counters (merged into status with the core's).
    refusals: Arc<Mutex<Refusals>>,
    max_connections: usize,
    /// Bytes queued in all outboxes, summed once per batch (see
    /// [`NodeConfig::outbox_total_bytes`]).
    queued_total: usize,
    outbox_bytes: usize,
    outbox_total_bytes: usize,
}

impl Core {
    fn run(&mut self, peer: &mut Peer, mut rx: mpsc::Receiver<CoreMsg>) {
        let mut pending: Option<CoreMsg> = None;
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => match rx.blocking_recv() {
                    Some(msg) => msg,
                    None => return,
                },
            };
            self.resync_drained(peer);
            match msg {
                CoreMsg::Input(_) | CoreMsg::Command { .. } => {
                    // Take the inputs queued meanwhile too: they share one barrier request.
                    let mut batch = Vec::new();
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        match msg {
                            CoreMsg::Input(input) => {
                                if let Input::Closed { conn } = &input {
                                    self.conns.remove(conn);
                                }
                                batch.push(input);
                            }
                            CoreMsg::Command { conn, id, cmd } => {
                                self.commands.insert(id, conn);
                                batch.push(Input::Command { id, cmd });
                            }
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.queued_total = self.conns.values().map(|(_, _, q)| q.load(Ordering::Relaxed)).sum();
                    let out = peer.handle_batch(batch, now_ms());
                    self.dispatch(peer, out);
                }
                CoreMsg::Attach { conn, tx, remote, queued } => {
                    self.conns.insert(conn, (tx, remote, queued));
                }
                CoreMsg::Status(reply) => {
                    let connections = self
                        .conns
                        .iter()
                        .map(|(c, (_, remote, _))| {
                            let id = peer.connections().find(|(pc, _)| pc == c).map(|(_, id)| id.to_owned());
                            (*c, remote.clone(), id)
                        })
                        .collect();
                    let mut refusals = self.refusals.lock().expect("poisoned").clone();
                    refusals.merge(peer.refusals());
                    let _ = reply.send(Status {
                        peer_id: peer.id().to_owned(),
                        connections,
                        subscriptions: peer.subscriptions().iter().cloned().collect(),
                        addresses: peer.addresses().count(),
                        dropped: self.dropped,
                        refusals,
                        recovery: peer.recovery().to_vec(),
                        max_connections: self.max_connections,
                    });
                }
                CoreMsg::Shutdown(done) => {
                    for (tx, _, _) in self.conns.values() {
                        let _ = tx.try_send(ConnCmd::Close("the node is shutting down".into()));
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Resynchronizes lagging connections whose outbox drained to half its capacity.
    fn resync_drained(&mut self, peer: &mut Peer) {
        if self.lagging.is_empty() {
            return;
        }
        let drained: Vec<ConnId> = self
            .lagging
            .iter()
            .copied()
            .filter(|c| {
                self.conns.get(c).is_none_or(|(tx, _, queued)| {
                    tx.capacity() * 2 >= tx.max_capacity()
                        && queued.load(Ordering::Relaxed) * 2 <= self.outbox_bytes
                })
            })
            .collect();
        for conn in drained {
            self.lagging.remove(&conn);
            if self.conns.contains_key(&conn) {
                let out = peer.handle(Input::Resync { conn }, now_ms());
                self.dispatch(peer, out);
            }
        }
    }

    fn send(&mut self, conn: ConnId, cmd: ConnCmd) {
        let Some((tx, _, queued)) = self.conns.get(&conn) else { return };
        // Messages count against the outbox's byte budget and the node's (see `NodeConfig`).
        let size = match &cmd {
            ConnCmd::Item(Item::Message(m)) => m.approx_size(),
            _ => 0,
        };
        let held = queued.load(Ordering::Relaxed);
        let over = size > 0
            && held > 0
            && (held + size > self.outbox_bytes
                || (self.queued_total + size > self.outbox_total_bytes && held > 1 << 20));
        let sent = if over {
            false
        } else {
            // Counted before it is queued: the writer takes it off once it has it.
            queued.fetch_add(size, Ordering::Relaxed);
            match tx.try_send(cmd) {
                Ok(()) => {
                    self.queued_total += size;
                    true
                }
                Err(e) => {
                    queued.fetch_sub(size, Ordering::Relaxed);
                    // Closed: the connection is going away; nothing to count.
                    matches!(e, mpsc::error::TrySendError::Closed(_))
                }
            }
        };
        if !sent {
            self.dropped += 1;
            if self.lagging.insert(conn) {
                tracing::warn!(
                    conn,
                    "outbox full: messages dropped until it drains (then the peer is resynchronized)"
                );
            }
        }
    }

    fn dispatch(&mut self, peer: &mut Peer, outputs: Vec<Output>) {
        let mut outputs = outputs;
        loop {
            let mut synced = None;
            for output in outputs {
                if let (Output::Barrier { epoch }, Some(store)) = (&output, &self.instant) {
                    synced = Some(match store.sync() {
                        Ok(()) => Input::BarrierDone { epoch: *epoch },
                        Err(e) => Input::BarrierFailed { epoch: *epoch, error: e.to_string() },
                    });
                    continue;
                }
                self.output(output);
            }
            match synced {
                Some(input) => outputs = peer.handle(input, now_ms()),
                None => return,
            }
        }
    }

    fn output(&mut self, output: Output) {
        match output {
            Output::Send { conn, msg } => self.send(conn, ConnCmd::Item(Item::Message(msg))),
            Output::Close { conn, reason } => self.send(conn, ConnCmd::Close(reason)),
            Output::Barrier { epoch } => {
                let _ = self.barrier.send(epoch);
            }
            Output::Schedule { after, timer } => {
                let tx = self.tx.clone();
                self.runtime.spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(CoreMsg::Input(Input::Timer(timer))).await;
                });
            }
            Output::Reply { id, mut result } => {
                if let Ok(crate::proto::Reply::Status(status)) = &mut result {
                    status.listen = self.listening.lock().expect("poisoned").clone();
                    for (why, n) in self.refusals.lock().expect("poisoned").iter() {
                        *status.refusals.entry(why.as_str().to_owned()).or_default() += n;
                    }
                }
                if let Some(conn) = self.commands.remove(&id)
                    && let Some((tx, _, _)) = self.conns.get(&conn)
                {
                    // Replies must not be lost, and the core must not wait for the stage (which
                    // may be waiting for the core): deliver from a task when the outbox is full.
                    if let Err(mpsc::error::TrySendError::Full(cmd)) =
                        tx.try_send(ConnCmd::Item(Item::Reply { id, result }))
                    {
                        let tx = tx.clone();
                        self.runtime.spawn(async move {
                            let _ = tx.send(cmd).await;
                        });
                    }
                }
            }
            Output::Event(event) => {
                let stages: Vec<ConnId> =
                    self.conns.iter().filter(|(_, (_, r, _))| *r == Remote::Stage).map(|(c, _)| *c).collect();
                for conn in stages {
                    self.send(conn, ConnCmd::Item(Item::Event(event.clone())));
                }
            }
        }
    }
}

impl From<NodeError> for StageError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Gone => StageError::NodeGone,
            other => StageError::Store(other.to_string()),
        }
    }
}
