//! TLS and authentication together (issue 16): over `wss://` the authentication handshake is
//! bound to the TLS session's exporter. Two nodes that trust each other replicate over `wss://`;
//! a client with a user key runs commands over `wss://`; a client that completes TLS but signs a
//! transcript with another exporter (what a TLS-terminating proxy in the middle would produce) is
//! refused and counted.

mod common;

use std::sync::Arc;

use common::certs;
use common::{Backend, bounded, config, eventually, open_store};
use futures::{SinkExt, StreamExt};
use replikativ::crdt::{Transaction, Value};
use replikativ::peer::auth::{AuthPolicy, Handshake, Identity, Progress, SecretKey};
use replikativ::peer::client::RemoteClient;
use replikativ::peer::node::tls::{ClientTls, ServerTls, connect_stream};
use replikativ::peer::node::{NodeAuth, NodeConfig};
use replikativ::peer::proto::{Command, Direction, Refusal};
use replikativ::peer::stage::Stage;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

fn trusting(node: &SecretKey, other: &SecretKey) -> NodeAuth {
    let mut policy = AuthPolicy::default();
    policy.trusted.insert(other.public());
    NodeAuth { node_key: node.clone(), user: None, policy: Arc::new(policy), caps: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_over_wss_is_bound_to_the_tls_session() {
    let certs = certs::make();
    let client_tls = ClientTls::with_ca_pem(certs.ca.as_bytes()).unwrap();
    let (alice, ka, kb) = (key(1), key(20), key(21));
    let dir = tempfile::tempdir().unwrap();
    let cfg_a = NodeConfig { auth: Some(trusting(&ka, &kb)), remote_commands: true, ..config("a") };
    let a = bounded(
        "spawn a",
        Stage::builder(open_store(Backend::File, dir.path()))
            .user(alice.public().user_id())
            .config(cfg_a)
            .spawn(),
    )
    .await
    .unwrap();
    let server = ServerTls::from_pem(certs.cert.as_bytes(), certs.key.as_bytes()).unwrap();
    let addr = bounded("listen", a.node().listen_tls("127.0.0.1:0", server)).await.unwrap();
    let url = format!("wss://localhost:{}", addr.port());
    let map = bounded("create", a.create_ormap(None)).await.unwrap();
    bounded("assoc", a.assoc(&map, Value::from("k"), vec![Transaction::new("set", 1)])).await.unwrap();

    // B, trusted by A, dials over wss: both ends sign the same exporter, and the private map flows.
    let cfg_b =
        NodeConfig { auth: Some(trusting(&kb, &ka)), client_tls: Some(client_tls.clone()), ..config("b") };
    let b_dir = tempfile::tempdir().unwrap();
    let b = bounded("spawn b", Stage::builder(open_store(Backend::File, b_dir.path())).config(cfg_b).spawn())
        .await
        .unwrap();
    bounded("subscribe", b.subscribe([map.clone()])).await.unwrap();
    bounded("connect", b.node().connect(&url)).await.unwrap();
    eventually("B replicates A's private map over wss", || {
        let (b, map) = (b.clone(), map.clone());
        async move { b.get(&map, &Value::from("k")).await.is_ok_and(|v| v.len() == 1) }
    })
    .await;

    // The owner's key over wss: its commands run as alice.
    let mut client = bounded("client", RemoteClient::open(&url, "cli", &client_tls, Some(&alice)))
        .await
        .expect("authenticates");
    assert!(client.channel_binding().is_tls());
    let reply = bounded("read", client.call(Command::Read { address: map.clone() })).await.unwrap();
    assert!(reply.is_ok(), "the owner reads its private map over wss: {reply:?}");
    bounded("close", client.close()).await;
    // Anonymous over wss: authenticated, but the private map is not readable.
    let mut anonymous = bounded("client", RemoteClient::open(&url, "cli", &client_tls, None)).await.unwrap();
    let reply = bounded("read", anonymous.call(Command::Read { address: map.clone() })).await.unwrap();
    assert!(reply.is_err(), "an anonymous client read a private map: {reply:?}");
    bounded("close", anonymous.close()).await;

    // A client that completes TLS but binds its proof to zeros (as if TLS ended at a proxy).
    let before = bounded("status", a.node().status()).await.unwrap().refusals.get(Refusal::AuthFailed);
    let (stream, binding) = bounded("tls", connect_stream(&url, &client_tls)).await.unwrap();
    assert!(binding.is_tls() && binding.exporter() != &[0u8; 32]);
    let (mut ws, _) = bounded("ws", tokio_tungstenite::client_async(url.as_str(), stream)).await.unwrap();
    let identity = Identity { node: SecretKey::generate().unwrap(), user: Some(alice.clone()) };
    let (mut hs, hello) = Handshake::start(Direction::Outbound, identity, [0; 32]).unwrap();
    let server_hello = loop {
        match bounded("auth-hello", ws.next()).await {
            Some(Ok(WsMessage::Binary(b))) => break b.to_vec(),
            Some(Ok(_)) => continue,
            other => panic!("no auth-hello: {other:?}"),
        }
    };
    let Progress::Send(proof) = hs.receive(&server_hello).expect("a valid auth-hello") else { panic!() };
    ws.send(WsMessage::Binary(hello.into())).await.unwrap();
    ws.send(WsMessage::Binary(proof.into())).await.unwrap();
    // The node's proof does not verify against the zeros either, and the node closes.
    let mut node_proof_verified = false;
    let mut closed = None;
    while let Some(frame) = bounded("the node's answer", ws.next()).await {
        match frame {
            Ok(WsMessage::Binary(b)) => node_proof_verified |= hs.receive(&b).is_ok(),
            Ok(WsMessage::Close(f)) => {
                closed = Some(f.map(|f| f.reason.to_string()).unwrap_or_default());
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(!node_proof_verified, "a proof over another exporter verified");
    let reason = closed.expect("the node closes with a reason");
    assert!(reason.contains(Refusal::AuthFailed.as_str()), "{reason}");
    eventually("the refused handshake is counted", || {
        let a = a.clone();
        async move { a.node().status().await.is_ok_and(|s| s.refusals.get(Refusal::AuthFailed) > before) }
    })
    .await;
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}
