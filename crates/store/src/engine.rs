//! The key/value and log operations of [`Store`](crate::Store), written once over a small internal engine
//! interface that each backend implements.

use std::sync::MutexGuard;

use crate::error::{Result, StoreError};
use crate::keys::{self, kv_key, log_entry_key, log_meta_key, log_prefix, prefix_end};
use crate::{Batch, BatchOp, Limits, LogBounds, LogEntry, UpdateFn, Updated};

/// One raw write on internal keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Remove every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// What a backend provides; everything else is derived here.
pub(crate) trait Engine {
    /// Serializes writers (read-modify-write sequences hold it). Fails with `Closed` after close.
    fn write_guard(&self) -> Result<MutexGuard<'_, ()>>;
    /// Reads an internal key.
    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// True if an internal key has a value (backends with an in-memory index avoid reading the value).
    fn raw_contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self.raw_get(key)?.is_some())
    }
    /// Reads up to `max` pairs with keys in `[start, end)`, sorted.
    fn raw_range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `ops` atomically. The caller holds the write guard.
    fn raw_apply(&self, ops: Vec<RawOp>) -> Result<()>;
    /// The size limits.
    fn engine_limits(&self) -> Limits;
    /// True for a read-only handle: every write fails with [`StoreError::ReadOnly`] before anything else
    /// is checked.
    fn engine_read_only(&self) -> bool {
        false
    }
}

/// Fails with [`StoreError::ReadOnly`] on a read-only handle.
pub(crate) fn check_writable<E: Engine + ?Sized>(e: &E) -> Result<()> {
    if e.engine_read_only() { Err(StoreError::ReadOnly) } else { Ok(()) }
}

pub(crate) fn check_key(limits: &Limits, key: &[u8]) -> Result<()> {
    if key.len() > limits.max_key_len {
        return Err(StoreError::KeyTooLarge { len: key.len(), max: limits.max_key_len });
    }
    Ok(())
}

pub(crate) fn check_value(limits: &Limits, value: &[u8]) -> Result<()> {
    if value.len() > limits.max_value_len {
        return Err(StoreError::ValueTooLarge { len: value.len(), max: limits.max_value_len });
    }
    Ok(())
}

pub(crate) fn get<E: Engine + ?Sized>(e: &E, key: &[u8]) -> Result<Option<Vec<u8>>> {
    check_key(&e.engine_limits(), key)?;
    e.raw_get(&kv_key(key))
}

pub(crate) fn put<E: Engine + ?Sized>(e: &E, key: &[u8], value: &[u8]) -> Result<()> {
    check_writable(e)?;
    let limits = e.engine_limits();
    check_key(&limits, key)?;
    check_value(&limits, value)?;
    let _g = e.write_guard()?;
    e.raw_apply(vec![RawOp::Put(kv_key(key), value.to_vec())])
}

pub(crate) fn update<E: Engine + ?Sized>(e: &E, key: &[u8], f: &mut UpdateFn<'_>) -> Result<Updated> {
    check_writable(e)?;
    let limits = e.engine_limits();
    check_key(&limits, key)?;
    let k = kv_key(key);
    let _g = e.write_guard()?;
    let old = e.raw_get(&k)?;
    let new = f(old.as_deref());
    match &new {
        Some(v) => {
            check_value(&limits, v)?;
            e.raw_apply(vec![RawOp::Put(k, v.clone())])?;
        }
        None if old.is_some() => e.raw_apply(vec![RawOp::Delete(k)])?,
        None => {}
    }
    Ok(Updated { old, new })
}

pub(crate) fn delete<E: Engine + ?Sized>(e: &E, key: &[u8]) -> Result<()> {
    check_writable(e)?;
    check_key(&e.engine_limits(), key)?;
    let _g = e.write_guard()?;
    e.raw_apply(vec![RawOp::Delete(kv_key(key))])
}

pub(crate) fn exists<E: Engine + ?Sized>(e: &E, key: &[u8]) -> Result<bool> {
    check_key(&e.engine_limits(), key)?;
    e.raw_contains(&kv_key(key))
}

pub(crate) fn scan_prefix<E: Engine + ?Sized>(e: &E, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    check_key(&e.engine_limits(), prefix)?;
    let start = kv_key(prefix);
    // The tag byte is 0x00, so an end bound always exists.
    let end = prefix_end(&start).unwrap_or_else(|| vec![keys::TAG_LOG_ENTRY]);
    let mut out = e.raw_range(&start, &end, usize::MAX)?;
    for (k, _) in &mut out {
        k.remove(0);
    }
    Ok(out)
}

