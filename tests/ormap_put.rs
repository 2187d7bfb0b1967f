//! `ormap put` (`Stage::put`, `Command::Put`): one op that replaces a key's observed values
//! replicates over a real websocket, keeps a concurrent assoc, and is subject to the access
//! policy like every other write.

mod common;

use std::sync::Arc;

use common::{Backend, bounded, eventually, link, spawn_with};
use replikativ::crdt::{Transaction, Value};
use replikativ::peer::middleware::Access;
use replikativ::peer::proto::StageError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_replaces_the_values_on_every_replica_and_a_concurrent_assoc_survives() {
    let (alice_cfg, alice_gate) = common::gated("alice");
    let (bob_cfg, bob_gate) = common::gated("bob");
    let alice = spawn_with("alice", Backend::File, Arc::new(tempfile::tempdir().unwrap()), alice_cfg).await;
    let bob = spawn_with("bob", Backend::File, Arc::new(tempfile::tempdir().unwrap()), bob_cfg).await;
    let map = bounded("create", alice.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", bob.stage.subscribe([map.clone()])).await.unwrap();
    link(&bob, &alice).await;
    let key = Value::from("milk");
    for n in [1, 2] {
        bounded("assoc", alice.stage.assoc(&map, key.clone(), vec![Transaction::new("set", n)]))
            .await
            .unwrap();
    }
    eventually("bob has both values", || async {
        bob.stage.get(&map, &key).await.is_ok_and(|v| v.len() == 2)
    })
    .await;
    let put =
        bounded("put", bob.stage.put(&map, key.clone(), vec![Transaction::new("set", 3)])).await.unwrap();
    eventually("alice has only the put value", || async {
        alice.stage.get(&map, &key).await.is_ok_and(|v| v.len() == 1 && v[0].id == put)
    })
    .await;
    // Partitioned (no publications pass either way): alice assocs, bob puts; after healing
    // (anti-entropy) both values are live on both sides.
    use std::sync::atomic::Ordering;
    alice_gate.store(false, Ordering::SeqCst);
    bob_gate.store(false, Ordering::SeqCst);
    let concurrent = bounded("assoc", alice.stage.assoc(&map, key.clone(), vec![Transaction::new("set", 4)]))
        .await
        .unwrap();
    let second =
        bounded("put", bob.stage.put(&map, key.clone(), vec![Transaction::new("set", 5)])).await.unwrap();
    assert_eq!(
        bounded("get", alice.stage.get(&map, &key)).await.unwrap().len(),
        2,
        "alice: the put's value and hers"
    );
    alice_gate.store(true, Ordering::SeqCst);
    bob_gate.store(true, Ordering::SeqCst);
    let mut expected = vec![concurrent, second];
    expected.sort();
    for (name, peer) in [("alice", &alice), ("bob", &bob)] {
        eventually(&format!("{name} converged"), || async {
            let mut ids: Vec<_> = peer
                .stage
                .get(&map, &key)
                .await
                .map(|v| v.iter().map(|c| c.id).collect())
                .unwrap_or_default();
            ids.sort();
            ids == expected
        })
        .await;
    }
    bounded("shutdown", alice.stage.shutdown()).await;
    bounded("shutdown", bob.stage.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_denied_where_the_policy_denies_publishing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let locked = Arc::new(AtomicBool::new(false));
    let mut cfg = common::config("guarded");
    let l = locked.clone();
    cfg.policy =
        Some(Arc::new(move |_, _, access| !(l.load(Ordering::SeqCst) && matches!(access, Access::Publish(_)))));
    let peer = spawn_with("guarded", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    let map = bounded("create", peer.stage.create_ormap(None)).await.unwrap();
    let key = Value::from("k");
    bounded("put", peer.stage.put(&map, key.clone(), vec![Transaction::new("set", 1)])).await.unwrap();
    locked.store(true, Ordering::SeqCst);
    let denied = bounded("put", peer.stage.put(&map, key.clone(), vec![Transaction::new("set", 2)])).await;
    assert!(matches!(denied, Err(StageError::Denied(_))), "{denied:?}");
    let values = bounded("get", peer.stage.get(&map, &key)).await.unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].transactions[0].params, Value::from(1), "the denied put changed nothing");
    bounded("shutdown", peer.stage.shutdown()).await;
}
