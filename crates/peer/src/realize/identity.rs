//! Reducers and identities: where realized state lives and how its applied-log is kept.
//!
//! | identity | state | applied-log | guarantee |
//! |---|---|---|---|
//! | [`MemoryIdentity`] | `Arc<Mutex<S>>` shared with the app | in memory | each unit once per process; a restart replays from scratch |
//! | [`StoreIdentity`] | msgpack `S` in the node's store | store keys, same [`Batch`] as `S` | exactly once across crashes |
//! | [`SinkIdentity`] | the application's [`Sink`] | store keys, written after the sink returns | at least once; the sink deduplicates by unit id |

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use replikativ_crdt::{ContentId, Transaction, Value};
use replikativ_store::{Batch, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RealizeError;
use super::plan::{AppliedLog, CdvcsLog, Record};

/// One commit of a unit, with its transactions resolved.
#[derive(Clone, PartialEq, Debug)]
pub struct UnitCommit {
    /// The commit id (for LWW and G-Set units, the unit id).
    pub id: ContentId,
    /// Its transactions, in order.
    pub transactions: Vec<Transaction>,
}

/// A unit ready to apply: its id, commits with transactions, and its applied-log record (see
/// [`super::plan::PlannedUnit`]).
#[derive(Clone, PartialEq, Debug)]
pub struct Unit {
    /// The unit id (a sink deduplicates by it).
    pub id: ContentId,
    /// The commits, in order.
    pub commits: Vec<UnitCommit>,
    /// What applying it records.
    pub record: Record,
}

/// A reducer: applies one transaction's params to the state (replikativ's eval-fn).
pub type Reducer<S> = Arc<dyn Fn(&mut S, &Value) -> Result<(), String> + Send + Sync>;

/// Reducers by transaction name. A transaction without a reducer is an error that stops the stream.
pub struct Reducers<S> {
    map: HashMap<String, Reducer<S>>,
}

impl<S> Default for Reducers<S> {
    fn default() -> Self {
        Reducers { map: HashMap::new() }
    }
}

impl<S> Clone for Reducers<S> {
    fn clone(&self) -> Self {
        Reducers { map: self.map.clone() }
    }
}

impl<S> fmt::Debug for Reducers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.map.keys().collect();
        names.sort();
        f.debug_struct("Reducers").field("names", &names).finish()
    }
}

impl<S> Reducers<S> {
    /// No reducers.
    pub fn new() -> Self {
        Reducers::default()
    }

    /// Adds (or replaces) the reducer for `name` (builder style).
    pub fn with(
        mut self,
        name: impl Into<String>,
        f: impl Fn(&mut S, &Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.map.insert(name.into(), Arc::new(f));
        self
    }

    /// Whether `name` has a reducer.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Applies a unit's transactions in order. Every name is checked before anything is applied,
    /// so a missing reducer changes nothing; a failing reducer leaves the transactions before it
    /// applied (the identities roll back where they can, see the module docs).
    pub fn apply_unit(&self, state: &mut S, unit: &Unit) -> Result<(), RealizeError> {
        for c in &unit.commits {
            if let Some(tx) = c.transactions.iter().find(|t| !self.map.contains_key(&t.function)) {
                return Err(RealizeError::NoReducer { function: tx.function.clone(), commit: c.id });
            }
        }
        for c in &unit.commits {
            for tx in &c.transactions {
                (self.map[&tx.function])(state, &tx.params).map_err(|message| RealizeError::Reducer {
                    function: tx.function.clone(),
                    commit: c.id,
                    message,
                })?;
            }
        }
        Ok(())
    }
}

/// Where a stream applies units to. Implemented by [`MemoryIdentity`], [`StoreIdentity`] and
/// [`SinkIdentity`]; calls are synchronous and run on a blocking thread.
pub trait Identity: Send + 'static {
    /// The state the reducers work on (`()` for a sink).
    type State: Send + 'static;

    /// The applied-log as it is now (read once when a stream starts, and after an error).
    fn applied(&mut self) -> Result<AppliedLog, RealizeError>;

    /// Applies `units` in order and records each; with `reset`, first resets the state (a CDVCS
    /// rebuild; the units' records then replace the log). On an error, the failing unit is not
    /// recorded.
    fn apply(
        &mut self,
        reducers: &Reducers<Self::State>,
        reset: bool,
        units: &[Unit],
    ) -> Result<(), RealizeError>;

    /// Called after each realized state: a durability barrier for durable identities.
    fn flush(&mut self) -> Result<(), RealizeError> {
        Ok(())
    }
}

/// An in-memory identity: the state in an `Arc<Mutex<S>>` shared with the application, the
/// applied-log in memory. Cheap to clone (clones share both), so a stopped stream can be resumed.
pub struct MemoryIdentity<S> {
    state: Arc<Mutex<S>>,
    log: Arc<Mutex<AppliedLog>>,
}

