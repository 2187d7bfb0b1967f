//! IndexedDB as a write-behind journal of the stage's memory store.
//!
//! The core runs on a journaling [`MemoryStore`](replikativ_store::MemoryStore): every raw write
//! is recorded. At each barrier the driver takes the writes since the last one and puts them into
//! one object store (`kv`,
//! binary keys, the store's internal key layout) in **one** `readwrite` transaction with
//! `durability: "strict"` (Chrome's default since 121 is `relaxed`, where `complete` fires before
//! the data is on disk). The core hears "barrier done" only from the transaction's `complete`
//! event, so nothing is acknowledged that a reload could lose; an `abort` or `error` fails the
//! barrier (the waiting replies fail, nothing is acknowledged). Transactions on one object store
//! complete in the order they were created, so a later barrier never overtakes an earlier one.
//!
//! On start the whole object store is read back into the memory store (a browser holds only its
//! own subscriptions).

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::oneshot;
use js_sys::{Array, Uint8Array};
use replikativ_store::JournalOp;
use wasm_bindgen::prelude::*;
use web_sys::{IdbDatabase, IdbFactory, IdbKeyRange, IdbOpenDbRequest, IdbRequest, IdbTransaction};

/// The object store holding the pairs.
pub const OBJECT_STORE: &str = "kv";
/// The database schema version.
pub const DB_VERSION: u32 = 1;

#[wasm_bindgen]
extern "C" {
    /// An `IDBDatabase`, for the one method web-sys has only behind its unstable flag.
    type Db;
    /// `IDBDatabase.transaction(names, mode, options)`.
    #[wasm_bindgen(catch, method, js_name = transaction)]
    fn transaction_with_options(
        this: &Db,
        store: &str,
        mode: &str,
        options: &JsValue,
    ) -> Result<IdbTransaction, JsValue>;
}

/// An open journal database.
#[derive(Debug, Clone)]
pub struct Journal {
    db: IdbDatabase,
    name: String,
}

fn js_error(e: JsValue) -> String {
    if let Some(d) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", d.name(), d.message());
    }
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    format!("{e:?}")
}

fn factory() -> Result<IdbFactory, String> {
    let global = js_sys::global();
    let idb = js_sys::Reflect::get(&global, &"indexedDB".into()).unwrap_or(JsValue::UNDEFINED);
    if idb.is_undefined() || idb.is_null() {
        return Err("IndexedDB is not available here (Node.js has none): use store \"memory\"".into());
    }
    idb.dyn_into::<IdbFactory>().map_err(|_| "globalThis.indexedDB is not an IDBFactory".into())
}

/// Waits for a request's `success` (its result) or `error`.
async fn request(req: &IdbRequest) -> Result<JsValue, String> {
    let (tx, rx) = oneshot::channel::<Result<JsValue, String>>();
    let tx = Rc::new(RefCell::new(Some(tx)));
    let (t1, t2) = (tx.clone(), tx);
    let r1 = req.clone();
    let on_success = Closure::once(move || {
        if let Some(tx) = t1.borrow_mut().take() {
            let _ = tx.send(r1.result().map_err(js_error));
        }
    });
    let r2 = req.clone();
    let on_error = Closure::once(move || {
        if let Some(tx) = t2.borrow_mut().take() {
            let why = r2.error().ok().flatten().map(|d| format!("{}: {}", d.name(), d.message()));
            let _ = tx.send(Err(why.unwrap_or_else(|| "IndexedDB request failed".into())));
        }
    });
    req.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
    req.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let result = rx.await.unwrap_or_else(|_| Err("IndexedDB request dropped".into()));
    req.set_onsuccess(None);
    req.set_onerror(None);
    result
}

