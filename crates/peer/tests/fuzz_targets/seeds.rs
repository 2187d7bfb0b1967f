//! Seeds: a fake remote's writes (the fixture) and the golden vectors, as inputs of every target.

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

pub fn base_state(kind: CrdtKind) -> &'static CrdtState {
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
