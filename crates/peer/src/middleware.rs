//! The middleware chain every connection runs through, remote or the in-process stage (kabel's
//! `[in out]` chain, as plain structs).
//!
//! A connection carries [`Item`]s: wire [`Message`]s for a remote peer; commands, replies and change
//! events for the in-process stage. A [`Middleware`] sees every item in both directions: `inbound`
//! (from the remote or the stage toward the core) and `outbound` (from the core toward the remote
//! or the stage). For each item it can pass it on, drop it, rewrite it, or inject other items in
//! either direction through [`Emit`]. Middlewares compose in order: the first is nearest to the
//! network, the last nearest to the core. The chain runs synchronously inside the connection's
//! task, so it needs no tasks or channels of its own, keeps the order of items, and is testable
//! without a runtime.
//!
//! Framing (encoding and the frame-size limit) happens below the chain, in the transport: the chain
//! sees decoded messages.
//!
//! ```
//! use replikativ_peer::middleware::{Chain, Emit, Item, Middleware};
//! use replikativ_peer::proto::Message;
//!
//! /// Drops custom messages and answers them with an error.
//! #[derive(Debug)]
//! struct NoCustom;
//!
//! impl Middleware for NoCustom {
//!     fn inbound(&mut self, item: Item, emit: &mut Emit) {
//!         match item {
//!             Item::Message(Message::Custom { tag, .. }) => {
//!                 emit.down(Item::Message(Message::Error { reason: format!("custom {tag} not allowed") }))
//!             }
//!             other => emit.up(other),
//!         }
//!     }
//! }
//!
//! let mut chain = Chain::new(vec![Box::new(NoCustom)]);
//! let flow = chain.inbound(Item::Message(Message::Custom { tag: "x".into(), data: vec![].into() }));
//! assert!(flow.up.is_empty());
//! assert!(matches!(&flow.down[..], [Item::Message(Message::Error { .. })]));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use replikativ_crdt::Address;

use crate::proto::{Command, CommandId, ConnId, Event, Message, Reply, StageError};

/// What travels through a connection's chain.
#[derive(Clone, Debug)]
pub enum Item {
    /// A wire message (remote connections).
    Message(Message),
    /// A stage command (the in-process stage).
    Command {
        /// Its id.
        id: CommandId,
        /// The command.
        cmd: Command,
    },
    /// A command's reply (to the stage).
    Reply {
        /// The command id.
        id: CommandId,
        /// Its result.
        result: Result<Reply, StageError>,
    },
    /// A change event (to the stage).
    Event(Event),
}

/// Items a middleware emits: `up` toward the core, `down` toward the remote or stage.
#[derive(Debug, Default)]
pub struct Emit {
    up: VecDeque<Item>,
    down: VecDeque<Item>,
}

impl Emit {
    /// Passes an item toward the core.
    pub fn up(&mut self, item: Item) {
        self.up.push_back(item);
    }

    /// Sends an item toward the remote (or stage).
    pub fn down(&mut self, item: Item) {
        self.down.push_back(item);
    }
}

/// One link of the chain (see the module docs). The defaults pass everything.
pub trait Middleware: Send + fmt::Debug + 'static {
    /// An item on its way to the core.
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        emit.up(item);
    }

    /// An item on its way to the remote or stage.
    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        emit.down(item);
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// A peer over the network (its address as the transport saw it).
    Peer(String),
    /// The in-process stage.
    Stage,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Peer(addr) => f.write_str(addr),
            Remote::Stage => f.write_str("stage"),
        }
    }
}

/// Builds a middleware for each new connection.
pub type MiddlewareFactory = Arc<dyn Fn(ConnId, &Remote) -> Box<dyn Middleware> + Send + Sync>;

/// What an item passing through a chain came to: items toward the core (`up`) and toward the
/// remote or stage (`down`), whichever direction it travelled.
#[derive(Debug, Default)]
pub struct Flow {
    /// Toward the core.
    pub up: Vec<Item>,
    /// Toward the remote (or stage).
    pub down: Vec<Item>,
}

/// The middlewares of one connection, in order (first = nearest the network).
#[derive(Debug, Default)]
pub struct Chain {
    layers: Vec<Box<dyn Middleware>>,
}

