//! The stage: the application's async handle on a node.
//!
//! A stage is an in-process connection to its node, running through the same middleware chain as
//! remote peers: its commands enter the protocol core like remote publications and take the same
//! path (store, barrier, relay). Writes resolve once durable.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use replikativ_peer::stage::Stage;
//! use replikativ_crdt::{Transaction, Value};
//!
//! let alice = Stage::builder(Arc::new(replikativ_store::MemoryStore::new()))
//!     .user("mail:alice@example.org")
//!     .spawn()
//!     .await?;
//! let bob = Stage::builder(Arc::new(replikativ_store::MemoryStore::new()))
//!     .user("mail:bob@example.org")
//!     .spawn()
//!     .await?;
//! let addr = alice.node().listen("127.0.0.1:0").await?;
//!
//! let list = alice.create_ormap(None).await?;
//! let mut changes = bob.changes(&list);
//! bob.subscribe([list.clone()]).await?;
//! bob.node().connect(&format!("ws://{addr}")).await?;
//!
//! alice.assoc(&list, "milk".into(), vec![Transaction::new("add", 2)]).await?;
//! // Wait (bounded) until bob sees it.
//! while !matches!(bob.get(&list, &Value::from("milk")).await, Ok(v) if !v.is_empty()) {
//!     tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv()).await??;
//! }
//! let values = bob.get(&list, &"milk".into()).await?;
//! assert_eq!(values[0].transactions[0].params, Value::from(2));
//! # alice.shutdown().await; bob.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use replikativ_crdt::{ActorId, Address, Cdvcs, ContentId, CrdtKind, OrMap, Transaction, Value};
use replikativ_store::Store;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::connection::Connection;
use crate::middleware::{Item, MiddlewareFactory, Policy, Remote, standard_chain};
use crate::node::{ConnCmd, CoreMsg, Node, NodeConfig, NodeError};
pub use crate::proto::CommitValue;
use crate::proto::{Command, CrdtState, Event, PeerConfig, Query, Reply, StageError};

/// Builds a [`Stage`] (and its node).
pub struct StageBuilder {
    store: Arc<dyn Store>,
    user: String,
    config: NodeConfig,
    actor: Option<ActorId>,
}

impl std::fmt::Debug for StageBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageBuilder")
            .field("user", &self.user)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StageBuilder {
    /// The user the stage writes as (author of its commits), e.g. `mail:alice@example.org`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The peer id (kept in the store; only used when the store has none yet).
    pub fn peer_id(mut self, id: impl Into<String>) -> Self {
        self.config.peer_id = id.into();
        self
    }

    /// Whether the peer takes on its peers' subscriptions (a server; default) or only forwards
    /// the overlap with its own (a client).
    pub fn extend(mut self, extend: bool) -> Self {
        self.config.extend = extend;
        self
    }

    /// The whole node configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Protocol core tuning.
    pub fn peer_config(mut self, peer: PeerConfig) -> Self {
        self.config.peer = peer;
        self
    }

    /// Adds a middleware (built per connection; first added is nearest the network).
    pub fn middleware(mut self, factory: MiddlewareFactory) -> Self {
        self.config.middleware.push(factory);
        self
    }

    /// Sets the access policy for every connection.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = Some(policy);
        self
    }

    /// The actor id of this session (default: a random one; must never be shared by two live
    /// stages).
    pub fn actor(mut self, actor: ActorId) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Starts the node and attaches the stage to it.
    pub async fn spawn(self) -> Result<Stage, NodeError> {
        let actor = self.actor.unwrap_or_else(|| ActorId::from(Uuid::new_v4()));
        let mut config = self.config;
        if config.peer_id.is_empty() {
            config.peer_id = format!("peer-{}", &Uuid::new_v4().simple().to_string()[..8]);
        }
        let node = Node::start(self.store, config, actor)?;
        Stage::attach(node, self.user).await
    }
}

struct Inner {
    node: Node,
    user: String,
    /// Commands into the stage connection.
    to_conn: mpsc::Sender<Item>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Reply, StageError>>>>,
    events: broadcast::Sender<Event>,
}

/// The application's handle on a node (cheap to clone). See the module docs.
#[derive(Clone)]
pub struct Stage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("user", &self.inner.user).field("node", &self.inner.node).finish()
    }
}

impl Stage {
    /// A builder for a stage on `store`.
    pub fn builder(store: Arc<dyn Store>) -> StageBuilder {
        StageBuilder { store, user: "anonymous".into(), config: NodeConfig::default(), actor: None }
    }

