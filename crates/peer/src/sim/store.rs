//! The simulation's store: memory whose durable part is what the last barrier saw.

use std::io::Read;
use std::sync::{Arc, Mutex, RwLock};

use replikativ_store::{Batch, LogBounds, LogEntry, MemoryStore, Store, UpdateFn, Updated};

/// A memory store whose durable part is what the last `sync` saw; [`SimStore::crash`] goes back to it.
#[derive(Debug, Default)]
pub struct SimStore {
    live: RwLock<Arc<MemoryStore>>,
    durable: Mutex<Arc<MemoryStore>>,
}

impl SimStore {
    /// An empty store.
    pub fn new() -> SimStore {
        SimStore::default()
    }

    /// Loses everything written since the last barrier.
    pub fn crash(&self) {
        let durable = self.durable.lock().expect("poisoned").snapshot();
        *self.live.write().expect("poisoned") = Arc::new(durable);
    }

    fn live(&self) -> Arc<MemoryStore> {
        self.live.read().expect("poisoned").clone()
    }
}

impl Store for SimStore {
    fn get(&self, key: &[u8]) -> replikativ_store::Result<Option<Vec<u8>>> {
        self.live().get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> replikativ_store::Result<()> {
        self.live().put(key, value)
    }
    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> replikativ_store::Result<Updated> {
        self.live().update(key, f)
    }
    fn delete(&self, key: &[u8]) -> replikativ_store::Result<()> {
        self.live().delete(key)
    }
    fn exists(&self, key: &[u8]) -> replikativ_store::Result<bool> {
        self.live().exists(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> replikativ_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.live().scan_prefix(prefix)
    }
    fn apply(&self, batch: &Batch) -> replikativ_store::Result<()> {
        self.live().apply(batch)
    }
    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> replikativ_store::Result<u64> {
        self.live().put_blob(name, data)
    }
    fn open_blob(&self, name: &[u8]) -> replikativ_store::Result<Option<Box<dyn Read + Send>>> {
        self.live().open_blob(name)
    }
    fn delete_blob(&self, name: &[u8]) -> replikativ_store::Result<bool> {
        self.live().delete_blob(name)
    }
    fn log_append(&self, log: &[u8], entry: &[u8]) -> replikativ_store::Result<u64> {
        self.live().log_append(log, entry)
    }
    fn log_read(&self, log: &[u8], from: u64, max: usize) -> replikativ_store::Result<Vec<LogEntry>> {
        self.live().log_read(log, from, max)
    }
    fn log_prune(&self, log: &[u8], before: u64) -> replikativ_store::Result<()> {
        self.live().log_prune(log, before)
    }
    fn log_bounds(&self, log: &[u8]) -> replikativ_store::Result<LogBounds> {
        self.live().log_bounds(log)
    }
    fn sync(&self) -> replikativ_store::Result<()> {
        *self.durable.lock().expect("poisoned") = Arc::new(self.live().snapshot());
        Ok(())
    }
    fn close(&self) -> replikativ_store::Result<()> {
        Ok(())
    }
    fn limits(&self) -> replikativ_store::Limits {
        self.live().limits()
    }
}
