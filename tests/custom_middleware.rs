//! The allow-list middleware of `examples/custom_middleware.rs` (included from there, so the test
//! checks exactly the example's code), over real websockets with file stores: publications of users
//! not on the list are dropped before the server's core (also when anti-entropy resends them) and
//! answered with `Refused`, which the other peer receives; allowed users' data keeps replicating on
//! the same connection. The example's demo itself runs to completion.

mod common;

#[path = "../examples/custom_middleware.rs"]
#[allow(dead_code)]
mod example;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{Backend, bounded, eventually, spawn_peer, spawn_with};
use example::{ALICE, AllowList, MALLORY};
use replikativ::crdt::{Transaction, Value};
use replikativ::peer::middleware::Remote;
use replikativ::peer::proto::StageError;
use replikativ::peer::stage::Stage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_drops_other_users_publications_as_seen_from_the_other_peer() {
    let rejected = Arc::new(AtomicU64::new(0));
    let users = Arc::new(BTreeSet::from([ALICE.to_owned(), "mail:server@example.org".to_owned()]));
    let mut cfg = common::config("server");
    let (u, r) = (users.clone(), rejected.clone());
    cfg.middleware.push(Arc::new(move |_, _| Box::new(AllowList { users: u.clone(), rejected: r.clone() })));
    let server = spawn_with("server", Backend::File, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    // The client's node has two stages: alice (allowed) and mallory (not).
    let client = spawn_peer("alice", Backend::File).await;
    assert_eq!(client.stage.user(), ALICE);
    let mallory = bounded("attach", Stage::attach(client.stage.node().clone(), MALLORY)).await.unwrap();
    let alice_map = bounded("create", client.stage.create_ormap(None)).await.unwrap();
    let mallory_map = bounded("create", mallory.create_ormap(None)).await.unwrap();
    bounded("subscribe", server.stage.subscribe([alice_map.clone(), mallory_map.clone()])).await.unwrap();
    common::link(&client, &server).await;

    bounded("assoc", mallory.assoc(&mallory_map, "spam".into(), vec![Transaction::new("set", 1)]))
        .await
        .unwrap();
    let milk =
        bounded("assoc", client.stage.assoc(&alice_map, "milk".into(), vec![Transaction::new("add", 2)]))
            .await
            .unwrap();
    eventually("alice's write reaches the server", || async {
        server
            .stage
            .get(&alice_map, &Value::from("milk"))
            .await
            .is_ok_and(|v| v.len() == 1 && v[0].id == milk)
    })
    .await;
    let first = rejected.load(Ordering::SeqCst);
    assert!(first >= 1, "mallory's publication reached the middleware and was dropped");
    // Anti-entropy (every 300 ms here) offers mallory's map again; the middleware drops it again.
    eventually("anti-entropy resends are dropped too", || async { rejected.load(Ordering::SeqCst) > first })
        .await;
    assert!(
        matches!(bounded("read", server.stage.ormap(&mallory_map)).await, Err(StageError::NotFound(_))),
        "mallory's map never reaches the server's core"
    );
    // The other peer received the middleware's refusals (its metrics count them as errors) ...
    eventually("the client receives the refusals", || async {
        client.stage.node().metrics().values().map(|m| m.errors).sum::<u64>() >= first
    })
    .await;
    // ... and still has mallory's data itself.
    assert_eq!(bounded("read", mallory.get(&mallory_map, &"spam".into())).await.unwrap().len(), 1);

    // Allowed users keep replicating on the same connection.
    let conns = |s: replikativ::peer::node::NodeStatus| {
        s.connections
            .into_iter()
            .filter(|(_, r, _)| matches!(r, Remote::Peer(_)))
            .map(|(c, _, _)| c)
            .collect()
    };
    let before: Vec<_> = conns(bounded("status", client.stage.node().status()).await.unwrap());
    let eggs =
        bounded("assoc", client.stage.assoc(&alice_map, "eggs".into(), vec![Transaction::new("add", 6)]))
            .await
            .unwrap();
    eventually("alice's later write reaches the server", || async {
        server
            .stage
            .get(&alice_map, &Value::from("eggs"))
            .await
            .is_ok_and(|v| v.len() == 1 && v[0].id == eggs)
    })
    .await;
    let after: Vec<_> = conns(bounded("status", client.stage.node().status()).await.unwrap());
    assert_eq!(before.len(), 1);
    assert_eq!(before, after, "the refusals did not close the connection");
    assert!(
        matches!(bounded("read", server.stage.ormap(&mallory_map)).await, Err(StageError::NotFound(_))),
        "mallory's map still is not on the server"
    );
    bounded("shutdown", client.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_demo_runs_to_completion() {
    let outcome = bounded("demo", example::demo()).await.expect("the demo runs");
    assert_eq!(outcome.alice_on_server, vec![Value::from(2)]);
    assert!(!outcome.mallory_on_server, "{outcome:?}");
    assert!(outcome.rejected >= 1, "{outcome:?}");
    assert!(outcome.client_errors >= 1, "{outcome:?}");
}
