//! The fuzz targets of the wire decoders and of the protocol core (issue F): one function per
//! decoder, each taking arbitrary bytes and checking properties of what they decode to, not only
//! that decoding does not panic. A property that does not hold panics with a message naming it.
//!
//! Shared by the two runners, so the logic exists once:
//! - `tests/fuzz_decoders.rs`: proptest, time-bounded (`REPLIKATIV_FUZZ_SECS`), stable Rust, CI;
//! - `fuzz/` at the workspace root: `cargo fuzz` (libFuzzer), which includes this file by path.
//!
//! See `fuzz/README.md` for the targets, their properties and how to run and reproduce.

#![allow(dead_code, unreachable_pub, unused_imports)]

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
pub const TARGETS: [Target; 7] = [
    Target { name: "message", run: message, seeds: message_seeds },
    Target { name: "value", run: value, seeds: value_seeds },
    Target { name: "commit", run: commit, seeds: commit_seeds },
    Target { name: "op", run: op, seeds: op_seeds },
    Target { name: "batch", run: batch, seeds: batch_seeds },
    Target { name: "peer", run: peer, seeds: peer_seeds },
    Target { name: "handshake", run: handshake, seeds: handshake_seeds },
];

// ---------------------------------------------------------------------------------------------
// Target: the authentication handshake (the input is frames, each prefixed by a 2-byte length)

fn frames_of(data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = (usize::from(rest[0]) << 8 | usize::from(rest[1])).min(rest.len() - 2);
        frames.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    frames
}

/// Properties: a listener's handshake fed any frames never panics; every error is a typed
/// refusal (`auth-required` or `auth-failed`); after an error or a completed handshake every
/// further frame is refused; a proof it sends decodes as a frame of the protocol's envelope; and
/// no input completes the handshake (its nonce is fresh, so no recorded or made-up proof can
/// match it).
pub fn handshake(data: &[u8]) -> bool {
    use replikativ_peer::auth::{Handshake, Identity, Progress, SecretKey};
    use replikativ_peer::proto::{Direction, Refusal};
    let identity = Identity { node: SecretKey::from_seed(&[2; 32]), user: None };
    let (mut hs, _) = Handshake::start(Direction::Inbound, identity, [0; 32]).expect("randomness");
    let mut decoded = false;
    let mut over = false;
    for frame in frames_of(data) {
        match hs.receive(frame) {
            _ if over => {}
            Ok(Progress::Send(proof)) => {
                decoded = true;
                assert!(
                    replikativ_peer::proto::Message::frame_version(&proof).is_some(),
                    "a proof that is no envelope"
                );
            }
            Ok(Progress::Done(p)) => panic!("a made-up session completed the handshake as {p}"),
            Err(e) => {
                assert!(matches!(e.refusal, Refusal::AuthRequired | Refusal::AuthFailed), "{e:?}");
                over = true;
            }
        }
    }
    decoded
}

/// A dialer's real hello and proof (for another listener), and a plain hello.
pub fn handshake_seeds() -> Vec<Vec<u8>> {
    use replikativ_peer::auth::{Handshake, Identity, Progress, SecretKey};
    use replikativ_peer::proto::Direction;
    let dialer =
        Identity { node: SecretKey::from_seed(&[1; 32]), user: Some(SecretKey::from_seed(&[9; 32])) };
    let (mut d, hello_d) = Handshake::start(Direction::Outbound, dialer, [0; 32]).unwrap();
    let listener = Identity { node: SecretKey::from_seed(&[3; 32]), user: None };
    let (_, hello_l) = Handshake::start(Direction::Inbound, listener, [0; 32]).unwrap();
    let Ok(Progress::Send(proof)) = d.receive(&hello_l) else { panic!("a proof") };
    let framed = |frames: &[&[u8]]| {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u16).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    };
    let plain = replikativ_peer::proto::Message::Hello(replikativ_peer::proto::Hello {
        version: replikativ_peer::proto::PROTOCOL_VERSION,
        peer_id: "p".into(),
        features: vec![],
    })
    .encode();
    let anonymous = Identity { node: SecretKey::from_seed(&[4; 32]), user: None };
    let (mut a, hello_a) = Handshake::start(Direction::Outbound, anonymous, [0; 32]).unwrap();
    let Ok(Progress::Send(proof_a)) = a.receive(&hello_l) else { panic!("a proof") };
    vec![
        framed(&[&hello_d, &proof]),
        framed(&[&hello_d]),
        framed(&[&plain]),
        framed(&[&proof, &hello_d]),
        framed(&[&hello_a, &proof_a]),
        framed(&[&hello_d, &proof, &hello_a, &proof_a]),
    ]
}

