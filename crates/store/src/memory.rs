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
    /// Raw writes since the last [`MemoryStore::take_journal`], if journaling (see there).
    journal: Option<Mutex<Vec<JournalOp>>>,
}

/// One raw write of a journaling [`MemoryStore`], on the store's internal keys (the key/value and
/// log namespaces share one sorted key space; blobs are not journaled). Replaying a store's journal
/// in order onto the pairs it was restored from ([`MemoryStore::restore`]) gives its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Remove every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
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
            journal: None,
        }
    }

    /// An empty store that records its raw writes, for a write-behind journal: a driver that keeps
    /// the store elsewhere (the browser client's IndexedDB) takes the writes at each barrier with
    /// [`MemoryStore::take_journal`] and reports the barrier done only once they are durable there.
    pub fn journaling() -> MemoryStore {
        MemoryStore { journal: Some(Mutex::new(Vec::new())), ..MemoryStore::default() }
    }

    /// A journaling store (see [`MemoryStore::journaling`]) holding `pairs` of internal keys and
    /// values, as an earlier journal wrote them (its [`JournalOp`]s replayed in order).
    pub fn restore(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> MemoryStore {
        let store = MemoryStore::journaling();
        write(&store.map).extend(pairs.into_iter().map(|(k, v)| (IndexKey::from(k), v)));
        store
    }

    /// The raw writes since the last call (empty if the store does not journal), in order.
    pub fn take_journal(&self) -> Vec<JournalOp> {
        self.journal.as_ref().map(|j| std::mem::take(&mut *lock(j))).unwrap_or_default()
    }

    /// Every pair of internal key and value, sorted (what [`MemoryStore::restore`] takes).
    pub fn raw_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        read(&self.map).iter().map(|(k, v)| (k.to_vec(), v.clone())).collect()
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
        if let Some(journal) = &self.journal {
            lock(journal).extend(ops.iter().map(|op| match op {
                RawOp::Put(k, v) => JournalOp::Put(k.clone(), v.clone()),
                RawOp::Delete(k) => JournalOp::Delete(k.clone()),
                RawOp::DeleteRange(s, e) => JournalOp::DeleteRange(s.clone(), e.clone()),
            }));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;

    /// Replays a journal onto pairs the way the browser client's IndexedDB journal does.
    fn replay(pairs: &mut BTreeMap<Vec<u8>, Vec<u8>>, journal: Vec<JournalOp>) {
        for op in journal {
            match op {
                JournalOp::Put(k, v) => {
                    pairs.insert(k, v);
                }
                JournalOp::Delete(k) => {
                    pairs.remove(&k);
                }
                JournalOp::DeleteRange(s, e) => pairs.retain(|k, _| !(*k >= s && *k < e)),
            }
        }
    }

    #[test]
    fn a_journal_replayed_onto_the_restored_pairs_gives_the_contents() {
        let store = MemoryStore::journaling();
        store.put(b"a", b"1").unwrap();
        store.apply(&Batch::new().put(b"b", b"2").put(b"c", b"3").delete(b"a")).unwrap();
        for i in 0..5u8 {
            store.log_append(b"log", &[i]).unwrap();
        }
        let mut mirror = BTreeMap::new();
        replay(&mut mirror, store.take_journal());
        assert_eq!(mirror.clone().into_iter().collect::<Vec<_>>(), store.raw_pairs());
        assert!(store.take_journal().is_empty(), "taken once");

        // A store restored from the mirror reads the same, and journals what comes next.
        let again = MemoryStore::restore(mirror.clone());
        assert_eq!(again.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(again.get(b"a").unwrap(), None);
        assert_eq!(again.log_read(b"log", 0, 10).unwrap().len(), 5);
        again.log_prune(b"log", 3).unwrap();
        again.delete(b"c").unwrap();
        replay(&mut mirror, again.take_journal());
        assert_eq!(mirror.into_iter().collect::<Vec<_>>(), again.raw_pairs());
        assert_eq!(again.log_read(b"log", 0, 10).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn a_plain_memory_store_journals_nothing() {
        let store = MemoryStore::new();
        store.put(b"a", b"1").unwrap();
        assert!(store.take_journal().is_empty());
    }
}