pub(crate) fn apply<E: Engine + ?Sized>(e: &E, batch: &Batch) -> Result<()> {
    apply_owned(e, batch.clone())
}

/// [`apply`], moving the batch's values into the store instead of copying them.
pub(crate) fn apply_owned<E: Engine + ?Sized>(e: &E, batch: Batch) -> Result<()> {
    check_writable(e)?;
    let limits = e.engine_limits();
    let mut total = 0usize;
    for op in &batch.ops {
        match op {
            BatchOp::Put { key, value } => {
                check_key(&limits, key)?;
                check_value(&limits, value)?;
                total += key.len() + value.len();
            }
            BatchOp::Delete { key } => {
                check_key(&limits, key)?;
                total += key.len();
            }
            BatchOp::LogAppend { log, entry } => {
                check_key(&limits, log)?;
                check_value(&limits, entry)?;
                total += log.len() + entry.len();
            }
        }
    }
    if total > limits.max_batch_bytes {
        return Err(StoreError::ValueTooLarge { len: total, max: limits.max_batch_bytes });
    }
    if batch.ops.is_empty() {
        return Ok(());
    }
    let _g = e.write_guard()?;
    let mut ops = Vec::with_capacity(batch.ops.len() + 1);
    // Log bounds as this batch advances them (several appends to one log in one batch).
    let mut bounds: std::collections::HashMap<Vec<u8>, LogBounds> = std::collections::HashMap::new();
    for op in batch.ops {
        match op {
            BatchOp::Put { key, value } => ops.push(RawOp::Put(kv_key(&key), value)),
            BatchOp::Delete { key } => ops.push(RawOp::Delete(kv_key(&key))),
            BatchOp::LogAppend { log, entry } => {
                let key = match bounds.get_mut(log.as_slice()) {
                    Some(b) => {
                        b.next += 1;
                        log_entry_key(&log, b.next - 1)
                    }
                    None => {
                        let mut b = decode_bounds(e.raw_get(&log_meta_key(&log))?, &log)?;
                        let key = log_entry_key(&log, b.next);
                        b.next += 1;
                        bounds.insert(log, b);
                        key
                    }
                };
                ops.push(RawOp::Put(key, entry));
            }
        }
    }
    for (log, b) in bounds {
        ops.push(RawOp::Put(log_meta_key(&log), encode_bounds(b)));
    }
    e.raw_apply(ops)
}

fn decode_bounds(raw: Option<Vec<u8>>, name: &[u8]) -> Result<LogBounds> {
    match raw {
        None => Ok(LogBounds::default()),
        Some(v) if v.len() == 16 => {
            let first = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
            let next = u64::from_le_bytes(v[8..].try_into().unwrap_or_default());
            if first > next {
                return Err(bad_bounds(name, "first > next"));
            }
            Ok(LogBounds { first, next })
        }
        Some(v) => Err(bad_bounds(name, &format!("bounds record has {} bytes, expected 16", v.len()))),
    }
}

fn bad_bounds(name: &[u8], why: &str) -> StoreError {
    StoreError::Corruption {
        file: Default::default(),
        offset: 0,
        key: Some(name.to_vec()),
        reason: format!("log bounds record invalid: {why}"),
    }
}

fn encode_bounds(b: LogBounds) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&b.first.to_le_bytes());
    v.extend_from_slice(&b.next.to_le_bytes());
    v
}

pub(crate) fn log_bounds<E: Engine + ?Sized>(e: &E, log: &[u8]) -> Result<LogBounds> {
    check_key(&e.engine_limits(), log)?;
    decode_bounds(e.raw_get(&log_meta_key(log))?, log)
}

pub(crate) fn log_append<E: Engine + ?Sized>(e: &E, log: &[u8], entry: &[u8]) -> Result<u64> {
    check_writable(e)?;
    let limits = e.engine_limits();
    check_key(&limits, log)?;
    check_value(&limits, entry)?;
    let _g = e.write_guard()?;
    let mut b = decode_bounds(e.raw_get(&log_meta_key(log))?, log)?;
    let seq = b.next;
    b.next += 1;
    e.raw_apply(vec![
        RawOp::Put(log_entry_key(log, seq), entry.to_vec()),
        RawOp::Put(log_meta_key(log), encode_bounds(b)),
    ])?;
    Ok(seq)
}

