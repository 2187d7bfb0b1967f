//! The fuzz targets of the wire decoders and of the protocol core (issue F): one function per
//! decoder, each taking arbitrary bytes and checking properties of what they decode to, not only
//! that decoding does not panic. A property that does not hold panics with a message naming it.
//!
//! Shared by the two runners, so the logic exists once:
//! - `tests/fuzz_decoders.rs`: proptest, time-bounded (`REPLIKATIV_FUZZ_SECS`), stable Rust, CI;
//! - `fuzz/` at the workspace root: `cargo fuzz` (libFuzzer), which includes this file by path.
//!
//! See `fuzz/README.md` for the targets, their properties and how to run and reproduce.

#![allow(dead_code, unreachable_pub)]

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

/// A fuzz target: its name (the libFuzzer binary and the test share it), the property check, and
/// the seed inputs (valid encodings) its corpus starts from.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The name.
    pub name: &'static str,
    /// Runs one input; panics when a property does not hold. Returns whether the input got past
    /// decoding (so its properties were checked), for the runners' statistics.
    pub run: fn(&[u8]) -> bool,
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: [Target; 5] = [
    Target { name: "message", run: message, seeds: message_seeds },
    Target { name: "value", run: value, seeds: value_seeds },
    Target { name: "commit", run: commit, seeds: commit_seeds },
    Target { name: "op", run: op, seeds: op_seeds },
    Target { name: "peer", run: peer, seeds: peer_seeds },
];

/// The target of this name.
pub fn target(name: &str) -> Target {
    *TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

// ---------------------------------------------------------------------------------------------
// Target: Message::decode

/// The envelope of a frame (design §6.1), to rebuild frames by hand.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u16,
    kind: String,
    body: ByteBuf,
}

/// `Message::decode`: never panics; its error agrees with `frame_version`; a decoded message
/// re-encodes to a frame that decodes to the same message; decoding is strict (a byte after the
/// envelope, or after the body inside it, is an error).
pub fn message(data: &[u8]) -> bool {
    let decoded = Message::decode(data);
    let version = Message::frame_version(data);
    let msg = match decoded {
        Ok(msg) => msg,
        Err(FrameError::Malformed(_)) => {
            assert_eq!(version, None, "a malformed frame has no envelope, yet frame_version reads one");
            return false;
        }
        Err(FrameError::UnsupportedVersion(v)) => {
            assert_eq!(version, Some(v), "UnsupportedVersion names the envelope's version");
            assert_ne!(v, PROTOCOL_VERSION, "UnsupportedVersion of this peer's own version");
            return false;
        }
        Err(FrameError::UnknownKind(_)) => {
            assert_eq!(version, Some(PROTOCOL_VERSION), "an unknown kind is only reported for version 1");
            return false;
        }
        Err(_) => {
            assert!(version.is_some(), "a bad body comes in a valid envelope");
            return false;
        }
    };
    let frame = msg.encode();
    assert_eq!(Message::decode(&frame).as_ref(), Ok(&msg), "the re-encoded message decodes to itself");
    let envelope: Envelope = from_msgpack(data).expect("a decoded frame has an envelope");
    assert_eq!(version, Some(envelope.v), "frame_version reads the envelope's version");
    assert_eq!(envelope.kind, msg.kind(), "the message is of the envelope's kind");
    for junk in [&[0x00][..], &[0xc0], &data[..1]] {
        let mut longer = data.to_vec();
        longer.extend_from_slice(junk);
        assert!(
            matches!(Message::decode(&longer), Err(FrameError::Malformed(_))),
            "bytes after the envelope are not refused"
        );
    }
    let mut body = envelope.body.into_vec();
    body.push(0xc0);
    let rebuilt =
        rmp_serde::to_vec_named(&Envelope { v: envelope.v, kind: envelope.kind, body: body.into() })
            .expect("encodes");
    assert!(
        matches!(Message::decode(&rebuilt), Err(FrameError::BadBody { .. })),
        "bytes after the body inside the envelope are not refused"
    );
    true
}

