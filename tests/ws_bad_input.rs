//! Bad input over a real websocket: a raw tokio-tungstenite client connects to a node's listen
//! address and sends garbage, an oversized frame, a hello of another protocol version, a text frame,
//! or a message before its hello. Each time only that connection is closed, with a reason naming
//! the problem, and the node keeps serving a healthy peer connected before the attack: its
//! connection stays the same and an edit made after the attack still replicates.

mod common;

use common::raw::*;
use replikativ::peer::proto::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[test]
fn hand_built_hello_frames_follow_the_wire_format() {
    let Ok(Message::Hello(h)) = Message::decode(&hello_frame(1, 1, "attacker")) else { panic!("decodes") };
    assert_eq!((h.version, h.peer_id.as_str(), h.features.len()), (1, "attacker", 0));
    assert_eq!(Message::frame_version(&hello_frame(2, 2, "attacker")), Some(2));
    let Ok(Message::Hello(h)) = Message::decode(&hello_frame(2, 2, "attacker")) else { panic!("decodes") };
    assert_eq!(h.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_binary_frame_closes_only_that_connection() {
    let s = setup().await;
    let mut ws = raw_connect(&s.server).await;
    expect_hello(&mut ws).await;
    send(&mut ws, WsMessage::Binary(vec![0xc1, 0xff, 0x00, 0x13, 0x37, 0xde, 0xad].into())).await;
    let closing = read_until_closed(&mut ws).await;
    assert_reason(&closing, &["malformed frame"]);
    assert_still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    let s = setup().await;
    let mut ws = raw_connect(&s.server).await;
    expect_hello(&mut ws).await;
    // A well-formed hello first, so the close can only be about the size.
    send(&mut ws, WsMessage::Binary(hello_frame(2, 2, "attacker").into())).await;
    send(&mut ws, WsMessage::Binary(vec![0x42; MAX_FRAME * 2].into())).await;
    let closing = read_until_closed(&mut ws).await;
    assert_reason(&closing, &["too long", &MAX_FRAME.to_string()]);
    assert_still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_of_another_protocol_version_closes_only_that_connection() {
    // A version-1 peer (before dot summaries and batches) and one from the future: each is told
    // both versions.
    for (v, name) in [(1, "version-one"), (3, "from-the-future")] {
        let s = setup().await;
        let mut ws = raw_connect(&s.server).await;
        expect_hello(&mut ws).await;
        send(&mut ws, WsMessage::Binary(hello_frame(v, v, name).into())).await;
        let closing = read_until_closed(&mut ws).await;
        assert_reason(
            &closing,
            &[
                "unsupported-version",
                &format!("incompatible protocol version {v}"),
                "this peer speaks version 2",
            ],
        );
        assert_still_serving(&s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_closes_only_that_connection() {
    let s = setup().await;
    let mut ws = raw_connect(&s.server).await;
    expect_hello(&mut ws).await;
    send(&mut ws, WsMessage::Binary(hello_frame(2, 2, "attacker").into())).await;
    send(&mut ws, WsMessage::Text("{\"kind\": \"hello\"}".into())).await;
    let closing = read_until_closed(&mut ws).await;
    assert_reason(&closing, &["text frames"]);
    assert_still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_before_hello_closes_only_that_connection() {
    let s = setup().await;
    let mut ws = raw_connect(&s.server).await;
    expect_hello(&mut ws).await;
    let early = Message::Subscribe(replikativ::peer::proto::Subscribe {
        id: 1,
        addresses: [s.map.clone()].into_iter().collect(),
        extend: false,
    });
    send(&mut ws, WsMessage::Binary(early.encode().into())).await;
    let closing = read_until_closed(&mut ws).await;
    assert_reason(&closing, &["expected hello first", "subscribe"]);
    assert!(!closing.kinds.iter().any(|k| k == "subscribe-ack"), "no ack before hello: {closing:?}");
    assert_still_serving(&s).await;
}
