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
//!
//! Transport: [`Node::listen`] serves `ws://` (and plain HTTP, [`http`]) on a port,
//! [`Node::listen_tls`] `wss://` (and HTTPS) with a certificate; [`Node::connect`] dials either,
//! verifying `wss://` servers with [`NodeConfig::client_tls`]. Each connection's TLS exporter is
//! its [`tls::ChannelBinding`] ([`Node::channel_binding`]). See [`tls`].

mod core;

use self::core::{Core, barrier_loop};
mod dial;
pub mod http;
mod listen;
pub mod tls;
mod ws;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replikativ_crdt::ActorId;
use replikativ_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::middleware::{ConnMetrics, Item, MetricsRegistry, MiddlewareFactory, Policy, Remote};
use crate::proto::{
    CommandId, ConnId, Input, OpenError, Peer, PeerConfig, Quarantined, Refusal, Refusals, StageError,
};

pub(crate) use dial::{Ws, handshake};
pub use ws::WsConfig;
pub(crate) use ws::chain_spec;

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
    /// what the command line's data commands use. Without [`NodeConfig::auth`] anyone who can
    /// connect can then read and write as any user, within the access policy; with it, commands
    /// run as the connection's principal (`crate::auth::AuthGate`). Off by default.
    pub remote_commands: bool,
    /// A directory whose files the node's listen port serves over plain HTTP (`GET /PATH`), for
    /// a browser app; `None` (the default): only the websocket and `/healthz`, `/readyz`,
    /// `/metrics` (see [`http`]).
    pub web: Option<std::path::PathBuf>,
    /// How `wss://` servers this node dials are verified ([`Node::connect`]); `None` (the
    /// default): [`tls::ClientTls::webpki_roots`], the public web's certificate authorities. Give
    /// [`tls::ClientTls::with_ca_pem`] to trust a deployment's own CA as well.
    pub client_tls: Option<tls::ClientTls>,
    /// Authentication: `None` (the default) is authentication off, today's behaviour for tests
    /// and local use: anyone who can connect reads everything, and writes as any user. With
    /// [`NodeAuth`], every websocket connection, in and out, opens with the authentication
    /// handshake ([`crate::auth::handshake`]) and runs under the built-in authorization gate.
    pub auth: Option<NodeAuth>,
}

/// A node's authentication: its key, the user it acts as when it dials, and the rules.
#[derive(Clone, Debug)]
pub struct NodeAuth {
    /// The node key (its identity in every handshake).
    pub node_key: crate::auth::SecretKey,
    /// The user key this node proves when it dials another node, if any.
    pub user: Option<crate::auth::SecretKey>,
    /// Who may read and write what.
    pub policy: Arc<crate::auth::AuthPolicy>,
    /// Read capabilities this node presents to the nodes it dials (for its `user` or node key).
    pub caps: Vec<crate::auth::ReadCap>,
}

impl NodeAuth {
    /// Authentication with a node key and the default rules (owners write and read their own
    /// addresses, nothing is public, no key is trusted).
    pub fn new(node_key: crate::auth::SecretKey) -> NodeAuth {
        NodeAuth {
            node_key,
            user: None,
            policy: Arc::new(crate::auth::AuthPolicy::default()),
            caps: Vec::new(),
        }
    }

    pub(crate) fn identity(&self) -> crate::auth::Identity {
        crate::auth::Identity { node: self.node_key.clone(), user: self.user.clone() }
    }
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
            .field("web", &self.web)
            .field("client_tls", &self.client_tls.is_some())
            .field("auth", &self.auth)
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
            web: None,
            client_tls: None,
            auth: None,
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
    Status(oneshot::Sender<NodeStatus>),
    Shutdown(oneshot::Sender<()>),
}

/// What a connection task receives from the core.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// An item, and the bytes the core counted for it against the outbox budget (the writer
    /// takes them off when it takes the item).
    Item(Item, usize),
    Close(String),
}

/// A node's state as seen from outside.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
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
    /// Catch-up batches (OR-Map) and catch-up publications (other kinds) sent since the node
    /// started: what anti-entropy cost beyond live publications.
    pub catch_up_batches: u64,
    /// See `catch_up_batches`.
    pub catch_up_publications: u64,
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
    /// Their number.
    pub(crate) max_connections: usize,
    /// What the transport refused, by reason (the core counts its own).
    pub(crate) refusals: Arc<Mutex<Refusals>>,
    /// Counters of connections that closed (node-wide totals = these + the open ones').
    pub(crate) closed_metrics: Mutex<crate::middleware::MetricsSnapshot>,
    /// How long each durability barrier took.
    pub(crate) barrier_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Each open remote connection's channel binding (set before its first frame is read).
    pub(crate) bindings: Mutex<HashMap<ConnId, tls::ChannelBinding>>,
    /// The default [`NodeConfig::client_tls`], made on the first `wss://` dial.
    pub(crate) default_client_tls: std::sync::OnceLock<tls::ClientTls>,
}

impl Shared {
    /// Counts a refusal of the transport.
    pub(crate) fn refuse(&self, why: Refusal) {
        self.refusals.lock().expect("poisoned").count(why);
    }