impl Chain {
    /// A chain of these middlewares.
    pub fn new(layers: Vec<Box<dyn Middleware>>) -> Chain {
        Chain { layers }
    }

    /// Runs an item from the network (or stage) through the chain: what reaches the core (`up`)
    /// and what is sent back (`down`).
    pub fn inbound(&mut self, item: Item) -> Flow {
        let mut flow = Flow::default();
        self.run(0, Way::Up, item, &mut flow);
        flow
    }

    /// Runs an item from the core through the chain: what reaches the network or stage (`down`)
    /// and what the chain injects toward the core (`up`).
    pub fn outbound(&mut self, item: Item) -> Flow {
        let mut flow = Flow::default();
        let n = self.layers.len();
        self.run(n, Way::Down, item, &mut flow);
        flow
    }

    /// Delivers `item` travelling in `dir` at position `pos` (between layer `pos - 1` and `pos`).
    fn run(&mut self, pos: usize, way: Way, item: Item, flow: &mut Flow) {
        let (layer, next_up, next_down) = match way {
            Way::Up if pos == self.layers.len() => return flow.up.push(item),
            Way::Up => (pos, pos + 1, pos),
            Way::Down if pos == 0 => return flow.down.push(item),
            Way::Down => (pos - 1, pos, pos - 1),
        };
        let mut emit = Emit::default();
        match way {
            Way::Up => self.layers[layer].inbound(item, &mut emit),
            Way::Down => self.layers[layer].outbound(item, &mut emit),
        }
        for up in emit.up {
            self.run(next_up, Way::Up, up, flow);
        }
        for down in emit.down {
            self.run(next_down, Way::Down, down, flow);
        }
    }
}

/// Which way an item travels through a chain.
#[derive(Clone, Copy)]
enum Way {
    Up,
    Down,
}

/// What the standard chain of a connection is built from (see [`standard_chain`]).
#[derive(Clone, Copy, Default)]
pub struct ChainSpec<'a> {
    /// The application's middlewares, in order (nearest the network first).
    pub middleware: &'a [MiddlewareFactory],
    /// Whether remote connections may run stage commands ([`RemoteStage`]).
    pub remote_commands: bool,
    /// The access policy, if any.
    pub policy: Option<&'a Policy>,
    /// The principal the remote proved in the authentication handshake (authentication on).
    pub principal: Option<&'a crate::auth::Principal>,
    /// The built-in authorization rules, enforced by an [`crate::auth::AuthGate`] nearest the
    /// core when the connection is authenticated.
    pub auth: Option<&'a Arc<crate::auth::AuthPolicy>>,
    /// Where the gate counts its refusals.
    pub count: Option<&'a crate::auth::gate::RefusalCounter>,
    /// Whether this node dialed the remote (its gate then trusts it: [`crate::auth::AuthGate::dialed`]).
    pub dialed: bool,
}

impl fmt::Debug for ChainSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainSpec")
            .field("middleware", &self.middleware.len())
            .field("remote_commands", &self.remote_commands)
            .field("policy", &self.policy.is_some())
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// The chain every connection runs through, in the node and in the simulation alike: metrics and
/// trace nearest the network, then the application's middlewares, then (remote connections, if
/// enabled) remote stage commands, then access control, then (authenticated connections) the
/// authorization gate nearest the core.
pub fn standard_chain(
    conn: ConnId,
    remote: &Remote,
    metrics: Arc<ConnMetrics>,
    spec: ChainSpec<'_>,
) -> Chain {
    let mut layers: Vec<Box<dyn Middleware>> =
        vec![Box::new(Metrics::new(metrics)), Box::new(Trace::new(conn))];
    layers.extend(spec.middleware.iter().map(|f| f(conn, remote)));
    if spec.remote_commands && *remote != Remote::Stage {
        layers.push(Box::new(RemoteStage));
    }
    if let Some(policy) = spec.policy {
        let access = match spec.principal {
            Some(p) => AccessControl::authenticated(remote.clone(), p.clone(), policy.clone()),
            None => AccessControl::new(remote.clone(), policy.clone()),
        };
        layers.push(Box::new(access));
    }
    if let (Some(principal), Some(auth)) = (spec.principal, spec.auth) {
        let (p, a, c) = (principal.clone(), auth.clone(), spec.count.cloned());
        let gate =
            if spec.dialed { crate::auth::AuthGate::dialed(p, a, c) } else { crate::auth::AuthGate::new(p, a, c) };
        layers.push(Box::new(gate));
    }
    Chain::new(layers)
}