    /// Attaches a stage for `user` to a running node.
    pub async fn attach(node: Node, user: impl Into<String>) -> Result<Stage, NodeError> {
        let shared = node.shared.clone();
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let metrics = node.register_metrics(conn);
        let chain = standard_chain(conn, &Remote::Stage, metrics, crate::node::chain_spec(&shared));
        let mut connection = Connection::new(chain);
        let (core_tx, mut from_core) = mpsc::channel::<ConnCmd>(shared.config.outbox);
        let (to_conn, mut from_stage) = mpsc::channel::<Item>(1024);
        let (events, _) = broadcast::channel(4096);
        shared
            .core
            .send(CoreMsg::Attach { conn, tx: core_tx, remote: Remote::Stage, queued: Default::default() })
            .await
            .map_err(|_| NodeError::Gone)?;
        let inner =
            Arc::new(Inner { node, user: user.into(), to_conn, pending: Mutex::new(HashMap::new()), events });
        let weak = Arc::downgrade(&inner);
        let core = shared.core.clone();
        let next_command = move || shared.next_command.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let deliver = |item: Item| {
                let Some(inner) = weak.upgrade() else { return };
                match item {
                    Item::Reply { id, result } => {
                        if let Some(tx) = inner.pending.lock().expect("poisoned").remove(&id) {
                            let _ = tx.send(result);
                        }
                    }
                    Item::Event(event) => {
                        let _ = inner.events.send(event);
                    }
                    _ => {}
                }
            };
            // The same pipeline as a remote connection's, without the wire: commands in, replies
            // and events out, through the chain.
            loop {
                let to_core = tokio::select! {
                    item = from_stage.recv() => {
                        let Some(item) = item else { break };
                        let inbound = connection.receive(item, &next_command);
                        inbound.to_remote.into_iter().for_each(&deliver);
                        inbound.to_core
                    }
                    cmd = from_core.recv() => {
                        let Some(ConnCmd::Item(item, _)) = cmd else { break };
                        let flow = connection.send(item);
                        flow.down.into_iter().for_each(&deliver);
                        flow.up
                    }
                };
                for item in to_core {
                    if let Item::Command { id, cmd } = item
                        && core.send(CoreMsg::Command { conn, id, cmd }).await.is_err()
                    {
                        return;
                    }
                }
            }
            // The node is gone: fail whatever still waits.
            if let Some(inner) = weak.upgrade() {
                for (_, tx) in inner.pending.lock().expect("poisoned").drain() {
                    let _ = tx.send(Err(StageError::NodeGone));
                }
            }
        });
        Ok(Stage { inner })
    }

    /// The node the stage runs on.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The user the stage writes as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Runs any command (the typed methods below are built on this).
    pub async fn command(&self, cmd: Command) -> Result<Reply, StageError> {
        self.run(cmd).await
    }

    async fn run(&self, cmd: Command) -> Result<Reply, StageError> {
        let id = self.inner.node.shared.next_command.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("poisoned").insert(id, tx);
        if self.inner.to_conn.send(Item::Command { id, cmd }).await.is_err() {
            self.inner.pending.lock().expect("poisoned").remove(&id);
            return Err(StageError::NodeGone);
        }
        rx.await.map_err(|_| StageError::NodeGone)?
    }

    async fn create(&self, kind: CrdtKind, id: Option<Uuid>) -> Result<Address, StageError> {
        let address = Address::new(self.inner.user.clone(), id.unwrap_or_else(Uuid::new_v4))
            .map_err(|e| StageError::InvalidAddress(e.to_string()))?;
        self.run(Command::Create { address: address.clone(), kind, author: self.inner.user.clone() }).await?;
        Ok(address)
    }

    /// Creates an OR-Map under this stage's user (with the given id, or a fresh one).
    pub async fn create_ormap(&self, id: Option<Uuid>) -> Result<Address, StageError> {
        self.create(CrdtKind::Ormap, id).await
    }

    /// Creates a CDVCS (its root commit is authored by this stage's user).
    pub async fn create_cdvcs(&self, id: Option<Uuid>) -> Result<Address, StageError> {
        self.create(CrdtKind::Cdvcs, id).await
    }

    /// Creates an LWW register.
    pub async fn create_lww(&self, id: Option<Uuid>) -> Result<Address, StageError> {
        self.create(CrdtKind::Lww, id).await
    }

    /// Creates a G-Set.
    pub async fn create_gset(&self, id: Option<Uuid>) -> Result<Address, StageError> {
        self.create(CrdtKind::Gset, id).await
    }

    /// Subscribes to addresses: their data arrives from connected peers (replikativ's checkout).
    pub async fn subscribe(&self, addresses: impl IntoIterator<Item = Address>) -> Result<(), StageError> {
        let addresses: BTreeSet<Address> = addresses.into_iter().collect();
        self.run(Command::Subscribe { addresses }).await.map(|_| ())
    }

    /// Subscribes to a CDVCS (or any address) of another user to read it (replikativ's `checkout!`):
    /// the same as [`Stage::subscribe`] with one address.
    pub async fn checkout(&self, address: &Address) -> Result<(), StageError> {
        self.subscribe([address.clone()]).await
    }

    /// Unsubscribes from addresses: peers stop sending their changes here. What is stored stays
    /// readable.
    pub async fn unsubscribe(&self, addresses: impl IntoIterator<Item = Address>) -> Result<(), StageError> {
        let addresses: BTreeSet<Address> = addresses.into_iter().collect();
        self.run(Command::Unsubscribe { addresses }).await.map(|_| ())
    }

    /// The state at an address.
    pub async fn state(&self, address: &Address) -> Result<Option<CrdtState>, StageError> {
        match self.run(Command::Read { address: address.clone() }).await? {
            Reply::State(state) => Ok(state.map(|s| *s)),
            _ => Ok(None),
        }
    }

    async fn typed<T>(
        &self,
        address: &Address,
        kind: CrdtKind,
        pick: impl FnOnce(CrdtState) -> Option<T>,
    ) -> Result<T, StageError> {
        let state = self.state(address).await?.ok_or_else(|| StageError::NotFound(address.clone()))?;
        let found = state.kind();
        pick(state).ok_or(StageError::WrongKind { address: address.clone(), expected: kind, found })
    }

    /// The OR-Map at an address.
    pub async fn ormap(&self, address: &Address) -> Result<OrMap, StageError> {
        self.typed(address, CrdtKind::Ormap, |s| if let CrdtState::Ormap(m) = s { Some(m) } else { None })
            .await
    }

    /// The CDVCS at an address.
    pub async fn cdvcs(&self, address: &Address) -> Result<Cdvcs, StageError> {
        self.typed(address, CrdtKind::Cdvcs, |s| if let CrdtState::Cdvcs(c) = s { Some(c) } else { None })
            .await
    }

    /// Commit records with their params, by id.
    pub async fn commits(&self, ids: &[ContentId]) -> Result<Vec<CommitValue>, StageError> {
        match self.run(Command::Commits { ids: ids.to_vec() }).await? {
            Reply::Commits(commits) => Ok(commits),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: replaces the values of a key with a new one, in one op: every value observed
    /// here is removed and `txs` added (a concurrent assoc elsewhere survives). Returns the new
    /// value's commit id.
    pub async fn put(
        &self,
        address: &Address,
        key: Value,
        txs: Vec<Transaction>,
    ) -> Result<ContentId, StageError> {
        let author = self.inner.user.clone();
        match self.run(Command::Put { address: address.clone(), key, txs, author }).await? {
            Reply::Commit(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: adds a value under a key (concurrent values of one key all stay live).
    pub async fn assoc(
        &self,
        address: &Address,
        key: Value,
        txs: Vec<Transaction>,
    ) -> Result<ContentId, StageError> {
        match self
            .run(Command::Assoc { address: address.clone(), key, txs, author: self.inner.user.clone() })
            .await?
        {
            Reply::Commit(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: removes every value of a key this replica has seen, recording `revert`.
    pub async fn dissoc(
        &self,
        address: &Address,
        key: Value,
        revert: Vec<Transaction>,
    ) -> Result<(), StageError> {
        self.run(Command::Dissoc { address: address.clone(), key, revert, author: self.inner.user.clone() })
            .await
            .map(|_| ())
    }

    async fn query(&self, address: &Address, query: Query) -> Result<Reply, StageError> {
        self.run(Command::Query { address: address.clone(), query }).await
    }

    /// OR-Map: the live values of a key (their commits with transactions). Read in the node:
    /// only those values are copied.
    pub async fn get(&self, address: &Address, key: &Value) -> Result<Vec<CommitValue>, StageError> {
        match self.query(address, Query::Get { key: key.clone() }).await? {
            Reply::Commits(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: the keys with live values.
    pub async fn keys(&self, address: &Address) -> Result<Vec<Value>, StageError> {
        match self.query(address, Query::Keys).await? {
            Reply::Keys(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: keys with several live values.
    pub async fn conflicts(&self, address: &Address) -> Result<BTreeMap<Value, Vec<ContentId>>, StageError> {
        match self.query(address, Query::Conflicts).await? {
            Reply::Conflicts(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: commits transactions on the single head; returns the commit id.
    pub async fn transact(&self, address: &Address, txs: Vec<Transaction>) -> Result<ContentId, StageError> {
        match self
            .run(Command::Transact { address: address.clone(), txs, author: self.inner.user.clone() })
            .await?
        {
            Reply::Commit(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: the heads.
    pub async fn heads(&self, address: &Address) -> Result<BTreeSet<ContentId>, StageError> {
        match self.query(address, Query::Heads).await? {
            Reply::Heads(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: the linearized history with transactions (every replica agrees on the order).
    pub async fn log(&self, address: &Address) -> Result<Vec<CommitValue>, StageError> {
        match self.query(address, Query::History).await? {
            Reply::Commits(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: merges exactly the current heads in the given order; returns the merge commit.
    pub async fn merge(
        &self,
        address: &Address,
        heads: Vec<ContentId>,
        correcting: Vec<Transaction>,
    ) -> Result<ContentId, StageError> {
        let cmd =
            Command::Merge { address: address.clone(), heads, correcting, author: self.inner.user.clone() };
        match self.run(cmd).await? {
            Reply::Commit(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: pulls `from` into `into` (a fast-forward unless `allow_induced_conflict`).
    pub async fn pull(
        &self,
        from: &Address,
        into: &Address,
        allow_induced_conflict: bool,
    ) -> Result<(), StageError> {
        let cmd = Command::Pull { from: from.clone(), into: into.clone(), tip: None, allow_induced_conflict };
        self.run(cmd).await.map(|_| ())
    }

    /// CDVCS: forks `from` to this stage's user (same id); returns the new address.
    pub async fn fork(&self, from: &Address) -> Result<Address, StageError> {
        let into = Address::new(self.inner.user.clone(), from.id)
            .map_err(|e| StageError::InvalidAddress(e.to_string()))?;
        self.run(Command::Fork { from: from.clone(), into: into.clone() }).await?;
        Ok(into)
    }

    /// LWW register: writes a value.
    pub async fn set(&self, address: &Address, value: Value) -> Result<(), StageError> {
        self.run(Command::LwwSet { address: address.clone(), value }).await.map(|_| ())
    }

    /// LWW register: the current value.
    pub async fn register(&self, address: &Address) -> Result<Value, StageError> {
        match self.query(address, Query::Register).await? {
            Reply::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// G-Set: adds an element.
    pub async fn add(&self, address: &Address, element: Value) -> Result<(), StageError> {
        self.run(Command::GsetAdd { address: address.clone(), element }).await.map(|_| ())
    }

    /// G-Set: the elements.
    pub async fn elements(&self, address: &Address) -> Result<BTreeSet<Value>, StageError> {
        match self.query(address, Query::Elements).await? {
            Reply::Elements(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// Change events of one address (from this stage and from peers). Events sent while the
    /// receiver lags far behind are skipped (`recv` reports how many); read the state again then.
    pub fn changes(&self, address: &Address) -> Changes {
        Changes { rx: self.inner.events.subscribe(), address: address.clone() }
    }

    /// Shuts the node down gracefully.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }
}

/// A reply of the wrong kind for a command (only a node of another version sends one).
fn unexpected(reply: Reply) -> StageError {
    StageError::UnexpectedReply(format!("{reply:?}").chars().take(200).collect())
}

/// A stream of change events of one address (see [`Stage::changes`]).
#[derive(Debug)]
pub struct Changes {
    rx: broadcast::Receiver<Event>,
    address: Address,
}

/// Why [`Changes::recv`] returned no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangesError {
    /// The receiver fell behind and this many events were skipped.
    #[error("{0} change events were skipped; read the state again")]
    Lagged(u64),
    /// The node stopped.
    #[error("the node stopped")]
    Closed,
}

impl Changes {
    /// The next change of the address.
    pub async fn recv(&mut self) -> Result<Event, ChangesError> {
        loop {
            match self.rx.recv().await {
                Ok(event) if event.address == self.address => return Ok(event),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(ChangesError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(ChangesError::Closed),
            }
        }
    }
}
