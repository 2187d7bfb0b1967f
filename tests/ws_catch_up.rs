//! A fresh peer catches up a large OR-Map over real websockets with a 1 MiB frame limit: the
//! answer travels in bounded parts. Before, it was one publication with every entry, over the
//! limit, refused, and sent again after every reconnect, forever.

mod common;

use std::sync::Arc;

use common::{Backend, bounded, eventually, link, spawn_with};
use replikativ::crdt::{Transaction, Value};

const ENTRIES: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_peer_catches_up_a_large_ormap_within_a_one_mib_frame_limit() {
    let config = |name: &str| {
        let mut cfg = common::config(name);
        cfg.ws.max_frame = 1 << 20;
        cfg.ws.max_message = 1 << 20;
        cfg.peer.inline_limit = 512 << 10;
        cfg
    };
    let dir = || Arc::new(tempfile::tempdir().unwrap());
    let server = spawn_with("server", Backend::Memory, dir(), config("server")).await;
    let map = bounded("create", server.stage.create_ormap(None)).await.unwrap();
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(256) {
        let writes = chunk.iter().map(|i| {
            let txs =
                vec![Transaction::new("set", Value::from(format!("value of k{i}: {}", "v".repeat(60))))];
            server.stage.assoc(&map, Value::from(format!("k{i}")), txs)
        });
        for w in bounded("assocs", futures::future::join_all(writes)).await {
            w.unwrap();
        }
    }
    let fresh = spawn_with("fresh", Backend::Memory, dir(), config("fresh")).await;
    bounded("subscribe", fresh.stage.subscribe([map.clone()])).await.unwrap();
    link(&fresh, &server).await;
    eventually("the fresh peer has every entry", || async {
        fresh.stage.ormap(&map).await.is_ok_and(|m| m.len() == ENTRIES)
    })
    .await;
    let a = bounded("read", server.stage.state(&map)).await.unwrap().unwrap();
    let b = bounded("read", fresh.stage.state(&map)).await.unwrap().unwrap();
    assert_eq!(a.digest(), b.digest());
    // The same connection the whole time, and nothing refused for size on either side.
    // (Connection 1 is the stage; 2 is the node's first websocket connection.)
    let conns = common::peer_conns(&fresh).await;
    assert_eq!(conns, vec![(2, Some("server".to_owned()))], "the connection was not re-established");
    for peer in [&server, &fresh] {
        let refused = bounded("status", peer.stage.node().status()).await.unwrap().refusals;
        assert_eq!(refused.get(replikativ::peer::proto::Refusal::BadWebsocketFrame), 0, "{refused:?}");
        assert_eq!(refused.get(replikativ::peer::proto::Refusal::OversizeOutput), 0, "{refused:?}");
    }
    bounded("shutdown", fresh.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}
