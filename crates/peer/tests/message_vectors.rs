//! Golden vectors of the wire format: every message kind (publish with every op kind, sync with
//! every summary variant), built from fixed ids, must encode to exactly the bytes recorded in
//! `tests/vectors/messages.json` (hex of `Message::encode()`) and decode back to the same message.
//! A change of the encoding fails here; if it is intended, the vectors and the protocol version
//! change together (`REPLIKATIV_WRITE_VECTORS=1 cargo test --test message_vectors` rewrites the file
//! from the test's messages). Also: arbitrary bytes never make `Message::decode` panic.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use replikativ_peer::crdt::DotSet;
use replikativ_peer::crdt::cdvcs::{CdvcsMethod, GraphEntry};
use replikativ_peer::crdt::{
    ActorId, Address, CdvcsOp, Commit, ContentId, CrdtKind, Dot, GSetOp, Hlc, LwwOp, OrEntry, OrMapOp,
    Transaction, Value,
};
use replikativ_peer::proto::{
    AnyOp, Batch, Bucket, DotSummary, Hello, Message, PROTOCOL_VERSION, Publish, Recon, Removed, Resubscribe,
    Subscribe, Summary,
};
use serde_bytes::ByteBuf;
use uuid::Uuid;

const VECTORS: &str = include_str!("vectors/messages.json");

fn cid(n: u8) -> ContentId {
    ContentId::from_bytes([n; 32])
}

fn address(n: u128) -> Address {
    Address::new("mail:alice@example.org", Uuid::from_u128(n)).expect("valid")
}

fn actor(n: u128) -> ActorId {
    ActorId::from_u128(n)
}

/// An OR-Map commit record (a real, decodable value), as a publication carries it inline.
fn commit_record() -> ByteBuf {
    let commit = Commit {
        crdt: CrdtKind::Ormap,
        parents: vec![],
        transactions: vec![Transaction::new("set", "red").to_ref()],
        author: "mail:alice@example.org".into(),
        ts: 1_700_000_000_000,
    };
    ByteBuf::from(commit.to_value().encode())
}

fn publish(id: u64, n: u128, op: AnyOp, values: Vec<ByteBuf>) -> Message {
    Message::Publish(Publish { id, address: address(n), op, values, catch_up: false })
}

