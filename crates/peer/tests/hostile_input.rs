//! Hostile input the core must refuse before anything is acknowledged, stored or relayed (issue
//! F): addresses that could never be stored, frames with junk after a valid envelope, forged
//! clocks and dots, unbounded subscriptions and queues, publications for addresses a connection
//! did not subscribe to; and stores holding records an older version wrote from such input, which
//! must still open. Same hand-driven world as `bad_input.rs`.

mod world;

use std::collections::BTreeSet;
use std::sync::Arc;

use replikativ_peer::crdt::{
    ActorId, Address, CrdtKind, Dot, Hlc, LwwOp, MAX_DOT_COUNTER, OrEntry, OrMapOp, Transaction, Value,
};
use replikativ_peer::proto::{
    AnyOp, Command, CrdtState, Hello, Message, PROTOCOL_VERSION, Peer, PeerConfig, Publish,
    QUARANTINE_PREFIX, Refusal, StageError, Subscribe,
};
use replikativ_peer::store::{Batch, MemoryStore, Store};
use serde::Serialize;
use serde_bytes::ByteBuf;
use uuid::Uuid;
use world::*;

/// An address as an attacker encodes it: any user, checked by nobody.
#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct RawAddress<'a> {
    user: &'a str,
    id: Uuid,
}

#[derive(Serialize)]
struct RawSubscribe<'a> {
    id: u64,
    addresses: Vec<RawAddress<'a>>,
    extend: bool,
}

#[derive(Serialize)]
struct RawPublish<'a> {
    id: u64,
    address: RawAddress<'a>,
    op: AnyOp,
    values: Vec<ByteBuf>,
}

fn publish(id: u64, address: &Address, op: AnyOp, values: Vec<ByteBuf>) -> Message {
    Message::Publish(Publish { id, address: address.clone(), op, values, catch_up: false })
}

/// The fake subscribes to `extra` besides the world's two addresses.
fn subscribe_fake(w: &mut World, extra: &[&Address]) {
    let mut addresses = BTreeSet::from([w.x.clone(), w.w.clone()]);
    addresses.extend(extra.iter().map(|a| (*a).clone()));
    let seen = w.send(FAKE, &Message::Subscribe(Subscribe { id: 70, addresses, extend: false }));
    assert!(seen.contains(&Seen::Msg(Message::SubscribeAck { id: 70 })), "{seen:?}");
}

#[test]
fn an_address_with_an_empty_user_is_a_malformed_frame_in_subscribe_and_publish() {
    for (kind, body) in [
        (
            "subscribe",
            rmp_serde::to_vec_named(&RawSubscribe {
                id: 1,
                addresses: vec![RawAddress { user: "", id: Uuid::from_u128(5) }],
                extend: false,
            })
            .unwrap(),
        ),
        (
            "publish",
            rmp_serde::to_vec_named(&RawPublish {
                id: 1,
                address: RawAddress { user: "", id: Uuid::from_u128(5) },
                op: AnyOp::Ormap(OrMapOp::default()),
                values: vec![],
            })
            .unwrap(),
        ),
    ] {
        let mut w = world();
        let before = w.snapshot();
        let seen = w.deliver(FAKE, envelope(replikativ_peer::proto::PROTOCOL_VERSION, kind, body));
        w.assert_closed(FAKE, &seen, &["malformed", "empty user"]);
        assert_eq!(w.snapshot(), before, "nothing of the {kind} was kept");
        assert_eq!(w.p().refusals().get(Refusal::MalformedFrame), 1);
        w.assert_healthy();
    }
}