impl<S> Clone for MemoryIdentity<S> {
    fn clone(&self) -> Self {
        MemoryIdentity { state: self.state.clone(), log: self.log.clone() }
    }
}

impl<S: fmt::Debug> fmt::Debug for MemoryIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdentity").field("state", &self.state).finish_non_exhaustive()
    }
}

impl<S: Default> Default for MemoryIdentity<S> {
    fn default() -> Self {
        MemoryIdentity::new(S::default())
    }
}

impl<S> MemoryIdentity<S> {
    /// An identity starting at `state` with nothing applied.
    pub fn new(state: S) -> Self {
        MemoryIdentity {
            state: Arc::new(Mutex::new(state)),
            log: Arc::new(Mutex::new(AppliedLog::default())),
        }
    }

    /// The shared state.
    pub fn state(&self) -> Arc<Mutex<S>> {
        self.state.clone()
    }

    /// A copy of the state.
    pub fn get(&self) -> S
    where
        S: Clone,
    {
        self.state.lock().expect("poisoned").clone()
    }

    /// A copy of the applied-log.
    pub fn log(&self) -> AppliedLog {
        self.log.lock().expect("poisoned").clone()
    }
}

impl<S: Default + Send + 'static> Identity for MemoryIdentity<S> {
    type State = S;

    fn applied(&mut self) -> Result<AppliedLog, RealizeError> {
        Ok(self.log())
    }

    fn apply(&mut self, reducers: &Reducers<S>, reset: bool, units: &[Unit]) -> Result<(), RealizeError> {
        if reset {
            *self.state.lock().expect("poisoned") = S::default();
            self.log.lock().expect("poisoned").cdvcs = CdvcsLog::default();
        }
        for chunk in units.chunks(64) {
            let mut state = self.state.lock().expect("poisoned");
            for unit in chunk {
                reducers.apply_unit(&mut state, unit)?;
                self.log.lock().expect("poisoned").record(&unit.record);
            }
        }
        Ok(())
    }
}

/// The store keys of an identity named `name`.
#[derive(Clone, Debug)]
struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    fn new(name: &str) -> Keys {
        Keys { prefix: format!("realize/{name}/").into_bytes() }
    }

    fn key(&self, suffix: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), suffix].concat()
    }

    fn state(&self) -> Vec<u8> {
        self.key(b"state")
    }

    fn entry(&self, entry: &[u8]) -> Vec<u8> {
        self.key(&[b"e/".as_slice(), entry].concat())
    }

    fn load(&self, store: &dyn Store) -> Result<AppliedLog, RealizeError> {
        let mut log = AppliedLog::default();
        if let Some(b) = store.get(&self.key(b"cdvcs"))? {
            log.cdvcs = crate::proto::message::from_msgpack(&b).map_err(RealizeError::Codec)?;
        }
        if let Some(b) = store.get(&self.key(b"lww"))? {
            log.lww = Some(crate::proto::message::from_msgpack(&b).map_err(RealizeError::Codec)?);
        }
        let prefix = self.entry(b"");
        log.entries = store
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_vec())
            .collect::<BTreeSet<_>>();
        Ok(log)
    }

    fn record(&self, batch: &mut Batch, record: &Record) {
        match record {
            Record::Cdvcs(log) => {
                batch.push_put(self.key(b"cdvcs"), rmp_serde::to_vec(log).expect("a log encodes"))
            }
            Record::Entries(keys) => keys.iter().for_each(|k| batch.push_put(self.entry(k), Vec::new())),
            Record::Lww(id) => {
                batch.push_put(self.key(b"lww"), rmp_serde::to_vec(id).expect("an id encodes"))
            }
        }
    }
}

/// An identity kept in a store (normally the node's, `stage.node().store()`) under an
/// application-chosen name: the msgpack-encoded state and the applied-log are written in one
/// atomic [`Batch`] per group of units, so after a crash the state reflects exactly the recorded
/// units: **exactly once**. The state is also held in memory (`state()`) for the application.
pub struct StoreIdentity<S> {
    store: Arc<dyn Store>,
    keys: Keys,
    state: Arc<Mutex<S>>,
    chunk: usize,
    durable: bool,
}

