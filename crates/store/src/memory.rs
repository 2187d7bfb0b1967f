//! The in-memory backend.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::engine::{self, Engine, RawOp, engine_store_methods, lock, read, write};
use crate::error::{Result, StoreError};
use crate::keys::IndexKey;
use crate::{Limits, Store};

/// A store that keeps everything in memory: for tests, simulations and ephemeral peers.
///
/// It is **not durable**: [`Store::sync`] is a no-op and everything is lost when the value is dropped.
/// Blobs are held in memory too (as shared immutable buffers). It enforces the same default [`Limits`] as
/// [`FileStore`](crate::FileStore), so code tested against it behaves the same on disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<IndexKey, Vec<u8>>>,
    blobs: RwLock<HashMap<Vec<u8>, Arc<[u8]>>>,
    writer: Mutex<()>,
    closed: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A deep copy of the current contents (simulations model a crash by going back to the copy
    /// taken at the last durability barrier).
    pub fn snapshot(&self) -> MemoryStore {
        MemoryStore {
            map: RwLock::new(read(&self.map).clone()),
            blobs: RwLock::new(read(&self.blobs).clone()),
            writer: Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }
}

impl Engine for MemoryStore {
    fn write_guard(&self) -> Result<MutexGuard<'_, ()>> {
        let g = lock(&self.writer);
        self.check_open()?;
        Ok(g)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        Ok(read(&self.map).get(key).cloned())
    }

    fn raw_range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_open()?;
        let map = read(&self.map);
        Ok(map
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Excluded(end)))
            .take(max)
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect())
    }

    fn raw_apply(&self, ops: Vec<RawOp>) -> Result<()> {
        let mut map = write(&self.map);
        for op in ops {
            match op {
                RawOp::Put(k, mut v) => {
                    // Kept for the store's lifetime: without the slack of the buffer it was
                    // encoded into (often half again its length).
                    v.shrink_to_fit();
                    map.insert(IndexKey::from(k), v);
                }
                RawOp::Delete(k) => {
                    map.remove(k.as_slice());
                }
                RawOp::DeleteRange(start, end) => {
                    let doomed: Vec<IndexKey> = map
                        .range::<[u8], _>((
                            std::ops::Bound::Included(&start[..]),
                            std::ops::Bound::Excluded(&end[..]),
                        ))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn engine_limits(&self) -> Limits {
        Limits::default()
    }
}

impl Store for MemoryStore {
    engine_store_methods!();

    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> Result<u64> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.check_open()?;
        let mut buf = Vec::new();
        data.read_to_end(&mut buf).map_err(|e| StoreError::io("read blob source", "<memory>", e))?;
        let len = buf.len() as u64;
        write(&self.blobs).insert(name.to_vec(), buf.into());
        Ok(len)
    }

    fn open_blob(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.check_open()?;
        Ok(read(&self.blobs).get(name).map(|b| Box::new(Cursor::new(b.clone())) as Box<dyn Read + Send>))
    }

    fn delete_blob(&self, name: &[u8]) -> Result<bool> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.check_open()?;
        Ok(write(&self.blobs).remove(name).is_some())
    }

    fn sync(&self) -> Result<()> {
        self.check_open()
    }

    fn sync_is_instant(&self) -> bool {
        true
    }

    fn close(&self) -> Result<()> {
        let _g = lock(&self.writer);
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