#[test]
fn trailing_bytes_after_a_valid_envelope_or_body_close_the_connection() {
    let mut w = world();
    let before = w.snapshot();
    let (op, values) = fake_assoc("t", 1);
    let msg = publish(1, &w.x.clone(), AnyOp::Ormap(op), inline(&values));
    let mut frame = msg.encode();
    frame.extend_from_slice(&[0xc0, 0xc0]);
    let seen = w.deliver(FAKE, frame);
    w.assert_closed(FAKE, &seen, &["malformed frame", "trailing"]);
    assert_eq!(w.snapshot(), before);

    // Junk after the body, inside a valid envelope.
    let mut w = world();
    let before = w.snapshot();
    let mut body = rmp_serde::to_vec_named(&Publish {
        id: 1,
        address: w.x.clone(),
        op: AnyOp::Ormap(fake_assoc("t", 1).0),
        values: vec![],
        catch_up: false,
    })
    .unwrap();
    body.push(0x01);
    let seen = w.deliver(FAKE, envelope(replikativ_peer::proto::PROTOCOL_VERSION, "publish", body));
    w.assert_closed(FAKE, &seen, &["malformed publish", "trailing"]);
    assert_eq!(w.snapshot(), before);
    w.assert_healthy();
}

#[test]
fn a_publication_for_an_address_the_connection_did_not_subscribe_to_is_refused() {
    let mut w = world();
    // P holds and subscribes to G; the fake never asked for it.
    let g = address(40);
    w.ok(P, Command::Create { address: g.clone(), kind: CrdtKind::Gset, author: "p".into() });
    let before = w.snapshot();
    let op = AnyOp::Gset(replikativ_peer::crdt::GSetOp { elements: BTreeSet::from([Value::from("junk")]) });
    let seen = w.send(FAKE, &publish(5, &g, op.clone(), vec![]));
    match seen.as_slice() {
        [Seen::Msg(Message::Refused { id: 5, reason })] => {
            assert!(reason.contains("did not subscribe") && reason.contains(&g.to_string()), "{reason:?}")
        }
        other => panic!("expected one Refused, got {other:?}"),
    }
    assert_eq!(w.snapshot(), before, "not stored");
    assert_eq!(w.p().refusals().get(Refusal::NotSubscribed), 1);
    // Once subscribed, the same publication is applied and acknowledged.
    subscribe_fake(&mut w, &[&g]);
    let seen = w.send(FAKE, &publish(6, &g, op, vec![]));
    assert!(seen.contains(&Seen::Msg(Message::PublishAck { id: 6 })), "{seen:?}");
    w.assert_healthy();
}

/// Bug 4: a forged LWW write with the largest stamp used to be acknowledged, and every later local
/// write silently lost against it.
#[test]
fn an_lww_stamp_far_in_the_future_is_refused_and_local_writes_keep_winning() {
    let mut w = world();
    let r = address(41);
    w.ok(P, Command::Create { address: r.clone(), kind: CrdtKind::Lww, author: "p".into() });
    subscribe_fake(&mut w, &[&r]);
    let before = w.snapshot();
    let forged = |wall_ms| {
        AnyOp::Lww(LwwOp {
            value: Value::from("forged"),
            stamp: Some(Hlc { wall_ms, counter: u32::MAX, actor: ActorId::from_bytes([0xff; 16]) }),
        })
    };
    // Eleven minutes ahead of P's clock (the world's clock is at a few thousand ms), and the end
    // of the range.
    for (id, wall) in [(1, w.now + 11 * 60 * 1000), (2, u64::MAX)] {
        let seen = w.send(FAKE, &publish(id, &r, forged(wall), vec![]));
        match seen.as_slice() {
            [Seen::Msg(Message::Refused { id: got, reason })] if *got == id => {
                assert!(reason.contains("ahead of this peer's clock"), "{reason:?}")
            }
            other => panic!("expected Refused for {id}, got {other:?}"),
        }
    }
    assert_eq!(w.snapshot(), before, "no forged stamp was stored");
    assert_eq!(w.p().refusals().get(Refusal::ClockSkew), 2);
    // A stamp within the skew is fine, and a local write after it still wins.
    let seen = w.send(FAKE, &publish(3, &r, forged(w.now + 60_000), vec![]));
    assert!(seen.contains(&Seen::Msg(Message::PublishAck { id: 3 })), "{seen:?}");
    w.ok(P, Command::LwwSet { address: r.clone(), value: Value::from("mine") });
    let Some(CrdtState::Lww(reg)) = w.state(P, &r) else { panic!("no register") };
    assert_eq!(reg.get(), &Value::from("mine"));
    w.assert_healthy();
}

