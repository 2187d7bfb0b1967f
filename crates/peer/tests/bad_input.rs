//! Bad input on one connection: for each case the core closes that connection (a `Close` message
//! naming the problem, then `Output::Close`) or refuses the message (`Refused` / `Error`, the
//! connection kept), and the peer's states, its store and its other connections are unharmed.
//!
//! Every test runs the same world: a server peer `P` holding an OR-Map `X` and a CDVCS `W`, a
//! healthy client peer `H` connected to it and subscribed to both, and a fake remote driven by hand
//! on another connection of `P`, which sends the bad input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use replikativ_peer::crdt::cdvcs::{CdvcsMethod, GraphEntry};
use replikativ_peer::crdt::{
    ActorId, Address, Cdvcs, CdvcsOp, ContentId, CrdtKind, GSetOp, OrMap, OrMapOp, Transaction, Value,
};
use replikativ_peer::proto::{
    AnyOp, Command, CommandId, ConnId, CrdtState, Direction, FrameError, Hello, Input, Message, Output,
    PROTOCOL_VERSION, Peer, PeerConfig, Publish, Reply, StageError, Subscribe,
};
use replikativ_peer::store::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use uuid::Uuid;

/// The peer under test.
const P: usize = 0;
/// The healthy peer.
const H: usize = 1;
/// The link between `P` and `H` (the same number on both sides).
const LINK: ConnId = 1;
/// `P`'s connection to the hand-driven fake remote (hello exchanged).
const FAKE: ConnId = 2;
/// Another fake connection of `P` (for cases about the handshake).
const FRESH: ConnId = 3;
/// The fake remote's actor (for the ops it makes).
const FAKE_ACTOR: ActorId = ActorId::from_u128(99);

/// What `P` did on a fake connection.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// Sent a message.
    Msg(Message),
    /// Asked its driver to close the connection, with this reason.
    Closed(String),
}

#[derive(Debug)]
struct Node {
    peer: Peer,
    store: Arc<MemoryStore>,
}

/// Everything of `P` the bad input must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    digests: BTreeMap<Address, ContentId>,
    subscriptions: BTreeSet<Address>,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    logs: BTreeMap<Address, Vec<(u64, Vec<u8>)>>,
}

/// The envelope of a frame, built by hand.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u16,
    kind: String,
    body: ByteBuf,
}

#[derive(Debug)]
struct World {
    nodes: Vec<Node>,
    link_up: bool,
    queue: VecDeque<(usize, Input)>,
    /// What `P` did on each fake connection, in order.
    fake: BTreeMap<ConnId, Vec<Seen>>,
    replies: BTreeMap<CommandId, Result<Reply, StageError>>,
    now: u64,
    next_cmd: CommandId,
    /// An OR-Map created by `P` (key "k" set by `P`).
    x: Address,
    /// A CDVCS created by `P` (a root and one commit).
    w: Address,
}

fn address(n: u128) -> Address {
    Address::new("mail:alice@example.org", Uuid::from_u128(n)).expect("valid")
}

fn hello(peer_id: &str) -> Message {
    Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: peer_id.into(), features: vec![] })
}

fn inline(values: &BTreeMap<ContentId, Value>) -> Vec<ByteBuf> {
    values.values().map(|v| ByteBuf::from(v.encode())).collect()
}

/// A frame with a hand-made envelope.
fn envelope(v: u16, kind: &str, body: Vec<u8>) -> Vec<u8> {
    rmp_serde::to_vec_named(&Envelope { v, kind: kind.into(), body: ByteBuf::from(body) }).expect("encodes")
}

/// `msg`'s frame with another protocol version in its envelope.
fn with_version(msg: &Message, v: u16) -> Vec<u8> {
    let mut e: Envelope = rmp_serde::from_slice(&msg.encode()).expect("an envelope");
    e.v = v;
    rmp_serde::to_vec_named(&e).expect("encodes")
}

