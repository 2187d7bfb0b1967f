//! The sled 0.34.7 backend, with the precautions from `reference/dependencies.md` §1.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::blob::BlobDir;
use crate::engine::{self, Engine, RawOp, engine_store_methods, lock, read, write};
use crate::error::{Result, StoreError};
use crate::group_commit::GroupCommit;
use crate::keys::TAG_KV;
use crate::lock::{DirLock, ensure_dir, require_dir};
use crate::{Limits, Store};

/// Largest value kept in sled. sled stores larger items as its own blob files, which it never fsyncs, so
/// larger values are rejected with [`StoreError::ValueTooLarge`]; put large data in blobs instead.
pub const SLED_MAX_VALUE_LEN: usize = 64 * 1024;

/// A store on sled 0.34.7.
///
/// * Layout: `<dir>/LOCK`, `<dir>/sled/` (the sled database; its data file is `<dir>/sled/db`),
///   `<dir>/blobs/` (our own blob files, shared format with [`FileStore`](crate::FileStore)).
/// * Configured with a 64 MiB cache and `Mode::LowSpace`.
/// * Every value is stored as `CRC-32(key ‖ value)` (u32 LE) followed by the value and verified on every
///   read ([`StoreError::Corruption`] on mismatch).
/// * Batches use `apply_batch`, which sled applies atomically.
/// * The barrier runs `flush()` and then a real `fsync` of `<dir>/sled/db` (sled's own flush only uses
///   `sync_file_range`, which does not survive power loss), shared among concurrent callers.
/// * Values are limited to [`SLED_MAX_VALUE_LEN`] (64 KiB).
#[derive(Debug)]
pub struct SledStore {
    dir: PathBuf,
    db: RwLock<Option<sled::Db>>,
    writer: Mutex<()>,
    gc: GroupCommit,
    blobs: BlobDir,
    dir_lock: Mutex<Option<DirLock>>,
}

