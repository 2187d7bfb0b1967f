//! Authentication and read access over real websockets (issue K): the handshake, the gate's read
//! and write rules, and what an unauthorized client can learn (nothing about a private address).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, bounded, config, eventually, spawn_with};
use futures::{SinkExt, StreamExt};
use replikativ::crdt::{Address, GSetOp, Transaction, Value};
use replikativ::peer::auth::{AuthPolicy, Handshake, Identity, Progress, SecretKey};
use replikativ::peer::node::NodeAuth;
use replikativ::peer::proto::{
    AnyOp, CloseReason, Direction, Hello, Message, PROTOCOL_VERSION, Publish, Refusal, Subscribe, Summary,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

fn auth(node: u8, user: Option<SecretKey>, policy: AuthPolicy) -> NodeAuth {
    NodeAuth { node_key: key(node), user, policy: Arc::new(policy), caps: Vec::new() }
}

async fn open(url: &str) -> Ws {
    bounded("connect", tokio_tungstenite::connect_async(url)).await.expect("connects").0
}

/// The next binary frame (or the close reason, as `Err`), bounded.
async fn next(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match bounded("a frame", ws.next()).await {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(WsMessage::Close(f))) => return Err(f.map(|f| f.reason.to_string()).unwrap_or_default()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("ended".into()),
        }
    }
}

/// Runs the client side of the handshake, proving `user`; returns the frames it sent.
async fn authenticate(ws: &mut Ws, user: Option<SecretKey>) -> (Vec<u8>, Vec<u8>) {
    let identity = Identity { node: SecretKey::generate().unwrap(), user };
    let (mut hs, hello) = Handshake::start(Direction::Outbound, identity, [0; 32]).unwrap();
    let server_hello = next(ws).await.expect("the node opens with auth-hello");
    let Progress::Send(proof) = hs.receive(&server_hello).expect("a valid auth-hello") else { panic!() };
    ws.send(WsMessage::Binary(hello.clone().into())).await.unwrap();
    ws.send(WsMessage::Binary(proof.clone().into())).await.unwrap();
    let done = hs.receive(&next(ws).await.expect("the node's proof")).expect("the node's proof verifies");
    assert!(matches!(done, Progress::Done(_)));
    (hello, proof)
}

async fn send(ws: &mut Ws, msg: Message) {
    bounded("send", ws.send(WsMessage::Binary(msg.encode().into()))).await.unwrap();
}

