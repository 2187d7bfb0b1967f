//! The `peer` target: a `Peer` driven by a fake remote's session of frames, ticks and reconnects.

#![allow(unused_imports)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use replikativ_peer::crdt::cdvcs::{CdvcsMethod, GraphEntry};
use replikativ_peer::crdt::{
    ActorId, Address, Cdvcs, CdvcsOp, Commit, ContentId, Crdt, CrdtKind, Dot, GSet, Hlc, LwwOp, LwwRegister,
    OrEntry, OrMap, OrMapOp, Transaction, Value,
};
use replikativ_peer::proto::message::{MAX_FETCH_IDS, from_msgpack};
use replikativ_peer::proto::state::{BUCKET_DIGEST, BUCKETS};
use replikativ_peer::proto::{
    AnyOp, Command, ConnId, CrdtState, Direction, FrameError, Hello, Input, Message, Output,
    PROTOCOL_VERSION, Peer, PeerConfig, Publish, Subscribe, Summary, Timer,
};
use replikativ_peer::store::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use uuid::Uuid;

use super::*;

/// The peer's addresses: 1 an OR-Map, 2 a CDVCS, 3 an LWW register, 4 a G-Set (as in the golden
/// vectors); the fixture's remote also writes 5-8 (of those kinds), which the peer does not hold.
pub fn address(n: u128) -> Address {
    Address::new("mail:alice@example.org", Uuid::from_u128(n)).expect("valid")
}

pub const KINDS: [CrdtKind; 4] = [CrdtKind::Ormap, CrdtKind::Cdvcs, CrdtKind::Lww, CrdtKind::Gset];

/// The peer's first fake connection (always connected, hello received).
pub const CONN_A: ConnId = 10;
/// The second fake connection's first number (each reconnect takes the next).
pub const CONN_B: ConnId = 20;
/// Wall time the peer starts at.
pub const START_MS: u64 = 1_700_000_000_000;

/// One step of a peer session (see [`parse_steps`] for the byte format).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A frame from connection A (`false`) or B (`true`).
    Frame(bool, Vec<u8>),
    /// The anti-entropy timer fires (and 10 s pass).
    Tick,
    /// `Input::Resync` of connection A.
    Resync,
    /// Connection B closes and a new one opens in its place (and says hello).
    ReconnectB,
    /// Connection A answers the peer's last fetch on it, from the values the fake remote knows.
    AnswerFetch,
}

/// Flag bits of a session's first byte.
pub mod flags {
    /// Connection B is open (hello exchanged) from the start.
    pub const B: u8 = 1;
    /// Connection A's hello announces bucketed summaries.
    pub const BUCKETS: u8 = 2;
}

/// Parses a session: a flags byte (see [`flags`]), then steps, each a tag byte whose low three
/// bits say what: 0-2 a frame from A, 3 a frame from B (each followed by a 16-bit little-endian
/// length and that many bytes, fewer at the end of the input), 4 [`Step::Tick`], 5
/// [`Step::Resync`], 6 [`Step::ReconnectB`], 7 [`Step::AnswerFetch`]. At most 256 steps.
pub fn parse_steps(data: &[u8]) -> (u8, Vec<Step>) {
    let Some((&flags, mut rest)) = data.split_first() else { return (0, Vec::new()) };
    let mut steps = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        if steps.len() == 256 {
            break;
        }
        steps.push(match tag & 7 {
            t @ 0..=3 => {
                let len = match rest {
                    [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
                    _ => rest.len(),
                };
                rest = &rest[rest.len().min(2)..];
                let (frame, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                Step::Frame(t == 3, frame.to_vec())
            }
            4 => Step::Tick,
            5 => Step::Resync,
            6 => Step::ReconnectB,
            _ => Step::AnswerFetch,
        });
    }
    (flags, steps)
}

/// The bytes [`parse_steps`] reads as these steps.
pub fn encode_steps(flags: u8, steps: &[Step]) -> Vec<u8> {
    let mut out = vec![flags];
    for step in steps {
        match step {
            Step::Frame(b, frame) => {
                let frame = &frame[..frame.len().min(u16::MAX as usize)];
                out.push(if *b { 3 } else { 0 });
                out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
                out.extend_from_slice(frame);
            }
            Step::Tick => out.push(4),
            Step::Resync => out.push(5),
            Step::ReconnectB => out.push(6),
            Step::AnswerFetch => out.push(7),
        }
    }
    out
}

/// The core: a `Peer` on a `MemoryStore` holding one datatype of each kind, with a fake remote
/// connected (its hello received), fed a session of frames and other inputs (see [`parse_steps`]).
/// Never panics; every output is well-formed (see [`Harness::check`]); and the store it leaves
/// reopens, without quarantining anything, to the same states and subscriptions.
pub fn peer(data: &[u8]) -> bool {
    let (flags, steps) = parse_steps(data);
    let mut h = Harness::new(flags);
    for step in steps {
        h.step(step);
    }
    h.finish()
}

/// Whether `REPLIKATIV_FUZZ_TRACE` is set: the peer target then prints every input and output.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("REPLIKATIV_FUZZ_TRACE").is_some())
}