    /// How this node verifies the `wss://` servers it dials.
    pub(crate) fn client_tls(&self) -> tls::ClientTls {
        match &self.config.client_tls {
            Some(t) => t.clone(),
            None => self.default_client_tls.get_or_init(tls::ClientTls::webpki_roots).clone(),
        }
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
            max_connections,
            finished: Mutex::new(None),
            refusals: refusals.clone(),
            closed_metrics: Mutex::new(Default::default()),
            barrier_seconds: http::barrier_histogram(),
            bindings: Mutex::new(HashMap::new()),
            default_client_tls: std::sync::OnceLock::new(),
        });
        let (barrier_tx, barrier_rx) = std::sync::mpsc::channel::<u64>();
        {
            let store = store.clone();
            let core = core_tx.clone();
            let histogram = shared.barrier_seconds.clone();
            std::thread::Builder::new()
                .name("replikativ-barrier".into())
                .spawn(move || barrier_loop(store, barrier_rx, core, histogram))
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

    /// Listens for plain websocket connections (`ws://`) and HTTP on `addr` (e.g. `127.0.0.1:0`);
    /// returns the bound address. Plain connections are readable by anyone on the path: beyond
    /// loopback, use [`Node::listen_tls`].
    pub async fn listen(&self, addr: &str) -> Result<SocketAddr, NodeError> {
        listen::listen(self.shared.clone(), addr, None).await
    }

    /// Listens for `wss://` connections (and HTTPS: `/healthz`, `/readyz`, `/metrics`, the
    /// `web` files) on `addr`, with the certificate of `tls`; returns the bound address. The TLS
    /// handshake counts toward the handshake timeout and byte budget of [`WsConfig`]; a failed
    /// or late one is refused and counted like a failed websocket handshake, and a plain HTTP
    /// request gets an HTTP 400 saying to use TLS. See [`tls`] for an example.
    pub async fn listen_tls(&self, addr: &str, tls: tls::ServerTls) -> Result<SocketAddr, NodeError> {
        listen::listen(self.shared.clone(), addr, Some(tls)).await
    }

    /// Connects to a peer at a `ws://` or `wss://` URL (`wss://` servers are verified with
    /// [`NodeConfig::client_tls`]). Fails if the first connection cannot be made (for a
    /// certificate the node cannot verify, the error says which check failed); once made, the
    /// connection is re-established with backoff whenever it drops, until [`Node::disconnect`].
    pub async fn connect(&self, url: &str) -> Result<(), NodeError> {
        dial::connect(self.shared.clone(), url).await
    }

    /// The [`tls::ChannelBinding`] of an open remote connection (its TLS exporter; zeros on plain
    /// `ws://`), known before its first message is read; `None` for a closed connection or a
    /// stage. What the authenticated hello exchange binds its signatures to.
    pub fn channel_binding(&self, conn: ConnId) -> Option<tls::ChannelBinding> {
        self.shared.bindings.lock().expect("poisoned").get(&conn).copied()
    }

    /// Connects to a peer at a `ws://` or `wss://` URL in the background: returns at once (an
    /// error only for a URL that is neither), and keeps trying with backoff until the connection is made, then
    /// re-establishes it whenever it drops, until [`Node::disconnect`] or shutdown. Each failed
    /// attempt is logged at WARN with the delay before the next one. What `serve --connect` uses: a
    /// peer that is down when this one starts is normal in a peer-to-peer system.
    pub fn connect_retrying(&self, url: &str) -> Result<(), NodeError> {
        dial::connect_retrying(self.shared.clone(), url)
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
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
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
        // The supervisors of dialed links stop by themselves once their connection closes (the
        // core closes every connection with a reason): they are awaited below, not aborted, so
        // the remotes get the close frame (aborting one drops its connection without it).
        let outgoing: Vec<JoinHandle<()>> =
            self.shared.outgoing.lock().expect("poisoned").drain().map(|(_, task)| task).collect();
        let (tx, rx) = oneshot::channel();
        if self.shared.core.send(CoreMsg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        for mut task in outgoing {
            if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
                task.abort();
            }
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.shared.tasks.lock().expect("poisoned"));
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        // Incoming connections' tasks hold a permit each until they end: wait (bounded) until they
        // sent their close frames, so remotes learn why (before, a process exiting right after
        // shutdown could cut them off: the remote saw the socket end without a reason).
        let all = u32::try_from(self.shared.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.connections.acquire_many(all)).await;
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

/// Node-wide counters: those of closed connections plus those of the open ones.
pub(crate) fn metric_totals(shared: &Shared) -> crate::middleware::MetricsSnapshot {
    let mut totals = *shared.closed_metrics.lock().expect("poisoned");
    for m in shared.metrics.lock().expect("poisoned").values() {
        totals.add(&m.snapshot());
    }
    totals
}

/// Moves a closing connection's counters into the node-wide totals.
pub(crate) fn retire_metrics(shared: &Shared, conn: ConnId) {
    shared.bindings.lock().expect("poisoned").remove(&conn);
    let removed = shared.metrics.lock().expect("poisoned").remove(&conn);
    if let Some(m) = removed {
        shared.closed_metrics.lock().expect("poisoned").add(&m.snapshot());
    }
}

pub(crate) fn register_metrics(shared: &Shared, conn: ConnId) -> Arc<ConnMetrics> {
    let m = Arc::new(ConnMetrics::default());
    shared.metrics.lock().expect("poisoned").insert(conn, m.clone());
    m
}

impl From<NodeError> for StageError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Gone => StageError::NodeGone,
            other => StageError::Node(other.to_string()),
        }
    }
}