/// A fresh OR-Map assoc of the fake remote: the op and its values (commit record and params).
fn fake_assoc(key: &str, n: u64) -> (OrMapOp, BTreeMap<ContentId, Value>) {
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

fn splitmix(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl World {
    fn new(config: PeerConfig) -> World {
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
        w
    }

    fn p(&self) -> &Peer {
        &self.nodes[P].peer
    }

    fn state(&self, node: usize, a: &Address) -> Option<&CrdtState> {
        self.nodes[node].peer.state(a)
    }

    /// Handles an input and everything it causes, until nothing is left to deliver.
    fn input(&mut self, node: usize, input: Input) {
        self.queue.push_back((node, input));
        while let Some((node, input)) = self.queue.pop_front() {
            self.now += 1;
            let outputs = self.nodes[node].peer.handle(input, self.now);
            for output in outputs {
                self.route(node, output);
            }
        }
    }

    fn route(&mut self, node: usize, output: Output) {
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
            Output::Sync { epoch } => {
                self.nodes[node].store.sync().expect("sync");
                self.queue.push_back((node, Input::Synced { epoch }));
            }
            Output::Reply { id, result } => {
                self.replies.insert(id, result);
            }
            Output::Schedule { .. } | Output::Event(_) => {}
        }
    }

    /// Runs a stage command to its reply.
    fn command(&mut self, node: usize, cmd: Command) -> Result<Reply, StageError> {
        let id = self.next_cmd;
        self.next_cmd += 1;
        self.input(node, Input::Command { id, cmd });
        self.replies.remove(&id).expect("the command was answered")
    }

    fn ok(&mut self, node: usize, cmd: Command) -> Reply {
        let what = format!("{cmd:?}");
        self.command(node, cmd).unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Opens a fake connection to `P`; `P` greets it.
    fn connect_fake(&mut self, conn: ConnId) {
        self.input(P, Input::Connected { conn, direction: Direction::Inbound });
        match self.fake.get(&conn).map(Vec::as_slice) {
            Some([Seen::Msg(Message::Hello(h))]) => assert_eq!(h.version, PROTOCOL_VERSION),
            other => panic!("expected a hello on connect, got {other:?}"),
        }
    }

    /// Delivers a frame from a fake remote to `P`; returns what `P` did on that connection.
    fn deliver(&mut self, conn: ConnId, frame: Vec<u8>) -> Vec<Seen> {
        let before = self.fake.get(&conn).map_or(0, Vec::len);
        self.input(P, Input::Received { conn, frame });
        self.fake.get(&conn).map_or_else(Vec::new, |s| s[before..].to_vec())
    }

    fn send(&mut self, conn: ConnId, msg: &Message) -> Vec<Seen> {
        self.deliver(conn, msg.encode())
    }

    fn snapshot(&self) -> Snapshot {
        let node = &self.nodes[P];
        let digests =
            node.peer.addresses().map(|a| (a.clone(), node.peer.state(a).expect("state").digest())).collect();
        let mut logs = BTreeMap::new();
        for a in node.peer.addresses() {
            let log = replikativ_peer::proto::state::log_name(a);
            let entries = node.store.log_read(&log, 0, usize::MAX).expect("log");
            logs.insert(a.clone(), entries.into_iter().map(|e| (e.seq, e.data)).collect());
        }
        Snapshot {
            digests,
            subscriptions: node.peer.subscriptions().clone(),
            kv: node.store.scan_prefix(b"").expect("scan"),
            logs,
        }
    }

    fn assert_in_sync(&self, addresses: &[&Address]) {
        for a in addresses {
            let p = self.state(P, a).unwrap_or_else(|| panic!("P has no {a}"));
            assert_eq!(Some(p), self.state(H, a), "H and P differ on {a}");
        }
    }

    /// Asserts that `P` closed `conn` because of the last input, with a reason containing every
    /// needle, told the remote first, and ignores the connection from now on.
    fn assert_closed(&mut self, conn: ConnId, seen: &[Seen], needles: &[&str]) -> String {
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
    fn assert_healthy(&mut self) {
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

fn world() -> World {
    World::new(PeerConfig { anti_entropy: None, ..PeerConfig::default() })
}

#[test]
fn garbage_frame_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let mut seed = 7;
    let garbage: Vec<u8> = (0..256).map(|_| splitmix(&mut seed) as u8).collect();
    assert!(matches!(Message::decode(&garbage), Err(FrameError::Malformed(_))), "the bytes are garbage");
    let seen = w.deliver(FAKE, garbage);
    w.assert_closed(FAKE, &seen, &["malformed frame"]);
    assert_eq!(w.snapshot(), before);
    w.assert_healthy();
}

#[test]
fn truncated_frame_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let (op, values) = fake_assoc("t", 1);
    let frame = Message::Publish(Publish {
        id: 1,
        address: w.x.clone(),
        op: AnyOp::Ormap(op),
        values: inline(&values),
        catch_up: false,
    })
    .encode();
    let cut = frame[..frame.len() / 2].to_vec();
    assert!(matches!(Message::decode(&cut), Err(FrameError::Malformed(_))), "a cut frame does not decode");
    let seen = w.deliver(FAKE, cut);
    w.assert_closed(FAKE, &seen, &["malformed frame"]);
    assert_eq!(w.snapshot(), before, "nothing of the cut publication was applied");
    w.assert_healthy();
}

#[test]
fn unknown_kind_is_refused_with_an_error_and_the_connection_keeps_working() {
    let mut w = world();
    let before = w.snapshot();
    let seen = w.deliver(FAKE, envelope(PROTOCOL_VERSION, "frobnicate", vec![0x80]));
    match seen.as_slice() {
        [Seen::Msg(Message::Error { reason })] => {
            assert!(reason.contains("frobnicate"), "the error names the kind: {reason:?}")
        }
        other => panic!("expected one Message::Error, got {other:?}"),
    }
    assert_eq!(w.snapshot(), before);
    assert!(w.p().connections().any(|(c, _)| c == FAKE), "the connection stays open");
    // It keeps working: the fake subscribes, publishes, and gets P's publications.
    let x = w.x.clone();
    let seen = w.send(
        FAKE,
        &Message::Subscribe(Subscribe { id: 5, addresses: BTreeSet::from([x.clone()]), extend: false }),
    );
    assert!(
        seen.contains(&Seen::Msg(Message::SubscribeAck { id: 5 })),
        "subscription acknowledged: {seen:?}"
    );
    let (op, values) = fake_assoc("from-fake", 1);
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 6,
            address: x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
    );
    assert!(seen.contains(&Seen::Msg(Message::PublishAck { id: 6 })), "publication acknowledged: {seen:?}");
    let Some(CrdtState::Ormap(m)) = w.state(H, &x) else { panic!("H has no OR-Map") };
    assert_eq!(m.get(&"from-fake".into()).len(), 1, "the fake's op reached H");
    let before = w.fake[&FAKE].len();
    w.assert_healthy();
    let relayed = w.fake[&FAKE][before..].iter().any(
        |s| matches!(s, Seen::Msg(Message::Publish(p)) if p.address == x && matches!(&p.op, AnyOp::Ormap(o) if o.adds.iter().any(|e| e.key == "after-p".into()))),
    );
    assert!(relayed, "the fake gets P's later publications");
}

#[test]
fn frame_of_another_protocol_version_closes_naming_both_versions() {
    let mut w = world();
    let before = w.snapshot();
    let other = PROTOCOL_VERSION + 1;
    let (op, values) = fake_assoc("v", 1);
    let frame = with_version(
        &Message::Publish(Publish {
            id: 1,
            address: w.x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
        other,
    );
    let seen = w.deliver(FAKE, frame);
    w.assert_closed(FAKE, &seen, &[&format!("version {other}"), &format!("version {PROTOCOL_VERSION}")]);
    assert_eq!(w.snapshot(), before, "the publication of another version was not applied");
    w.assert_healthy();
}

#[test]
fn hello_of_another_version_closes_naming_both_versions() {
    let mut w = world();
    let before = w.snapshot();
    let other = PROTOCOL_VERSION + 1;
    w.connect_fake(FRESH);
    let body = rmp_serde::to_vec_named(&Hello {
        version: other,
        peer_id: "future".into(),
        features: vec!["warp".into()],
    })
    .expect("encodes");
    let seen = w.deliver(FRESH, envelope(other, "hello", body));
    w.assert_closed(FRESH, &seen, &[&format!("version {other}"), &format!("version {PROTOCOL_VERSION}")]);
    assert!(!w.p().connections().any(|(_, id)| id == "future"), "the peer was never admitted");
    assert_eq!(w.snapshot(), before);
    w.assert_healthy();
}

#[test]
fn message_before_hello_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    w.connect_fake(FRESH);
    let y = address(66);
    let seen = w.send(
        FRESH,
        &Message::Subscribe(Subscribe { id: 1, addresses: BTreeSet::from([y.clone()]), extend: true }),
    );
    w.assert_closed(FRESH, &seen, &["hello", "subscribe"]);
    assert!(!w.p().subscriptions().contains(&y), "the early subscription was not taken");
    assert_eq!(w.snapshot(), before);
    w.assert_healthy();
}

#[test]
fn fetched_value_whose_hash_does_not_match_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let (op, values) = fake_assoc("fetched", 1);
    let commit = op.adds[0].commit;
    // The op travels without its values: P fetches the commit record.
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 1,
            address: w.x.clone(),
            op: AnyOp::Ormap(op),
            values: vec![],
            catch_up: false,
        }),
    );
    let fetch_id = match seen.as_slice() {
        [Seen::Msg(Message::Fetch { id, ids })] => {
            assert_eq!(ids, &vec![commit]);
            *id
        }
        other => panic!("expected a fetch of the commit, got {other:?}"),
    };
    // The reply carries other bytes (a valid value, but not the one asked for).
    let (_, other_values) = fake_assoc("other", 2);
    let forged = other_values.values().next().expect("a value").encode();
    assert_ne!(ContentId::hash_bytes(&forged), commit);
    assert!(values.contains_key(&commit));
    let seen = w.send(
        FAKE,
        &Message::FetchReply { id: fetch_id, values: vec![ByteBuf::from(forged)], missing: vec![] },
    );
    w.assert_closed(FAKE, &seen, &["hash"]);
    assert_eq!(w.snapshot(), before, "neither the op nor the forged value was kept");
    w.assert_healthy();
}