fn sled_err(op: &'static str, dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(source) => StoreError::Io { op, path: dir.to_path_buf(), source },
        sled::Error::Corruption { at, .. } => StoreError::Corruption {
            file: dir.to_path_buf(),
            offset: at.map_or(0, |p| p.lid()),
            key: None,
            reason: format!("sled reported corruption during {op}"),
        },
        other => StoreError::Sled { op, source: other },
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`. Fails with [`StoreError::Locked`] if another handle
    /// or process holds the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<SledStore> {
        let dir = dir.as_ref().to_path_buf();
        ensure_dir(&dir)?;
        let dir_lock = DirLock::acquire(&dir)?;
        let blobs = BlobDir::open_dir(&dir)?;
        let config = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(64 << 20)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(500));
        // sled's background threads keep its own file lock for a moment after the last `Db` handle of an
        // earlier SledStore in this process is dropped. We hold `<dir>/LOCK`, so whoever still has sled's
        // lock is such a dying handle: wait for it (bounded) instead of failing.
        let deadline = Instant::now() + Duration::from_secs(5);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(sled_err("open", &dir, e)),
            }
        };
        Ok(SledStore {
            dir,
            db: RwLock::new(Some(db)),
            writer: Mutex::new(()),
            gc: GroupCommit::default(),
            blobs,
            dir_lock: Mutex::new(Some(dir_lock)),
        })
    }

    /// Opens an existing store like [`SledStore::open`], but never creates one: fails with
    /// [`StoreError::NotFound`] (creating nothing) if `dir` does not exist or holds no sled database.
    ///
    /// There is no read-only open for this backend: sled 0.34.7 has no read-only mode; every open
    /// takes an exclusive lock on its data file, opened for writing, and may write recovery state, so
    /// it needs write access to `<dir>/sled`. Readers of a store they may not write use
    /// [`FileStore::open_read_only`](crate::FileStore::open_read_only) instead.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<SledStore> {
        let dir = dir.as_ref();
        require_dir(dir)?;
        if !dir.join("sled").join("db").is_file() {
            return Err(StoreError::NotFound {
                path: dir.to_path_buf(),
                reason: "the directory holds no sled database",
            });
        }
        SledStore::open(dir)
    }

    /// Number of fsync rounds run by [`Store::sync`] so far.
    pub fn sync_rounds(&self) -> u64 {
        self.gc.flush_count()
    }

    fn with_db<T>(&self, f: impl FnOnce(&sled::Db) -> Result<T>) -> Result<T> {
        match &*read(&self.db) {
            Some(db) => f(db),
            None => Err(StoreError::Closed),
        }
    }

    fn decode(&self, key: &[u8], raw: &[u8]) -> Result<Vec<u8>> {
        let visible = match key.split_first() {
            Some((&TAG_KV, rest)) => rest.to_vec(),
            _ => key.to_vec(),
        };
        let corrupt = |reason: &str| StoreError::Corruption {
            file: self.dir.join("sled"),
            offset: 0,
            key: Some(visible.clone()),
            reason: reason.into(),
        };
        if raw.len() < 4 {
            return Err(corrupt("stored value shorter than its checksum"));
        }
        let (crc, value) = raw.split_at(4);
        let mut h = crc32fast::Hasher::new();
        h.update(key);
        h.update(value);
        if h.finalize().to_le_bytes() != crc {
            return Err(corrupt("value checksum mismatch"));
        }
        Ok(value.to_vec())
    }
}

fn encode(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    let mut v = Vec::with_capacity(value.len() + 4);
    v.extend_from_slice(&h.finalize().to_le_bytes());
    v.extend_from_slice(value);
    v
}

impl Engine for SledStore {
    fn write_guard(&self) -> Result<MutexGuard<'_, ()>> {
        let g = lock(&self.writer);
        self.with_db(|_| Ok(()))?;
        self.gc.check_poisoned()?;
        Ok(g)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_db(|db| match db.get(key).map_err(|e| sled_err("get", &self.dir, e))? {
            Some(raw) => self.decode(key, &raw).map(Some),
            None => Ok(None),
        })
    }

    fn raw_range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_db(|db| {
            db.range(start..end)
                .take(max)
                .map(|item| {
                    let (k, v) = item.map_err(|e| sled_err("range", &self.dir, e))?;
                    let value = self.decode(&k, &v)?;
                    Ok((k.to_vec(), value))
                })
                .collect()
        })
    }

    fn raw_apply(&self, ops: Vec<RawOp>) -> Result<()> {
        self.with_db(|db| {
            let mut batch = sled::Batch::default();
            for op in ops {
                match op {
                    RawOp::Put(k, v) => {
                        let stored = encode(&k, &v);
                        batch.insert(k, stored);
                    }
                    RawOp::Delete(k) => batch.remove(k),
                    RawOp::DeleteRange(s, e) => {
                        // Writers are serialized by the write guard, so the range is stable here.
                        for item in db.range(s..e) {
                            let (k, _) = item.map_err(|e| sled_err("range", &self.dir, e))?;
                            batch.remove(k);
                        }
                    }
                }
            }
            db.apply_batch(batch).map_err(|e| sled_err("apply_batch", &self.dir, e))?;
            self.gc.note_write();
            Ok(())
        })
    }

    fn engine_limits(&self) -> Limits {
        Limits { max_value_len: SLED_MAX_VALUE_LEN, ..Limits::default() }
    }
}

impl Store for SledStore {
    engine_store_methods!();

    fn size_on_disk(&self) -> Option<u64> {
        self.db.read().ok()?.as_ref()?.size_on_disk().ok()
    }

    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> Result<u64> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.with_db(|_| Ok(()))?;
        self.blobs.put(name, data)
    }

    fn open_blob(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.with_db(|_| Ok(()))?;
        self.blobs.open(name)
    }

    fn delete_blob(&self, name: &[u8]) -> Result<bool> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        self.with_db(|_| Ok(()))?;
        self.blobs.delete(name)
    }

    fn sync(&self) -> Result<()> {
        self.with_db(|_| Ok(()))?;
        self.gc.sync(|| {
            self.with_db(|db| {
                db.flush().map_err(|e| sled_err("flush", &self.dir, e))?;
                let data = self.dir.join("sled").join("db");
                File::open(&data)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::io("fsync sled data file", &data, e))
            })
        })
    }

    fn close(&self) -> Result<()> {
        let _g = lock(&self.writer);
        let Some(db) = write(&self.db).take() else { return Ok(()) };
        let result = db.flush().map_err(|e| sled_err("flush", &self.dir, e)).and_then(|_| {
            let data = self.dir.join("sled").join("db");
            File::open(&data)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io("fsync sled data file", &data, e))
        });
        drop(db);
        lock(&self.dir_lock).take();
        result
    }
}