/// Logs every item with `tracing` (debug level), with the connection and direction.
#[derive(Debug)]
pub struct Trace {
    conn: ConnId,
}

impl Trace {
    /// A trace middleware for a connection.
    pub fn new(conn: ConnId) -> Trace {
        Trace { conn }
    }
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::Message(m) => m.kind(),
        Item::Command { .. } => "command",
        Item::Reply { .. } => "reply",
        Item::Event(_) => "event",
    }
}

impl Middleware for Trace {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        tracing::debug!(conn = self.conn, kind = item_kind(&item), "in");
        emit.up(item);
    }

    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        tracing::debug!(conn = self.conn, kind = item_kind(&item), "out");
        emit.down(item);
    }
}

/// Counters of one connection, shared with whoever reads them.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    /// Items received.
    pub items_in: AtomicU64,
    /// Items sent.
    pub items_out: AtomicU64,
    /// Frame bytes received (counted by the transport).
    pub bytes_in: AtomicU64,
    /// Frame bytes sent (counted by the transport).
    pub bytes_out: AtomicU64,
    /// Publications received (ops offered to the core).
    pub publications_in: AtomicU64,
    /// Publications sent (ops and catch-up batches).
    pub publications_out: AtomicU64,
    /// Fetches received.
    pub fetches_in: AtomicU64,
    /// Errors and refusals sent or received.
    pub errors: AtomicU64,
}

/// A snapshot of [`ConnMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Items received.
    pub items_in: u64,
    /// Items sent.
    pub items_out: u64,
    /// Frame bytes received.
    pub bytes_in: u64,
    /// Frame bytes sent.
    pub bytes_out: u64,
    /// Publications received.
    pub publications_in: u64,
    /// Publications sent.
    pub publications_out: u64,
    /// Fetches received.
    pub fetches_in: u64,
    /// Errors and refusals.
    pub errors: u64,
}

impl ConnMetrics {
    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            items_in: l(&self.items_in),
            items_out: l(&self.items_out),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            publications_in: l(&self.publications_in),
            publications_out: l(&self.publications_out),
            fetches_in: l(&self.fetches_in),
            errors: l(&self.errors),
        }
    }
}

impl MetricsSnapshot {
    /// Adds another snapshot's counters to this one (saturating).
    pub fn add(&mut self, other: &MetricsSnapshot) {
        self.items_in = self.items_in.saturating_add(other.items_in);
        self.items_out = self.items_out.saturating_add(other.items_out);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.publications_in = self.publications_in.saturating_add(other.publications_in);
        self.publications_out = self.publications_out.saturating_add(other.publications_out);
        self.fetches_in = self.fetches_in.saturating_add(other.fetches_in);
        self.errors = self.errors.saturating_add(other.errors);
    }
}

/// Counts items per connection into a [`ConnMetrics`].
#[derive(Debug)]
pub struct Metrics {
    counters: Arc<ConnMetrics>,
}

impl Metrics {
    /// A metrics middleware writing to `counters`.
    pub fn new(counters: Arc<ConnMetrics>) -> Metrics {
        Metrics { counters }
    }
}

