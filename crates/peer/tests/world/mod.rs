//! The hand-driven world of the core's bad-input tests: a server peer `P` holding an OR-Map `X`
//! and a CDVCS `W`, a healthy client peer `H` connected to it and subscribed to both, and a fake
//! remote driven by hand on another connection of `P`, which sends the bad input.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use replikativ_peer::crdt::{ActorId, Address, ContentId, CrdtKind, OrMap, OrMapOp, Transaction, Value};
use replikativ_peer::proto::{
    AnyOp, Command, CommandId, ConnId, CrdtState, Direction, Hello, Input, Message, Output, PROTOCOL_VERSION,
    Peer, PeerConfig, Publish, Reply, StageError, Subscribe,
};
use replikativ_peer::store::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use uuid::Uuid;

/// The peer under test.
pub const P: usize = 0;
/// The healthy peer.
pub const H: usize = 1;
/// The link between `P` and `H` (the same number on both sides).
pub const LINK: ConnId = 1;
/// `P`'s connection to the hand-driven fake remote (hello exchanged).
pub const FAKE: ConnId = 2;
/// Another fake connection of `P` (for cases about the handshake).
pub const FRESH: ConnId = 3;
/// The fake remote's actor (for the ops it makes).
pub const FAKE_ACTOR: ActorId = ActorId::from_u128(99);

/// What `P` did on a fake connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Sent a message.
    Msg(Message),
    /// Asked its driver to close the connection, with this reason.
    Closed(String),
}

#[derive(Debug)]
pub struct Node {
    pub peer: Peer,
    pub store: Arc<MemoryStore>,
}

/// Everything of `P` the bad input must leave alone.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub digests: BTreeMap<Address, ContentId>,
    pub subscriptions: BTreeSet<Address>,
    pub kv: Vec<(Vec<u8>, Vec<u8>)>,
    pub logs: BTreeMap<Address, Vec<(u64, Vec<u8>)>>,
}

/// The envelope of a frame, built by hand.
#[derive(Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    pub kind: String,
    pub body: ByteBuf,
}

#[derive(Debug)]
pub struct World {
    pub nodes: Vec<Node>,
    pub link_up: bool,
    pub queue: VecDeque<(usize, Input)>,
    /// What `P` did on each fake connection, in order.
    pub fake: BTreeMap<ConnId, Vec<Seen>>,
    pub replies: BTreeMap<CommandId, Result<Reply, StageError>>,
    pub now: u64,
    pub next_cmd: CommandId,
    /// An OR-Map created by `P` (key "k" set by `P`).
    pub x: Address,
    /// A CDVCS created by `P` (a root and one commit).
    pub w: Address,
}

pub fn address(n: u128) -> Address {
    Address::new("mail:alice@example.org", Uuid::from_u128(n)).expect("valid")
}

pub fn hello(peer_id: &str) -> Message {
    Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: peer_id.into(), features: vec![] })
}

pub fn inline(values: &BTreeMap<ContentId, Value>) -> Vec<ByteBuf> {
    values.values().map(|v| ByteBuf::from(v.encode())).collect()
}

/// A frame with a hand-made envelope.
pub fn envelope(v: u16, kind: &str, body: Vec<u8>) -> Vec<u8> {
    rmp_serde::to_vec_named(&Envelope { v, kind: kind.into(), body: ByteBuf::from(body) }).expect("encodes")
}

/// `msg`'s frame with another protocol version in its envelope.
pub fn with_version(msg: &Message, v: u16) -> Vec<u8> {
    let mut e: Envelope = rmp_serde::from_slice(&msg.encode()).expect("an envelope");
    e.v = v;
    rmp_serde::to_vec_named(&e).expect("encodes")
}

/// A fresh OR-Map assoc of the fake remote: the op and its values (commit record and params).
pub fn fake_assoc(key: &str, n: u64) -> (OrMapOp, BTreeMap<ContentId, Value>) {
    let mut m = OrMap::default();
    let staged = m
        .assoc(
            key.into(),
            vec![Transaction::new("set", Value::Int(n.into()))],
            FAKE_ACTOR,
            "mail:fake@example.org",
            n,
        )
        .expect("assoc");
    (staged.op, staged.values)
}

