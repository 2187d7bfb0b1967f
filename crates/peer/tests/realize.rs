//! Realization on one node with a memory store: the original's streaming tests ported (CDVCS into
//! a sum with a merge, OR-Map streaming with its conflict callback, LWW register streaming), G-Set
//! streaming, the store identity resuming, rebuilds, a sink, and failing or missing reducers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replikativ_crdt::{Address, ContentId, Transaction, Value};
use replikativ_peer::realize::{
    CdvcsConflict, GSET_ADD, LWW_SET, MemoryIdentity, RealizeError, Reducers, Sink, SinkIdentity,
    StoreIdentity, StreamHandle, StreamOptions, Unit, stream_into_identity, stream_into_identity_with,
};
use replikativ_peer::stage::Stage;
use replikativ_store::MemoryStore;

const T: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

async fn stage(user: &str) -> Stage {
    bounded(Stage::builder(Arc::new(MemoryStore::new())).user(user).spawn()).await.unwrap()
}

fn add(n: i64) -> Vec<Transaction> {
    vec![Transaction::new("add", n)]
}

fn sum_reducers() -> Reducers<i64> {
    Reducers::new().with("add", |s: &mut i64, v: &Value| {
        *s += v.as_i64().ok_or_else(|| format!("not an integer: {v:?}"))?;
        Ok(())
    })
}

/// The fold of the linearized history through the "add" reducer.
async fn folded(stage: &Stage, log: &Address) -> i64 {
    let mut sum = 0;
    for c in bounded(stage.log(log)).await.unwrap() {
        for t in c.transactions {
            sum += t.params.as_i64().unwrap();
        }
    }
    sum
}