impl Middleware for Metrics {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        let c = &self.counters;
        c.items_in.fetch_add(1, Ordering::Relaxed);
        match &item {
            Item::Message(Message::Publish(_) | Message::Batch(_)) => {
                c.publications_in.fetch_add(1, Ordering::Relaxed);
            }
            Item::Message(Message::Fetch { .. }) => {
                c.fetches_in.fetch_add(1, Ordering::Relaxed);
            }
            Item::Message(Message::Error { .. } | Message::Refused { .. } | Message::Close { .. }) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        emit.up(item);
    }

    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        let c = &self.counters;
        c.items_out.fetch_add(1, Ordering::Relaxed);
        if matches!(item, Item::Message(Message::Publish(_) | Message::Batch(_))) {
            c.publications_out.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(
            item,
            Item::Message(Message::Error { .. } | Message::Refused { .. } | Message::Close { .. })
                | Item::Reply { result: Err(_), .. }
        ) {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        emit.down(item);
    }
}

/// What an access policy decides about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// Subscribing to an address (or creating it).
    Subscribe(&'a Address),
    /// Publishing an op to an address (or changing it through a stage command).
    Publish(&'a Address),
}

/// An access policy: may the remote (with the principal it proved, when authentication is on)
/// do this? It runs before the built-in authorization gate (`crate::auth::AuthGate`), so it can
/// only restrict further.
pub type Policy = Arc<dyn Fn(&Remote, Option<&crate::auth::Principal>, Access<'_>) -> bool + Send + Sync>;

/// Enforces an access [`Policy`]: publications it denies are refused (`Refused`), subscriptions are
/// cut down to the allowed addresses, and denied stage commands fail.
pub struct AccessControl {
    remote: Remote,
    principal: Option<crate::auth::Principal>,
    policy: Policy,
}

impl fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessControl").field("remote", &self.remote).finish_non_exhaustive()
    }
}

impl AccessControl {
    /// Access control for a connection to `remote`.
    pub fn new(remote: Remote, policy: Policy) -> AccessControl {
        AccessControl { remote, principal: None, policy }
    }

    /// Access control for an authenticated connection to `remote`.
    pub fn authenticated(remote: Remote, principal: crate::auth::Principal, policy: Policy) -> AccessControl {
        AccessControl { remote, principal: Some(principal), policy }
    }

    fn allowed(&self, access: Access<'_>) -> bool {
        (self.policy)(&self.remote, self.principal.as_ref(), access)
    }
}

fn command_access(cmd: &Command) -> Vec<Access<'_>> {
    match cmd {
        Command::Create { address, .. } => vec![Access::Subscribe(address), Access::Publish(address)],
        Command::Import(e) => vec![Access::Subscribe(&e.address), Access::Publish(&e.address)],
        Command::Subscribe { addresses } => addresses.iter().map(Access::Subscribe).collect(),
        Command::Unsubscribe { .. } => vec![],
        Command::Assoc { address, .. }
        | Command::Put { address, .. }
        | Command::Dissoc { address, .. }
        | Command::Transact { address, .. }
        | Command::Merge { address, .. }
        | Command::LwwSet { address, .. }
        | Command::GsetAdd { address, .. } => vec![Access::Publish(address)],
        Command::Pull { into, .. } | Command::Fork { into, .. } => vec![Access::Publish(into)],
        _ => vec![],
    }
}

impl Middleware for AccessControl {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            Item::Message(m) if m.written().is_some_and(|(_, a)| !self.allowed(Access::Publish(a))) => {
                let (id, address) = m.written().expect("checked");
                let reason = format!("not allowed to publish to {address}");
                emit.down(Item::Message(Message::Refused { id, reason }));
            }
            // A subscription by digest names addresses this layer cannot see: refused, so the
            // remote subscribes in full and the policy filters the list.
            Item::Message(Message::Resubscribe(r)) => {
                let reason = "resubscribe is not accepted under access control; subscribe in full".to_owned();
                emit.down(Item::Message(Message::Refused { id: r.id, reason }));
            }
            Item::Message(Message::Subscribe(mut s)) => {
                let before = s.addresses.len();
                s.addresses.retain(|a| (self.policy)(&self.remote, self.principal.as_ref(), Access::Subscribe(a)));
                if s.addresses.len() != before {
                    tracing::info!(remote = ?self.remote, denied = before - s.addresses.len(), "subscriptions denied");
                }
                emit.up(Item::Message(Message::Subscribe(s)));
            }
            Item::Command { id, cmd } => {
                if let Some(denied) = command_access(&cmd).into_iter().find(|a| !self.allowed(a.clone())) {
                    let address = match denied {
                        Access::Subscribe(a) | Access::Publish(a) => a.clone(),
                    };
                    emit.down(Item::Reply { id, result: Err(StageError::Denied(address)) });
                } else {
                    emit.up(Item::Command { id, cmd });
                }
            }
            other => emit.up(other),
        }
    }
}

/// Tag of the custom messages that carry a remote stage command: msgpack `(id, Command)`.
pub const COMMAND_TAG: &str = "replikativ/command";
/// Tag of the custom messages that carry its reply: msgpack `(id, Result<Reply, StageError>)`.
pub const REPLY_TAG: &str = "replikativ/reply";