impl Journal {
    /// Opens (or creates) the database `name` and reads every pair back.
    pub async fn open(name: &str) -> Result<(Journal, Vec<(Vec<u8>, Vec<u8>)>), String> {
        let open: IdbOpenDbRequest = factory()?.open_with_u32(name, DB_VERSION).map_err(js_error)?;
        let upgrade_req = open.clone();
        let on_upgrade = Closure::<dyn FnMut()>::new(move || {
            if let Ok(db) = upgrade_req.result().and_then(|r| r.dyn_into::<IdbDatabase>())
                && !db.object_store_names().contains(OBJECT_STORE)
            {
                let _ = db.create_object_store(OBJECT_STORE);
            }
        });
        open.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
        let db: IdbDatabase = request(&open)
            .await
            .map_err(|e| format!("opening IndexedDB {name:?}: {e}"))?
            .dyn_into()
            .map_err(|_| "IndexedDB open gave no database".to_owned())?;
        open.set_onupgradeneeded(None);
        drop(on_upgrade);
        let journal = Journal { db, name: name.to_owned() };
        let pairs = journal.load().await?;
        Ok((journal, pairs))
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every stored pair, sorted by key.
    pub async fn load(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
        let tx = self.db.transaction_with_str(OBJECT_STORE).map_err(js_error)?;
        let store = tx.object_store(OBJECT_STORE).map_err(js_error)?;
        let keys = request(&store.get_all_keys().map_err(js_error)?).await?;
        let values = request(&store.get_all().map_err(js_error)?).await?;
        let (keys, values): (Array, Array) = (keys.unchecked_into(), values.unchecked_into());
        if keys.length() != values.length() {
            return Err("IndexedDB returned keys and values of different counts".into());
        }
        let bytes = |v: JsValue| -> Result<Vec<u8>, String> {
            if let Some(b) = v.dyn_ref::<js_sys::ArrayBuffer>() {
                Ok(Uint8Array::new(b).to_vec())
            } else if let Some(b) = v.dyn_ref::<Uint8Array>() {
                Ok(b.to_vec())
            } else {
                Err(format!("a stored record is not binary: {v:?}"))
            }
        };
        keys.iter().zip(values.iter()).map(|(k, v)| Ok((bytes(k)?, bytes(v)?))).collect()
    }

    /// Writes `ops` in one strict `readwrite` transaction; `done` hears its `complete` (Ok) or its
    /// `abort`/`error`. An error starting the transaction is returned (then `done` is never called).
    pub fn write(
        &self,
        ops: Vec<JournalOp>,
        done: impl FnOnce(Result<(), String>) + 'static,
    ) -> Result<(), String> {
        let options = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&options, &"durability".into(), &"strict".into());
        let db: &Db = self.db.unchecked_ref();
        let tx = db.transaction_with_options(OBJECT_STORE, "readwrite", &options).map_err(js_error)?;
        let store = tx.object_store(OBJECT_STORE).map_err(js_error)?;
        let key = |k: &[u8]| JsValue::from(Uint8Array::from(k));
        for op in ops {
            let r = match &op {
                JournalOp::Put(k, v) => store.put_with_key(&Uint8Array::from(&v[..]), &key(k)).map(drop),
                JournalOp::Delete(k) => store.delete(&key(k)).map(drop),
                JournalOp::DeleteRange(s, e) => {
                    IdbKeyRange::bound_with_lower_open_and_upper_open(&key(s), &key(e), false, true)
                        .and_then(|range| store.delete(&range))
                        .map(drop)
                }
            };
            if let Err(e) = r {
                let _ = tx.abort();
                return Err(js_error(e));
            }
        }
        let done = Rc::new(RefCell::new(Some(done)));
        let (d1, d2) = (done.clone(), done);
        let t2 = tx.clone();
        let on_complete = Closure::once_into_js(move || {
            if let Some(f) = d1.borrow_mut().take() {
                f(Ok(()));
            }
        });
        let on_fail = Closure::<dyn FnMut()>::new(move || {
            if let Some(f) = d2.borrow_mut().take() {
                let why = t2.error().map(|d| format!("{}: {}", d.name(), d.message()));
                f(Err(why.unwrap_or_else(|| "the IndexedDB transaction was aborted".into())));
            }
        })
        .into_js_value();
        tx.set_oncomplete(Some(on_complete.unchecked_ref()));
        tx.set_onabort(Some(on_fail.unchecked_ref()));
        tx.set_onerror(Some(on_fail.unchecked_ref()));
        Ok(())
    }

    /// Closes the database connection (later writes fail).
    pub fn close(&self) {
        self.db.close();
    }

    /// Deletes the database `name` (a page's "forget everything").
    pub async fn delete(name: &str) -> Result<(), String> {
        let req = factory()?.delete_database(name).map_err(js_error)?;
        request(&req).await.map(drop)
    }
}