/// What the harness knows of one fake connection.
#[derive(Debug, Default)]
struct ConnModel {
    open: bool,
    /// The peer sent its hello.
    greeted: bool,
    /// Ids of publications, subscriptions and fetches received from the remote.
    publishes: HashSet<u64>,
    subscribes: HashSet<u64>,
    /// Ids of the resubscribes it sent (refused when the peer does not remember the set).
    resubscribes: HashSet<u64>,
    fetches: HashMap<u64, HashSet<ContentId>>,
    /// The peer's last fetch on this connection.
    last_fetch: Option<(u64, Vec<ContentId>)>,
    /// The remote sent `close`.
    remote_closed: bool,
}

/// Drives a [`Peer`] as a node would (completing every barrier at once) and checks its outputs.
#[derive(Debug)]
pub struct Harness {
    peer: Peer,
    store: Arc<MemoryStore>,
    config: PeerConfig,
    now: u64,
    conns: BTreeMap<ConnId, ConnModel>,
    conn_b: ConnId,
    last_epoch: u64,
    queue: VecDeque<Input>,
    /// `Message::Close` just sent: the next output must close that connection with that reason.
    expect_close: Option<(ConnId, String)>,
    /// Values the fake remote can serve, by id.
    pool: HashMap<ContentId, Vec<u8>>,
    /// Whether stage commands are running (replies are expected only then).
    in_setup: bool,
    /// Whether the peer acknowledged a publication of a fake remote.
    acked: bool,
}

fn config() -> PeerConfig {
    PeerConfig {
        snapshot_every: 4,
        max_queued_publications: 16,
        inline_limit: 4096,
        fetch_reply_limit: 4096,
        anti_entropy: Some(Duration::from_secs(10)),
        bucketed_above: 2,
        max_subscriptions: 24,
        max_subscriptions_per_connection: 16,
        max_queued_bytes: 1 << 16,
        ..PeerConfig::default()
    }
}

impl Harness {
    /// The peer with its four datatypes and connection A (and B with [`flags::B`]) greeted.
    pub fn new(flags: u8) -> Harness {
        let store = Arc::new(MemoryStore::new());
        let config = config();
        let peer =
            Peer::open(store.clone(), "p", true, ActorId::from_u128(1), config.clone()).expect("opens");
        let mut h = Harness {
            peer,
            store,
            config,
            now: START_MS,
            conns: BTreeMap::new(),
            conn_b: CONN_B,
            last_epoch: 0,
            queue: VecDeque::new(),
            expect_close: None,
            pool: fixture().values.clone(),
            in_setup: true,
            acked: false,
        };
        let outputs = h.peer.start();
        h.outputs(outputs);
        for (n, kind) in (1..).zip(KINDS) {
            let a = address(n);
            h.input(Input::Command {
                id: n as u64,
                cmd: Command::Create { address: a.clone(), kind, author: "p".into() },
            });
            let cmd = match kind {
                CrdtKind::Ormap => Command::Assoc {
                    address: a,
                    key: "k".into(),
                    txs: vec![Transaction::new("set", "v")],
                    author: "p".into(),
                },
                CrdtKind::Cdvcs => Command::Transact {
                    address: a,
                    txs: vec![Transaction::new("add", 1)],
                    author: "p".into(),
                },
                CrdtKind::Lww => Command::LwwSet { address: a, value: "w".into() },
                CrdtKind::Gset => Command::GsetAdd { address: a, element: "e".into() },
            };
            h.input(Input::Command { id: 100 + n as u64, cmd });
        }
        h.in_setup = false;
        h.connect(CONN_A, flags & flags::BUCKETS != 0);
        if flags & flags::B != 0 {
            h.connect(CONN_B, false);
        }
        h
    }

