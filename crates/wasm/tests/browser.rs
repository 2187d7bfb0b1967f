//! The IndexedDB journal in headless Chromium (wasm-bindgen-test, `run_in_browser`):
//! `CHROMEDRIVER=/usr/bin/chromedriver CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//! cargo test --target wasm32-unknown-unknown -p replikativ-wasm` (see `.ci/browser`).
#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::rc::Rc;

use futures::channel::oneshot;
use js_sys::{Array, Object, Reflect};
use replikativ_store::JournalOp;
use replikativ_wasm::Stage;
use replikativ_wasm::persist::Journal;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn fresh_name() -> String {
    format!("test-{}", uuid::Uuid::new_v4())
}

fn put(k: &[u8], v: &[u8]) -> JournalOp {
    JournalOp::Put(k.to_vec(), v.to_vec())
}

/// Writes `ops`; resolves with the barrier's result. Checks that `done` did not run before
/// `write` returned (the transaction cannot have completed yet).
async fn barrier(journal: &Journal, ops: Vec<JournalOp>) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    journal.write(ops, move |r| {
        c.set(true);
        let _ = tx.send(r);
    })?;
    assert!(!called.get(), "a barrier is not reported before its transaction completes");
    rx.await.expect("the barrier reports")
}

#[wasm_bindgen_test]
async fn a_barrier_is_reported_after_complete_and_its_writes_survive_a_reopen() {
    let name = fresh_name();
    let (journal, pairs) = Journal::open(&name).await.unwrap();
    assert!(pairs.is_empty());
    barrier(&journal, vec![put(b"a", b"1"), put(b"b", b"2"), put(b"c", b"3"), put(b"d", b"4")])
        .await
        .unwrap();
    barrier(
        &journal,
        vec![
            JournalOp::Delete(b"a".to_vec()),
            JournalOp::DeleteRange(b"b".to_vec(), b"d".to_vec()),
            put(b"e", b"5"),
        ],
    )
    .await
    .unwrap();
    journal.close();
    // A second connection (as after a reload) reads what completed.
    let (again, pairs) = Journal::open(&name).await.unwrap();
    assert_eq!(pairs, vec![(b"d".to_vec(), b"4".to_vec()), (b"e".to_vec(), b"5".to_vec())]);
    again.close();
    Journal::delete(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_barrier_on_a_closed_database_fails_instead_of_reporting_done() {
    let name = fresh_name();
    let (journal, _) = Journal::open(&name).await.unwrap();
    journal.close();
    let err = barrier(&journal, vec![put(b"a", b"1")]).await.unwrap_err();
    assert!(err.contains("InvalidStateError"), "{err}");
    Journal::delete(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn an_aborted_transaction_fails_the_barrier() {
    let name = fresh_name();
    let (journal, _) = Journal::open(&name).await.unwrap();
    // A key too large for the store's limit is fine for IndexedDB, but an invalid key (an empty
    // range) makes the delete throw, which aborts the transaction before anything is written.
    let r =
        barrier(&journal, vec![put(b"x", b"1"), JournalOp::DeleteRange(b"z".to_vec(), b"a".to_vec())]).await;
    assert!(r.is_err(), "{r:?}");
    journal.close();
    let (again, pairs) = Journal::open(&name).await.unwrap();
    assert!(pairs.is_empty(), "nothing of an aborted barrier is stored: {pairs:?}");
    again.close();
    Journal::delete(&name).await.unwrap();
}

fn options(user: &str, name: &str) -> JsValue {
    let o = Object::new();
    Reflect::set(&o, &"user".into(), &user.into()).unwrap();
    Reflect::set(&o, &"store".into(), &"indexeddb".into()).unwrap();
    Reflect::set(&o, &"name".into(), &name.into()).unwrap();
    o.into()
}

fn txs(f: &str, n: f64) -> JsValue {
    let pair = Array::of2(&f.into(), &n.into());
    Array::of1(&pair).into()
}

#[wasm_bindgen_test]
async fn an_acknowledged_write_is_there_after_a_reload() {
    let name = fresh_name();
    let stage = Stage::create(options("mail:alice@example.org", &name)).await.map_err(JsValue::from).unwrap();
    let list =
        JsFuture::from(stage.create_datatype("ormap", None).unwrap()).await.unwrap().as_string().unwrap();
    JsFuture::from(stage.assoc(&list, "milk".into(), txs("add", 2.0)).unwrap()).await.unwrap();
    let log =
        JsFuture::from(stage.create_datatype("cdvcs", None).unwrap()).await.unwrap().as_string().unwrap();
    JsFuture::from(stage.transact(&log, txs("deposit", 10.0)).unwrap()).await.unwrap();
    stage.close();

    // "Reload": a new stage on the same database.
    let again = Stage::create(options("mail:alice@example.org", &name)).await.map_err(JsValue::from).unwrap();
    let got = again.get(&list, "milk".into()).map_err(JsValue::from).unwrap();
    assert_eq!(got.length(), 1);
    let commit = got.get(0);
    let tx: Array = Reflect::get(&commit, &"transactions".into())
        .unwrap()
        .unchecked_into::<Array>()
        .get(0)
        .unchecked_into();
    assert_eq!(tx.get(0).as_string().as_deref(), Some("add"));
    assert_eq!(tx.get(1).as_f64(), Some(2.0));
    assert_eq!(again.log(&log).map_err(JsValue::from).unwrap().length(), 2, "root and one commit");
    again.close();
    Stage::delete_database(name).await.map_err(JsValue::from).unwrap();
}
