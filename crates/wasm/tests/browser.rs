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

mod values {
    use js_sys::{BigInt, Map, Object, Reflect, Uint8Array};
    use replikativ_crdt::Value;
    use replikativ_wasm::value::{to_js, to_transactions, to_value};
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_test::*;

    #[wasm_bindgen_test]
    fn numbers_integers_and_bigints() {
        assert_eq!(to_value(&JsValue::from_f64(2.0)).unwrap(), Value::Int(2));
        assert_eq!(to_value(&JsValue::from_f64(1.5)).unwrap(), Value::Float(1.5));
        assert_eq!(to_value(&JsValue::from_f64(1e300)).unwrap(), Value::Float(1e300));
        assert!(matches!(to_value(&JsValue::from_f64(f64::NAN)).unwrap(), Value::Float(f) if f.is_nan()));
        let big = BigInt::new(&JsValue::from_str("1180591620717411303424")).unwrap(); // 2^70
        assert_eq!(to_value(&big.into()).unwrap(), Value::Int(1 << 70));
        // Back: a safe integer is a number, a larger one a BigInt.
        assert_eq!(to_js(&Value::Int((1 << 53) - 1)).as_f64(), Some(((1u64 << 53) - 1) as f64));
        let back = to_js(&Value::Int(1 << 53));
        assert!(back.is_bigint(), "{back:?}");
        assert_eq!(to_value(&back).unwrap(), Value::Int(1 << 53));
        let huge = BigInt::new(&JsValue::from_str(&format!("{}0", i128::MAX))).unwrap();
        assert!(to_value(&huge.into()).unwrap_err().contains("128 bits"));
    }

    #[wasm_bindgen_test]
    fn bytes_lists_objects_and_maps() {
        let bytes = Uint8Array::from(&[1u8, 2, 3][..]);
        assert_eq!(to_value(&bytes.into()).unwrap(), Value::Bytes(vec![1, 2, 3]));
        assert!(to_js(&Value::Bytes(vec![9])).is_instance_of::<Uint8Array>());
        let o = Object::new();
        Reflect::set(&o, &"b".into(), &JsValue::from_f64(1.0)).unwrap();
        Reflect::set(&o, &"a".into(), &JsValue::NULL).unwrap();
        let v = to_value(&o.into()).unwrap();
        assert_eq!(v, Value::map([("a", Value::Nil), ("b", Value::Int(1))]));
        // A map with a non-string key comes back as a JS Map, and round-trips.
        let m = Map::new();
        m.set(&JsValue::from_f64(7.0), &"seven".into());
        let v = to_value(&m.into()).unwrap();
        assert_eq!(v, Value::map([(Value::Int(7), Value::from("seven"))]));
        let back = to_js(&v);
        assert!(back.is_instance_of::<Map>());
        assert_eq!(to_value(&back).unwrap(), v);
        // A map with string keys comes back as a plain object.
        assert!(!to_js(&Value::map([("k", 1)])).is_instance_of::<Map>());
    }

    #[wasm_bindgen_test]
    fn refused_values_say_why() {
        let f = js_sys::Function::new_no_args("return 1");
        assert!(to_value(&f.into()).unwrap_err().contains("functions"));
        let o = Object::new();
        Reflect::set(&o, &"self".into(), &o).unwrap();
        assert!(to_value(&o.into()).unwrap_err().contains("deeper"));
        let not_pairs = js_sys::Array::of1(&JsValue::from_f64(1.0));
        assert!(to_transactions(&not_pairs.into()).unwrap_err().contains("[function, params]"));
        assert!(to_transactions(&js_sys::Array::new().into()).unwrap_err().contains("empty"));
        let one = js_sys::Array::of2(&"add".into(), &JsValue::from_f64(1.0));
        assert_eq!(to_transactions(&one.unchecked_into()).unwrap().len(), 1);
    }
}
