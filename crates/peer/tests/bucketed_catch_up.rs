//! Catch-up of large G-Sets by bucket digests: a summary carries a digest per bucket of elements,
//! and the answer holds only the entries of the buckets that differ, not the whole state. (OR-Maps
//! summarize themselves by dots instead: `bounded_catch_up.rs`.)

use replikativ_crdt::{ActorId, GSet, OrMap, Transaction, Value};
use replikativ_peer::proto::state::{BUCKET_DIGEST, BUCKETED_ABOVE, BUCKETS};
use replikativ_peer::proto::{CrdtState, Summary};

fn ormap(keys: std::ops::Range<u32>, actor: u128) -> OrMap {
    let mut m = OrMap::default();
    for i in keys {
        m.assoc(
            Value::from(format!("k{i}")),
            vec![Transaction::new("set", i as i64)],
            ActorId::from_u128(actor),
            "a",
            1,
        )
        .unwrap();
    }
    m
}

/// Applies what each side's answer to the other's summary holds; returns the entries sent.
fn exchange(a: &mut CrdtState, b: &mut CrdtState) -> usize {
    let (to_a, b_lacks) = b.compare(&a.summary(), true);
    let (to_b, a_lacks) = a.compare(&b.summary(), true);
    assert!(!a_lacks || to_a.is_some(), "A lacks something, so B's answer holds it");
    assert!(!b_lacks || to_b.is_some(), "B lacks something, so A's answer holds it");
    let mut sent = 0;
    for (op, target) in [(to_a, &mut *a), (to_b, &mut *b)] {
        if let Some(op) = op {
            sent += op.len();
            target.apply(&op).unwrap();
        }
    }
    sent
}

fn gset(n: u32) -> GSet {
    let mut g = GSet::default();
    for i in 0..n {
        g.add(Value::from(i as i64)).unwrap();
    }
    g
}

#[test]
fn small_states_send_a_digest_large_ones_bucket_digests() {
    let small = CrdtState::Gset(gset(10));
    assert!(matches!(small.summary(), Summary::Digest(_)));
    let large = CrdtState::Gset(gset(BUCKETED_ABOVE as u32 + 1));
    match large.summary() {
        Summary::Buckets(b) => assert_eq!(b.len(), BUCKETS * BUCKET_DIGEST),
        other => panic!("expected buckets, got {other:?}"),
    }
    let equal = CrdtState::Gset(gset(BUCKETED_ABOVE as u32 + 1));
    assert_eq!(equal.compare(&large.summary(), true), (None, false), "equal states: nothing to send");
}

/// An OR-Map of any size summarizes itself by its dots: one run per writer without gaps.
#[test]
fn an_ormap_summary_is_its_dots() {
    let mut m = ormap(0..5000, 1);
    m.dissoc(&Value::from("k7"), vec![], "a", 2).unwrap();
    match CrdtState::Ormap(m).summary() {
        Summary::Dots(d) => {
            assert_eq!(d.adds.range_count(), 1);
            assert_eq!(d.adds.len(), 5000);
            assert!(
                matches!(d.removed, replikativ_peer::proto::Removed::Dots { dots, .. } if dots.len() == 1)
            );
        }
        other => panic!("expected dots, got {other:?}"),
    }
}

/// OR-Map catch-up by dots sends exactly the entries the other side lacks (a peer sends them as a
/// stream of batches; see `bounded_catch_up.rs`).
#[test]
fn ormap_catch_up_sends_exactly_the_entries_the_other_lacks() {
    let base = ormap(0..4000, 1);
    let mut a = base.clone();
    let mut b = base;
    // B adds three keys and removes one; A adds two other keys.
    for i in 0..3 {
        b.assoc(
            Value::from(format!("b{i}")),
            vec![Transaction::new("set", i)],
            ActorId::from_u128(2),
            "b",
            2,
        )
        .unwrap();
    }
    b.dissoc(&Value::from("k7"), vec![], "b", 3).unwrap();
    for i in 0..2 {
        a.assoc(
            Value::from(format!("a{i}")),
            vec![Transaction::new("set", i)],
            ActorId::from_u128(3),
            "a",
            2,
        )
        .unwrap();
    }
    let (mut a, mut b) = (CrdtState::Ormap(a), CrdtState::Ormap(b));
    assert_eq!(a.compare(&a.summary(), true), (None, false), "nothing lacks itself");
    let sent = exchange(&mut a, &mut b);
    assert_eq!(a, b, "converged");
    let CrdtState::Ormap(m) = &a else { unreachable!() };
    assert!(m.get(&Value::from("b2")).len() == 1 && m.get(&Value::from("a1")).len() == 1);
    assert!(m.get(&Value::from("k7")).is_empty(), "the removal arrived");
    // Exactly the difference: B's three adds and one removal, A's two adds.
    assert_eq!(sent, 6, "entries sent of a {}-entry state", a.size());
}

