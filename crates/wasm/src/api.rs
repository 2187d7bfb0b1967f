//! The JS-facing stage (`Stage` in JS; the `replikativ` npm package wraps it).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Object, Reflect};
use replikativ_crdt::{ActorId, Address, ContentId, CrdtKind};
use replikativ_peer::proto::{Command, CommitValue, Peer, PeerConfig, Query, Reply, StageError};
use replikativ_store::MemoryStore;
use uuid::Uuid;
use wasm_bindgen::prelude::*;

use crate::driver::{self, Inner, Shared};
use crate::link;
use crate::persist::Journal;
use crate::value::{to_js, to_transactions, to_value, transactions_to_js};

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn get_opt(opts: &JsValue, key: &str) -> Option<JsValue> {
    if !opts.is_object() {
        return None;
    }
    Reflect::get(opts, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn parse_address(text: &str) -> Result<Address, JsError> {
    text.parse::<Address>().map_err(err)
}

fn parse_id(text: &str) -> Result<ContentId, JsError> {
    text.parse::<ContentId>().map_err(|e| JsError::new(&format!("commit id {text:?}: {e}")))
}

fn set(o: &Object, k: &str, v: JsValue) {
    let _ = Reflect::set(o, &k.into(), &v);
}

/// A commit as `{id, parents, author, ts, transactions}`.
pub(crate) fn commit_to_js(c: &CommitValue) -> JsValue {
    let o = Object::new();
    set(&o, "id", c.id.to_string().into());
    set(&o, "parents", c.parents.iter().map(|p| JsValue::from(p.to_string())).collect::<Array>().into());
    set(&o, "author", c.author.clone().into());
    set(&o, "ts", (c.ts as f64).into());
    set(&o, "transactions", transactions_to_js(&c.transactions));
    o.into()
}

fn ids_to_js<'a>(ids: impl IntoIterator<Item = &'a ContentId>) -> JsValue {
    ids.into_iter().map(|id| JsValue::from(id.to_string())).collect::<Array>().into()
}

fn unexpected(r: Reply) -> JsError {
    err(StageError::UnexpectedReply(format!("{r:?}")))
}

/// A replication stage in the browser or Node.js: a peer on a memory store (optionally journaled
/// to IndexedDB) with a websocket link to a node.
#[wasm_bindgen]
pub struct Stage {
    shared: Shared,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("peer_id", &self.peer_id()).finish()
    }
}

