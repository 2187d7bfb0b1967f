//! A burst larger than a connection's outbox: messages to the slow side are dropped and counted,
//! the connection stays up (same connection id, no reconnect), and the peer is resynchronized so it
//! still receives everything.

mod common;

use std::sync::Arc;

use common::{Backend, bounded, config, eventually, link, peer_conns, spawn_peer, spawn_with};
use replikativ::crdt::{Transaction, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_outbox_drops_messages_not_the_connection() {
    // A tiny outbox on the writer's side, so a burst overflows it.
    let mut cfg = config("a");
    cfg.outbox = 16;
    let a = spawn_with("a", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    let b = spawn_peer("b", Backend::Memory).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
    link(&b, &a).await;
    eventually("b has the map", || async { b.stage.ormap(&map).await.is_ok() }).await;
    let before = peer_conns(&b).await;
    assert_eq!(before.len(), 1, "b's one websocket connection");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000u32 {
        let stage = a.stage.clone();
        let map = map.clone();
        tasks.spawn(async move { stage.assoc(&map, Value::from(i), vec![Transaction::new("set", i)]).await });
    }
    while let Some(r) = bounded("assoc", tasks.join_next()).await {
        r.unwrap().unwrap();
    }
    eventually("b has all 2000 keys", || async {
        b.stage.ormap(&map).await.map(|m| m.len() == 2000).unwrap_or(false)
    })
    .await;
    let dropped = bounded("status", a.stage.node().status()).await.unwrap().dropped;
    assert!(dropped > 0, "the burst overflowed the 16-item outbox (else this test proves nothing)");
    assert_eq!(peer_conns(&b).await, before, "the connection stayed up: no reconnect");
    bounded("shutdown", a.stage.shutdown()).await;
    bounded("shutdown", b.stage.shutdown()).await;
}