/// Two users on one node: bob forks alice's CDVCS, both commit, alice pulls bob's fork with an
/// induced conflict. Returns (alice's head, bob's head, the common commit).
async fn diverge(
    alice: &Stage,
    bob: &Stage,
    log: &Address,
    a: i64,
    b: i64,
    stream: &StreamHandle,
) -> (ContentId, ContentId, ContentId) {
    let base = bounded(alice.heads(log)).await.unwrap().into_iter().next().unwrap();
    let fork = Address::new(bob.user(), log.id).unwrap();
    if bounded(bob.cdvcs(&fork)).await.is_err() {
        bounded(bob.fork(log)).await.unwrap();
    } else {
        bounded(bob.pull(log, &fork, false)).await.unwrap();
    }
    let hb = bounded(bob.transact(&fork, add(b))).await.unwrap();
    let ha = bounded(alice.transact(log, add(a))).await.unwrap();
    // The stream applies alice's commit before bob's arrives.
    stream.caught_up_to(ha, T).await.unwrap();
    bounded(alice.pull(&fork, log, true)).await.unwrap();
    (ha, hb, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdvcs_streams_into_a_sum_reports_conflicts_and_continues_after_merges() {
    let alice = stage("mail:alice@example.org").await;
    let bob = bounded(Stage::attach(alice.node().clone(), "mail:bob@example.org")).await.unwrap();
    let log = bounded(alice.create_cdvcs(None)).await.unwrap();
    let conflicts: Arc<Mutex<Vec<CdvcsConflict>>> = Arc::default();
    let seen = conflicts.clone();
    let options = StreamOptions::default().on_cdvcs_conflict(move |c| seen.lock().unwrap().push(c.clone()));
    let sum = MemoryIdentity::<i64>::default();
    let stream = stream_into_identity_with(&alice, &log, sum_reducers(), sum.clone(), options);
    for i in 1..=5 {
        bounded(alice.transact(&log, add(i))).await.unwrap();
    }
    let head = bounded(alice.heads(&log)).await.unwrap().into_iter().next().unwrap();
    stream.caught_up_to(head, T).await.unwrap();
    assert_eq!(sum.get(), 15);

    // A conflict: reported with heads, merge base and both sides; the stream waits.
    let (ha, hb, base) = diverge(&alice, &bob, &log, 10, 100, &stream).await;
    let p = stream.settle(T).await.unwrap();
    let conflict = p.conflict.expect("the stream waits on the conflict");
    assert_eq!(conflict.heads, BTreeSet::from([ha, hb]).into_iter().collect::<Vec<_>>());
    assert_eq!(conflict.merge_bases, vec![base]);
    assert_eq!(conflict.sides.iter().find(|s| s.0 == ha).unwrap().1, vec![ha]);
    assert_eq!(conflict.sides.iter().find(|s| s.0 == hb).unwrap().1, vec![hb]);
    assert_eq!(conflicts.lock().unwrap().len(), 1);
    assert_eq!(sum.get(), 25, "alice's own commit was applied before bob's arrived");

    // Merge with alice's side first: the applied sequence stays a prefix, nothing is rebuilt.
    let m = bounded(alice.merge(&log, vec![ha, hb], add(1000))).await.unwrap();
    let p = stream.caught_up_to(m, T).await.unwrap();
    assert_eq!(p.rebuilds, 0);
    assert_eq!(sum.get(), 1125);
    assert_eq!(sum.get(), folded(&alice, &log).await);

    // Merge with bob's side first: new commits come before applied ones, so the identity is rebuilt.
    let (ha, hb, _) = diverge(&alice, &bob, &log, 7, 70, &stream).await;
    let m = bounded(alice.merge(&log, vec![hb, ha], vec![])).await.unwrap();
    let p = stream.caught_up_to(m, T).await.unwrap();
    assert_eq!(p.rebuilds, 1);
    assert!(p.conflict.is_none());
    assert_eq!(sum.get(), 1202);
    assert_eq!(sum.get(), folded(&alice, &log).await);
    stream.stop(T).await.unwrap();
    bounded(alice.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_identity_resumes_where_it_stopped_and_rebuilds_atomically() {
    let alice = stage("mail:alice@example.org").await;
    let bob = bounded(Stage::attach(alice.node().clone(), "mail:bob@example.org")).await.unwrap();
    let store = alice.node().store().clone();
    let log = bounded(alice.create_cdvcs(None)).await.unwrap();
    let reducers = || {
        Reducers::<BTreeMap<String, i64>>::new().with("add", |m, v| {
            *m.entry("sum".into()).or_default() += v.as_i64().ok_or("not an integer")?;
            *m.entry("count".into()).or_default() += 1;
            Ok(())
        })
    };
    for i in 0..10 {
        bounded(alice.transact(&log, add(i))).await.unwrap();
    }
    let ident = StoreIdentity::open(store.clone(), "totals").unwrap().chunk(3);
    let stream = stream_into_identity(&alice, &log, reducers(), ident);
    let p = stream.settle(T).await.unwrap();
    assert_eq!(p.applied, 11, "the root and ten commits");
    stream.stop(T).await.unwrap();
    let (state, applied) = StoreIdentity::<BTreeMap<String, i64>>::load(&*store, "totals").unwrap();
    assert_eq!(state, BTreeMap::from([("count".into(), 10), ("sum".into(), 45)]));
    assert_eq!(applied.cdvcs.count, 11);

    // More commits while nothing streams; a new stream applies only those.
    for i in 10..15 {
        bounded(alice.transact(&log, add(i))).await.unwrap();
    }
    let ident = StoreIdentity::open(store.clone(), "totals").unwrap();
    let stream = stream_into_identity(&alice, &log, reducers(), ident);
    let p = stream.settle(T).await.unwrap();
    assert_eq!((p.applied, p.rebuilds), (5, 0));
    // A merge that puts new commits first: rebuilt from scratch.
    let (ha, hb, _) = diverge(&alice, &bob, &log, 100, 1000, &stream).await;
    let m = bounded(alice.merge(&log, vec![hb, ha], vec![])).await.unwrap();
    let p = stream.caught_up_to(m, T).await.unwrap();
    assert_eq!(p.rebuilds, 1);
    stream.stop(T).await.unwrap();
    let (state, applied) = StoreIdentity::<BTreeMap<String, i64>>::load(&*store, "totals").unwrap();
    assert_eq!(state, BTreeMap::from([("count".into(), 17), ("sum".into(), folded(&alice, &log).await)]));
    let history = bounded(alice.cdvcs(&log)).await.unwrap().linearize();
    assert_eq!(applied.cdvcs, replikativ_peer::realize::CdvcsLog::of(&history));
    bounded(alice.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reducer_stops_the_stream_and_its_commit_is_not_recorded() {
    let alice = stage("mail:alice@example.org").await;
    let store = alice.node().store().clone();
    let log = bounded(alice.create_cdvcs(None)).await.unwrap();
    bounded(alice.transact(&log, add(1))).await.unwrap();
    let good = bounded(alice.transact(&log, add(2))).await.unwrap();
    let bad = bounded(alice.transact(&log, vec![Transaction::new("add", "three")])).await.unwrap();
    bounded(alice.transact(&log, add(4))).await.unwrap();
    let stream = stream_into_identity(
        &alice,
        &log,
        sum_reducers(),
        StoreIdentity::<i64>::open(store.clone(), "s").unwrap(),
    );
    let err = stream.finished(T).await.unwrap_err();
    assert!(
        matches!(&err, RealizeError::Reducer { commit, function, .. } if *commit == bad && function == "add"),
        "{err}"
    );
    let (sum, applied) = StoreIdentity::<i64>::load(&*store, "s").unwrap();
    assert_eq!(sum, 3, "the commits before the failing one are applied");
    assert_eq!(
        (applied.cdvcs.count, applied.cdvcs.last),
        (3, Some(good)),
        "the failing commit is not recorded"
    );

    // Fixed reducers: the stream resumes at the failing commit and applies it once.
    let fixed = Reducers::<i64>::new().with("add", |s, v| {
        *s += v.as_i64().unwrap_or(3);
        Ok(())
    });
    let stream = stream_into_identity(
        &alice,
        &log,
        fixed.clone(),
        StoreIdentity::<i64>::open(store.clone(), "s").unwrap(),
    );
    let p = stream.settle(T).await.unwrap();
    assert_eq!(p.applied, 2);
    stream.stop(T).await.unwrap();
    assert_eq!(StoreIdentity::<i64>::load(&*store, "s").unwrap().0, 10);

    // A missing reducer is an error too (not a silent skip), with the in-memory identity.
    bounded(alice.transact(&log, vec![Transaction::new("mul", 2)])).await.unwrap();
    let mem = MemoryIdentity::<i64>::default();
    let stream = stream_into_identity(&alice, &log, fixed, mem.clone());
    let err = stream.finished(T).await.unwrap_err();
    assert!(matches!(&err, RealizeError::NoReducer { function, .. } if function == "mul"), "{err}");
    assert_eq!(mem.get(), 10);
    assert_eq!(mem.log().cdvcs.count, 5, "the root and four commits, not the one without a reducer");
    bounded(alice.shutdown()).await;
}

/// Port of the original's `ormap-streaming`: the identity tracks assoc, dissoc and re-assoc, and
/// the conflict callback gets `{key: #{commits}}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ormap_streaming_tracks_assoc_dissoc_reassoc_and_reports_conflicts() {
    let alice = stage("mail:alice@example.org").await;
    let map = bounded(alice.create_ormap(None)).await.unwrap();
    let reducers = Reducers::<BTreeMap<Value, Value>>::new()
        .with("assoc", |m, v| {
            let kv = v.as_list().filter(|l| l.len() == 2).ok_or("expected [key value]")?;
            m.insert(kv[0].clone(), kv[1].clone());
            Ok(())
        })
        .with("dissoc", |m, k| {
            m.remove(k);
            Ok(())
        });
    type Conflicts = Vec<BTreeMap<Value, BTreeSet<ContentId>>>;
    let conflicts: Arc<Mutex<Conflicts>> = Arc::default();
    let seen = conflicts.clone();
    let options = StreamOptions::default().on_ormap_conflict(move |c| seen.lock().unwrap().push(c.clone()));
    let ident = MemoryIdentity::<BTreeMap<Value, Value>>::default();
    let stream = stream_into_identity_with(&alice, &map, reducers, ident.clone(), options);
    let assoc = |k: &str, v: &str| vec![Transaction::new("assoc", Value::list([k, v]))];

    bounded(alice.assoc(&map, "foo".into(), assoc("foo", "bar"))).await.unwrap();
    stream.settle(T).await.unwrap();
    assert_eq!(ident.get(), BTreeMap::from([(Value::from("foo"), Value::from("bar"))]));
    bounded(alice.dissoc(&map, "foo".into(), vec![Transaction::new("dissoc", "foo")])).await.unwrap();
    stream.settle(T).await.unwrap();
    assert_eq!(ident.get(), BTreeMap::new());
    let baz = bounded(alice.assoc(&map, "foo".into(), assoc("foo", "baz"))).await.unwrap();
    stream.settle(T).await.unwrap();
    assert_eq!(ident.get(), BTreeMap::from([(Value::from("foo"), Value::from("baz"))]));
    assert!(conflicts.lock().unwrap().is_empty());

    // A second live value of one key is a conflict, reported before it is applied.
    let qux = bounded(alice.assoc(&map, "foo".into(), assoc("foo", "qux"))).await.unwrap();
    stream.settle(T).await.unwrap();
    assert_eq!(
        conflicts.lock().unwrap().clone(),
        vec![BTreeMap::from([(Value::from("foo"), BTreeSet::from([baz, qux]))])]
    );
    assert_eq!(ident.get(), BTreeMap::from([(Value::from("foo"), Value::from("qux"))]));
    // Every entry is recorded once: nothing is applied again.
    let p = stream.settle(T).await.unwrap();
    assert_eq!(p.applied, 4);
    stream.stop(T).await.unwrap();
    bounded(alice.shutdown()).await;
}

/// Port of the original's `lwwr-stage-test` streaming part: the identity converges to `{:b "2"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lww_register_streams_its_value() {
    let alice = stage("mail:alice@example.org").await;
    let reg = bounded(alice.create_lww(None)).await.unwrap();
    let ident = MemoryIdentity::<Value>::default();
    let reducers = Reducers::<Value>::new().with(LWW_SET, |s, v| {
        *s = v.clone();
        Ok(())
    });
    let stream = stream_into_identity(&alice, &reg, reducers, ident.clone());
    let p = stream.settle(T).await.unwrap();
    assert_eq!((p.applied, ident.get()), (0, Value::Nil), "a never-written register applies nothing");
    bounded(alice.set(&reg, Value::map([("a", 1)]))).await.unwrap();
    stream.settle(T).await.unwrap();
    assert_eq!(ident.get(), Value::map([("a", 1)]));
    bounded(alice.set(&reg, Value::map([("b", "2")]))).await.unwrap();
    let p = stream.settle(T).await.unwrap();
    assert_eq!(ident.get(), Value::map([("b", "2")]));
    assert_eq!(p.applied, 2);
    stream.stop(T).await.unwrap();
    bounded(alice.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gset_streams_new_elements_once() {
    let alice = stage("mail:alice@example.org").await;
    let store = alice.node().store().clone();
    let set = bounded(alice.create_gset(None)).await.unwrap();
    let reducers = || {
        Reducers::<Vec<i64>>::new().with(GSET_ADD, |s, v| {
            s.push(v.as_i64().ok_or("not an integer")?);
            Ok(())
        })
    };
    bounded(alice.add(&set, 1.into())).await.unwrap();
    bounded(alice.add(&set, 2.into())).await.unwrap();
    let stream = stream_into_identity(
        &alice,
        &set,
        reducers(),
        StoreIdentity::<Vec<i64>>::open(store.clone(), "g").unwrap(),
    );
    stream.settle(T).await.unwrap();
    stream.stop(T).await.unwrap();
    bounded(alice.add(&set, 3.into())).await.unwrap();
    bounded(alice.add(&set, 2.into())).await.unwrap();
    let stream = stream_into_identity(
        &alice,
        &set,
        reducers(),
        StoreIdentity::<Vec<i64>>::open(store.clone(), "g").unwrap(),
    );
    let p = stream.settle(T).await.unwrap();
    assert_eq!(p.applied, 1, "only the new element");
    stream.stop(T).await.unwrap();
    assert_eq!(StoreIdentity::<Vec<i64>>::load(&*store, "g").unwrap().0, vec![1, 2, 3]);
    bounded(alice.shutdown()).await;
}

#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<(ContentId, usize)>>>);

impl Sink for Collect {
    fn deliver(&mut self, unit: &Unit) -> Result<(), String> {
        let txs = unit.commits.iter().map(|c| c.transactions.len()).sum();
        self.0.lock().unwrap().push((unit.id, txs));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), String> {
        self.0.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_gets_each_commit_id_with_its_transactions() {
    let alice = stage("mail:alice@example.org").await;
    let store = alice.node().store().clone();
    let log = bounded(alice.create_cdvcs(None)).await.unwrap();
    for i in 0..5 {
        bounded(alice.transact(&log, vec![Transaction::new("add", i), Transaction::new("add", i)]))
            .await
            .unwrap();
    }
    let sink = Collect::default();
    let stream = stream_into_identity(
        &alice,
        &log,
        Reducers::new(),
        SinkIdentity::new(sink.clone(), store.clone(), "sink"),
    );
    stream.settle(T).await.unwrap();
    stream.stop(T).await.unwrap();
    let history = bounded(alice.cdvcs(&log)).await.unwrap().linearize();
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), history);
    assert_eq!(got.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![0, 2, 2, 2, 2, 2]);
    // Restarted: nothing is delivered again.
    let stream =
        stream_into_identity(&alice, &log, Reducers::new(), SinkIdentity::new(sink.clone(), store, "sink"));
    assert_eq!(stream.settle(T).await.unwrap().applied, 0);
    stream.stop(T).await.unwrap();
    bounded(alice.shutdown()).await;
}