// ---------------------------------------------------------------------------------------------
// Target: Value::decode

/// `Value::decode` (design §1.1): never panics; accepts only canonical input (`encode` gives the
/// input back, so the content id is the hash of the input); refuses a byte after the value and
/// every proper prefix; the value survives msgpack (its serde form on the wire) unchanged.
pub fn value(data: &[u8]) -> bool {
    let Ok(v) = Value::decode(data) else { return false };
    assert_eq!(
        v.encode(),
        data,
        "a decoded value re-encodes to other bytes: the decoder accepted non-canonical input"
    );
    assert_eq!(v.content_id(), ContentId::hash_bytes(data), "the content id is not the hash of the encoding");
    assert!(v.within_depth_limit(), "a decoded value exceeds the depth limit");
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(Value::decode(&longer).is_err(), "a byte after the value is not refused");
    for cut in [data.len() - 1, data.len() / 2] {
        if cut < data.len() {
            assert!(
                Value::decode(&data[..cut]).is_err(),
                "a proper prefix of an encoding decodes ({cut} bytes)"
            );
        }
    }
    let packed = rmp_serde::to_vec(&v).expect("encodes");
    assert_eq!(from_msgpack::<Value>(&packed).as_ref(), Ok(&v), "msgpack round trip");
    let named = rmp_serde::to_vec_named(&v).expect("encodes");
    assert_eq!(from_msgpack::<Value>(&named).as_ref(), Ok(&v), "msgpack (named) round trip");
    true
}

// ---------------------------------------------------------------------------------------------
// Target: commit records

/// Commit records (design §2): `Value::decode` then `Commit::from_value` never panic; a parsed
/// commit is exactly its record (`to_value` gives the value back, so it re-encodes to the input
/// and its id is the hash of the input).
pub fn commit(data: &[u8]) -> bool {
    let Ok(v) = Value::decode(data) else { return false };
    let Ok(c) = Commit::from_value(&v) else { return false };
    let back = c.to_value();
    assert_eq!(
        back, v,
        "a parsed commit is not exactly its record (from_value dropped or changed something)"
    );
    assert_eq!(back.encode(), data, "a parsed commit re-encodes to other bytes");
    assert_eq!(c.id(), ContentId::hash_bytes(data), "the commit id is not the hash of its record");
    assert_eq!(Commit::from_value(&back).as_ref(), Ok(&c), "the record parses to the same commit again");
    true
}

// ---------------------------------------------------------------------------------------------
// Target: ops

/// Ops as they travel in publications (`from_msgpack::<AnyOp>`): never panics; a decoded op
/// survives msgpack (named and compact) unchanged. Applied to an empty state of its kind and to a
/// non-empty one: never panics; an error leaves the state unchanged and agrees with `validate`;
/// the returned `changed` is whether the state changed; applying again is `Ok(false)`
/// (idempotent); `includes(op)` before means applying changes nothing; the state's `state_op`
/// rebuilds it from empty (merge law); and catch-up (`compare` against the old state's summaries)
/// brings the old state everything of the new one.
pub fn op(data: &[u8]) -> bool {
    let Ok(op) = from_msgpack::<AnyOp>(data) else { return false };
    let named = rmp_serde::to_vec_named(&op).expect("encodes");
    assert_eq!(from_msgpack::<AnyOp>(&named).as_ref(), Ok(&op), "msgpack (named) round trip");
    let compact = rmp_serde::to_vec(&op).expect("encodes");
    assert_eq!(from_msgpack::<AnyOp>(&compact).as_ref(), Ok(&op), "msgpack (compact) round trip");
    check_apply(CrdtState::empty(op.kind()), &op);
    check_apply(base_state(op.kind()).clone(), &op);
    true
}