/// The target of this name.
pub fn target(name: &str) -> Target {
    *TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

// ---------------------------------------------------------------------------------------------
// Target: batch::decode (the input is the raw columns; the target compresses them)

/// Properties: decoding never panics; every value of a decoded batch is keyed by the hash of its
/// bytes and decodes canonically; every parsed commit record hashes to its key; every entry's
/// commit is among the values or was sent by id; and re-encoding the decoded entries with the
/// decoded values decodes to the same op (what a relay would forward).
pub fn batch(data: &[u8]) -> bool {
    use replikativ_peer::proto::batch;
    let Ok(d) = batch::decode(&batch::compress(data)) else { return false };
    for (id, bytes) in &d.values {
        assert_eq!(ContentId::hash_bytes(bytes), *id, "a batch value is not keyed by its hash");
        assert!(Value::decode(bytes).is_ok(), "a batch value that does not decode");
    }
    for (id, commit) in &d.commits {
        assert_eq!(commit.to_value().content_id(), *id, "a parsed commit does not hash to its id");
        assert!(d.values.contains_key(id), "a parsed commit without its record");
    }
    let lookup = |id: &ContentId| d.values.get(id).cloned();
    let encoded = match &d.op {
        AnyOp::Ormap(op) => {
            let entries: Vec<(bool, OrEntry)> = op
                .adds
                .iter()
                .map(|e| (false, e.clone()))
                .chain(op.removals.iter().map(|e| (true, e.clone())))
                .collect();
            batch::encode(&entries, &lookup)
        }
        AnyOp::Cdvcs(op) => batch::encode_cdvcs(op, &lookup),
        other => panic!("a batch decoded to a {:?} op", other.kind()),
    };
    let again = batch::decode(&encoded).expect("a re-encoded batch decodes");
    assert_eq!(again.op, d.op, "re-encoding a decoded batch changes its entries");
    true
}

/// Raw columns of real batches: assocs and a dissoc of a small map.
pub fn batch_seeds() -> Vec<Vec<u8>> {
    let actor = ActorId::from_u128(5);
    let mut m = OrMap::default();
    let mut values = HashMap::new();
    let mut entries = Vec::new();
    for i in 0..6u64 {
        let s =
            m.assoc(format!("k{i}").into(), vec![Transaction::new("set", i)], actor, "a", 100 + i).unwrap();
        entries.extend(s.op.adds.iter().map(|e| (false, e.clone())));
        values.extend(s.values.into_iter().map(|(id, v)| (id, v.encode())));
    }
    let rm = m.dissoc(&"k1".into(), vec![Transaction::new("unset", Value::Nil)], "a", 200).unwrap();
    entries.extend(rm.op.removals.iter().map(|e| (true, e.clone())));
    values.extend(rm.values.into_iter().map(|(id, v)| (id, v.encode())));
    // Prefixes of the entries (1 to all), raw columns each.
    let mut out: Vec<Vec<u8>> = (1..=entries.len())
        .map(|k| {
            let data = replikativ_peer::proto::batch::encode(&entries[..k], &|id| values.get(id).cloned());
            replikativ_peer::proto::batch::decompress(&data).expect("decompresses")
        })
        .collect();
    // A CDVCS history of a root, two branches and a merge.
    let (mut a, root) = Cdvcs::new("a", 1);
    values.extend(root.values.into_iter().map(|(id, v)| (id, v.encode())));
    let mut b = a.clone();
    for i in 0..3i64 {
        let s = a.transact("a", 10, vec![Transaction::new("add", i)]).unwrap();
        values.extend(s.values.into_iter().map(|(id, v)| (id, v.encode())));
        let s = b.transact("b", 11, vec![Transaction::new("sub", i)]).unwrap();
        values.extend(s.values.into_iter().map(|(id, v)| (id, v.encode())));
    }
    a.apply(&b.state_op()).unwrap();
    let heads: Vec<ContentId> = a.heads().iter().copied().collect();
    let s = a.merge("a", 20, &heads, None, vec![]).unwrap();
    values.extend(s.values.into_iter().map(|(id, v)| (id, v.encode())));
    let data = replikativ_peer::proto::batch::encode_cdvcs(&a.state_op(), &|id| values.get(id).cloned());
    out.push(replikativ_peer::proto::batch::decompress(&data).expect("decompresses"));
    out
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
            assert_eq!(version, Some(PROTOCOL_VERSION), "an unknown kind is only reported for this version");
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
    assert_eq!(c.encode(), data, "the direct encoding of a parsed commit is not its record");
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

mod peer;
mod seeds;
pub use peer::*;
pub use seeds::*;
