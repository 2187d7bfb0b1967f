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

/// Edits (`REPLIKATIV_OFFLINE_EDITS`, 100,000 by default) made while a peer was offline.
fn offline_edits() -> usize {
    std::env::var("REPLIKATIV_OFFLINE_EDITS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
}

/// A peer on a file store is offline (shut down) while the other makes many edits, assocs and
/// dissocs; restarted from its store and reconnected, it catches up only the difference (batches of
/// the entries it lacks, no value fetches) and ends equal to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_offline_during_many_edits_catches_up_and_equals_the_other() {
    let edits = offline_edits();
    let config = |name: &str| {
        let mut cfg = common::config(name);
        cfg.ws.max_frame = 1 << 20;
        cfg.ws.max_message = 1 << 20;
        cfg
    };
    let dir = || Arc::new(tempfile::tempdir().unwrap());
    let server = spawn_with("server", Backend::Memory, dir(), config("server")).await;
    let map = bounded("create", server.stage.create_ormap(None)).await.unwrap();
    let assoc = |i: usize| {
        server.stage.assoc(&map, Value::from(format!("k{i}")), vec![Transaction::new("set", i as i64)])
    };
    for i in 0..1000 {
        bounded("assoc", assoc(i)).await.unwrap();
    }
    let offline_dir = dir();
    let offline = spawn_with("offline", Backend::File, offline_dir.clone(), config("offline")).await;
    bounded("subscribe", offline.stage.subscribe([map.clone()])).await.unwrap();
    link(&offline, &server).await;
    eventually("the peer has the first 1000 entries", || async {
        offline.stage.ormap(&map).await.is_ok_and(|m| m.len() == 1000)
    })
    .await;
    bounded("shutdown", offline.stage.shutdown()).await;
    drop(offline);
    // Offline: assocs of new keys and of existing ones, and dissocs (every tenth edit).
    for chunk in (0..edits).collect::<Vec<_>>().chunks(512) {
        let writes = chunk.iter().map(|&i| assoc(1000 + i / 2));
        for w in bounded("assocs", futures::future::join_all(writes)).await {
            w.unwrap();
        }
        for &i in chunk.iter().filter(|i| *i % 10 == 0) {
            let key = Value::from(format!("k{}", i / 3));
            // A key may have no live value by now: that refusal is fine.
            let _ = bounded("dissoc", server.stage.dissoc(&map, key, vec![])).await;
        }
    }
    let back = spawn_with("offline", Backend::File, offline_dir, config("offline")).await;
    link(&back, &server).await;
    let want = bounded("read", server.stage.state(&map)).await.unwrap().unwrap().digest();
    eventually("the restarted peer equals the other", || async {
        back.stage.state(&map).await.ok().flatten().is_some_and(|s| s.digest() == want)
    })
    .await;
    let status = bounded("status", back.stage.node().status()).await.unwrap();
    for why in [
        replikativ::peer::proto::Refusal::BadWebsocketFrame,
        replikativ::peer::proto::Refusal::OversizeOutput,
    ] {
        assert_eq!(status.refusals.get(why), 0, "{:?}", status.refusals);
    }
    bounded("shutdown", back.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}
