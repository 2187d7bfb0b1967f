//! A deterministic simulation of many peers on one thread: in-memory stores that lose what was not
//! past a barrier when a peer restarts, and a network that drops, duplicates, reorders and delays
//! frames, partitions and heals. Everything random comes from one seed.
//!
//! ```
//! use replikativ_peer::sim::{Faults, Network, Topology};
//!
//! let mut net = Network::new(4, Topology::Ring, 7, Faults::default());
//! net.run_workload(40);
//! net.settle().expect("converges");
//! net.check().expect("every replica agrees");
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use replikativ_crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_store::Store;

mod check;
mod rng;
mod store;
pub use rng::Rng;
pub use store::SimStore;

use crate::connection::Connection;
use crate::middleware::{ChainSpec, ConnMetrics, Item, Remote, standard_chain};
use crate::proto::{AnyOp, Command, ConnId, CrdtState, Direction, Input, Message, Output, Peer, PeerConfig};

/// How peers are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// 0-1-2-...: relays through the middle.
    Line,
    /// 0 in the middle, linked to every other.
    Star,
    /// A cycle.
    Ring,
    /// A random connected graph (a random spanning tree plus extra links).
    Mesh,
}

/// Network and node faults.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability a frame is lost.
    pub drop: f64,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Largest delivery delay (ms); frames on one link overtake each other within it.
    pub max_delay_ms: u64,
    /// Probability per workload step that a link is cut (healed later).
    pub partition: f64,
    /// Probability per workload step that a peer restarts from its store.
    pub restart: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { drop: 0.0, duplicate: 0.0, max_delay_ms: 3, partition: 0.0, restart: 0.0 }
    }
}

impl Faults {
    /// Everything at once, moderately.
    pub fn hostile() -> Faults {
        Faults { drop: 0.05, duplicate: 0.05, max_delay_ms: 20, partition: 0.03, restart: 0.02 }
    }
}

#[derive(Debug)]
enum Scheduled {
    Deliver { peer: usize, conn: ConnId, frame: Vec<u8>, generation: u64 },
    Input { peer: usize, input: Input, generation: u64 },
    Reconnect { link: usize },
}

#[derive(Debug)]
struct Link {
    a: usize,
    b: usize,
    /// Connection ids at `a` and `b` while up.
    up: Option<(ConnId, ConnId)>,
    cut_until: u64,
}

struct SimPeer {
    peer: Option<Peer>,
    /// Each connection's pipeline: the node's decoder and middleware chain.
    conns: BTreeMap<ConnId, Connection>,
    store: Arc<SimStore>,
    /// Bumped on restart: events for an older incarnation are dropped.
    generation: u64,
}

/// The simulated network of peers (see the module docs).
pub struct Network {
    rng: Rng,
    /// Simulated time in ms.
    pub now: u64,
    peers: Vec<SimPeer>,
    links: Vec<Link>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Scheduled>,
    seq: u64,
    next_conn: ConnId,
    faults: Faults,
    /// The addresses of the workload: an OR-Map, a CDVCS, an LWW register, a G-Set and a second
    /// CDVCS that the first is pulled into.
    pub addresses: Vec<(Address, CrdtKind)>,
    /// Ops whose local write was acknowledged (durable at their peer).
    pub acknowledged: Vec<(Address, AnyOp)>,
    next_command: u64,
    /// Counters of what happened.
    pub stats: Stats,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("now", &self.now)
            .field("peers", &self.peers.len())
            .field("links", &self.links)
            .field("stats", &self.stats)
            .finish()
    }
}

/// What happened during a run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Frames delivered.
    pub delivered: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Peer restarts.
    pub restarts: u64,
    /// Links cut.
    pub cuts: u64,
    /// Commands that succeeded.
    pub commands_ok: u64,
    /// Commands the state refused (e.g. a commit on several heads).
    pub commands_refused: u64,
}

const ANTI_ENTROPY_MS: u64 = 200;

fn peer_config() -> PeerConfig {
    PeerConfig {
        snapshot_every: 8,
        // Small enough that OR-Maps and G-Sets use both summary forms.
        bucketed_above: 12,
        // Small, so reconciliation by fingerprints runs under faults too.
        recon_above: 2,
        // Small, so catch-up states are larger than one batch or publication: streams of several
        // parts run under loss, duplication, reordering and restarts.
        inline_limit: 256,
        anti_entropy: Some(Duration::from_millis(ANTI_ENTROPY_MS)),
        ..PeerConfig::default()
    }
}

