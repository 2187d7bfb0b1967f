//! Realization over a real two-peer setup (websockets, file stores): edits on peer A appear in
//! identities streamed on peer B, for every datatype; a CDVCS conflict made on both peers is
//! reported on B and the stream continues after A merges.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, bounded, eventually, link, spawn_peer};
use replikativ::crdt::{Transaction, Value};
use replikativ::peer::realize::{
    GSET_ADD, LWW_SET, MemoryIdentity, Reducers, StoreIdentity, StreamOptions, stream_into_identity,
    stream_into_identity_with,
};

const T: Duration = Duration::from_secs(20);

fn sum_reducers() -> Reducers<i64> {
    Reducers::new().with("add", |s: &mut i64, v: &Value| {
        *s += v.as_i64().ok_or("not an integer")?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_one_peer_appear_in_identities_on_the_other() {
    let a = spawn_peer("a", Backend::File).await;
    let b = spawn_peer("b", Backend::File).await;
    link(&b, &a).await;
    let log = bounded("create", a.stage.create_cdvcs(None)).await.unwrap();
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    let reg = bounded("create", a.stage.create_lww(None)).await.unwrap();
    let set = bounded("create", a.stage.create_gset(None)).await.unwrap();
    bounded("subscribe", b.stage.subscribe([log.clone(), map.clone(), reg.clone(), set.clone()]))
        .await
        .unwrap();

    // B streams everything (the CDVCS into its own store); the streams start before data arrives.
    let store = b.stage.node().store().clone();
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    let seen = conflicts.clone();
    let options =
        StreamOptions::default().on_cdvcs_conflict(move |c| seen.lock().unwrap().push(c.heads.clone()));
    let sum_ident = StoreIdentity::<i64>::open(store.clone(), "sum").unwrap();
    let sum = sum_ident.state();
    let s_log = stream_into_identity_with(&b.stage, &log, sum_reducers(), sum_ident, options);
    let kv = MemoryIdentity::<BTreeMap<Value, Value>>::default();
    let map_reducers = Reducers::new().with("set", |m: &mut BTreeMap<Value, Value>, v: &Value| {
        let l = v.as_list().ok_or("expected [key value]")?;
        m.insert(l[0].clone(), l[1].clone());
        Ok(())
    });
    let s_map = stream_into_identity(&b.stage, &map, map_reducers, kv.clone());
    let value = MemoryIdentity::<Value>::default();
    let s_reg = stream_into_identity(
        &b.stage,
        &reg,
        Reducers::new().with(LWW_SET, |s: &mut Value, v: &Value| {
            *s = v.clone();
            Ok(())
        }),
        value.clone(),
    );
    let elements = MemoryIdentity::<BTreeSet<Value>>::default();
    let s_set = stream_into_identity(
        &b.stage,
        &set,
        Reducers::new().with(GSET_ADD, |s: &mut BTreeSet<Value>, v: &Value| {
            s.insert(v.clone());
            Ok(())
        }),
        elements.clone(),
    );

    // A edits.
    let mut head = None;
    for i in 1..=20 {
        head = Some(
            bounded("transact", a.stage.transact(&log, vec![Transaction::new("add", i)])).await.unwrap(),
        );
    }
    for k in ["x", "y"] {
        let tx = Transaction::new("set", Value::list([Value::from(k), Value::from(1)]));
        bounded("assoc", a.stage.assoc(&map, k.into(), vec![tx])).await.unwrap();
    }
    bounded("set", a.stage.set(&reg, Value::from("hello"))).await.unwrap();
    for e in 0..5 {
        bounded("add", a.stage.add(&set, e.into())).await.unwrap();
    }

    // They appear in B's identities.
    s_log.caught_up_to(head.unwrap(), T).await.unwrap();
    assert_eq!(*sum.lock().unwrap(), 210);
    assert_eq!(StoreIdentity::<i64>::load(&*store, "sum").unwrap().0, 210);
    eventually("map realized on b", || async { kv.get().len() == 2 }).await;
    assert_eq!(kv.get(), BTreeMap::from([("x".into(), 1.into()), ("y".into(), 1.into())]));
    eventually("register realized on b", || async { value.get() == Value::from("hello") }).await;
    eventually("set realized on b", || async { elements.get().len() == 5 }).await;

    // A conflict made by both peers: B reports it and waits; A's merge reaches B and it continues.
    let fork = bounded("fork", b.stage.fork(&log)).await.unwrap();
    bounded("transact", b.stage.transact(&fork, vec![Transaction::new("add", 1000)])).await.unwrap();
    bounded("transact", a.stage.transact(&log, vec![Transaction::new("add", 100)])).await.unwrap();
    bounded("subscribe", a.stage.subscribe([fork.clone()])).await.unwrap();
    eventually("a has b's fork", || async { a.stage.cdvcs(&fork).await.is_ok() }).await;
    bounded("pull", a.stage.pull(&fork, &log, true)).await.unwrap();
    s_log.wait_for(T, |p| p.conflict.is_some()).await.unwrap();
    assert_eq!(conflicts.lock().unwrap().len(), 1);
    assert_eq!(conflicts.lock().unwrap()[0].len(), 2);
    let heads: Vec<_> = bounded("heads", a.stage.heads(&log)).await.unwrap().into_iter().collect();
    let m = bounded("merge", a.stage.merge(&log, heads, vec![])).await.unwrap();
    let p = s_log.caught_up_to(m, T).await.unwrap();
    assert!(p.conflict.is_none());
    assert_eq!(*sum.lock().unwrap(), 1310);

    for s in [s_log, s_map, s_reg, s_set] {
        s.stop(T).await.unwrap();
    }
    bounded("shutdown", a.stage.shutdown()).await;
    bounded("shutdown", b.stage.shutdown()).await;
}