#[test]
fn gset_catch_up_sends_only_the_differing_buckets() {
    let mut a = GSet::default();
    for i in 0..3000 {
        a.add(Value::from(i)).unwrap();
    }
    let mut b = a.clone();
    b.add(Value::from("only in b")).unwrap();
    a.add(Value::from("only in a")).unwrap();
    let (mut a, mut b) = (CrdtState::Gset(a), CrdtState::Gset(b));
    let sent = exchange(&mut a, &mut b);
    assert_eq!(a, b);
    assert!(sent > 0 && sent < 2 * 40, "sent {sent} elements of 3000");
}

#[test]
fn a_bucket_summary_of_the_wrong_length_gets_the_whole_state() {
    let a = CrdtState::Gset(gset(2000));
    let bogus = Summary::Buckets(serde_bytes::ByteBuf::from(vec![0u8; 17]));
    let (op, lacks) = a.compare(&bogus, true);
    assert!(!lacks);
    assert_eq!(op.map(|o| o.len()), Some(2000));
}

/// What a peer holding a 10-element G-Set (bucketed above 2 entries) sends in its `sync` to a remote
/// whose hello announces `features`.
fn summary_sent_to(features: Vec<String>) -> Summary {
    use replikativ_crdt::{Address, CrdtKind};
    use replikativ_peer::proto::{
        Command, Direction, Hello, Input, Message, Output, PROTOCOL_VERSION, Peer, PeerConfig, Subscribe,
    };
    use std::collections::BTreeSet;
    use std::sync::Arc;

    let store: Arc<dyn replikativ_store::Store> = Arc::new(replikativ_store::MemoryStore::new());
    let config = PeerConfig { bucketed_above: 2, anti_entropy: None, ..PeerConfig::default() };
    let mut peer = Peer::open(store.clone(), "p", true, ActorId::from_u128(1), config).unwrap();
    let x = Address::new("mail:a@example.org", uuid::Uuid::from_u128(1)).unwrap();
    let mut inputs = vec![Input::Command {
        id: 1,
        cmd: Command::Create { address: x.clone(), kind: CrdtKind::Gset, author: "a".into() },
    }];
    for i in 0..10 {
        inputs.push(Input::Command {
            id: 2 + i,
            cmd: Command::GsetAdd { address: x.clone(), element: Value::from(i as i64) },
        });
    }
    for o in peer.handle_batch(inputs, 1) {
        if let Output::Barrier { epoch } = o {
            store.sync().unwrap();
            peer.handle(Input::BarrierDone { epoch }, 1);
        }
    }
    peer.handle(Input::Connected { conn: 9, direction: Direction::Inbound }, 1);
    let hello = Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: "r".into(), features });
    peer.handle(Input::Received { conn: 9, frame: hello.encode() }, 1);
    let sub = Message::Subscribe(Subscribe { id: 1, addresses: BTreeSet::from([x.clone()]), extend: false });
    let out = peer.handle(Input::Received { conn: 9, frame: sub.encode() }, 1);
    out.into_iter()
        .find_map(|o| match o {
            Output::Send { msg: Message::Summaries { mut summaries, .. }, .. } => {
                summaries.pop().map(|(_, s)| s)
            }
            _ => None,
        })
        .expect("a sync with the map's summary")
}

#[test]
fn bucket_summaries_go_only_to_peers_that_announce_them() {
    assert!(matches!(summary_sent_to(vec!["buckets".into()]), Summary::Buckets(_)));
    assert!(matches!(summary_sent_to(vec![]), Summary::Digest(_)), "an older peer gets a digest");
}