pub(crate) fn log_read<E: Engine + ?Sized>(
    e: &E,
    log: &[u8],
    from: u64,
    max: usize,
) -> Result<Vec<LogEntry>> {
    check_key(&e.engine_limits(), log)?;
    if max == 0 {
        return Ok(Vec::new());
    }
    let prefix = log_prefix(log);
    let end = prefix_end(&prefix).unwrap_or_else(|| vec![keys::TAG_LOG_META]);
    let raw = e.raw_range(&log_entry_key(log, from), &end, max)?;
    raw.into_iter()
        .map(|(k, data)| {
            let seq_bytes: [u8; 8] = k[prefix.len()..].try_into().map_err(|_| StoreError::Corruption {
                file: Default::default(),
                offset: 0,
                key: Some(k.clone()),
                reason: "log entry key has a malformed sequence number".into(),
            })?;
            Ok(LogEntry { seq: u64::from_be_bytes(seq_bytes), data })
        })
        .collect()
}

pub(crate) fn log_prune<E: Engine + ?Sized>(e: &E, log: &[u8], before: u64) -> Result<()> {
    check_writable(e)?;
    check_key(&e.engine_limits(), log)?;
    let _g = e.write_guard()?;
    let mut b = decode_bounds(e.raw_get(&log_meta_key(log))?, log)?;
    let new_first = before.min(b.next);
    if new_first <= b.first {
        return Ok(());
    }
    let old_first = b.first;
    b.first = new_first;
    e.raw_apply(vec![
        RawOp::DeleteRange(log_entry_key(log, old_first), log_entry_key(log, new_first)),
        RawOp::Put(log_meta_key(log), encode_bounds(b)),
    ])
}

/// Implements the key/value and log methods of `Store` by delegating to this module. Used inside
/// `impl Store for X` of a type that implements `Engine`.
macro_rules! engine_store_methods {
    () => {
        fn get(&self, key: &[u8]) -> $crate::Result<Option<Vec<u8>>> {
            $crate::engine::get(self, key)
        }
        fn put(&self, key: &[u8], value: &[u8]) -> $crate::Result<()> {
            $crate::engine::put(self, key, value)
        }
        fn update(&self, key: &[u8], f: &mut $crate::UpdateFn<'_>) -> $crate::Result<$crate::Updated> {
            $crate::engine::update(self, key, f)
        }
        fn delete(&self, key: &[u8]) -> $crate::Result<()> {
            $crate::engine::delete(self, key)
        }
        fn exists(&self, key: &[u8]) -> $crate::Result<bool> {
            $crate::engine::exists(self, key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> $crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            $crate::engine::scan_prefix(self, prefix)
        }
        fn apply(&self, batch: &$crate::Batch) -> $crate::Result<()> {
            $crate::engine::apply(self, batch)
        }
        fn apply_owned(&self, batch: $crate::Batch) -> $crate::Result<()> {
            $crate::engine::apply_owned(self, batch)
        }
        fn log_append(&self, log: &[u8], entry: &[u8]) -> $crate::Result<u64> {
            $crate::engine::log_append(self, log, entry)
        }
        fn log_read(&self, log: &[u8], from: u64, max: usize) -> $crate::Result<Vec<$crate::LogEntry>> {
            $crate::engine::log_read(self, log, from, max)
        }
        fn log_prune(&self, log: &[u8], before: u64) -> $crate::Result<()> {
            $crate::engine::log_prune(self, log, before)
        }
        fn log_bounds(&self, log: &[u8]) -> $crate::Result<$crate::LogBounds> {
            $crate::engine::log_bounds(self, log)
        }
        fn limits(&self) -> $crate::Limits {
            $crate::engine::Engine::engine_limits(self)
        }
        fn is_read_only(&self) -> bool {
            $crate::engine::Engine::engine_read_only(self)
        }
    };
}
pub(crate) use engine_store_methods;

/// Locks a std mutex, ignoring poisoning (our critical sections leave the data consistent on unwind).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks a std RwLock, ignoring poisoning.
pub(crate) fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks a std RwLock, ignoring poisoning.
pub(crate) fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn check_blob_name(limits: &Limits, name: &[u8]) -> Result<()> {
    if name.len() > limits.max_blob_name_len {
        return Err(StoreError::KeyTooLarge { len: name.len(), max: limits.max_blob_name_len });
    }
    Ok(())
}
