//! Bad input on one connection: for each case the core closes that connection (a `Close` message
//! naming the problem, then `Output::Close`) or refuses the message (`Refused` / `Error`, the
//! connection kept), and the peer's states, its store and its other connections are unharmed.
//!
//! Every test runs the same world: a server peer `P` holding an OR-Map `X` and a CDVCS `W`, a
//! healthy client peer `H` connected to it and subscribed to both, and a fake remote driven by hand
//! on another connection of `P`, which sends the bad input.

mod world;

use std::collections::BTreeSet;

use replikativ_peer::crdt::cdvcs::{CdvcsMethod, GraphEntry};
use replikativ_peer::crdt::{Cdvcs, CdvcsOp, ContentId, GSetOp, Transaction, Value};
use replikativ_peer::proto::{
    AnyOp, CrdtState, FrameError, Hello, Message, PROTOCOL_VERSION, PeerConfig, Publish, Subscribe,
};
use serde_bytes::ByteBuf;
use world::*;

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
    let relayed = w.fake[&FAKE][before..].iter().any(|s| match s {
        Seen::Msg(Message::Batch(b)) if b.live && b.address == x => {
            let op = replikativ_peer::proto::batch::decode(&b.data).expect("a live batch decodes").op;
            matches!(&op, AnyOp::Ormap(o) if o.adds.iter().any(|e| e.key == "after-p".into()))
        }
        _ => false,
    });
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
                reason.contains("did not subscribe") && reason.contains(&z.to_string()),
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