#[test]
fn op_for_an_unsubscribed_address_is_refused_and_the_connection_kept() {
    let mut w = world();
    let before = w.snapshot();
    let z = address(55);
    let (op, values) = fake_assoc("z", 1);
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 31,
            address: z.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
    );
    match seen.as_slice() {
        [Seen::Msg(Message::Refused { id: 31, reason })] => {
            assert!(
                reason.contains("does not subscribe") && reason.contains(&z.to_string()),
                "reason: {reason:?}"
            )
        }
        other => panic!("expected one Refused for publication 31, got {other:?}"),
    }
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.state(P, &z), None);
    // The connection is kept: a publication on a subscribed address is applied and acknowledged.
    let (op, values) = fake_assoc("ok", 2);
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 32,
            address: w.x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
    );
    assert_eq!(seen, vec![Seen::Msg(Message::PublishAck { id: 32 })]);
    w.assert_healthy();
}

#[test]
fn ormap_op_reusing_a_dot_for_another_commit_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let x = w.x.clone();
    let Some(CrdtState::Ormap(m)) = w.state(P, &x) else { panic!("P has no OR-Map") };
    let [(dot, known)] = m.entries(&"k".into())[..] else { panic!("one entry under k") };
    // Another commit under P's own tag, with its values inline (so nothing needs fetching).
    let (mut op, values) = fake_assoc("k", 5);
    assert_ne!(op.adds[0].commit, known);
    op.adds[0].dot = dot;
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 1,
            address: x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
    );
    assert!(!seen.iter().any(|s| matches!(s, Seen::Msg(Message::Fetch { .. }))), "everything was inline");
    w.assert_closed(FAKE, &seen, &["invalid op", &x.to_string(), "two different commits"]);
    assert_eq!(w.snapshot(), before, "the forged entry was not applied or stored");
    w.assert_healthy();
}