/// The vectors, by name. Every message kind, every op kind and every summary variant is here
/// (checked by `vectors_cover_every_kind`).
fn vectors() -> Vec<(&'static str, Message)> {
    let ormap = AnyOp::Ormap(OrMapOp {
        adds: vec![OrEntry { key: Value::from("color"), dot: Dot::new(actor(1), 1), commit: cid(1) }],
        removals: vec![OrEntry { key: Value::from("shape"), dot: Dot::new(actor(2), 3), commit: cid(2) }],
    });
    let cdvcs = AnyOp::Cdvcs(CdvcsOp {
        method: CdvcsMethod::Merge,
        commits: vec![
            GraphEntry { id: cid(3), parents: vec![cid(4)] },
            GraphEntry { id: cid(5), parents: vec![cid(3), cid(6)] },
        ],
        heads: BTreeSet::from([cid(5)]),
    });
    let lww = AnyOp::Lww(LwwOp {
        value: Value::map([("n", Value::Int(-7)), ("s", Value::from("x"))]),
        stamp: Some(Hlc { wall_ms: 1_700_000_000_123, counter: 2, actor: actor(3) }),
    });
    let gset = AnyOp::Gset(GSetOp {
        elements: BTreeSet::from([
            Value::Int(1),
            Value::from("two"),
            Value::Bytes(vec![3]),
            Value::Bool(true),
        ]),
    });
    vec![
        (
            "hello",
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                peer_id: "peer-a".into(),
                features: vec!["compression".into()],
            }),
        ),
        (
            "subscribe",
            Message::Subscribe(Subscribe {
                id: 7,
                addresses: BTreeSet::from([address(1), address(2)]),
                extend: true,
            }),
        ),
        ("resubscribe", Message::Resubscribe(Resubscribe { id: 8, digest: cid(7), extend: false })),
        ("subscribe-ack", Message::SubscribeAck { id: 7 }),
        ("unsubscribe", Message::Unsubscribe { addresses: BTreeSet::from([address(2)]) }),
        ("publish-ormap", publish(11, 1, ormap, vec![commit_record()])),
        ("publish-cdvcs", publish(12, 2, cdvcs, vec![])),
        ("publish-lww", publish(13, 3, lww, vec![])),
        ("publish-gset", publish(u64::MAX, 4, gset, vec![])),
        ("publish-ack", Message::PublishAck { id: 11 }),
        ("refused", Message::Refused { id: 12, reason: "this peer does not subscribe to it".into() }),
        ("fetch", Message::Fetch { id: 21, ids: vec![cid(1), cid(2)] }),
        ("fetch-reply", Message::FetchReply { id: 21, values: vec![commit_record()], missing: vec![cid(2)] }),
        (
            "sync-heads",
            Message::Summaries {
                summaries: vec![(address(2), Summary::Heads(BTreeSet::from([cid(5), cid(6)])))],
                reply: false,
            },
        ),
        (
            "sync-digest",
            Message::Summaries { summaries: vec![(address(1), Summary::Digest(cid(9)))], reply: true },
        ),
        ("sync-empty", Message::Summaries { summaries: vec![(address(4), Summary::Empty)], reply: false }),
        (
            "sync-buckets",
            Message::Summaries {
                summaries: vec![(address(5), Summary::Buckets(ByteBuf::from((0..32).collect::<Vec<u8>>())))],
                reply: false,
            },
        ),
        (
            "sync-graph",
            Message::Summaries {
                summaries: vec![(
                    address(2),
                    Summary::Graph { heads: BTreeSet::from([cid(5)]), samples: vec![cid(3), cid(4)] },
                )],
                reply: false,
            },
        ),
        (
            "sync-dots",
            Message::Summaries {
                summaries: vec![(
                    address(1),
                    Summary::Dots(DotSummary {
                        adds: dots(&[(1, 1, 9), (2, 1, 3), (2, 5, 5)]),
                        removed: Removed::Dots { dots: dots(&[(1, 2, 2)]), digest: 0x0123_4567_89ab_cdef },
                    }),
                )],
                reply: false,
            },
        ),
        (
            "sync-dots-buckets",
            Message::Summaries {
                summaries: vec![(
                    address(1),
                    Summary::Dots(DotSummary {
                        adds: dots(&[(1, 1, 9)]),
                        removed: Removed::Buckets(ByteBuf::from((0..32).collect::<Vec<u8>>())),
                    }),
                )],
                reply: true,
            },
        ),
        (
            "batch",
            Message::Batch(Batch {
                id: 31,
                address: address(1),
                data: ByteBuf::from(vec![0x4b, 0x04, 0x00]),
                live: false,
            }),
        ),
        (
            "batch-live",
            Message::Batch(Batch {
                id: 32,
                address: address(1),
                data: ByteBuf::from(vec![0x4b, 0x04, 0x00]),
                live: true,
            }),
        ),
        (
            "recon-nodes",
            Message::Recon(Recon::Nodes(vec![(
                Bucket { depth: 1, prefix: 0xa000_0000_0000_0000 },
                ByteBuf::from((0..192).map(|i| i as u8).collect::<Vec<u8>>()),
            )])),
        ),
        ("recon-list", Message::Recon(Recon::List(vec![Bucket { depth: 2, prefix: 0xa300_0000_0000_0000 }]))),
        (
            "recon-listed",
            Message::Recon(Recon::Listed {
                buckets: vec![Bucket { depth: 2, prefix: 0xa300_0000_0000_0000 }],
                summaries: vec![(address(4), Summary::Empty)],
            }),
        ),
        ("error", Message::Error { reason: "unknown message kind \"frobnicate\"; ignored".into() }),
        ("close", Message::Close { reason: "publication flood".into() }),
        ("custom", Message::Custom { tag: "chat".into(), data: ByteBuf::from(vec![0, 1, 2, 0xff]) }),
    ]
}