    fn connect(&mut self, conn: ConnId, buckets: bool) {
        self.conns.insert(conn, ConnModel { open: true, ..ConnModel::default() });
        self.input(Input::Connected { conn, direction: Direction::Inbound });
        assert!(self.conns[&conn].greeted, "the peer did not greet connection {conn}");
        let features = if buckets { vec!["buckets".to_owned()] } else { vec![] };
        let hello =
            Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: format!("fake-{conn}"), features });
        self.deliver(conn, hello.encode());
    }

    /// Runs one step.
    pub fn step(&mut self, step: Step) {
        match step {
            Step::Frame(on_b, frame) => {
                let conn = if on_b { self.conn_b } else { CONN_A };
                self.deliver(conn, frame);
            }
            Step::Tick => {
                self.now += 10_000;
                self.input(Input::Timer(Timer::AntiEntropy));
            }
            Step::Resync => self.input(Input::Resync { conn: CONN_A }),
            Step::ReconnectB => {
                let old = self.conn_b;
                if let Some(c) = self.conns.get_mut(&old) {
                    c.open = false;
                }
                self.input(Input::Closed { conn: old });
                self.conn_b += 1;
                self.connect(self.conn_b, false);
            }
            Step::AnswerFetch => {
                let Some((id, ids)) = self.conns.get(&CONN_A).and_then(|c| c.last_fetch.clone()) else {
                    return;
                };
                let (mut values, mut missing) = (Vec::new(), Vec::new());
                for cid in ids {
                    match self.pool.get(&cid) {
                        Some(bytes) => values.push(ByteBuf::from(bytes.clone())),
                        None => missing.push(cid),
                    }
                }
                self.deliver(CONN_A, Message::FetchReply { id, values, missing }.encode());
            }
        }
    }

    /// Delivers a frame from a fake remote, noting what the remote asked for.
    fn deliver(&mut self, conn: ConnId, frame: Vec<u8>) {
        if let (Ok(msg), Some(c)) = (Message::decode(&frame), self.conns.get_mut(&conn))
            && c.open
        {
            match msg {
                Message::Publish(p) => {
                    c.publishes.insert(p.id);
                    for v in p.values {
                        self.pool.insert(ContentId::hash_bytes(&v), v.into_vec());
                    }
                }
                Message::Subscribe(s) => {
                    c.subscribes.insert(s.id);
                }
                // A batch is a publication; a resubscribe a subscription (refused when unknown).
                Message::Batch(b) => {
                    c.publishes.insert(b.id);
                }
                Message::Resubscribe(r) => {
                    c.subscribes.insert(r.id);
                    c.resubscribes.insert(r.id);
                }
                Message::Fetch { id, ids } => c.fetches.entry(id).or_default().extend(ids),
                Message::Close { .. } => c.remote_closed = true,
                _ => {}
            }
        }
        self.input(Input::Received { conn, frame });
    }

    /// Handles an input and everything it causes (barriers complete at once).
    fn input(&mut self, input: Input) {
        self.queue.push_back(input);
        while let Some(input) = self.queue.pop_front() {
            self.now += 1;
            if trace() {
                match &input {
                    Input::Received { conn, frame } => {
                        eprintln!("-> {conn}: {:?}", Message::decode(frame).map_err(|e| (e, to_hex(frame))))
                    }
                    other => eprintln!("-> {other:?}"),
                }
            }
            let outputs = self.peer.handle(input, self.now);
            self.outputs(outputs);
        }
    }

    fn outputs(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            self.check(output);
        }
        if let Some((conn, reason)) = &self.expect_close {
            panic!("close message on {conn} ({reason:?}) not followed by Output::Close");
        }
    }

    /// Checks one output: messages only on open connections, a hello first and once, each message
    /// round-trips through its encoding, acks and refusals name publications the remote sent,
    /// subscription acks its subscriptions, fetch replies its fetches (with canonical values of
    /// the ids asked for), fetches at most `MAX_FETCH_IDS` ids, publications only of subscribed
    /// addresses and of what the peer holds, with canonical values; a `close` message directly
    /// before closing with that reason; barrier epochs increasing; events of held states.
    fn check(&mut self, output: Output) {
        if trace() {
            eprintln!("<- {output:?}");
        }
        if let Some((conn, reason)) = self.expect_close.take() {
            match &output {
                Output::Close { conn: c, reason: r } if *c == conn && *r == reason => {}
                other => panic!(
                    "close message on {conn} ({reason:?}) followed by {other:?}, not its Output::Close"
                ),
            }
        }
        match output {
            Output::Send { conn, msg } => self.check_send(conn, msg),
            Output::Close { conn, reason } => {
                let c =
                    self.conns.get_mut(&conn).unwrap_or_else(|| panic!("closed unknown connection {conn}"));
                assert!(c.open, "closed connection {conn} twice ({reason:?})");
                c.open = false;
                // Either just announced by a close message (checked above) or the remote's close.
                let announced = !reason.starts_with("remote closed: ");
                assert!(
                    announced || c.remote_closed,
                    "closed {conn} as remote-closed, but the remote did not close"
                );
            }
            Output::Barrier { epoch } => {
                assert!(epoch > self.last_epoch, "barrier epoch {epoch} after {}", self.last_epoch);
                self.last_epoch = epoch;
                self.store.sync().expect("sync");
                self.queue.push_back(Input::BarrierDone { epoch });
            }
            Output::Schedule { timer: Timer::AntiEntropy, after } => {
                assert_eq!(
                    Some(after),
                    self.config.anti_entropy,
                    "anti-entropy scheduled at another interval"
                );
            }
            Output::Reply { id, result } => {
                assert!(self.in_setup, "a reply ({id}) though no command was sent");
                if let Err(e) = result {
                    panic!("setup command {id} failed: {e}");
                }
            }
            Output::Event(e) => {
                assert!(!e.local || self.in_setup, "a local event though no command was sent");
                let state = self
                    .peer
                    .state(&e.address)
                    .unwrap_or_else(|| panic!("event for {} without state", e.address));
                assert_eq!(state.kind(), e.op.kind(), "event of another kind than the state");
            }
        }
    }

    fn check_send(&mut self, conn: ConnId, msg: Message) {
        let frame = msg.encode();
        assert_eq!(Message::decode(&frame).as_ref(), Ok(&msg), "a sent message does not round-trip");
        let c = self
            .conns
            .get_mut(&conn)
            .unwrap_or_else(|| panic!("sent {} on unknown connection {conn}", msg.kind()));
        assert!(c.open, "sent {} on closed connection {conn}", msg.kind());
        if !c.greeted {
            assert!(matches!(msg, Message::Hello(_)), "sent {} on {conn} before hello", msg.kind());
        }
        match &msg {
            Message::Hello(h) => {
                assert!(!c.greeted, "sent hello twice on {conn}");
                c.greeted = true;
                assert_eq!(h.version, PROTOCOL_VERSION);
                assert_eq!(h.peer_id, "p");
            }
            Message::PublishAck { id } | Message::Refused { id, .. } => {
                let resubscribe = matches!(msg, Message::Refused { .. }) && c.resubscribes.contains(id);
                assert!(
                    c.publishes.contains(id) || resubscribe,
                    "{} of publication {id}, which {conn} never sent",
                    msg.kind()
                );
                self.acked |= matches!(msg, Message::PublishAck { .. });
            }
            Message::SubscribeAck { id } => {
                assert!(c.subscribes.contains(id), "subscribe-ack {id}, which {conn} never sent");
            }
            Message::Fetch { ids, id } => {
                assert!(!ids.is_empty() && ids.len() <= MAX_FETCH_IDS, "fetch of {} ids", ids.len());
                c.last_fetch = Some((*id, ids.clone()));
            }
            Message::FetchReply { id, values, missing } => {
                let asked =
                    c.fetches.get(id).unwrap_or_else(|| panic!("fetch-reply {id}, which {conn} never asked"));
                for v in values {
                    let cid = ContentId::hash_bytes(v);
                    assert!(asked.contains(&cid), "fetch-reply {id} carries {cid}, not asked for");
                    assert!(Value::decode(v).is_ok(), "fetch-reply {id} carries a non-canonical value");
                }
                for cid in missing {
                    assert!(asked.contains(cid), "fetch-reply {id} lists {cid} missing, not asked for");
                }
            }
            Message::Publish(p) => {
                assert!(
                    self.peer.subscriptions().contains(&p.address),
                    "published {}, which the peer does not subscribe to",
                    p.address
                );
                let state = self
                    .peer
                    .state(&p.address)
                    .unwrap_or_else(|| panic!("published {} without a state", p.address));
                let mut copy = state.clone();
                assert_eq!(
                    copy.apply(&p.op),
                    Ok(false),
                    "published an op on {} the peer does not hold",
                    p.address
                );
                for v in &p.values {
                    assert!(Value::decode(v).is_ok(), "published a non-canonical value");
                }
            }
            // A batch (catch-up part or live) decodes, names the values it carries by the ids
            // they hash to, and holds only what the peer holds.
            Message::Batch(b) => {
                assert!(
                    self.peer.subscriptions().contains(&b.address),
                    "batch for {}, which the peer does not subscribe to",
                    b.address
                );
                let decoded = replikativ_peer::proto::batch::decode(&b.data)
                    .unwrap_or_else(|e| panic!("the peer sent a batch that does not decode: {e}"));
                let state = self
                    .peer
                    .state(&b.address)
                    .unwrap_or_else(|| panic!("batch for {} without a state", b.address));
                let mut copy = state.clone();
                assert_eq!(
                    copy.apply(&decoded.op),
                    Ok(false),
                    "a batch on {} the peer does not hold",
                    b.address
                );
                for (id, v) in &decoded.values {
                    assert_eq!(ContentId::hash_bytes(v), *id, "a batch value under another id");
                    assert!(Value::decode(v).is_ok(), "a batch carries a non-canonical value");
                }
            }
            Message::Summaries { summaries, .. } => {
                for (a, s) in summaries {
                    if let Summary::Buckets(b) = s {
                        assert_eq!(
                            b.len(),
                            BUCKETS * BUCKET_DIGEST,
                            "bucket summary of {a} of {} bytes",
                            b.len()
                        );
                    }
                }
            }
            Message::Close { reason } => self.expect_close = Some((conn, reason.clone())),
            _ => {}
        }
    }

    /// Reopens the store the session left: nothing is quarantined, and the states and
    /// subscriptions are the live peer's. Returns whether the peer acknowledged a publication.
    pub fn finish(self) -> bool {
        let reopened = Peer::open(self.store.clone(), "p", true, ActorId::from_u128(2), self.config.clone())
            .expect("the store the peer wrote reopens");
        assert!(
            reopened.recovery().is_empty(),
            "the peer wrote records it cannot load: {:?}",
            reopened.recovery()
        );
        assert_eq!(
            reopened.subscriptions(),
            self.peer.subscriptions(),
            "subscriptions differ after reopening"
        );
        let live: BTreeMap<&Address, ContentId> =
            self.peer.addresses().map(|a| (a, self.peer.state(a).expect("state").digest())).collect();
        let stored: BTreeMap<&Address, ContentId> =
            reopened.addresses().map(|a| (a, reopened.state(a).expect("state").digest())).collect();
        assert_eq!(stored, live, "states differ after reopening");
        self.acked
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures and seeds