impl<S> fmt::Debug for StoreIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreIdentity")
            .field("prefix", &String::from_utf8_lossy(&self.keys.prefix))
            .field("chunk", &self.chunk)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl<S: Serialize + DeserializeOwned + Default + Send + 'static> StoreIdentity<S> {
    /// Opens (or starts) the identity `name` in `store`, reading its state.
    pub fn open(store: Arc<dyn Store>, name: &str) -> Result<Self, RealizeError> {
        let keys = Keys::new(name);
        let state = Self::read(&*store, &keys)?;
        Ok(StoreIdentity { store, keys, state: Arc::new(Mutex::new(state)), chunk: 64, durable: true })
    }

    /// How many units go into one batch (default 64; 1 writes the state after every unit).
    pub fn chunk(mut self, units: usize) -> Self {
        self.chunk = units.max(1);
        self
    }

    /// Whether each realized state ends with the store's durability barrier (default true).
    /// Exactly-once holds either way; without it a crash may lose (and so redo) the latest units.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The state (updated after each batch is written).
    pub fn state(&self) -> Arc<Mutex<S>> {
        self.state.clone()
    }

    /// Reads the state and applied-log of identity `name` from a store, without streaming.
    pub fn load(store: &dyn Store, name: &str) -> Result<(S, AppliedLog), RealizeError> {
        let keys = Keys::new(name);
        Ok((Self::read(store, &keys)?, keys.load(store)?))
    }

    fn read(store: &dyn Store, keys: &Keys) -> Result<S, RealizeError> {
        match store.get(&keys.state())? {
            Some(b) => crate::proto::message::from_msgpack(&b).map_err(RealizeError::Codec),
            None => Ok(S::default()),
        }
    }

    fn persist(&self, state: &S, units: &[Unit]) -> Result<(), RealizeError> {
        let mut batch = Batch::new();
        batch.push_put(
            self.keys.state(),
            rmp_serde::to_vec_named(state).map_err(|e| RealizeError::Codec(e.to_string()))?,
        );
        for u in units {
            self.keys.record(&mut batch, &u.record);
        }
        self.store.apply(&batch)?;
        Ok(())
    }
}

impl<S: Serialize + DeserializeOwned + Default + Send + 'static> Identity for StoreIdentity<S> {
    type State = S;

    fn applied(&mut self) -> Result<AppliedLog, RealizeError> {
        self.keys.load(&*self.store)
    }

    fn apply(&mut self, reducers: &Reducers<S>, reset: bool, units: &[Unit]) -> Result<(), RealizeError> {
        let mut state = self.state.lock().expect("poisoned");
        // Whether the state the next chunk starts from is the fresh one of a rebuild not written yet.
        let mut fresh = reset;
        if reset {
            *state = S::default();
        }
        for chunk in units.chunks(self.chunk) {
            for (k, unit) in chunk.iter().enumerate() {
                if let Err(e) = reducers.apply_unit(&mut state, unit) {
                    // Back to what the store holds (or the fresh state), redo the units before the
                    // failing one and record them: the failing unit is not recorded.
                    *state =
                        if fresh && k > 0 { S::default() } else { Self::read(&*self.store, &self.keys)? };
                    if k > 0 {
                        for u in &chunk[..k] {
                            reducers.apply_unit(&mut state, u)?;
                        }
                        self.persist(&state, &chunk[..k])?;
                    }
                    return Err(e);
                }
            }
            self.persist(&state, chunk)?;
            fresh = false;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RealizeError> {
        if self.durable {
            self.store.sync()?;
        }
        Ok(())
    }
}

/// An external sink (a SQL table, a search index): receives each unit, i.e. for a CDVCS each
/// commit id with its transactions. Delivery is **at least once** (the applied-log is written after
/// `deliver` returns), so the sink deduplicates by [`Unit::id`].
pub trait Sink: Send + 'static {
    /// Takes one unit. An error stops the stream; the unit is not recorded.
    fn deliver(&mut self, unit: &Unit) -> Result<(), String>;

    /// A CDVCS rebuild: forget everything delivered; the whole history follows again.
    fn reset(&mut self) -> Result<(), String>;
}

/// A [`Sink`] with its applied-log in a store under a name (see [`Sink`] for the guarantee).
/// Its reducers are unused (`Reducers<()>`): the sink gets the transactions.
pub struct SinkIdentity<K> {
    sink: K,
    store: Arc<dyn Store>,
    keys: Keys,
}

impl<K: fmt::Debug> fmt::Debug for SinkIdentity<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkIdentity").field("sink", &self.sink).finish_non_exhaustive()
    }
}

impl<K: Sink> SinkIdentity<K> {
    /// The sink `sink` with its applied-log under `name` in `store`.
    pub fn new(sink: K, store: Arc<dyn Store>, name: &str) -> Self {
        SinkIdentity { sink, store, keys: Keys::new(name) }
    }
}

impl<K: Sink> Identity for SinkIdentity<K> {
    type State = ();

    fn applied(&mut self) -> Result<AppliedLog, RealizeError> {
        self.keys.load(&*self.store)
    }

    fn apply(&mut self, _reducers: &Reducers<()>, reset: bool, units: &[Unit]) -> Result<(), RealizeError> {
        if reset {
            self.sink.reset().map_err(|message| RealizeError::Sink { unit: None, message })?;
        }
        for unit in units {
            self.sink.deliver(unit).map_err(|message| RealizeError::Sink { unit: Some(unit.id), message })?;
            let mut batch = Batch::new();
            self.keys.record(&mut batch, &unit.record);
            self.store.apply(&batch)?;
        }
        Ok(())
    }
}