fn dots(runs: &[(u128, u64, u64)]) -> DotSet {
    let mut s = DotSet::default();
    for (a, start, end) in runs {
        s.insert_run(actor(*a), *start, *end);
    }
    s
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the vectors file: one flat JSON object of names to hex strings (no escapes), in order.
fn read_vectors(text: &str) -> Vec<(String, String)> {
    fn string(s: &mut &str) -> String {
        *s = s.trim_start();
        let rest = s.strip_prefix('"').expect("a string");
        let end = rest.find('"').expect("a closed string");
        let out = &rest[..end];
        assert!(!out.contains('\\'), "no escapes in the vectors file");
        *s = &rest[end + 1..];
        out.to_owned()
    }
    fn punct(s: &mut &str, c: char) -> bool {
        *s = s.trim_start();
        match s.strip_prefix(c) {
            Some(rest) => {
                *s = rest;
                true
            }
            None => false,
        }
    }
    let mut s = text;
    assert!(punct(&mut s, '{'), "an object");
    let mut out = Vec::new();
    if !punct(&mut s, '}') {
        loop {
            let name = string(&mut s);
            assert!(punct(&mut s, ':'), "a colon after {name:?}");
            out.push((name, string(&mut s)));
            if punct(&mut s, '}') {
                break;
            }
            assert!(punct(&mut s, ','), "a comma");
        }
    }
    assert!(s.trim().is_empty(), "nothing after the object");
    out
}

#[test]
fn vectors_file_has_exactly_the_tests_names() {
    let file: Vec<String> = read_vectors(VECTORS).into_iter().map(|(n, _)| n).collect();
    let ours: Vec<String> = vectors().into_iter().map(|(n, _)| n.to_owned()).collect();
    let unique: BTreeSet<&String> = file.iter().collect();
    assert_eq!(unique.len(), file.len(), "duplicate names in the file");
    assert_eq!(file, ours, "the file's names (in order) differ from the test's");
}

#[test]
fn every_message_encodes_to_its_vector_and_decodes_back() {
    let file: BTreeMap<String, String> = read_vectors(VECTORS).into_iter().collect();
    let mut failures = Vec::new();
    for (name, msg) in vectors() {
        let frame = msg.encode();
        match file.get(name) {
            Some(hex) if *hex == to_hex(&frame) => {}
            Some(hex) => {
                failures.push(format!("{name}: encodes to {} but the vector is {hex}", to_hex(&frame)))
            }
            None => failures.push(format!("{name}: no vector (it encodes to {})", to_hex(&frame))),
        }
        assert_eq!(Message::decode(&frame), Ok(msg.clone()), "{name} does not decode back");
        let expected = file.get(name).map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect::<Vec<u8>>()
        });
        if let Some(bytes) = expected
            && Message::decode(&bytes) != Ok(msg.clone())
        {
            failures
                .push(format!("{name}: the vector decodes to {:?}, not to {msg:?}", Message::decode(&bytes)));
        }
    }
    if std::env::var_os("REPLIKATIV_WRITE_VECTORS").is_some() {
        // Regenerates the file (run once after an intended change of the encoding).
        let body: Vec<String> =
            vectors().into_iter().map(|(n, m)| format!("  \"{n}\": \"{}\"", to_hex(&m.encode()))).collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/messages.json");
        std::fs::write(path, format!("{{\n{}\n}}\n", body.join(",\n"))).expect("writes the vectors");
        return;
    }
    assert!(failures.is_empty(), "encoding changed:\n{}", failures.join("\n"));
}

#[test]
fn vectors_cover_every_kind() {
    let vectors = vectors();
    let kinds: BTreeSet<&str> = vectors.iter().map(|(_, m)| m.kind()).collect();
    let all = [
        "hello",
        "subscribe",
        "resubscribe",
        "subscribe-ack",
        "unsubscribe",
        "publish",
        "batch",
        "publish-ack",
        "refused",
        "fetch",
        "fetch-reply",
        "sync",
        "recon",
        "error",
        "close",
        "custom",
    ];
    assert_eq!(kinds, BTreeSet::from(all));
    // Exhaustive matches: a new op kind or summary variant does not compile until it has a vector.
    let mut ops = BTreeSet::new();
    let mut summaries = BTreeSet::new();
    for (_, m) in &vectors {
        match m {
            Message::Publish(p) => {
                ops.insert(match p.op {
                    AnyOp::Ormap(_) => "ormap",
                    AnyOp::Cdvcs(_) => "cdvcs",
                    AnyOp::Lww(_) => "lww",
                    AnyOp::Gset(_) => "gset",
                });
            }
            Message::Summaries { summaries: s, .. } => {
                summaries.extend(s.iter().map(|(_, s)| match s {
                    Summary::Heads(_) => "heads",
                    Summary::Digest(_) => "digest",
                    Summary::Empty => "empty",
                    Summary::Buckets(_) => "buckets",
                    Summary::Dots(_) => "dots",
                    Summary::Graph { .. } => "graph",
                }));
            }
            _ => {}
        }
    }
    assert_eq!(ops, BTreeSet::from(["ormap", "cdvcs", "lww", "gset"]));
    assert_eq!(summaries, BTreeSet::from(["heads", "digest", "empty", "buckets", "dots", "graph"]));
}

/// Kinds whose bodies the decoder parses, plus one it does not know.
const KINDS: [&str; 17] = [
    "hello",
    "subscribe",
    "resubscribe",
    "recon",
    "subscribe-ack",
    "unsubscribe",
    "publish",
    "batch",
    "publish-ack",
    "refused",
    "fetch",
    "fetch-reply",
    "sync",
    "error",
    "close",
    "custom",
    "frobnicate",
];

#[derive(serde::Serialize)]
struct Envelope<'a> {
    v: u16,
    kind: &'a str,
    body: ByteBuf,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(frame in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&frame);
        let _ = Message::frame_version(&frame);
    }

    #[test]
    fn arbitrary_bodies_in_valid_envelopes_never_panic_the_decoder(
        v in prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()],
        kind in prop::sample::select(&KINDS[..]),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let frame = rmp_serde::to_vec_named(&Envelope { v, kind, body: ByteBuf::from(body) }).expect("encodes");
        let _ = Message::decode(&frame);
    }

    #[test]
    fn corrupted_vectors_never_panic_the_decoder(
        which in 0..18usize,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let vectors = vectors();
        let mut frame = vectors[which % vectors.len()].1.encode();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] ^= byte;
        }
        let _ = Message::decode(&frame);
        frame.truncate(cut.index(frame.len() + 1));
        let _ = Message::decode(&frame);
    }
}