pub fn splitmix(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl World {
    pub fn new(config: PeerConfig) -> World {
        let open = |id: &str, extend: bool, actor: u128| {
            let store = Arc::new(MemoryStore::new());
            let peer = Peer::open(store.clone(), id, extend, ActorId::from_u128(actor), config.clone())
                .expect("opens");
            Node { peer, store }
        };
        let mut w = World {
            nodes: vec![open("p", true, 1), open("h", false, 2)],
            link_up: true,
            queue: VecDeque::new(),
            fake: BTreeMap::new(),
            replies: BTreeMap::new(),
            now: 1_000,
            next_cmd: 1,
            x: address(1),
            w: address(2),
        };
        let (x, wa) = (w.x.clone(), w.w.clone());
        w.ok(P, Command::Create { address: x.clone(), kind: CrdtKind::Ormap, author: "p".into() });
        w.ok(P, Command::Create { address: wa.clone(), kind: CrdtKind::Cdvcs, author: "p".into() });
        w.ok(
            P,
            Command::Assoc {
                address: x.clone(),
                key: "k".into(),
                txs: vec![Transaction::new("set", "v")],
                author: "p".into(),
            },
        );
        w.ok(
            P,
            Command::Transact {
                address: wa.clone(),
                txs: vec![Transaction::new("add", 1)],
                author: "p".into(),
            },
        );
        w.ok(H, Command::Subscribe { addresses: BTreeSet::from([x.clone(), wa.clone()]) });
        // Both ends open before either greeting arrives.
        w.queue.push_back((P, Input::Connected { conn: LINK, direction: Direction::Inbound }));
        w.input(H, Input::Connected { conn: LINK, direction: Direction::Outbound });
        w.assert_in_sync(&[&x, &wa]);
        w.connect_fake(FAKE);
        assert_eq!(w.deliver(FAKE, hello("fake").encode()), vec![], "an inbound hello is not answered");
        assert!(w.p().connections().any(|(c, id)| c == FAKE && id == "fake"));
        // The fake subscribes to what it publishes to (a publication for an address the
        // connection did not subscribe to is refused).
        let sub = Subscribe { id: 7, addresses: BTreeSet::from([x.clone(), wa.clone()]), extend: false };
        let seen = w.send(FAKE, &Message::Subscribe(sub));
        assert!(seen.contains(&Seen::Msg(Message::SubscribeAck { id: 7 })), "{seen:?}");
        w
    }

    pub fn p(&self) -> &Peer {
        &self.nodes[P].peer
    }

    pub fn state(&self, node: usize, a: &Address) -> Option<&CrdtState> {
        self.nodes[node].peer.state(a)
    }

    /// Handles an input and everything it causes, until nothing is left to deliver.
    pub fn input(&mut self, node: usize, input: Input) {
        self.queue.push_back((node, input));
        while let Some((node, input)) = self.queue.pop_front() {
            self.now += 1;
            let outputs = self.nodes[node].peer.handle(input, self.now);
            for output in outputs {
                self.route(node, output);
            }
        }
    }

    pub fn route(&mut self, node: usize, output: Output) {
        match output {
            Output::Send { conn, msg } if node == P && conn != LINK => {
                self.fake.entry(conn).or_default().push(Seen::Msg(msg));
            }
            Output::Send { conn, msg } => {
                assert_eq!(conn, LINK, "peer {node} sent on an unknown connection");
                if self.link_up {
                    self.queue.push_back((1 - node, Input::Received { conn: LINK, frame: msg.encode() }));
                }
            }
            Output::Close { conn, reason } if node == P && conn != LINK => {
                self.fake.entry(conn).or_default().push(Seen::Closed(reason));
            }
            Output::Close { conn, reason } => {
                panic!("peer {node} closed the healthy link {conn}: {reason}");
            }
            Output::Barrier { epoch } => {
                self.nodes[node].store.sync().expect("sync");
                self.queue.push_back((node, Input::BarrierDone { epoch }));
            }
            Output::Reply { id, result } => {
                self.replies.insert(id, result);
            }
            Output::Schedule { .. } | Output::Event(_) => {}
        }
    }

    /// Runs a stage command to its reply.
    pub fn command(&mut self, node: usize, cmd: Command) -> Result<Reply, StageError> {
        let id = self.next_cmd;
        self.next_cmd += 1;
        self.input(node, Input::Command { id, cmd });
        self.replies.remove(&id).expect("the command was answered")
    }

    pub fn ok(&mut self, node: usize, cmd: Command) -> Reply {
        let what = format!("{cmd:?}");
        self.command(node, cmd).unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Opens a fake connection to `P`; `P` greets it.
    pub fn connect_fake(&mut self, conn: ConnId) {
        self.input(P, Input::Connected { conn, direction: Direction::Inbound });
        match self.fake.get(&conn).map(Vec::as_slice) {
            Some([Seen::Msg(Message::Hello(h))]) => assert_eq!(h.version, PROTOCOL_VERSION),
            other => panic!("expected a hello on connect, got {other:?}"),
        }
    }

    /// Delivers a frame from a fake remote to `P`; returns what `P` did on that connection.
    pub fn deliver(&mut self, conn: ConnId, frame: Vec<u8>) -> Vec<Seen> {
        let before = self.fake.get(&conn).map_or(0, Vec::len);
        self.input(P, Input::Received { conn, frame });
        self.fake.get(&conn).map_or_else(Vec::new, |s| s[before..].to_vec())
    }

    pub fn send(&mut self, conn: ConnId, msg: &Message) -> Vec<Seen> {
        self.deliver(conn, msg.encode())
    }

    pub fn snapshot(&self) -> Snapshot {
        let node = &self.nodes[P];
        let digests =
            node.peer.addresses().map(|a| (a.clone(), node.peer.state(a).expect("state").digest())).collect();
        let mut logs = BTreeMap::new();
        for a in node.peer.addresses() {
            let entries =
                replikativ_peer::proto::persist::stored_op_log(node.store.as_ref(), a).expect("log");
            logs.insert(a.clone(), entries.into_iter().map(|e| (e.seq, e.data)).collect());
        }
        Snapshot {
            digests,
            subscriptions: node.peer.subscriptions().clone(),
            kv: node.store.scan_prefix(b"").expect("scan"),
            logs,
        }
    }

    pub fn assert_in_sync(&self, addresses: &[&Address]) {
        for a in addresses {
            let p = self.state(P, a).unwrap_or_else(|| panic!("P has no {a}"));
            assert_eq!(Some(p), self.state(H, a), "H and P differ on {a}");
        }
    }

    /// Asserts that `P` closed `conn` because of the last input, with a reason containing every
    /// needle, told the remote first, and ignores the connection from now on.
    pub fn assert_closed(&mut self, conn: ConnId, seen: &[Seen], needles: &[&str]) -> String {
        let reason = match seen {
            [.., Seen::Msg(Message::Close { reason: told }), Seen::Closed(reason)] => {
                assert_eq!(told, reason, "the remote is told the reason the driver gets");
                reason.clone()
            }
            other => panic!("expected Message::Close then Output::Close on {conn}, got {other:?}"),
        };
        for needle in needles {
            assert!(reason.contains(needle), "close reason {reason:?} does not name {needle:?}");
        }
        assert!(!self.p().connections().any(|(c, _)| c == conn), "{conn} is still open");
        // The closed connection is forgotten: a valid publication on it does nothing.
        let before = self.snapshot();
        let (op, values) = fake_assoc("late", 1);
        let late = Message::Publish(Publish {
            id: 900,
            address: self.x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        });
        assert_eq!(self.send(conn, &late), vec![], "a closed connection gets no answers");
        assert_eq!(self.snapshot(), before, "a frame on a closed connection changed P");
        reason
    }

    /// Asserts that `H` is unharmed: both peers still publish to each other, and `H` can still
    /// subscribe to a new address and get its data.
    pub fn assert_healthy(&mut self) {
        assert!(self.link_up && self.p().connections().any(|(c, id)| c == LINK && id == "h"));
        let x = self.x.clone();
        let n = self.now;
        for (node, key) in [(P, "after-p"), (H, "after-h")] {
            self.ok(
                node,
                Command::Assoc {
                    address: x.clone(),
                    key: key.into(),
                    txs: vec![Transaction::new("set", Value::Int(n.into()))],
                    author: "someone".into(),
                },
            );
        }
        let wa = self.w.clone();
        self.ok(
            H,
            Command::Transact {
                address: wa.clone(),
                txs: vec![Transaction::new("add", 2)],
                author: "h".into(),
            },
        );
        self.assert_in_sync(&[&x, &wa]);
        let Some(CrdtState::Ormap(m)) = self.state(H, &x) else { panic!("H has no OR-Map") };
        for key in ["k", "after-p", "after-h"] {
            assert_eq!(m.get(&key.into()).len(), 1, "H lacks {key}");
        }
        let Some(CrdtState::Cdvcs(c)) = self.state(P, &wa) else { panic!("P has no CDVCS") };
        assert_eq!(c.graph().len(), 3, "P has H's commit");
        let g = address(77);
        self.ok(P, Command::Create { address: g.clone(), kind: CrdtKind::Gset, author: "p".into() });
        self.ok(P, Command::GsetAdd { address: g.clone(), element: "e".into() });
        assert_eq!(self.state(H, &g), None, "H did not ask for G yet");
        self.ok(H, Command::Subscribe { addresses: BTreeSet::from([g.clone()]) });
        self.assert_in_sync(&[&g]);
        let Some(CrdtState::Gset(s)) = self.state(H, &g) else { panic!("H has no G-Set") };
        assert!(s.contains(&"e".into()));
    }
}

pub fn world() -> World {
    World::new(PeerConfig { anti_entropy: None, ..PeerConfig::default() })
}
