//! Storage for replikativ peers, in the spirit of konserve: one small synchronous [`Store`] trait and three
//! backends behind it, plus a PostgreSQL backend with the `postgres` feature.
//!
//! # Data model
//!
//! A store holds four independent namespaces:
//!
//! * **key/value pairs**: byte-string keys ([`Limits::max_key_len`], 1 KiB) to byte-string values
//!   ([`Limits::max_value_len`], 16 MiB for the file and memory stores, 64 KiB for sled), with
//!   [`get`](Store::get), [`put`](Store::put), read-modify-write [`update`](Store::update),
//!   [`delete`](Store::delete), [`exists`](Store::exists), sorted [`scan_prefix`](Store::scan_prefix) and
//!   all-or-nothing [`apply`](Store::apply) of a [`Batch`] of puts and deletes across keys;
//! * **blobs**: large binary values streamed in and out through [`std::io::Read`], never held whole in memory
//!   by the durable backends;
//! * **append logs**: per log name, entries numbered by a dense, monotonically increasing sequence number,
//!   read from a position, pruned from the front;
//! * a **durability barrier**, [`Store::sync`]: writes may return before they are durable; when `sync`
//!   returns, every write that returned before `sync` was called survives a crash of the process or the
//!   machine. Concurrent callers share one fsync (group commit).
//!
//! # Backends
//!
//! * [`MemoryStore`]: a `BTreeMap` behind locks; for tests and ephemeral peers. Not durable.
//! * [`FileStore`]: the embedded default. An append-only log of checksummed records in segment files, an
//!   in-memory index, compaction, blobs as separate files. Format and crash contract: `docs/design.md` §7.
//! * [`SledStore`]: sled 0.34.7 with our own checksums and a real `fsync` in the barrier.
//!
//! * `PgStore` (feature `postgres`): one namespace of a PostgreSQL database per node, under a lease (a second
//!   opener gets [`StoreError::NamespaceLocked`]); every write is a committed transaction, so it is durable
//!   when it returns. Schema, lease and failure handling: `docs/design.md` §7.7.
//!
//! Opening a directory that another handle or process holds fails with [`StoreError::Locked`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use replikativ_store::{Batch, FileStore, Store};
//!
//! # fn main() -> Result<(), replikativ_store::StoreError> {
//! let dir = tempfile::tempdir().unwrap();
//! let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path())?);
//!
//! store.put(b"user/alice", b"hello")?;
//! store.apply(&Batch::new().put(b"user/bob", b"hi").delete(b"user/alice"))?;
//! let seq = store.log_append(b"commits", b"commit-1")?;
//! store.sync()?; // everything above is now crash-safe
//!
//! assert_eq!(store.get(b"user/bob")?, Some(b"hi".to_vec()));
//! assert_eq!(store.scan_prefix(b"user/")?.len(), 1);
//! assert_eq!(store.log_read(b"commits", seq, 10)?[0].data, b"commit-1");
//!
//! let written = store.put_blob(b"snapshot", &mut &[7u8; 100_000][..])?;
//! assert_eq!(written, 100_000);
//! let mut blob = store.open_blob(b"snapshot")?.expect("blob exists");
//! let mut buf = Vec::new();
//! std::io::Read::read_to_end(&mut blob, &mut buf).unwrap();
//! assert_eq!(buf.len(), 100_000);
//!
//! store.close()?;
//! # Ok(())
//! # }
//! ```

