//! A raw websocket client for attacking a node from outside, and the setup the attacks share: a
//! server with a healthy client peer connected to it.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use replikativ::crdt::{Address, Transaction, Value};
use replikativ::peer::proto::{ConnId, Message};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Backend, TestPeer, bounded, eventually, link, peer_conns, spawn_peer, spawn_with};

pub type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound of each step of the raw client.
pub const STEP: Duration = Duration::from_secs(5);

/// The node's frame limit in these tests.
pub const MAX_FRAME: usize = 64 << 10;

/// The attacked server (64 KiB frame limit), a healthy client connected to it, and a shared map.
pub struct Setup {
    pub server: TestPeer,
    pub healthy: TestPeer,
    pub map: Address,
    /// The healthy client's connection id on its own node (must not change).
    pub healthy_conn: ConnId,
}

pub async fn setup() -> Setup {
    let mut cfg = super::config("server");
    cfg.ws.max_frame = MAX_FRAME;
    cfg.ws.max_message = MAX_FRAME;
    setup_with(cfg).await
}

/// [`setup`] with another server configuration.
pub async fn setup_with(cfg: replikativ::peer::node::NodeConfig) -> Setup {
    let server = spawn_with("server", Backend::File, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    let healthy = spawn_peer("healthy", Backend::File).await;
    let map = bounded("create", server.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", healthy.stage.subscribe([map.clone()])).await.unwrap();
    link(&healthy, &server).await;
    bounded("before", server.stage.assoc(&map, "before".into(), vec![Transaction::new("set", 0)]))
        .await
        .unwrap();
    eventually("the healthy peer replicates before the attack", || async {
        healthy.stage.get(&map, &Value::from("before")).await.is_ok_and(|v| v.len() == 1)
    })
    .await;
    let conns = peer_conns(&healthy).await;
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].1.as_deref(), Some(server.stage.node().peer_id()));
    Setup { healthy_conn: conns[0].0, server, healthy, map }
}

pub async fn raw_connect(peer: &TestPeer) -> Raw {
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(peer.url()))
        .await
        .expect("raw connect in time")
        .expect("raw connect");
    ws
}

/// What the node said before closing: reasons of `Message::Close` frames and of the websocket
/// close frame, and the kinds of the other messages.
#[derive(Debug, Default)]
pub struct Closing {
    pub kinds: Vec<String>,
    pub close_messages: Vec<String>,
    pub close_frame: Option<String>,
}

/// Reads until the node closes the connection (close frame, end of stream or a transport error).
pub async fn read_until_closed(ws: &mut Raw) -> Closing {
    let mut out = Closing::default();
    loop {
        let frame =
            tokio::time::timeout(STEP, ws.next()).await.expect("the node closes the connection in time");
        match frame {
            None | Some(Err(_)) => return out,
            Some(Ok(WsMessage::Binary(bytes))) => match Message::decode(&bytes) {
                Ok(Message::Close { reason }) => out.close_messages.push(reason),
                Ok(other) => out.kinds.push(other.kind().to_owned()),
                Err(e) => panic!("the node sent an undecodable frame: {e}"),
            },
            Some(Ok(WsMessage::Close(frame))) => {
                out.close_frame = Some(frame.map(|f| f.reason.to_string()).unwrap_or_default());
                return out;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Reads the node's hello (the first message on every connection).
pub async fn expect_hello(ws: &mut Raw) {
    let frame = tokio::time::timeout(STEP, ws.next()).await.expect("hello in time");
    match frame {
        Some(Ok(WsMessage::Binary(bytes))) => {
            assert!(matches!(Message::decode(&bytes), Ok(Message::Hello(_))), "first message is a hello")
        }
        other => panic!("expected the node's hello, got {other:?}"),
    }
}

/// Asserts the node closed the connection with a reason containing every one of `needles`, either
/// in the close frame or in a `Close` message before it.
pub fn assert_reason(closing: &Closing, needles: &[&str]) {
    let names = |r: &String| needles.iter().all(|n| r.to_lowercase().contains(&n.to_lowercase()));
    assert!(
        closing.close_frame.iter().chain(&closing.close_messages).any(names),
        "no close reason naming {needles:?}: {closing:?}"
    );
    assert!(closing.close_frame.is_some(), "the node sends a close frame: {closing:?}");
}

/// After the attack: the attacker's connection is gone from the server, the healthy client kept
/// its connection, a new edit on the server replicates to it, and the server still accepts.
pub async fn assert_still_serving(s: &Setup) {
    eventually("the server dropped only the attacker's connection", || async {
        let conns = peer_conns(&s.server).await;
        conns.len() == 1 && conns[0].1.as_deref() == Some(s.healthy.stage.node().peer_id())
    })
    .await;
    let after = bounded(
        "assoc after the attack",
        s.server.stage.assoc(&s.map, "after".into(), vec![Transaction::new("set", 1)]),
    )
    .await
    .unwrap();
    eventually("the healthy peer replicates an edit made after the attack", || async {
        s.healthy
            .stage
            .get(&s.map, &Value::from("after"))
            .await
            .is_ok_and(|v| v.len() == 1 && v[0].id == after)
    })
    .await;
    let conns = peer_conns(&s.healthy).await;
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].0, s.healthy_conn, "the healthy connection was not dropped and re-established");
    // New connections are still accepted and greeted.
    let mut again = raw_connect(&s.server).await;
    expect_hello(&mut again).await;
    let _ = tokio::time::timeout(STEP, again.close(None)).await;
    bounded("shutdown", s.healthy.stage.shutdown()).await;
    bounded("shutdown", s.server.stage.shutdown()).await;
}

pub async fn send(ws: &mut Raw, msg: WsMessage) {
    tokio::time::timeout(STEP, ws.send(msg)).await.expect("send in time").expect("send");
}

// A minimal msgpack writer, to build frames by hand exactly as the wire format specifies them.
pub fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

pub fn mp_uint(out: &mut Vec<u8>, n: u16) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.push(0xcd);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A hello frame: the envelope `{v, kind: "hello", body: bin(msgpack {version, peer_id,
/// features})}`.
pub fn hello_frame(envelope_version: u16, hello_version: u16, peer_id: &str) -> Vec<u8> {
    let mut body = vec![0x83];
    mp_str(&mut body, "version");
    mp_uint(&mut body, hello_version);
    mp_str(&mut body, "peer_id");
    mp_str(&mut body, peer_id);
    mp_str(&mut body, "features");
    body.push(0x90);
    let mut frame = vec![0x83];
    mp_str(&mut frame, "v");
    mp_uint(&mut frame, envelope_version);
    mp_str(&mut frame, "kind");
    mp_str(&mut frame, "hello");
    mp_str(&mut frame, "body");
    assert!(body.len() < 256);
    frame.push(0xc4);
    frame.push(body.len() as u8);
    frame.extend_from_slice(&body);
    frame
}