fn check_apply(mut state: CrdtState, op: &AnyOp) {
    let before = state.clone();
    let before_digest = before.digest();
    let included = state.includes(op);
    let validated = state.validate(op);
    let applied = state.apply(op);
    let changed = match applied {
        Err(e) => {
            assert_eq!(validated, Err(e), "apply refuses what validate accepts, or with another error");
            assert_eq!(state.digest(), before_digest, "a refused op changed the state");
            return;
        }
        Ok(changed) => changed,
    };
    assert!(validated.is_ok(), "apply accepts what validate refuses: {validated:?}");
    assert_eq!(
        changed,
        state.digest() != before_digest,
        "apply's `changed` is not whether the state changed"
    );
    assert!(!(included && changed), "includes(op) held, but applying the op changed the state");
    assert_eq!(state.apply(op), Ok(false), "applying an op twice is not idempotent");
    let mut rebuilt = CrdtState::empty(state.kind());
    rebuilt.apply(&state.state_op()).expect("a state's state_op applies to an empty state");
    assert_eq!(rebuilt.digest(), state.digest(), "state_op applied to an empty state does not rebuild it");
    let _ = state.summary();
    let _ = state.summary_bucketed_above(0);
    let _ = state.size();
    if before.is_incomplete() || state.is_incomplete() || has_cycle(&state) {
        // Catch-up of a CDVCS with missing history is the fetch path's business. A cyclic graph
        // (forged entries `a -> b -> a`, which no commit records can produce: ids are hashes of
        // records naming their parents, and the peer checks records) has commits no head reaches,
        // which catch-up from heads rightly never sends.
        return;
    }
    for summary in [before.summary(), before.summary_bucketed_above(0), Summary::Empty] {
        let (answer, _) = state.compare(&summary, true);
        let mut caught = before.clone();
        if let Some(answer) = &answer {
            caught.apply(answer).expect("a catch-up answer applies to the replica it answers");
        }
        assert_eq!(
            caught.apply(&state.state_op()),
            Ok(false),
            "catch-up from summary {summary:?} left the replica short of the state"
        );
    }
}

/// Whether a complete CDVCS has commits on (or after) a cycle: commits without a generation,
/// which is computed only once every ancestor's is.
fn has_cycle(state: &CrdtState) -> bool {
    let CrdtState::Cdvcs(c) = state else { return false };
    c.graph().entries().any(|(id, _)| c.graph().generation(&id).is_none())
}

// ---------------------------------------------------------------------------------------------
// Target: the protocol core

/// The peer's addresses: 1 an OR-Map, 2 a CDVCS, 3 an LWW register, 4 a G-Set (as in the golden
/// vectors); the fixture's remote also writes 5-8 (of those kinds), which the peer does not hold.
pub fn address(n: u128) -> Address {
    Address::new("mail:alice@example.org", Uuid::from_u128(n)).expect("valid")
}

const KINDS: [CrdtKind; 4] = [CrdtKind::Ormap, CrdtKind::Cdvcs, CrdtKind::Lww, CrdtKind::Gset];

/// The peer's first fake connection (always connected, hello received).
pub const CONN_A: ConnId = 10;
/// The second fake connection's first number (each reconnect takes the next).
pub const CONN_B: ConnId = 20;
/// Wall time the peer starts at.
const START_MS: u64 = 1_700_000_000_000;

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
                assert!(
                    c.publishes.contains(id),
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

/// A fake remote's writes: ops on every address (with the values they need), and states.
#[derive(Debug)]
pub struct Fixture {
    /// `(address, op)` in the order made.
    pub ops: Vec<(Address, AnyOp)>,
    /// Every value the ops need (commit records and params), by id, as canonical encodings.
    pub values: HashMap<ContentId, Vec<u8>>,
    /// Non-empty states, one per kind (the op target applies ops to them).
    pub states: Vec<CrdtState>,
}

/// The fixture (built once).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn base_state(kind: CrdtKind) -> &'static CrdtState {
    fixture().states.iter().find(|s| s.kind() == kind).expect("a state of every kind")
}

