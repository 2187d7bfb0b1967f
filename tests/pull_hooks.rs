//! Pull hooks (replikativ's `p2p.hooks`): a server pulls every user's CDVCS into a central one when
//! it fast-forwards and an integrity callback accepts the new commits.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Backend, bounded, config, eventually, link, spawn_peer, spawn_with};
use replikativ::crdt::{Address, Transaction, Value};
use replikativ::peer::proto::StoredValues;
use replikativ::peer::proto::hooks::{PullHook, UserMatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pulls_fast_forwards_into_the_central_cdvcs() {
    let x = uuid::Uuid::from_u128(0x5eed);
    let central = Address::new("mail:server@example.org", x).unwrap();
    // Refuse commits carrying the params "forbidden".
    let integrity =
        Arc::new(|_: &Address, ids: &[replikativ::crdt::ContentId], values: &StoredValues<'_>| {
            ids.iter().all(|id| {
                let Some(commit) = values.commit(id) else { return false };
                commit.transactions.iter().all(|tx| tx.params != Value::from("forbidden").content_id())
            })
        });
    let mut cfg = config("server");
    cfg.peer.hooks.push(PullHook {
        from: UserMatch::Any,
        crdt_id: x,
        into: central.clone(),
        allow_induced_conflict: false,
        integrity: Some(integrity),
    });
    let server = spawn_with("server", Backend::File, Arc::new(tempfile::tempdir().unwrap()), cfg).await;
    let a = spawn_peer("a", Backend::File).await;
    let b = spawn_peer("b", Backend::File).await;
    link(&a, &server).await;
    link(&b, &server).await;

    // A's CDVCS: the central one starts as a copy of it.
    let a_log = bounded("create", a.stage.create_cdvcs(Some(x))).await.unwrap();
    let a1 = bounded("commit", a.stage.transact(&a_log, vec![Transaction::new("add", "a1")])).await.unwrap();
    bounded("subscribe", b.stage.subscribe([central.clone()])).await.unwrap();
    eventually("central has a1", || async {
        b.stage.heads(&central).await.map(|h| h == BTreeSet::from([a1])).unwrap_or(false)
    })
    .await;

    // B forks the central CDVCS and commits on it: a fast-forward, pulled.
    let b_log = bounded("fork", b.stage.fork(&central)).await.unwrap();
    let b1 = bounded("commit", b.stage.transact(&b_log, vec![Transaction::new("add", "b1")])).await.unwrap();
    eventually("central fast-forwarded to b1", || async {
        b.stage.heads(&central).await.map(|h| h == BTreeSet::from([b1])).unwrap_or(false)
    })
    .await;

    // A commits on its own history, which lacks b1: not a fast-forward, refused.
    let a2 = bounded("commit", a.stage.transact(&a_log, vec![Transaction::new("add", "a2")])).await.unwrap();
    // B's forbidden commit: a fast-forward, but the integrity check refuses it.
    let bad = bounded("commit", b.stage.transact(&b_log, vec![Transaction::new("add", "forbidden")]))
        .await
        .unwrap();
    bounded("subscribe", server.stage.subscribe([a_log.clone(), b_log.clone()])).await.unwrap();
    eventually("the server has both new commits", || async {
        server.stage.heads(&a_log).await.map(|h| h.contains(&a2)).unwrap_or(false)
            && server.stage.heads(&b_log).await.map(|h| h.contains(&bad)).unwrap_or(false)
    })
    .await;
    // The hook runs when the server applies a commit, which it has now done for both.
    let heads = server.stage.heads(&central).await.unwrap();
    assert_eq!(heads, BTreeSet::from([b1]), "central kept b1: no induced conflict, no forbidden commit");
    let log = server.stage.log(&central).await.unwrap();
    assert!(!log.iter().any(|c| c.id == a2 || c.id == bad));
    for p in [a, b, server] {
        bounded("shutdown", p.stage.shutdown()).await;
    }
}