#[test]
fn cdvcs_commit_known_with_other_parents_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let wa = w.w.clone();
    let Some(CrdtState::Cdvcs(c)) = w.state(P, &wa) else { panic!("P has no CDVCS") };
    let head = c.head().expect("one head");
    // A new root (sent inline) claimed as the parent of P's existing commit.
    let (_, root) = Cdvcs::new("mail:fake@example.org", 3);
    let new_root = root.op.commits[0].id;
    let op = CdvcsOp {
        method: CdvcsMethod::Commit,
        commits: vec![
            GraphEntry { id: new_root, parents: vec![] },
            GraphEntry { id: head, parents: vec![new_root] },
        ],
        heads: BTreeSet::from([head]),
    };
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 1,
            address: wa.clone(),
            op: AnyOp::Cdvcs(op),
            values: inline(&root.values),
            catch_up: false,
        }),
    );
    assert!(!seen.iter().any(|s| matches!(s, Seen::Msg(Message::Fetch { .. }))), "everything was inline");
    w.assert_closed(FAKE, &seen, &["invalid op", &wa.to_string(), "different parents"]);
    assert_eq!(w.snapshot(), before, "neither commit was applied or stored");
    w.assert_healthy();
}

#[test]
fn op_of_the_wrong_kind_for_an_address_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let x = w.x.clone();
    let op = AnyOp::Gset(GSetOp { elements: BTreeSet::from([Value::from("intruder")]) });
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish { id: 1, address: x.clone(), op, values: vec![], catch_up: false }),
    );
    w.assert_closed(FAKE, &seen, &["Gset", "Ormap", &x.to_string()]);
    assert_eq!(w.snapshot(), before);
    w.assert_healthy();
}