/// Lets a remote client run stage commands on the node over its connection: custom messages tagged
/// [`COMMAND_TAG`] become commands (which then pass access control like a stage's), and their
/// replies go back tagged [`REPLY_TAG`]. Enabled by `NodeConfig::remote_commands`; the command
/// line's data commands use it.
#[derive(Debug, Default)]
pub struct RemoteStage;

impl Middleware for RemoteStage {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            Item::Message(Message::Custom { tag, data }) if tag == COMMAND_TAG => {
                match crate::proto::message::from_msgpack::<(CommandId, Command)>(&data) {
                    Ok((id, cmd)) => emit.up(Item::Command { id, cmd }),
                    Err(e) => {
                        emit.down(Item::Message(Message::Error { reason: format!("malformed command: {e}") }))
                    }
                }
            }
            other => emit.up(other),
        }
    }

    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            Item::Reply { id, result } => {
                let data = rmp_serde::to_vec_named(&(id, result)).expect("replies encode");
                emit.down(Item::Message(Message::Custom { tag: REPLY_TAG.into(), data: data.into() }));
            }
            other => emit.down(other),
        }
    }
}

/// Per-connection metrics of a node, by connection.
pub type MetricsRegistry = Arc<std::sync::Mutex<BTreeMap<ConnId, Arc<ConnMetrics>>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Publish;
    use replikativ_crdt::{GSetOp, Value};

    fn publish(address: &Address) -> Item {
        Item::Message(Message::Publish(Publish {
            id: 7,
            address: address.clone(),
            op: crate::proto::AnyOp::Gset(GSetOp { elements: [Value::from(1)].into_iter().collect() }),
            values: vec![],
            catch_up: false,
        }))
    }

    #[derive(Debug)]
    struct Rewrite;
    impl Middleware for Rewrite {
        fn outbound(&mut self, item: Item, emit: &mut Emit) {
            match item {
                Item::Message(Message::Error { reason }) => {
                    emit.down(Item::Message(Message::Error { reason: format!("[rewritten] {reason}") }))
                }
                other => emit.down(other),
            }
        }
    }

    #[test]
    fn access_control_refuses_publications_and_trims_subscriptions() {
        let open = Address::new("alice", uuid::Uuid::from_u128(1)).unwrap();
        let closed = Address::new("bob", uuid::Uuid::from_u128(2)).unwrap();
        let policy: Policy = Arc::new(|_, _, access| match access {
            Access::Subscribe(a) | Access::Publish(a) => a.user == "alice",
        });
        let counters = Arc::new(ConnMetrics::default());
        // Network side first: metrics see what arrives, access control decides, a rewriter changes
        // what goes out.
        let mut chain = Chain::new(vec![
            Box::new(Rewrite),
            Box::new(Metrics::new(counters.clone())),
            Box::new(AccessControl::new(Remote::Peer("test".into()), policy)),
        ]);
        let Flow { up, down } = chain.inbound(publish(&closed));
        assert!(up.is_empty());
        assert!(matches!(&down[..], [Item::Message(Message::Refused { id: 7, .. })]));
        let Flow { up, down } = chain.inbound(publish(&open));
        assert_eq!(up.len(), 1);
        assert!(down.is_empty());
        let sub = Item::Message(Message::Subscribe(crate::proto::Subscribe {
            id: 1,
            addresses: [open.clone(), closed.clone()].into_iter().collect(),
            extend: true,
        }));
        let up = chain.inbound(sub).up;
        let [Item::Message(Message::Subscribe(s))] = &up[..] else { panic!("{up:?}") };
        assert_eq!(s.addresses.iter().collect::<Vec<_>>(), vec![&open]);
        // Outbound passes through the rewriter nearest the network.
        let Flow { down: out, up: injected } =
            chain.outbound(Item::Message(Message::Error { reason: "x".into() }));
        assert!(injected.is_empty());
        assert!(matches!(&out[..], [Item::Message(Message::Error { reason })] if reason == "[rewritten] x"));
        let m = counters.snapshot();
        // The refusal injected by access control passed the metrics layer on its way out, and so
        // did the error from the core.
        assert_eq!((m.items_in, m.publications_in, m.items_out, m.errors), (3, 2, 2, 2));
    }
}
