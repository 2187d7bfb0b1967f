//! The original's stress tests: 100 sequential and 100 concurrent transacts on one stage give 101
//! commits (the root and 100) and one head on every peer.

mod common;

use std::collections::BTreeSet;

use common::{Backend, TestPeer, bounded, eventually, link, spawn_peer};
use replikativ::crdt::Transaction;

/// Three peers: A connected to B and C, B connected to C (as in the original).
async fn three() -> Vec<TestPeer> {
    let a = spawn_peer("a", Backend::File).await;
    let b = spawn_peer("b", Backend::File).await;
    let c = spawn_peer("c", Backend::File).await;
    link(&a, &b).await;
    link(&a, &c).await;
    link(&b, &c).await;
    vec![a, b, c]
}

async fn assert_everywhere(peers: &[TestPeer], log: &replikativ::crdt::Address) {
    for p in peers {
        eventually("101 commits and one head", || async {
            match p.stage.cdvcs(log).await {
                Ok(c) => c.graph().len() == 101 && c.heads().len() == 1,
                Err(_) => false,
            }
        })
        .await;
    }
    let reference = peers[0].stage.log(log).await.unwrap();
    for p in peers {
        assert_eq!(p.stage.log(log).await.unwrap(), reference);
    }
    for p in peers {
        bounded("shutdown", p.stage.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_sequential_transacts() {
    let peers = three().await;
    let log = bounded("create", peers[1].stage.create_cdvcs(None)).await.unwrap();
    for p in &peers {
        bounded("subscribe", p.stage.subscribe([log.clone()])).await.unwrap();
    }
    for i in 0..100 {
        bounded("transact", peers[1].stage.transact(&log, vec![Transaction::new("add", i)])).await.unwrap();
    }
    assert_everywhere(&peers, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_transacts() {
    let peers = three().await;
    let log = bounded("create", peers[1].stage.create_cdvcs(None)).await.unwrap();
    for p in &peers {
        bounded("subscribe", p.stage.subscribe([log.clone()])).await.unwrap();
    }
    // One stage, 100 transacts in flight at once: the core orders them, each on the single head.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let stage = peers[1].stage.clone();
            let log = log.clone();
            tokio::spawn(async move { stage.transact(&log, vec![Transaction::new("add", i)]).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(bounded("transact", t).await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 100, "100 distinct commits");
    assert_everywhere(&peers, &log).await;
}