impl Network {
    /// `n` peers linked in `topology`, seeded with `seed`. Every peer subscribes to the workload's
    /// addresses; peer 0 creates them.
    pub fn new(n: usize, topology: Topology, seed: u64, faults: Faults) -> Network {
        assert!(n >= 2, "a network needs two peers");
        let mut rng = Rng::new(seed);
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        match topology {
            Topology::Line => pairs.extend((1..n).map(|i| (i - 1, i))),
            Topology::Star => pairs.extend((1..n).map(|i| (0, i))),
            Topology::Ring => {
                pairs.extend((1..n).map(|i| (i - 1, i)));
                if n > 2 {
                    pairs.insert((0, n - 1));
                }
            }
            Topology::Mesh => {
                for i in 1..n {
                    pairs.insert((rng.below(i as u64) as usize, i));
                }
                for _ in 0..n / 2 {
                    let (a, b) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
                    if a != b {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let user = |i: usize| format!("mail:user{i}@example.org");
        let uuid = |n: u128| uuid::Uuid::from_u128(0x1000 + n);
        let addresses = vec![
            (Address::new(user(0), uuid(1)).expect("valid"), CrdtKind::Ormap),
            (Address::new(user(0), uuid(2)).expect("valid"), CrdtKind::Cdvcs),
            (Address::new(user(0), uuid(3)).expect("valid"), CrdtKind::Lww),
            (Address::new(user(0), uuid(4)).expect("valid"), CrdtKind::Gset),
            (Address::new("mail:central@example.org", uuid(2)).expect("valid"), CrdtKind::Cdvcs),
        ];
        let mut net = Network {
            rng,
            now: 0,
            peers: Vec::new(),
            links: pairs.into_iter().map(|(a, b)| Link { a, b, up: None, cut_until: 0 }).collect(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            next_conn: 1,
            faults,
            addresses,
            acknowledged: Vec::new(),
            next_command: 1,
            stats: Stats::default(),
        };
        for i in 0..n {
            let store = Arc::new(SimStore::new());
            net.peers.push(SimPeer { peer: None, conns: BTreeMap::new(), store, generation: 0 });
            net.boot(i);
        }
        let all: BTreeSet<Address> = net.addresses.iter().map(|(a, _)| a.clone()).collect();
        for i in 0..n {
            net.command(i, Command::Subscribe { addresses: all.clone() });
        }
        for (address, kind) in net.addresses.clone() {
            net.command(0, Command::Create { address, kind, author: user(0) });
        }
        for l in 0..net.links.len() {
            net.connect(l);
        }
        net
    }

    fn boot(&mut self, i: usize) {
        let actor = ActorId::from_u128(((i as u128) << 64) | u128::from(self.rng.next_u64()));
        let store: Arc<dyn Store> = self.peers[i].store.clone();
        let mut peer = Peer::open(store, &format!("peer-{i}"), true, actor, peer_config()).expect("opens");
        let outputs = peer.start();
        self.peers[i].peer = Some(peer);
        self.outputs(i, outputs);
    }

    fn push(&mut self, at: u64, event: Scheduled) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn connect(&mut self, l: usize) {
        if self.links[l].up.is_some() || self.links[l].cut_until > self.now {
            return;
        }
        let (ca, cb) = (self.next_conn, self.next_conn + 1);
        self.next_conn += 2;
        self.links[l].up = Some((ca, cb));
        let (a, b) = (self.links[l].a, self.links[l].b);
        for (peer, conn) in [(a, ca), (b, cb)] {
            let remote = Remote::Peer(format!("sim-link-{l}"));
            let chain = standard_chain(conn, &remote, Arc::new(ConnMetrics::default()), ChainSpec::default());
            self.peers[peer].conns.insert(conn, Connection::new(chain));
        }
        self.input(a, Input::Connected { conn: ca, direction: Direction::Outbound });
        self.input(b, Input::Connected { conn: cb, direction: Direction::Inbound });
    }

    /// Takes a link down (both ends see it close) and schedules its reconnection.
    fn disconnect(&mut self, l: usize, reconnect_after: u64) {
        if let Some((ca, cb)) = self.links[l].up.take() {
            let (a, b) = (self.links[l].a, self.links[l].b);
            self.peers[a].conns.remove(&ca);
            self.peers[b].conns.remove(&cb);
            self.input(a, Input::Closed { conn: ca });
            self.input(b, Input::Closed { conn: cb });
        }
        self.push(self.now + reconnect_after, Scheduled::Reconnect { link: l });
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(peer) = self.peers[i].peer.as_mut() else { return };
        let outputs = peer.handle(input, now);
        self.outputs(i, outputs);
    }

    fn link_of(&self, i: usize, conn: ConnId) -> Option<(usize, usize, ConnId)> {
        self.links.iter().enumerate().find_map(|(l, link)| match link.up {
            Some((ca, cb)) if link.a == i && ca == conn => Some((l, link.b, cb)),
            Some((ca, cb)) if link.b == i && cb == conn => Some((l, link.a, ca)),
            _ => None,
        })
    }

    fn outputs(&mut self, i: usize, outputs: Vec<Output>) {
        let generation = self.peers[i].generation;
        for output in outputs {
            match output {
                Output::Send { conn, msg } => {
                    // Through the connection's chain, as in the node.
                    let Some(c) = self.peers[i].conns.get_mut(&conn) else { continue };
                    let flow = c.send(Item::Message(msg));
                    for item in flow.down {
                        if let Item::Message(msg) = item {
                            self.transmit(i, conn, &msg);
                        }
                    }
                    self.hand_to_core(i, conn, flow.up);
                }
                Output::Close { conn, .. } => self.close(i, conn),
                Output::Barrier { epoch } => {
                    let delay = self.rng.below(3);
                    self.push(
                        self.now + delay,
                        Scheduled::Input { peer: i, input: Input::BarrierDone { epoch }, generation },
                    );
                }
                Output::Schedule { after, timer } => {
                    let at = self.now + after.as_millis() as u64;
                    self.push(at, Scheduled::Input { peer: i, input: Input::Timer(timer), generation });
                }
                Output::Reply { result, .. } => match result {
                    Ok(_) => self.stats.commands_ok += 1,
                    Err(_) => self.stats.commands_refused += 1,
                },
                Output::Event(event) => {
                    if event.local {
                        self.acknowledged.push((event.address, event.op));
                    }
                }
            }
        }
    }

    /// Puts a message on the wire of `i`'s connection `conn` (lost, duplicated and delayed as the
    /// faults say).
    fn transmit(&mut self, i: usize, conn: ConnId, msg: &Message) {
        let Some((_, to, their_conn)) = self.link_of(i, conn) else { return };
        let frame = msg.encode();
        if self.rng.chance(self.faults.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.faults.max_delay_ms.max(1));
            let generation = self.peers[to].generation;
            self.push(
                self.now + delay,
                Scheduled::Deliver { peer: to, conn: their_conn, frame: frame.clone(), generation },
            );
        }
    }

    /// Closes `i`'s connection `conn`: the link goes down and is reconnected later.
    fn close(&mut self, i: usize, conn: ConnId) {
        if let Some((l, _, _)) = self.link_of(i, conn) {
            let after = 50 + self.rng.below(200);
            self.disconnect(l, after);
        }
    }

    /// A frame arrives at `i`'s connection `conn`: decoded and run through its chain like in the
    /// node, then handed to the core.
    fn receive(&mut self, i: usize, conn: ConnId, frame: &[u8]) {
        let Some(c) = self.peers[i].conns.get_mut(&conn) else { return };
        let mut next = self.next_command;
        let inbound = c.receive_frame(frame, || {
            next += 1;
            next
        });
        self.next_command = next;
        for item in inbound.to_remote {
            if let Item::Message(msg) = item {
                self.transmit(i, conn, &msg);
            }
        }
        if inbound.close.is_some() {
            return self.close(i, conn);
        }
        self.hand_to_core(i, conn, inbound.to_core);
    }

    fn hand_to_core(&mut self, i: usize, conn: ConnId, items: Vec<Item>) {
        for item in items {
            match item {
                Item::Message(msg) => self.input(i, Input::Message { conn, msg }),
                Item::Command { id, cmd } => self.input(i, Input::Command { id, cmd }),
                _ => {}
            }
        }
    }

    fn command(&mut self, i: usize, cmd: Command) {
        let id = self.next_command;
        self.next_command += 1;
        self.input(i, Input::Command { id, cmd });
    }

    /// Runs events until `until` (simulated ms).
    pub fn run_until(&mut self, until: u64) {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            let event = self.events.remove(&seq).expect("queued");
            match event {
                Scheduled::Deliver { peer, conn, frame, generation } => {
                    if generation == self.peers[peer].generation {
                        self.stats.delivered += 1;
                        self.receive(peer, conn, &frame);
                    }
                }
                Scheduled::Input { peer, input, generation } => {
                    if generation == self.peers[peer].generation {
                        if let Input::BarrierDone { .. } = input {
                            self.peers[peer].store.sync().expect("memory sync");
                        }
                        self.input(peer, input);
                    }
                }
                Scheduled::Reconnect { link } => self.connect(link),
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs `steps` random workload steps (a few simulated ms apart), with the configured faults.
    pub fn run_workload(&mut self, steps: usize) {
        let n = self.peers.len();
        for step in 0..steps {
            let i = self.rng.below(n as u64) as usize;
            let value = Value::from(step as u64);
            let (address, kind) = self.addresses[self.rng.below(4) as usize].clone();
            let author = format!("mail:user{i}@example.org");
            let key = Value::from(format!("k{}", self.rng.below(4)));
            let cmd = match (kind, self.rng.below(4)) {
                (CrdtKind::Ormap, 0) => {
                    Command::Dissoc { address, key, revert: vec![Transaction::new("unset", value)], author }
                }
                (CrdtKind::Ormap, _) => {
                    Command::Assoc { address, key, txs: vec![Transaction::new("set", value)], author }
                }
                (CrdtKind::Cdvcs, 0) => Command::Pull {
                    from: address,
                    into: self.addresses[4].0.clone(),
                    tip: None,
                    allow_induced_conflict: self.rng.chance(0.5),
                },
                (CrdtKind::Cdvcs, r) => {
                    let heads = self.peers[i].peer.as_ref().and_then(|p| match p.state(&address) {
                        Some(CrdtState::Cdvcs(c)) if c.heads().len() > 1 => {
                            Some(c.heads().iter().copied().collect())
                        }
                        _ => None,
                    });
                    match heads {
                        Some(heads) if r == 1 => {
                            Command::Merge { address, heads, correcting: vec![], author }
                        }
                        _ => Command::Transact { address, txs: vec![Transaction::new("add", value)], author },
                    }
                }
                (CrdtKind::Lww, _) => Command::LwwSet { address, value },
                (CrdtKind::Gset, _) => Command::GsetAdd { address, element: value },
            };
            self.command(i, cmd);
            if self.rng.chance(self.faults.partition) && !self.links.is_empty() {
                let l = self.rng.below(self.links.len() as u64) as usize;
                let duration = 100 + self.rng.below(1000);
                self.links[l].cut_until = self.now + duration;
                self.stats.cuts += 1;
                self.disconnect(l, duration);
            }
            if self.rng.chance(self.faults.restart) {
                let p = self.rng.below(n as u64) as usize;
                self.restart(p);
            }
            let pause = 1 + self.rng.below(10);
            self.run_until(self.now + pause);
        }
    }

    /// Kills peer `i` (losing what was not past a barrier) and restarts it from its store.
    pub fn restart(&mut self, i: usize) {
        self.stats.restarts += 1;
        self.peers[i].peer = None;
        self.peers[i].conns.clear();
        self.peers[i].generation += 1;
        self.peers[i].store.crash();
        let links: Vec<usize> =
            (0..self.links.len()).filter(|&l| self.links[l].a == i || self.links[l].b == i).collect();
        for &l in &links {
            if let Some((ca, cb)) = self.links[l].up.take() {
                let (other, conn) =
                    if self.links[l].a == i { (self.links[l].b, cb) } else { (self.links[l].a, ca) };
                self.peers[other].conns.remove(&conn);
                self.input(other, Input::Closed { conn });
            }
        }
        self.boot(i);
        for l in links {
            let after = 20 + self.rng.below(100);
            self.push(self.now + after, Scheduled::Reconnect { link: l });
        }
    }

    /// Stops the faults, heals every link and runs until the network is quiescent: nothing but
    /// timers pending and an anti-entropy round changes no state. Fails after `max_rounds`.
    pub fn settle(&mut self) -> Result<(), String> {
        self.faults = Faults { max_delay_ms: self.faults.max_delay_ms, ..Faults::default() };
        for l in 0..self.links.len() {
            self.links[l].cut_until = 0;
            self.connect(l);
        }
        let mut last = self.fingerprint();
        for _ in 0..60 {
            self.run_until(self.now + ANTI_ENTROPY_MS * 2);
            let now = self.fingerprint();
            if now == last && self.converged() {
                return Ok(());
            }
            last = now;
        }
        let why = self.check().err().unwrap_or_else(|| "states still change".into());
        Err(format!("no quiescence after 60 anti-entropy rounds: {why} ({:?})", self.stats))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the network has no peers (never: it needs two).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}