/// Every binary frame that arrives until none came for 800 ms (pings do not count), at most 5 s.
async fn drain(ws: &mut Ws) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut quiet = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(quiet.min(end), ws.next()).await {
        if let WsMessage::Binary(b) = m {
            frames.push(b.to_vec());
            quiet = tokio::time::Instant::now() + Duration::from_millis(800);
        }
    }
    frames
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hello() -> Message {
    Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: "client".into(), features: vec![] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_client_learns_nothing_of_a_private_address() {
    let alice = key(1);
    let eve = key(9);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut cfg = config("server");
    let mut policy = AuthPolicy::default();
    // The server's own stage writes as alice (a local stage is not gated).
    cfg.auth = Some(auth(2, None, AuthPolicy::default()));
    let store = common::open_store(Backend::File, dir.path());
    let server = bounded(
        "spawn",
        replikativ::peer::stage::Stage::builder(store)
            .user(alice.public().user_id())
            .config(cfg.clone())
            .spawn(),
    )
    .await
    .unwrap();
    let private = bounded("create", server.create_ormap(None)).await.unwrap();
    let public = bounded("create", server.create_ormap(None)).await.unwrap();
    // A param over 64 KiB travels by id: its id is exactly what an attacker would try to fetch.
    let big = Value::Bytes(vec![7; 100_000]);
    bounded(
        "assoc",
        server.assoc(&private, Value::from("secret"), vec![Transaction::new("set", big.clone())]),
    )
    .await
    .unwrap();
    bounded("assoc", server.assoc(&public, Value::from("hello"), vec![Transaction::new("set", 1)]))
        .await
        .unwrap();
    let secret = bounded("get", server.get(&private, &Value::from("secret"))).await.unwrap();
    let known_ids = vec![secret[0].id, big.content_id()];
    bounded("shutdown", server.shutdown()).await;
    // Restart with the public address made public.
    policy.public.insert(public.clone());
    cfg.auth = Some(auth(2, None, policy));
    let server = spawn_with("server", Backend::File, dir.clone(), cfg.clone()).await;

    let mut ws = open(&server.url()).await;
    authenticate(&mut ws, Some(eve.clone())).await;
    send(&mut ws, hello()).await;
    send(
        &mut ws,
        Message::Subscribe(Subscribe {
            id: 1,
            addresses: BTreeSet::from([private.clone(), public.clone()]),
            extend: false,
        }),
    )
    .await;
    send(
        &mut ws,
        Message::Summaries {
            summaries: vec![(private.clone(), Summary::Empty), (public.clone(), Summary::Empty)],
            reply: false,
        },
    )
    .await;
    send(&mut ws, Message::Fetch { id: 7, ids: known_ids.clone() }).await;
    let frames = drain(&mut ws).await;
    let decoded: Vec<Message> = frames.iter().map(|f| Message::decode(f).expect("frames decode")).collect();
    assert!(
        decoded.iter().any(|m| m.written().is_some_and(|(_, a)| *a == public)),
        "the public address replicates to any authenticated client: {decoded:?}"
    );
    let id = private.id.as_bytes();
    let text = private.id.to_string();
    for (frame, msg) in frames.iter().zip(&decoded) {
        assert!(
            !contains(frame, id) && !contains(frame, text.as_bytes()),
            "the private address leaked: {msg:?}"
        );
        for known in &known_ids {
            if let Message::FetchReply { values, .. } = msg {
                assert!(values.is_empty(), "a fetch by content id returned values: {msg:?}");
            }
            assert!(
                matches!(msg, Message::FetchReply { .. }) || !contains(frame, known.as_bytes()),
                "a private id leaked: {msg:?}"
            );
        }
    }
    let reply = decoded.iter().find_map(|m| match m {
        Message::FetchReply { id: 7, missing, values } => Some((missing.clone(), values.len())),
        _ => None,
    });
    assert_eq!(reply, Some((known_ids.clone(), 0)), "the fetch is answered as if the ids were unknown");

    // Alice's own node, proving her key, replicates the private address.
    let mut cfg_a = config("alice-node");
    cfg_a.auth = Some(auth(3, Some(alice.clone()), AuthPolicy::default()));
    let alices =
        spawn_with("alice-node", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg_a).await;
    bounded("subscribe", alices.stage.subscribe([private.clone()])).await.unwrap();
    common::link(&alices, &server).await;
    eventually("alice's node has her private map", || {
        let stage = alices.stage.clone();
        let private = private.clone();
        async move { stage.get(&private, &Value::from("secret")).await.is_ok_and(|v| v.len() == 1) }
    })
    .await;
    let status = bounded("status", server.stage.node().status()).await.unwrap();
    assert!(status.refusals.get(Refusal::Forbidden) >= 1, "{:?}", status.refusals);
    assert!(status.refusals.get(Refusal::FetchNotOffered) >= 1, "{:?}", status.refusals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_another_users_address_are_refused_and_the_owners_accepted() {
    let alice = key(1);
    let mallory = key(8);
    let mut cfg = config("server");
    cfg.auth = Some(auth(2, None, AuthPolicy::default()));
    let server = spawn_with("server", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    let set = Address::new(alice.public().user_id(), uuid::Uuid::from_u128(5)).unwrap();
    bounded("subscribe", server.stage.subscribe([set.clone()])).await.unwrap();
    let publish = |id, element: &str| {
        Message::Publish(Publish {
            id,
            address: set.clone(),
            op: AnyOp::Gset(GSetOp { elements: BTreeSet::from([Value::from(element)]) }),
            values: vec![],
            catch_up: false,
        })
    };
    let subscribe =
        Message::Subscribe(Subscribe { id: 1, addresses: BTreeSet::from([set.clone()]), extend: false });

    let mut ws = open(&server.url()).await;
    authenticate(&mut ws, Some(mallory)).await;
    send(&mut ws, hello()).await;
    send(&mut ws, subscribe.clone()).await;
    send(&mut ws, publish(10, "forged")).await;
    let replies: Vec<Message> = drain(&mut ws).await.iter().map(|f| Message::decode(f).unwrap()).collect();
    let refused = replies.iter().find_map(|m| match m {
        Message::Refused { id: 10, reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(refused.as_deref().is_some_and(|r| r.starts_with("forbidden")), "{replies:?}");
    assert!(
        !replies.iter().any(|m| m.written().is_some()),
        "mallory may not read alice's set either: {replies:?}"
    );

    let mut ws = open(&server.url()).await;
    authenticate(&mut ws, Some(alice)).await;
    send(&mut ws, hello()).await;
    send(&mut ws, subscribe).await;
    send(&mut ws, publish(11, "mine")).await;
    let replies: Vec<Message> = drain(&mut ws).await.iter().map(|f| Message::decode(f).unwrap()).collect();
    assert!(replies.iter().any(|m| matches!(m, Message::PublishAck { id: 11 })), "{replies:?}");
    let elements = bounded("elements", server.stage.elements(&set)).await.unwrap();
    assert_eq!(elements, BTreeSet::from([Value::from("mine")]), "only the owner's write is in the set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_fails_and_a_client_that_skips_it_is_closed() {
    let mut cfg = config("server");
    cfg.auth = Some(auth(2, None, AuthPolicy::default()));
    let server = spawn_with("server", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg).await;

    // Speaking the protocol without authenticating first.
    let mut ws = open(&server.url()).await;
    let _server_hello = next(&mut ws).await.unwrap();
    send(&mut ws, hello()).await;
    let closed = loop {
        match next(&mut ws).await {
            Ok(_) => continue,
            Err(reason) => break reason,
        }
    };
    assert_eq!(CloseReason::parse(&closed).refusal, Some(Refusal::AuthRequired), "{closed}");

    // A recorded session replayed on a new connection: the node's fresh nonce makes the old
    // proof worthless.
    let mut ws = open(&server.url()).await;
    let (hello_frame, proof_frame) = authenticate(&mut ws, Some(key(1))).await;
    let mut replay = open(&server.url()).await;
    let _ = next(&mut replay).await.unwrap();
    replay.send(WsMessage::Binary(hello_frame.into())).await.unwrap();
    replay.send(WsMessage::Binary(proof_frame.into())).await.unwrap();
    let closed = loop {
        match next(&mut replay).await {
            Ok(_) => continue,
            Err(reason) => break reason,
        }
    };
    assert_eq!(CloseReason::parse(&closed).refusal, Some(Refusal::AuthFailed), "{closed}");
    let status = bounded("status", server.stage.node().status()).await.unwrap();
    assert!(status.refusals.get(Refusal::AuthRequired) >= 1, "{:?}", status.refusals);
    assert!(status.refusals.get(Refusal::AuthFailed) >= 1, "{:?}", status.refusals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_trust_each_other_replicate_a_private_address_and_others_get_nothing() {
    let alice = key(1);
    let (ka, kb) = (key(20), key(21));
    let trusting = |other: &SecretKey| {
        let mut p = AuthPolicy::default();
        p.trusted.insert(other.public());
        p
    };
    let mut cfg_a = config("a");
    cfg_a.auth = Some(NodeAuth {
        node_key: ka.clone(),
        user: None,
        policy: Arc::new(trusting(&kb)),
        caps: Vec::new(),
    });
    let mut cfg_b = config("b");
    cfg_b.auth = Some(NodeAuth {
        node_key: kb.clone(),
        user: None,
        policy: Arc::new(trusting(&ka)),
        caps: Vec::new(),
    });
    let store = common::open_store(Backend::Memory, std::path::Path::new("."));
    let a = bounded(
        "spawn a",
        replikativ::peer::stage::Stage::builder(store).user(alice.public().user_id()).config(cfg_a).spawn(),
    )
    .await
    .unwrap();
    let a_addr = bounded("listen", a.node().listen("127.0.0.1:0")).await.unwrap();
    let b = spawn_with("b", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg_b).await;
    let map = bounded("create", a.create_ormap(None)).await.unwrap();
    bounded("assoc", a.assoc(&map, Value::from("k"), vec![Transaction::new("set", 1)])).await.unwrap();
    // C authenticates too, but A does not trust it: it may not read alice's map.
    let mut cfg_c = config("c");
    cfg_c.auth = Some(auth(22, None, AuthPolicy::default()));
    let c = spawn_with("c", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg_c).await;
    for peer in [&b, &c] {
        bounded("subscribe", peer.stage.subscribe([map.clone()])).await.unwrap();
        bounded("connect", peer.stage.node().connect(&format!("ws://{a_addr}"))).await.unwrap();
    }
    eventually("b replicates alice's map through the trusted link", || {
        let stage = b.stage.clone();
        let map = map.clone();
        async move { stage.get(&map, &Value::from("k")).await.is_ok_and(|v| v.len() == 1) }
    })
    .await;
    // C is linked (the handshake passed and hellos were exchanged), and several anti-entropy
    // rounds (300 ms) later it still has nothing.
    eventually("C is linked to A", || async {
        common::peer_conns(&c).await.iter().any(|(_, id)| id.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_c = bounded("get", c.stage.get(&map, &Value::from("k"))).await;
    assert!(at_c.is_err(), "an untrusted node read a private map: {at_c:?}");
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_capability_lets_its_grantee_read_until_it_expires() {
    use replikativ::peer::auth::ReadCap;
    use replikativ::peer::auth::cap::{caps_message, wall_ms};
    let alice = key(1);
    let eve = key(9);
    let mut cfg = config("server");
    cfg.auth = Some(auth(2, None, AuthPolicy::default()));
    let store = common::open_store(Backend::Memory, std::path::Path::new("."));
    let server = bounded(
        "spawn",
        replikativ::peer::stage::Stage::builder(store).user(alice.public().user_id()).config(cfg).spawn(),
    )
    .await
    .unwrap();
    let addr = bounded("listen", server.node().listen("127.0.0.1:0")).await.unwrap();
    let url = format!("ws://{addr}");
    let map = bounded("create", server.create_ormap(None)).await.unwrap();
    bounded("assoc", server.assoc(&map, Value::from("one"), vec![Transaction::new("set", 1)])).await.unwrap();
    let subscribe =
        Message::Subscribe(Subscribe { id: 1, addresses: BTreeSet::from([map.clone()]), extend: false });
    // Whether a batch of the map with this key arrived.
    let carries = |frames: &[Vec<u8>], key: &str| {
        frames.iter().any(|f| match Message::decode(f) {
            Ok(Message::Batch(b)) if b.address == map => {
                match replikativ::peer::proto::batch::decode(&b.data).expect("batches decode").op {
                    AnyOp::Ormap(op) => op.adds.iter().any(|e| e.key == Value::from(key)),
                    _ => false,
                }
            }
            _ => false,
        })
    };
    let sync = Message::Summaries { summaries: vec![(map.clone(), Summary::Empty)], reply: false };

    // A cap eve signed herself (valid, but she owns nothing of alice's), alice's cap for another
    // key, the same with eve put in as the grantee, and an expired one: nothing flows.
    let own = ReadCap::issue(&eve, eve.public(), BTreeSet::from([map.clone()]), wall_ms() + 60_000);
    let not_hers = ReadCap::issue(&alice, key(7).public(), BTreeSet::new(), wall_ms() + 60_000);
    let forged = ReadCap { grantee: eve.public(), ..not_hers.clone() };
    let expired = ReadCap::issue(&alice, eve.public(), BTreeSet::new(), wall_ms() - 1);
    let mut ws = open(&url).await;
    authenticate(&mut ws, Some(eve.clone())).await;
    send(&mut ws, hello()).await;
    send(&mut ws, caps_message(&[own, not_hers, forged, expired])).await;
    send(&mut ws, subscribe.clone()).await;
    send(&mut ws, sync.clone()).await;
    let frames = drain(&mut ws).await;
    let errors: Vec<String> = frames
        .iter()
        .filter_map(|f| match Message::decode(f) {
            Ok(Message::Error { reason }) => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("does not verify") && e.contains("not for this") && e.contains("expired")),
        "{errors:?}"
    );
    assert!(!carries(&frames, "one"), "the map flowed without a valid cap");

    // A cap alice issued to eve for 3 s: the map flows, then, once it expired, new entries stop
    // without a reconnect.
    let until = wall_ms() + 4_000;
    let cap = ReadCap::issue(&alice, eve.public(), BTreeSet::from([map.clone()]), until);
    let mut ws = open(&url).await;
    authenticate(&mut ws, Some(eve.clone())).await;
    send(&mut ws, hello()).await;
    send(&mut ws, caps_message(&[cap])).await;
    send(&mut ws, subscribe).await;
    send(&mut ws, sync).await;
    // (Anti-entropy keeps the connection busy: read until the frame that matters, bounded.)
    let until_key = async |ws: &mut Ws, key: &str| {
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut seen = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, ws.next()).await {
            if let WsMessage::Binary(b) = m {
                seen.push(b.to_vec());
                if carries(&seen[seen.len() - 1..], key) {
                    return true;
                }
            }
        }
        false
    };
    assert!(until_key(&mut ws, "one").await, "the cap's holder gets the map");
    bounded("assoc", server.assoc(&map, Value::from("two"), vec![Transaction::new("set", 2)])).await.unwrap();
    assert!(until_key(&mut ws, "two").await, "live changes reach the cap's holder");
    tokio::time::sleep(Duration::from_millis(until.saturating_sub(wall_ms()) + 200)).await;
    bounded("assoc", server.assoc(&map, Value::from("three"), vec![Transaction::new("set", 3)]))
        .await
        .unwrap();
    assert!(!until_key(&mut ws, "three").await, "a change reached the holder of an expired cap");
    bounded("shutdown", server.shutdown()).await;
}