/// A dot of P's own writer that P never made: a forgery (P is that writer's only replica).
#[test]
fn an_ormap_op_with_a_forged_dot_of_the_peers_own_writer_is_refused() {
    let mut w = world();
    let x = w.x.clone();
    let Some(CrdtState::Ormap(m)) = w.state(P, &x) else { panic!("no map") };
    let (key, own, commit) = m.add_tags().next().map(|(k, d, c)| (k.clone(), *d, *c)).expect("P's add");
    let before = w.snapshot();
    for (id, op) in [
        // The next counter of P's writer, and the last one allowed: P's next assoc would collide or fail.
        OrMapOp {
            adds: vec![OrEntry { key: "f".into(), dot: Dot::new(own.actor, 2), commit }],
            removals: vec![],
        },
        OrMapOp {
            adds: vec![OrEntry { key: "f".into(), dot: Dot::new(own.actor, MAX_DOT_COUNTER), commit }],
            removals: vec![],
        },
        // A removal naming a dot of P's writer that P never made.
        OrMapOp {
            adds: vec![],
            removals: vec![OrEntry { key: "f".into(), dot: Dot::new(own.actor, 9), commit }],
        },
    ]
    .into_iter()
    .enumerate()
    {
        let seen = w.send(FAKE, &publish(id as u64 + 1, &x, AnyOp::Ormap(op), vec![]));
        assert!(
            matches!(seen.as_slice(), [Seen::Msg(Message::Refused { reason, .. })] if reason.contains("never made")),
            "{seen:?}"
        );
    }
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.p().refusals().get(Refusal::ForgedDot), 3);
    w.assert_healthy();
    // A removal of P's real entry (a remote dissoc) is fine.
    let removal = OrMapOp { adds: vec![], removals: vec![OrEntry { key: key.clone(), dot: own, commit }] };
    let seen = w.send(FAKE, &publish(9, &x, AnyOp::Ormap(removal), vec![]));
    assert!(seen.contains(&Seen::Msg(Message::PublishAck { id: 9 })), "{seen:?}");
    let Some(CrdtState::Ormap(m)) = w.state(P, &x) else { panic!("no map") };
    assert!(m.get(&key).is_empty(), "the entry is removed");
}

#[test]
fn a_subscription_over_the_per_connection_limit_closes_and_changes_nothing() {
    let mut w = World::new(PeerConfig {
        anti_entropy: None,
        max_subscriptions_per_connection: 10,
        ..PeerConfig::default()
    });
    let before = w.snapshot();
    let addresses: BTreeSet<Address> = (1000..1011).map(address).collect();
    let seen = w.send(FAKE, &Message::Subscribe(Subscribe { id: 9, addresses, extend: true }));
    w.assert_closed(FAKE, &seen, &["11 addresses", "at most 10"]);
    assert_eq!(w.snapshot(), before, "nothing persisted");
    assert_eq!(w.p().refusals().get(Refusal::SubscriptionsPerConnection), 1);
    w.assert_healthy();
}

