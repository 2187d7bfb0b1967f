//! A fresh peer catches up a large OR-Map (300,000 entries) over real websockets with a 1 MiB frame
//! limit: the answer travels as a stream of bounded batches. Before, it was one publication with every entry, over the
//! limit, refused, and sent again after every reconnect, forever.

mod common;

use std::sync::Arc;

use common::{Backend, bounded, eventually, eventually_within, link, spawn_with};
use replikativ::crdt::{Transaction, Value};

/// Entries of the map a fresh peer catches up (`REPLIKATIV_CATCH_UP_ENTRIES`, 300,000 by default).
fn entries() -> usize {
    env_or("REPLIKATIV_CATCH_UP_ENTRIES", 300_000)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A test node whose websocket takes messages of at most 1 MiB.
fn one_mib_frames(name: &str) -> replikativ::peer::node::NodeConfig {
    let mut cfg = common::config(name);
    cfg.ws.max_frame = 1 << 20;
    cfg.ws.max_message = 1 << 20;
    cfg
}

/// Nothing was refused for its size on these peers (no frame over the limit was received, none
/// left unsent).
async fn assert_no_size_refusals(peers: &[&common::TestPeer]) {
    for peer in peers {
        let refused = bounded("status", peer.stage.node().status()).await.unwrap().refusals;
        assert_eq!(refused.get(replikativ::peer::proto::Refusal::BadWebsocketFrame), 0, "{refused:?}");
        assert_eq!(refused.get(replikativ::peer::proto::Refusal::OversizeOutput), 0, "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_peer_catches_up_a_large_ormap_within_a_one_mib_frame_limit() {
    let n = entries();
    let config = |name: &str| {
        let mut cfg = one_mib_frames(name);
        cfg.peer.inline_limit = 512 << 10;
        cfg
    };
    let dir = || Arc::new(tempfile::tempdir().unwrap());
    let server = spawn_with("server", Backend::Memory, dir(), config("server")).await;
    let map = bounded("create", server.stage.create_ormap(None)).await.unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(512) {
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
    // (Large on purpose: up to two minutes on a loaded CI machine; ~15 s in a debug build here.)
    eventually_within("the fresh peer has every entry", std::time::Duration::from_secs(120), || async {
        fresh.stage.ormap(&map).await.is_ok_and(|m| m.len() == n)
    })
    .await;
    let a = bounded("read", server.stage.state(&map)).await.unwrap().unwrap();
    let b = bounded("read", fresh.stage.state(&map)).await.unwrap().unwrap();
    assert_eq!(a.digest(), b.digest());
    // The same connection the whole time, and nothing refused for size on either side.
    // (Connection 1 is the stage; 2 is the node's first websocket connection.)
    let conns = common::peer_conns(&fresh).await;
    assert_eq!(conns, vec![(2, Some("server".to_owned()))], "the connection was not re-established");
    assert_no_size_refusals(&[&server, &fresh]).await;
    bounded("shutdown", fresh.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

/// Edits (`REPLIKATIV_OFFLINE_EDITS`, 100,000 by default) made while a peer was offline.
fn offline_edits() -> usize {
    env_or("REPLIKATIV_OFFLINE_EDITS", 100_000)
}

/// A peer on a file store is offline (shut down) while the other makes many edits, assocs and
/// dissocs; restarted from its store and reconnected, it catches up only the difference (batches of
/// the entries it lacks, no value fetches) and ends equal to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_offline_during_many_edits_catches_up_and_equals_the_other() {
    let edits = offline_edits();
    let config = one_mib_frames;
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
    eventually_within("the restarted peer equals the other", std::time::Duration::from_secs(120), || async {
        back.stage.state(&map).await.ok().flatten().is_some_and(|s| s.digest() == want)
    })
    .await;
    assert_no_size_refusals(&[&back, &server]).await;
    bounded("shutdown", back.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

/// A live stream of assocs from one peer to another with anti-entropy ticking every 50 ms: the
/// ticks send no catch-up (every op the summaries lack is already on its way), and the stream
/// costs about the bytes of one without ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_during_a_live_stream_adds_no_duplicate_data() {
    const OPS: usize = 20_000;
    let mut bytes = Vec::new();
    for tick in [None, Some(std::time::Duration::from_millis(50))] {
        let config = |name: &str| {
            let mut cfg = common::config(name);
            cfg.peer.anti_entropy = tick;
            cfg
        };
        let dir = || Arc::new(tempfile::tempdir().unwrap());
        let a = spawn_with("a", Backend::Memory, dir(), config("a")).await;
        let b = spawn_with("b", Backend::Memory, dir(), config("b")).await;
        let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
        bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
        link(&b, &a).await;
        eventually("b has the map", || async { b.stage.ormap(&map).await.is_ok() }).await;
        let before: u64 = a
            .stage
            .node()
            .metrics()
            .values()
            .chain(b.stage.node().metrics().values())
            .map(|m| m.bytes_out)
            .sum();
        // (The empty map reached B as one catch-up publication: counted from here on.)
        let start = bounded("status", a.stage.node().status()).await.unwrap();
        for chunk in (0..OPS).collect::<Vec<_>>().chunks(256) {
            let writes = chunk.iter().map(|i| {
                a.stage.assoc(&map, Value::from(format!("k{i}")), vec![Transaction::new("set", *i as i64)])
            });
            for w in bounded("assocs", futures::future::join_all(writes)).await {
                w.unwrap();
            }
        }
        eventually("b has every entry", || async { b.stage.ormap(&map).await.is_ok_and(|m| m.len() == OPS) })
            .await;
        let after: u64 = a
            .stage
            .node()
            .metrics()
            .values()
            .chain(b.stage.node().metrics().values())
            .map(|m| m.bytes_out)
            .sum();
        let status = bounded("status", a.stage.node().status()).await.unwrap();
        assert_eq!(
            (
                status.catch_up_batches - start.catch_up_batches,
                status.catch_up_publications - start.catch_up_publications
            ),
            (0, 0),
            "anti-entropy {tick:?} sent catch-up during the live stream"
        );
        bytes.push(after - before);
        bounded("shutdown", a.stage.shutdown()).await;
        bounded("shutdown", b.stage.shutdown()).await;
    }
    let (off, on) = (bytes[0] as f64, bytes[1] as f64);
    eprintln!("live stream of {OPS} ops: {off} bytes without anti-entropy, {on} with a 50 ms tick");
    // The ticks' summaries are a few hundred bytes each; folding of live frames varies a little.
    assert!(on <= off * 1.15, "with ticks {on} bytes, without {off}");
}