fn build_fixture() -> Fixture {
    let actor = ActorId::from_u128(7);
    let author = "mail:fake@example.org";
    let mut ops = Vec::new();
    let mut values = HashMap::new();
    let keep = |vs: BTreeMap<ContentId, Value>, values: &mut HashMap<ContentId, Vec<u8>>| {
        for (id, v) in vs {
            values.insert(id, v.encode());
        }
    };
    // OR-Maps at 1 and 5: two keys, one removed, one with a nested value.
    for n in [1, 5] {
        let mut m = OrMap::default();
        let x = m.assoc("a".into(), vec![Transaction::new("set", 1)], actor, author, 10).expect("assoc");
        let y = m
            .assoc(
                Value::list([Value::Int(-1), Value::Bytes(vec![0, 255])]),
                vec![Transaction::new(
                    "set",
                    Value::map([("deep", Value::list([Value::Float(0.5), Value::Nil]))]),
                )],
                actor,
                author,
                11,
            )
            .expect("assoc");
        let z = m.dissoc(&"a".into(), vec![Transaction::new("revert", "a")], author, 12).expect("dissoc");
        for s in [x, y, z] {
            ops.push((address(n), AnyOp::Ormap(s.op)));
            keep(s.values, &mut values);
        }
    }
    // CDVCSs at 2 and 6: a root, two concurrent commits and their merge.
    for n in [2, 6] {
        let (mut c, root) = Cdvcs::new(author, 20);
        let mut d = c.clone();
        let one = c.transact(author, 21, vec![Transaction::new("add", 5)]).expect("transact");
        let two =
            d.transact("mail:other@example.org", 21, vec![Transaction::new("add", 7)]).expect("transact");
        c.apply(&two.op).expect("apply");
        let heads: Vec<ContentId> = c.heads().iter().copied().collect();
        let merge =
            c.merge(author, 22, &heads, None, vec![Transaction::new("fix", Value::Nil)]).expect("merge");
        for s in [root, one, two, merge] {
            ops.push((address(n), AnyOp::Cdvcs(s.op)));
            keep(s.values, &mut values);
        }
    }
    // LWW registers at 3 and 7.
    for n in [3, 7] {
        let mut r = LwwRegister::default();
        for (i, v) in [Value::from("x"), Value::map([("n", Value::Int(i128::MIN))])].into_iter().enumerate() {
            let op = r.set(v, START_MS + i as u64, actor).expect("set");
            ops.push((address(n), AnyOp::Lww(op)));
        }
    }
    // G-Sets at 4 and 8.
    for n in [4, 8] {
        let mut g = GSet::default();
        for e in [Value::Int(1), Value::from("two"), Value::Bytes(vec![3]), Value::Float(f64::NAN)] {
            let op = g.add(e).expect("add");
            ops.push((address(n), AnyOp::Gset(op)));
        }
    }
    let mut states: Vec<CrdtState> = KINDS.iter().map(|k| CrdtState::empty(*k)).collect();
    for (a, op) in &ops {
        if a.id.as_u128() <= 4 {
            let s = states.iter_mut().find(|s| s.kind() == op.kind()).expect("kind");
            s.apply(op).expect("fixture ops apply");
        }
    }
    Fixture { ops, values, states }
}

fn cid(n: u8) -> ContentId {
    ContentId::from_bytes([n; 32])
}

/// Subscribes to every address the fixture writes.
fn subscribe_all(id: u64) -> Message {
    Message::Subscribe(Subscribe { id, addresses: (1..=8).map(address).collect(), extend: false })
}