#[test]
fn subscriptions_beyond_the_total_limit_are_neither_stored_nor_forwarded() {
    // P holds X, W and the healthy peer's: room for 3 more.
    let mut w = World::new(PeerConfig { anti_entropy: None, max_subscriptions: 5, ..PeerConfig::default() });
    let held = w.p().subscriptions().len();
    assert_eq!(held, 2);
    let junk: BTreeSet<Address> = (2000..2010).map(address).collect();
    let mut addresses = junk.clone();
    addresses.extend([w.x.clone(), w.w.clone()]);
    let seen = w.send(FAKE, &Message::Subscribe(Subscribe { id: 9, addresses, extend: true }));
    assert!(seen.contains(&Seen::Msg(Message::SubscribeAck { id: 9 })), "{seen:?}");
    assert!(
        seen.iter().any(|s| matches!(s, Seen::Msg(Message::Error { reason }) if reason.contains("7 of the subscribed addresses"))),
        "{seen:?}"
    );
    assert_eq!(w.p().subscriptions().len(), 5, "at most max_subscriptions");
    assert_eq!(w.p().refusals().get(Refusal::SubscriptionsTotal), 7);
    // P took on 3 of the junk addresses, and the healthy peer holds nothing P did not take on.
    let taken: BTreeSet<Address> =
        w.p().subscriptions().iter().filter(|a| junk.contains(*a)).cloned().collect();
    assert_eq!(taken.len(), 3);
    let h = w.nodes[H].peer.subscriptions();
    assert!(h.iter().all(|a| !junk.contains(a) || taken.contains(a)), "forwarded beyond the limit: {h:?}");
    w.assert_healthy();
}

#[test]
fn queued_publications_holding_too_many_bytes_close_the_connection() {
    let mut w =
        World::new(PeerConfig { anti_entropy: None, max_queued_bytes: 4096, ..PeerConfig::default() });
    let x = w.x.clone();
    let before = w.snapshot();
    // The first publication lacks its values: P fetches them, and later ones wait behind it.
    let (op, _) = fake_assoc("head", 1);
    let seen = w.send(FAKE, &publish(1, &x, AnyOp::Ormap(op), vec![]));
    assert!(matches!(seen.as_slice(), [Seen::Msg(Message::Fetch { .. })]), "{seen:?}");
    let mut closed = None;
    for n in 2..40 {
        let mut m = replikativ_peer::crdt::OrMap::default();
        let big = Value::from("x".repeat(500));
        let staged = m
            .assoc(format!("k{n}").into(), vec![Transaction::new("set", big)], FAKE_ACTOR, "f", n)
            .expect("assoc");
        let seen = w.send(FAKE, &publish(n, &x, AnyOp::Ormap(staged.op), inline(&staged.values)));
        if seen.iter().any(|s| matches!(s, Seen::Closed(_))) {
            closed = Some((n, seen));
            break;
        }
    }
    let (n, seen) = closed.expect("the connection was closed");
    assert!(n > 2, "a few publications fit");
    w.assert_closed(FAKE, &seen, &["4096 bytes"]);
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.p().refusals().get(Refusal::QueuedBytes), 1);
    w.assert_healthy();
}

/// A store command naming an address built by hand with an empty user fails like one from the wire.
#[test]
fn a_stage_command_with_an_invalid_address_fails_and_stores_nothing() {
    let mut w = world();
    let before = w.snapshot();
    let bad = Address { user: String::new(), id: Uuid::from_u128(3) };
    let result = w.command(P, Command::Create { address: bad, kind: CrdtKind::Ormap, author: "p".into() });
    assert!(
        matches!(result, Err(StageError::InvalidAddress(ref e)) if e.contains("empty user")),
        "{result:?}"
    );
    assert_eq!(w.snapshot(), before);
}