#[wasm_bindgen]
impl Stage {
    /// `Stage.create({user, store: "memory" | "indexeddb", name?, peerId?, heartbeatMs?,
    /// deadAfterMs?})`: opens a stage. With `"indexeddb"` the state of database `name` (default
    /// `"replikativ"`) is loaded back. `heartbeatMs` (default 10 s, at least 100 ms) and
    /// `deadAfterMs` (default 25 s, at least two heartbeats) time the link's heartbeat.
    pub async fn create(options: JsValue) -> Result<Stage, JsError> {
        // A user key (the text of a key file, `Stage.generateKey()`): proved to a node with
        // authentication on; the user defaults to its `key:...` id.
        let key = match get_opt(&options, "key").and_then(|v| v.as_string()) {
            Some(text) => Some(
                replikativ_peer::auth::SecretKey::from_file_text(&text)
                    .map_err(|e| JsError::new(&format!("Stage.create: key: {e}")))?,
            ),
            None => None,
        };
        let user = get_opt(&options, "user")
            .and_then(|v| v.as_string())
            .or_else(|| key.as_ref().map(|k| k.public().user_id()))
            .ok_or_else(|| {
                JsError::new(
                    "Stage.create needs {user: \"mail:you@example.org\"} or {key} (Stage.generateKey())",
                )
            })?;
        Address::validate_user(&user).map_err(err)?;
        let node = replikativ_peer::auth::SecretKey::generate().map_err(err)?;
        let identity = replikativ_peer::auth::Identity { node, user: key };
        let kind = get_opt(&options, "store").and_then(|v| v.as_string()).unwrap_or_else(|| "memory".into());
        let (store, journal) = match kind.as_str() {
            "memory" => (MemoryStore::new(), None),
            "indexeddb" => {
                let name = get_opt(&options, "name")
                    .and_then(|v| v.as_string())
                    .unwrap_or_else(|| "replikativ".into());
                let (journal, pairs) = Journal::open(&name).await.map_err(|e| JsError::new(&e))?;
                (MemoryStore::restore(pairs), Some(journal))
            }
            other => return Err(JsError::new(&format!("store {other:?}: use \"memory\" or \"indexeddb\""))),
        };
        let store = Arc::new(store);
        let peer_id = get_opt(&options, "peerId")
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| format!("browser-{}", Uuid::new_v4()));
        let actor = ActorId::from(Uuid::new_v4());
        let peer = Peer::open(store.clone(), &peer_id, false, actor, PeerConfig::default()).map_err(err)?;
        let shared = Rc::new(RefCell::new(Inner::new(peer, store, user, journal, identity)));
        // Capabilities (text from `grant` or `replikativ key grant`) presented after each handshake.
        if let Some(list) = get_opt(&options, "caps") {
            let list: js_sys::Array = list
                .dyn_into()
                .map_err(|_| JsError::new("Stage.create: caps must be an array of strings"))?;
            for c in list.iter() {
                let text = c.as_string().ok_or_else(|| JsError::new("Stage.create: caps must be strings"))?;
                let cap = replikativ_peer::auth::ReadCap::from_text(&text)
                    .map_err(|e| JsError::new(&format!("Stage.create: caps: {e}")))?;
                shared.borrow_mut().caps.push(cap);
            }
        }
        // The heartbeat's timing: at least 100 ms, and a link is taken for dead after at least
        // two heartbeat intervals.
        let ms =
            |k: &str| get_opt(&options, k).and_then(|v| v.as_f64()).filter(|v| v.is_finite() && *v > 0.0);
        if let Some(h) = ms("heartbeatMs") {
            shared.borrow_mut().link.heartbeat_ms = h.max(100.0);
        }
        if let Some(d) = ms("deadAfterMs") {
            let mut inner = shared.borrow_mut();
            let every =
                if inner.link.heartbeat_ms > 0.0 { inner.link.heartbeat_ms } else { link::HEARTBEAT_MS };
            inner.link.dead_after_ms = d.max(2.0 * every);
        }
        driver::start(&shared);
        Ok(Stage { shared })
    }

    /// A new user key, as key-file text (what `replikativ key gen` writes): keep it where the
    /// application keeps secrets, and pass it to `Stage.create({key})`.
    #[wasm_bindgen(js_name = generateKey)]
    pub fn generate_key() -> Result<String, JsError> {
        let key = replikativ_peer::auth::SecretKey::generate().map_err(err)?;
        Ok(key.to_file_text().to_string())
    }

    /// Lets `grantee` (`key:...`) read `addresses` of this stage's user (all of them if empty)
    /// for `ms` milliseconds, and write them too if `write`: a capability as text, for the
    /// grantee's `Stage.create({caps})` (or `--cap FILE`). Needs `Stage.create({key})`.
    pub fn grant(
        &self,
        grantee: &str,
        addresses: Vec<String>,
        ms: f64,
        write: bool,
    ) -> Result<String, JsError> {
        let inner = self.shared.borrow();
        let key =
            inner.identity.user.as_ref().ok_or_else(|| JsError::new("grant needs a stage with a key"))?;
        let grantee: replikativ_peer::auth::PublicKey = grantee.parse().map_err(err)?;
        let mut set = std::collections::BTreeSet::new();
        for a in addresses {
            let a = parse_address(&a)?;
            if a.user != key.public().user_id() {
                return Err(JsError::new(&format!("{a} is not an address of this stage's key")));
            }
            set.insert(a);
        }
        if !ms.is_finite() || ms <= 0.0 {
            return Err(JsError::new("grant: ms must be a positive number"));
        }
        let until = js_sys::Date::now() + ms;
        Ok(replikativ_peer::auth::ReadCap::issue_with(key, grantee, set, until as u64, write).to_text())
    }

    /// The stage's user (the owner of the addresses it creates).
    #[wasm_bindgen(getter)]
    pub fn user(&self) -> String {
        self.shared.borrow().user.clone()
    }

    /// The peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.shared.borrow().peer.id().to_owned()
    }

    /// Connects to a node (`ws://` or `wss://`), reconnecting whenever the link drops; resolves
    /// once the link is first open (it keeps trying meanwhile: see `connectionState`).
    pub fn connect(&self, url: String) -> Result<js_sys::Promise, JsError> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(JsError::new(&format!("connect({url:?}): the URL must start with ws:// or wss://")));
        }
        if self.shared.borrow().closed {
            return Err(err(StageError::NodeGone));
        }
        let rx = link::opened(&self.shared);
        link::connect(&self.shared, url);
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            rx.await.map(|_| JsValue::UNDEFINED).map_err(|_| JsValue::from(err("the stage closed")))
        }))
    }

    /// Drops the link and stops reconnecting (edits go on locally and sync on the next connect).
    pub fn disconnect(&self) {
        link::disconnect(&self.shared);
    }

    /// Disconnects, stops every timer and closes the IndexedDB database; later calls fail.
    pub fn close(&self) {
        link::disconnect(&self.shared);
        self.shared.borrow_mut().shut();
    }

    /// `{state: "offline" | "connecting" | "open" | "reconnecting", pending, url, attempts,
    /// lastClose}`: `pending` counts local writes the node has not acknowledged yet.
    #[wasm_bindgen(js_name = connectionState)]
    pub fn connection_state(&self) -> JsValue {
        self.shared.borrow().link.to_js()
    }

    /// Calls `callback(state)` whenever the connection state or the pending count changes;
    /// returns an id for `off`.
    #[wasm_bindgen(js_name = onConnectionState)]
    pub fn on_connection_state(&self, callback: Function) -> f64 {
        self.shared.borrow_mut().add_state_listener(callback) as f64
    }

    /// Calls `callback({address, local, kind})` after each durable change at `address`; returns
    /// an id for `off`.
    #[wasm_bindgen(js_name = onChange)]
    pub fn on_change(&self, address: &str, callback: Function) -> Result<f64, JsError> {
        let address = parse_address(address)?;
        Ok(self.shared.borrow_mut().add_change_listener(address, callback) as f64)
    }

    /// Removes a listener added by `onChange` or `onConnectionState`.
    pub fn off(&self, id: f64) -> bool {
        self.shared.borrow_mut().remove_listener(id as u64)
    }

    /// Subscribes to addresses (one string or a list): their data arrives from the node.
    pub fn subscribe(&self, addresses: JsValue) -> Result<js_sys::Promise, JsError> {
        let list: Vec<String> = if let Some(s) = addresses.as_string() {
            vec![s]
        } else if Array::is_array(&addresses) {
            Array::from(&addresses).iter().map(|v| v.as_string().unwrap_or_default()).collect()
        } else {
            return Err(JsError::new("subscribe takes an address or a list of addresses"));
        };
        let addresses: BTreeSet<Address> = list.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?;
        Ok(self.write(Command::Subscribe { addresses }, |_| JsValue::UNDEFINED))
    }

    /// Creates a datatype (`"ormap" | "cdvcs" | "lww" | "gset"`) owned by the stage's user, with
    /// a given UUID or a random one; resolves to its address `USER/UUID`.
    #[wasm_bindgen(js_name = createDatatype)]
    pub fn create_datatype(&self, kind: &str, id: Option<String>) -> Result<js_sys::Promise, JsError> {
        let kind = match kind {
            "ormap" => CrdtKind::Ormap,
            "cdvcs" => CrdtKind::Cdvcs,
            "lww" => CrdtKind::Lww,
            "gset" => CrdtKind::Gset,
            other => return Err(JsError::new(&format!("datatype {other:?}: use ormap, cdvcs, lww or gset"))),
        };
        let id = match id {
            Some(text) => Uuid::parse_str(&text).map_err(|e| JsError::new(&format!("id {text:?}: {e}")))?,
            None => Uuid::new_v4(),
        };
        let user = self.user();
        let address = Address::new(user.clone(), id).map_err(err)?;
        let text = address.to_string();
        Ok(self.write(Command::Create { address, kind, author: user }, move |_| text.clone().into()))
    }

    /// OR-Map: adds a value (transactions `[[fn, params], ...]`) under `key`; resolves to the
    /// commit id once durable.
    pub fn assoc(&self, address: &str, key: JsValue, txs: JsValue) -> Result<js_sys::Promise, JsError> {
        let cmd = Command::Assoc {
            address: parse_address(address)?,
            key: to_value(&key).map_err(|e| JsError::new(&e))?,
            txs: to_transactions(&txs).map_err(|e| JsError::new(&e))?,
            author: self.user(),
        };
        Ok(self.write(cmd, commit_reply))
    }

    /// OR-Map: replaces every value of `key` seen here with a new one, in one op.
    pub fn put(&self, address: &str, key: JsValue, txs: JsValue) -> Result<js_sys::Promise, JsError> {
        let cmd = Command::Put {
            address: parse_address(address)?,
            key: to_value(&key).map_err(|e| JsError::new(&e))?,
            txs: to_transactions(&txs).map_err(|e| JsError::new(&e))?,
            author: self.user(),
        };
        Ok(self.write(cmd, commit_reply))
    }

    /// OR-Map: removes every value of `key` seen here (with optional revert transactions).
    pub fn dissoc(&self, address: &str, key: JsValue, revert: JsValue) -> Result<js_sys::Promise, JsError> {
        let revert = if revert.is_undefined() || revert.is_null() {
            Vec::new()
        } else {
            to_transactions(&revert).map_err(|e| JsError::new(&e))?
        };
        let cmd = Command::Dissoc {
            address: parse_address(address)?,
            key: to_value(&key).map_err(|e| JsError::new(&e))?,
            revert,
            author: self.user(),
        };
        Ok(self.write(cmd, commit_reply))
    }

    /// OR-Map: the live values of `key`, as commits `{id, author, ts, transactions}` (several
    /// after concurrent assocs).
    pub fn get(&self, address: &str, key: JsValue) -> Result<Array, JsError> {
        let key = to_value(&key).map_err(|e| JsError::new(&e))?;
        match self.query(address, Query::Get { key })? {
            Reply::Commits(cs) => Ok(cs.iter().map(commit_to_js).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: the keys with live values.
    pub fn keys(&self, address: &str) -> Result<Array, JsError> {
        match self.query(address, Query::Keys)? {
            Reply::Keys(keys) => Ok(keys.iter().map(to_js).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// OR-Map: the keys with several live values, as `[{key, commits: [id, ...]}]`.
    pub fn conflicts(&self, address: &str) -> Result<Array, JsError> {
        match self.query(address, Query::Conflicts)? {
            Reply::Conflicts(map) => Ok(map
                .iter()
                .map(|(k, ids)| -> JsValue {
                    let o = Object::new();
                    set(&o, "key", to_js(k));
                    set(&o, "commits", ids_to_js(ids));
                    o.into()
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: commits transactions on the single head; resolves to the commit id.
    pub fn transact(&self, address: &str, txs: JsValue) -> Result<js_sys::Promise, JsError> {
        let cmd = Command::Transact {
            address: parse_address(address)?,
            txs: to_transactions(&txs).map_err(|e| JsError::new(&e))?,
            author: self.user(),
        };
        Ok(self.write(cmd, commit_reply))
    }

    /// CDVCS: the heads (several after concurrent commits).
    pub fn heads(&self, address: &str) -> Result<Array, JsError> {
        match self.query(address, Query::Heads)? {
            Reply::Heads(heads) => Ok(ids_to_js(&heads).unchecked_into()),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: the linearized history (the same order on every replica), as commits.
    pub fn log(&self, address: &str) -> Result<Array, JsError> {
        match self.query(address, Query::History)? {
            Reply::Commits(cs) => Ok(cs.iter().map(commit_to_js).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// CDVCS: merges the heads (default: all current heads, sorted) with optional correcting
    /// transactions; resolves to the merge commit's id.
    pub fn merge(
        &self,
        address: &str,
        heads: JsValue,
        correcting: JsValue,
    ) -> Result<js_sys::Promise, JsError> {
        let heads: Vec<ContentId> = if heads.is_undefined() || heads.is_null() {
            match self.query(address, Query::Heads)? {
                Reply::Heads(h) => h.into_iter().collect(),
                other => return Err(unexpected(other)),
            }
        } else {
            Array::from(&heads)
                .iter()
                .map(|h| parse_id(&h.as_string().unwrap_or_default()))
                .collect::<Result<_, _>>()?
        };
        let correcting = if correcting.is_undefined() || correcting.is_null() {
            Vec::new()
        } else {
            to_transactions(&correcting).map_err(|e| JsError::new(&e))?
        };
        let cmd = Command::Merge { address: parse_address(address)?, heads, correcting, author: self.user() };
        Ok(self.write(cmd, commit_reply))
    }

    /// LWW register: writes a value; resolves once durable.
    #[wasm_bindgen(js_name = lwwSet)]
    pub fn lww_set(&self, address: &str, value: JsValue) -> Result<js_sys::Promise, JsError> {
        let value = to_value(&value).map_err(|e| JsError::new(&e))?;
        Ok(self.write(Command::LwwSet { address: parse_address(address)?, value }, |_| JsValue::UNDEFINED))
    }

    /// LWW register: the value (`null` if never written).
    #[wasm_bindgen(js_name = lwwGet)]
    pub fn lww_get(&self, address: &str) -> Result<JsValue, JsError> {
        match self.query(address, Query::Register)? {
            Reply::Value(v) => Ok(to_js(&v)),
            other => Err(unexpected(other)),
        }
    }

    /// G-Set: adds an element; resolves once durable.
    #[wasm_bindgen(js_name = gsetAdd)]
    pub fn gset_add(&self, address: &str, element: JsValue) -> Result<js_sys::Promise, JsError> {
        let element = to_value(&element).map_err(|e| JsError::new(&e))?;
        Ok(self.write(Command::GsetAdd { address: parse_address(address)?, element }, |_| JsValue::UNDEFINED))
    }

    /// G-Set: the elements, in value order.
    pub fn elements(&self, address: &str) -> Result<Array, JsError> {
        match self.query(address, Query::Elements)? {
            Reply::Elements(es) => Ok(es.iter().map(to_js).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Whether the stage holds a datatype at `address` (created here or arrived from the node).
    pub fn has(&self, address: &str) -> Result<bool, JsError> {
        let address = parse_address(address)?;
        Ok(self.shared.borrow().peer.state(&address).is_some())
    }

    /// A realization stream over `address` (the npm package's `streamIntoIdentity` drives it).
    pub fn stream(&self, address: &str) -> Result<crate::realize::Stream, JsError> {
        Ok(crate::realize::Stream::new(self.shared.clone(), parse_address(address)?))
    }

    /// Deletes an IndexedDB database of a stage (close that stage first).
    #[wasm_bindgen(js_name = deleteDatabase)]
    pub async fn delete_database(name: String) -> Result<(), JsError> {
        Journal::delete(&name).await.map_err(|e| JsError::new(&e))
    }
}

fn commit_reply(r: Reply) -> JsValue {
    match r {
        Reply::Commit(id) => id.to_string().into(),
        _ => JsValue::UNDEFINED,
    }
}

impl Stage {
    fn write(&self, cmd: Command, ok: impl Fn(Reply) -> JsValue + 'static) -> js_sys::Promise {
        let shared = self.shared.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            match driver::command(&shared, cmd).await {
                Ok(r) => Ok(ok(r)),
                Err(e) => Err(err(e).into()),
            }
        })
    }

    fn query(&self, address: &str, query: Query) -> Result<Reply, JsError> {
        let address = parse_address(address)?;
        driver::read(&self.shared, Command::Query { address, query }).map_err(err)
    }
}