/// The fixture's ops as publications (ids from 1), with or without their values inline.
fn fixture_publishes(inline: bool) -> Vec<Message> {
    let f = fixture();
    f.ops
        .iter()
        .zip(1..)
        .map(|((address, op), id)| {
            let values = if inline {
                replikativ_peer::proto::state::commit_ids(op)
                    .into_iter()
                    .flat_map(|c| {
                        let record = f.values[&c].clone();
                        let params: Vec<Vec<u8>> = Value::decode(&record)
                            .ok()
                            .and_then(|v| Commit::from_value(&v).ok())
                            .map(|commit| {
                                commit.transactions.iter().map(|t| f.values[&t.params].clone()).collect()
                            })
                            .unwrap_or_default();
                        std::iter::once(record).chain(params)
                    })
                    .map(ByteBuf::from)
                    .collect()
            } else {
                Vec::new()
            };
            Message::Publish(Publish {
                id,
                address: address.clone(),
                op: op.clone(),
                values,
                catch_up: id % 5 == 0,
            })
        })
        .collect()
}

/// Decodes the hex strings of a vectors file that follow `marker` (up to the next quote).
fn hex_after(json: &str, marker: &str) -> Vec<Vec<u8>> {
    json.split(marker).skip(1).filter_map(|s| from_hex(s.split('"').next()?)).collect()
}

/// Bytes from hex (`None` if it is not hex).
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every message kind: the golden vectors, the fixture's publications, and messages about the
/// peer's own data.
pub fn message_seeds() -> Vec<Vec<u8>> {
    let mut out = hex_after(include_str!("../vectors/messages.json"), "\": \"");
    let f = fixture();
    let ids: Vec<ContentId> = f.values.keys().copied().take(8).collect();
    let mut msgs = vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer_id: "q".into(),
            features: vec!["buckets".into()],
        }),
        Message::Hello(Hello { version: PROTOCOL_VERSION + 1, peer_id: "q".into(), features: vec![] }),
        subscribe_all(1),
        Message::Subscribe(Subscribe {
            id: 2,
            addresses: BTreeSet::from([address(1), address(9)]),
            extend: true,
        }),
        Message::Unsubscribe { addresses: BTreeSet::from([address(3)]) },
        Message::Fetch { id: 3, ids: ids.clone() },
        Message::FetchReply {
            id: 2,
            values: ids.iter().map(|i| ByteBuf::from(f.values[i].clone())).collect(),
            missing: vec![cid(1)],
        },
        Message::Summaries {
            summaries: (1..=8).map(|n| (address(n), Summary::Empty)).collect(),
            reply: false,
        },
        Message::Summaries {
            summaries: f
                .states
                .iter()
                .zip(1..)
                .flat_map(|(s, n)| [(address(n), s.summary()), (address(n), s.summary_bucketed_above(0))])
                .collect(),
            reply: true,
        },
        Message::Refused { id: 1, reason: "no".into() },
        Message::PublishAck { id: 1 },
        Message::SubscribeAck { id: 2 },
        Message::Error { reason: "?".into() },
        Message::Custom { tag: "t".into(), data: ByteBuf::from(vec![1]) },
        Message::Close { reason: "bye".into() },
    ];
    msgs.extend(fixture_publishes(true));
    msgs.extend(fixture_publishes(false).into_iter().step_by(3));
    out.extend(msgs.iter().map(Message::encode));
    out
}

/// The value vectors, and every value of the fixture.
pub fn value_seeds() -> Vec<Vec<u8>> {
    let mut out = hex_after(include_str!("../../../crdt/tests/vectors/values.json"), "\"encoding\": \"");
    let mut fixture_values: Vec<Vec<u8>> = fixture().values.values().cloned().collect();
    fixture_values.sort();
    out.extend(fixture_values);
    out
}

/// Every commit record of the fixture.
pub fn commit_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = fixture()
        .values
        .values()
        .filter(|bytes| Value::decode(bytes).ok().is_some_and(|v| Commit::from_value(&v).is_ok()))
        .cloned()
        .collect();
    out.sort();
    let record = Commit {
        crdt: CrdtKind::Cdvcs,
        parents: vec![cid(1), cid(2)],
        transactions: vec![
            Transaction::new("set", "red").to_ref(),
            Transaction::new("x", Value::Nil).to_ref(),
        ],
        author: "mail:alice@example.org".into(),
        ts: u64::MAX,
    };
    out.push(record.to_value().encode());
    out
}