#[test]
fn fetch_reply_to_a_fetch_nobody_made_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let (_, values) = fake_assoc("unasked", 1);
    let seen = w.send(FAKE, &Message::FetchReply { id: 4242, values: inline(&values), missing: vec![] });
    w.assert_closed(FAKE, &seen, &["4242", "no fetch"]);
    assert_eq!(w.snapshot(), before, "the unasked values were not stored");
    w.assert_healthy();
}

#[test]
fn publication_flood_closes_the_connection() {
    let limit = 3;
    let mut w = World::new(PeerConfig {
        anti_entropy: None,
        max_queued_publications: limit,
        ..PeerConfig::default()
    });
    let before = w.snapshot();
    let x = w.x.clone();
    let mut fetches = 0;
    // Each publication lacks its values; the first one's fetch is never answered, so all wait.
    for n in 0..=limit as u64 {
        let (op, _) = fake_assoc(&format!("flood-{n}"), n + 1);
        let seen = w.send(
            FAKE,
            &Message::Publish(Publish {
                id: n + 1,
                address: x.clone(),
                op: AnyOp::Ormap(op),
                values: vec![],
                catch_up: false,
            }),
        );
        fetches += seen.iter().filter(|s| matches!(s, Seen::Msg(Message::Fetch { .. }))).count();
        if n < limit as u64 {
            assert!(
                !seen.iter().any(|s| matches!(s, Seen::Closed(_))),
                "publication {} of {limit} is allowed to wait",
                n + 1
            );
        } else {
            w.assert_closed(FAKE, &seen, &["publication flood", &limit.to_string()]);
        }
    }
    assert_eq!(fetches, 1, "only the head of the queue fetches");
    assert_eq!(w.snapshot(), before, "none of the waiting publications was applied");
    w.assert_healthy();
}

#[test]
fn the_fake_remote_can_do_good_things_too() {
    // The control experiment: the same world with only good input changes P as expected, so the
    // "unchanged" assertions above are not vacuous.
    let mut w = world();
    let before = w.snapshot();
    let (op, values) = fake_assoc("good", 1);
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 1,
            address: w.x.clone(),
            op: AnyOp::Ormap(op),
            values: inline(&values),
            catch_up: false,
        }),
    );
    assert_eq!(seen, vec![Seen::Msg(Message::PublishAck { id: 1 })]);
    let after = w.snapshot();
    assert_ne!(after.digests, before.digests);
    assert_ne!(after.kv, before.kv);
    assert_ne!(after.logs, before.logs);
    w.assert_healthy();
}

/// The parents in a CDVCS op's graph entry must be the parents in the commit record the entry
/// names (the record's id covers them); otherwise a remote could attach a real commit anywhere in
/// the graph, giving heads honest replicas never had. Found by this suite, fixed in the core.
#[test]
fn cdvcs_entry_whose_parents_contradict_its_commit_record_closes_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let wa = w.w.clone();
    let Some(CrdtState::Cdvcs(c)) = w.state(P, &wa) else { panic!("P has no CDVCS") };
    let head = c.head().expect("one head");
    let root = c.graph().parents(&head).expect("present").next().expect("the root");
    // A real commit on P's head (its record, sent inline, names `head` as its parent)...
    let mut scratch = c.clone();
    let staged =
        scratch.transact("mail:fake@example.org", 9, vec![Transaction::new("add", 5)]).expect("commits");
    let mut op = staged.op.clone();
    assert_eq!(op.commits[0].parents, vec![head]);
    // ...claimed in the graph entry to sit on the root instead.
    op.commits[0].parents = vec![root];
    let seen = w.send(
        FAKE,
        &Message::Publish(Publish {
            id: 1,
            address: wa.clone(),
            op: AnyOp::Cdvcs(op),
            values: inline(&staged.values),
            catch_up: false,
        }),
    );
    w.assert_closed(FAKE, &seen, &["parents"]);
    assert_eq!(w.snapshot(), before, "the forged entry was not applied");
    w.assert_healthy();
}