/// Bug 1, the other half: a store that holds records an older version accepted (an empty user in
/// a key and in the subscriptions, a snapshot that does not decode, a bad op-log entry) opens; the
/// bad records are reported and moved aside, the good ones load.
#[test]
fn a_store_with_bad_records_opens_and_reports_them() {
    let store = Arc::new(MemoryStore::new());
    let good = address(1);
    {
        let mut peer =
            Peer::open(store.clone(), "p", true, ActorId::from_u128(1), PeerConfig::default()).unwrap();
        let out = peer.handle(
            replikativ_peer::proto::Input::Command {
                id: 1,
                cmd: Command::Create { address: good.clone(), kind: CrdtKind::Gset, author: "p".into() },
            },
            1,
        );
        assert!(out.iter().any(|o| matches!(o, replikativ_peer::proto::Output::Barrier { .. })));
    }
    let uuid = Uuid::from_u128(2);
    // What the old version stored for `{"user": "", ...}`: a key with an empty user, and the
    // address among the subscriptions.
    #[derive(Serialize)]
    struct OldRecord<'a> {
        id: &'a str,
        extend: bool,
        subscriptions: Vec<RawAddress<'a>>,
    }
    let record = rmp_serde::to_vec_named(&OldRecord {
        id: "p",
        extend: true,
        subscriptions: vec![RawAddress { user: "", id: uuid }, RawAddress { user: &good.user, id: good.id }],
    })
    .unwrap();
    let snapshot = store.get(format!("crdt/{}/{}", good.id, good.user).as_bytes()).unwrap().unwrap();
    let bad_key = format!("crdt/{uuid}/");
    let broken_key = format!("crdt/{}/mail:bob", Uuid::from_u128(3));
    store
        .apply(
            &Batch::new()
                .put(b"peer/config".as_slice(), record)
                .put(bad_key.as_bytes(), snapshot.clone())
                .put(broken_key.as_bytes(), b"\xc1 not msgpack".as_slice()),
        )
        .unwrap();
    replikativ_peer::proto::persist::append_raw_op(store.as_ref(), &good, b"\x93junk").unwrap();

    let peer = Peer::open(store.clone(), "p", true, ActorId::from_u128(2), PeerConfig::default())
        .expect("a store with bad records opens");
    assert!(matches!(peer.state(&good), Some(CrdtState::Gset(_))), "the good address loads");
    assert_eq!(peer.addresses().count(), 1);
    assert_eq!(peer.subscriptions().iter().collect::<Vec<_>>(), vec![&good]);
    let keys: Vec<&str> = peer.recovery().iter().map(|q| q.key.as_str()).collect();
    assert_eq!(peer.recovery().len(), 4, "{:#?}", peer.recovery());
    assert!(keys.iter().any(|k| k.contains("subscription \"\"")), "{keys:?}");
    assert!(keys.contains(&bad_key.as_str()), "{keys:?}");
    assert!(keys.contains(&broken_key.as_str()), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("log/o/")), "{keys:?}");
    // Moved aside: the originals are gone, their bytes kept under the quarantine prefix.
    assert_eq!(store.get(bad_key.as_bytes()).unwrap(), None);
    let mut moved = QUARANTINE_PREFIX.to_vec();
    moved.extend_from_slice(bad_key.as_bytes());
    assert_eq!(store.get(&moved).unwrap(), Some(snapshot));
    // The next open finds nothing more to report and holds the same.
    drop(peer);
    let again = Peer::open(store.clone(), "p", true, ActorId::from_u128(3), PeerConfig::default()).unwrap();
    assert_eq!(again.addresses().count(), 1);
    let reported: Vec<&str> = again.recovery().iter().map(|q| q.key.as_str()).collect();
    assert_eq!(
        reported.len(),
        1,
        "only the bad op-log entry is still there (pruned at the next snapshot): {reported:?}"
    );
}

/// A hello is checked like any other input: its peer id is shown in status and logs.
#[test]
fn a_hello_with_an_oversized_peer_id_or_too_many_features_closes_the_connection() {
    for (hello, needle) in [
        (Hello { version: PROTOCOL_VERSION, peer_id: "p".repeat(300), features: vec![] }, "300 bytes"),
        (Hello { version: PROTOCOL_VERSION, peer_id: "a\u{1b}[31m".into(), features: vec![] }, "control"),
        (
            Hello { version: PROTOCOL_VERSION, peer_id: "ok".into(), features: vec!["f".into(); 33] },
            "33 features",
        ),
    ] {
        let mut w = world();
        w.connect_fake(FRESH);
        let seen = w.send(FRESH, &Message::Hello(hello));
        let reason = w.assert_closed(FRESH, &seen, &[needle]);
        // The reason names the refusal in a form tools match on.
        assert_eq!(replikativ_peer::proto::CloseReason::parse(&reason).refusal, Some(Refusal::BadHello));
        assert_eq!(w.p().refusals().get(Refusal::BadHello), 1);
        w.assert_healthy();
    }
}