/// The ops of the golden vectors and of the fixture, their states, and hand-made edge cases.
pub fn op_seeds() -> Vec<Vec<u8>> {
    let f = fixture();
    let mut ops: Vec<AnyOp> = hex_after(include_str!("../vectors/messages.json"), "\": \"")
        .iter()
        .filter_map(|frame| match Message::decode(frame) {
            Ok(Message::Publish(p)) => Some(p.op),
            _ => None,
        })
        .collect();
    ops.extend(f.ops.iter().map(|(_, op)| op.clone()));
    ops.extend(f.states.iter().map(CrdtState::state_op));
    ops.push(AnyOp::Lww(LwwOp { value: Value::Nil, stamp: None }));
    ops.push(AnyOp::Lww(LwwOp {
        value: "late".into(),
        stamp: Some(Hlc { wall_ms: u64::MAX, counter: u32::MAX, actor: ActorId::from_u128(u128::MAX) }),
    }));
    ops.push(AnyOp::Ormap(OrMapOp {
        adds: vec![OrEntry {
            key: "a".into(),
            dot: Dot::new(ActorId::from_u128(7), u64::MAX),
            commit: cid(1),
        }],
        removals: vec![OrEntry { key: "a".into(), dot: Dot::new(ActorId::from_u128(7), 1), commit: cid(2) }],
    }));
    ops.push(AnyOp::Cdvcs(CdvcsOp {
        method: CdvcsMethod::Pull,
        commits: vec![
            GraphEntry { id: cid(3), parents: vec![cid(4)] },
            GraphEntry { id: cid(4), parents: vec![] },
        ],
        heads: BTreeSet::from([cid(3)]),
    }));
    ops.iter().map(|op| rmp_serde::to_vec_named(op).expect("encodes")).collect()
}

/// Sessions: subscribe and publish everything (values inline, or fetched), catch-up, relays to a
/// second connection, reconnects, ticks; and each message seed alone after a subscription.
pub fn peer_seeds() -> Vec<Vec<u8>> {
    let frame = |m: &Message| Step::Frame(false, m.encode());
    let mut out = Vec::new();
    // Everything inline, then every other message kind.
    let mut steps = vec![frame(&subscribe_all(1))];
    steps.extend(fixture_publishes(true).iter().map(frame));
    steps.extend([Step::Tick, Step::Resync]);
    steps.extend(
        message_seeds()
            .into_iter()
            .filter(|m| !matches!(Message::decode(m), Ok(Message::Close { .. })))
            .map(|m| Step::Frame(false, m)),
    );
    steps.push(Step::Frame(false, Message::Close { reason: "bye".into() }.encode()));
    out.push(encode_steps(flags::BUCKETS, &steps));
    // Values fetched, with B subscribed so the peer relays to it.
    let mut steps = vec![Step::Frame(true, subscribe_all(1).encode()), frame(&subscribe_all(1))];
    for p in fixture_publishes(false) {
        steps.extend([frame(&p), Step::AnswerFetch, Step::AnswerFetch]);
    }
    steps.extend([
        Step::Tick,
        Step::Tick,
        Step::Tick,
        Step::ReconnectB,
        Step::Frame(true, subscribe_all(2).encode()),
    ]);
    out.push(encode_steps(flags::B, &steps));
    // Catch-up both ways with B, with bucketed summaries.
    let sync = Message::Summaries {
        summaries: (1..=8).map(|n| (address(n), Summary::Empty)).collect(),
        reply: false,
    };
    let steps = vec![
        frame(&subscribe_all(1)),
        frame(&sync),
        Step::Frame(true, subscribe_all(1).encode()),
        Step::Frame(true, sync.encode()),
        Step::Tick,
    ];
    out.push(encode_steps(flags::B | flags::BUCKETS, &steps));
    for m in message_seeds() {
        out.push(encode_steps(
            flags::BUCKETS,
            &[frame(&subscribe_all(1)), Step::Frame(false, m), Step::AnswerFetch],
        ));
    }
    out
}