//! With the `postgres` feature, the same calls on a PostgreSQL namespace (the example runs when
//! `REPLIKATIV_PG_URL` names a server, e.g. `postgres://replikativ@127.0.0.1:5432/postgres`; the password,
//! if any, comes from `PGPASSWORD` or `&password_file=PATH`, never from the URL):
//!
//! ```
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), replikativ_store::StoreError> {
//! use replikativ_store::{PgStore, Store, StoreError};
//!
//! let Ok(base) = std::env::var("REPLIKATIV_PG_URL") else { return Ok(()) };
//! let ns = format!("doc-{}", std::process::id());
//! let store = PgStore::open_url(&format!("{base}?namespace={ns}"))?;
//! store.put(b"user/alice", b"hello")?; // committed: durable on return
//! assert!(matches!(
//!     PgStore::open_url(&format!("{base}?namespace={ns}")),
//!     Err(StoreError::NamespaceLocked { .. })
//! ));
//! assert_eq!(store.get(b"user/alice")?, Some(b"hello".to_vec()));
//! store.close()?; // releases the lease
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```

use std::fmt;
use std::io::Read;

#[cfg(not(target_arch = "wasm32"))]
mod blob;
mod engine;
mod error;
#[cfg(not(target_arch = "wasm32"))]
mod file;
#[cfg(not(target_arch = "wasm32"))]
mod group_commit;
mod keys;
#[cfg(not(target_arch = "wasm32"))]
mod lock;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(not(target_arch = "wasm32"))]
mod sled_store;

pub use error::{Result, StoreError};
#[cfg(not(target_arch = "wasm32"))]
pub use file::{FileStore, FileStoreOptions, FileStoreStats, RecoveryReport};
pub use memory::{JournalOp, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{PG_BLOB_CHUNK, PG_MAX_NAMESPACE_LEN, PG_SCHEMA_VERSION, PgOptions, PgStore};
#[cfg(not(target_arch = "wasm32"))]
pub use sled_store::{SLED_MAX_VALUE_LEN, SledStore};

/// Default maximum key length (also the maximum log name length): 1 KiB.
pub const MAX_KEY_LEN: usize = 1024;
/// Default maximum value length (also the maximum log entry length): 16 MiB.
pub const MAX_VALUE_LEN: usize = 16 << 20;
/// Default maximum encoded size of one [`Batch`]: 64 MiB.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Maximum blob name length. Blob names become file names (hex encoded), so they are short.
pub const MAX_BLOB_NAME_LEN: usize = 100;

/// The size limits a backend enforces. Oversize input fails with [`StoreError::KeyTooLarge`] or
/// [`StoreError::ValueTooLarge`]; nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum key and log-name length in bytes.
    pub max_key_len: usize,
    /// Maximum value and log-entry length in bytes.
    pub max_value_len: usize,
    /// Maximum total size of the keys and values of one batch.
    pub max_batch_bytes: usize,
    /// Maximum blob name length.
    pub max_blob_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: MAX_KEY_LEN,
            max_value_len: MAX_VALUE_LEN,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_blob_name_len: MAX_BLOB_NAME_LEN,
        }
    }
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (no error if it is absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Append `entry` to the log `log` (it gets the log's next sequence number when the batch is
    /// applied), atomically with the rest of the batch.
    LogAppend {
        /// The log.
        log: Vec<u8>,
        /// The entry.
        entry: Vec<u8>,
    },
}

/// A set of puts and deletes applied all-or-nothing by [`Store::apply`]. Later operations on the same key
/// win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations, in order.
    pub ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put (builder style).
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.push_put(key, value);
        self
    }

    /// Adds a delete (builder style).
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.push_delete(key);
        self
    }

    /// Adds a log append (see [`BatchOp::LogAppend`]).
    pub fn push_log_append(&mut self, log: impl Into<Vec<u8>>, entry: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::LogAppend { log: log.into(), entry: entry.into() });
    }

    /// Adds a put.
    pub fn push_put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put { key: key.into(), value: value.into() });
    }

    /// Adds a delete.
    pub fn push_delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete { key: key.into() });
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The function [`Store::update`] applies: current value in, new value out (`None`: absent).
pub type UpdateFn<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// The result of [`Store::update`]: the value before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The value before the update (`None`: absent).
    pub old: Option<Vec<u8>>,
    /// The value after the update (`None`: absent, i.e. deleted or left absent).
    pub new: Option<Vec<u8>>,
}

/// One entry of an append log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub data: Vec<u8>,
}

/// The retained range of an append log: entries `first..next` exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// Sequence number of the oldest retained entry (equals `next` when the log is empty).
    pub first: u64,
    /// Sequence number the next append gets. Never decreases, even when everything is pruned.
    pub next: u64,
}

impl LogBounds {
    /// Number of retained entries.
    pub fn len(&self) -> u64 {
        self.next - self.first
    }

    /// True if no entries are retained.
    pub fn is_empty(&self) -> bool {
        self.next == self.first
    }
}

/// The storage interface of a replikativ peer.
///
/// All calls are synchronous and may block on disk I/O; async code runs them on a blocking thread. The
/// trait is object safe: peers hold an `Arc<dyn Store>`. Every implementation is `Send + Sync`, and all
/// operations on one store are linearizable (a read sees every write that returned before it started).
///
/// **Durability**: write operations may return before they are durable. [`Store::sync`] is the barrier.
/// Blob writes and deletes are the exception: they are durable when they return.
///
/// **Atomicity**: each single operation and each [`Batch`] is all-or-nothing, also across a crash.
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads the value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Sets `key` to `value`.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Read-modify-write under the store's write lock: `f` gets the current value and returns the new one
    /// (`None` deletes the key, or leaves it absent). No other write to the store interleaves. `f` must not
    /// call back into the store (that deadlocks).
    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> Result<Updated>;

    /// Removes `key`. Removing an absent key is not an error.
    fn delete(&self, key: &[u8]) -> Result<()>;

    /// True if `key` has a value.
    fn exists(&self, key: &[u8]) -> Result<bool>;

    /// All pairs whose key starts with `prefix`, sorted by key. The result is materialized in memory, so use
    /// prefixes that select a bounded number of keys.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Applies all operations of `batch` atomically: after a crash either all or none are visible.
    fn apply(&self, batch: &Batch) -> Result<()>;

    /// [`Store::apply`], taking the batch: backends that keep values in memory move them instead of
    /// copying.
    fn apply_owned(&self, batch: Batch) -> Result<()> {
        self.apply(&batch)
    }

    /// Stores a blob under `name`, streaming it from `data`; replaces an existing blob atomically. Returns the
    /// number of bytes written. Durable when it returns.
    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> Result<u64>;

    /// Opens the blob `name` for streaming reads. The reader verifies the blob's checksum and fails with
    /// an [`std::io::ErrorKind::InvalidData`] error at the end of the stream if it does not match.
    fn open_blob(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>>;

    /// Removes the blob `name`; returns whether it existed. Durable when it returns.
    fn delete_blob(&self, name: &[u8]) -> Result<bool>;

    /// Appends `entry` to the log `log` and returns its sequence number (dense, starting at 0).
    fn log_append(&self, log: &[u8], entry: &[u8]) -> Result<u64>;

    /// Reads up to `max` entries of `log` with sequence numbers `>= from`, in order. Pruned entries are
    /// skipped, so the first returned entry may have a larger sequence number than `from`.
    fn log_read(&self, log: &[u8], from: u64, max: usize) -> Result<Vec<LogEntry>>;

    /// Removes all entries of `log` with sequence numbers `< before`.
    fn log_prune(&self, log: &[u8], before: u64) -> Result<()>;

    /// The retained range of `log` (`{0, 0}` for a log that never had an entry).
    fn log_bounds(&self, log: &[u8]) -> Result<LogBounds>;

    /// Durability barrier: when it returns `Ok`, every write that returned before this call survives a crash
    /// of the process or the machine. Concurrent callers share one fsync round. If a barrier fails the store
    /// is poisoned ([`StoreError::Poisoned`]) because the kernel may have dropped the dirty data.
    fn sync(&self) -> Result<()>;

    /// Makes all writes durable, releases the directory lock and closes the store. Later calls fail with
    /// [`StoreError::Closed`]. Closing twice is fine. Dropping the store without closing also releases the
    /// lock, but does not fsync.
    fn close(&self) -> Result<()>;

    /// The size limits of this backend.
    fn limits(&self) -> Limits;

    /// Bytes the store occupies on disk, if it keeps data on disk and can tell.
    fn size_on_disk(&self) -> Option<u64> {
        None
    }

    /// Whether [`Store::sync`] returns at once, without IO (an in-memory store): callers may run
    /// the barrier inline instead of on a thread of its own.
    fn sync_is_instant(&self) -> bool {
        false
    }

    /// Whether the store was opened read-only: every write fails with [`StoreError::ReadOnly`].
    /// Readers (a peer opening such a store) skip the repairs they would otherwise write.
    fn is_read_only(&self) -> bool {
        false
    }
}
