//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything a store operation can fail with.
///
/// Variants carry the context needed to act on them (which file, which key, which limit). Bad or damaged
/// files never cause a panic: they surface as [`StoreError::Corruption`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. `"fdatasync segment"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored data failed a checksum or structural check.
    #[error("corruption in {} at offset {offset}{}: {reason}", file.display(), key_suffix(key.as_deref()))]
    Corruption {
        /// The damaged file (for sled: the database directory).
        file: PathBuf,
        /// Byte offset of the damaged record or value inside `file` (0 if unknown).
        offset: u64,
        /// The affected key, when it is known.
        key: Option<Vec<u8>>,
        /// What check failed.
        reason: String,
    },
    /// The store directory is held by another process or another handle in this process.
    #[error("store directory {} is locked by another handle or process", path.display())]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// A key (or log or blob name) is longer than the backend allows.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value (or log entry, or the encoded size of a batch) is larger than the backend allows.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store was closed with [`Store::close`](crate::Store::close).
    #[error("store is closed")]
    Closed,
    /// The store was opened read-only; writes are refused.
    #[error("store is open read-only")]
    ReadOnly,
    /// There is no store to open: an open that must not create one
    /// ([`FileStore::open_read_only`](crate::FileStore::open_read_only),
    /// [`FileStore::open_existing`](crate::FileStore::open_existing),
    /// [`SledStore::open_existing`](crate::SledStore::open_existing)) found no directory, or a directory
    /// without store files.
    #[error("no store at {}: {reason}", path.display())]
    NotFound {
        /// The store directory.
        path: PathBuf,
        /// What is missing, e.g. `"the directory does not exist"`.
        reason: &'static str,
    },
    /// An earlier durability barrier failed; after a failed fsync the kernel may have dropped dirty pages,
    /// so this handle refuses further writes and barriers. Reopen the store to recover.
    #[error("store is poisoned by an earlier failed durability barrier: {reason}")]
    Poisoned {
        /// Description of the original failure.
        reason: String,
    },
    /// Another node (or another handle in this process) holds this PostgreSQL namespace.
    #[error("the PostgreSQL namespace {namespace} ({server}) is held by another node or handle")]
    NamespaceLocked {
        /// The namespace.
        namespace: String,
        /// Where it lives (never with a password).
        server: String,
    },
    /// The database server refused an operation or could not be reached. The operation did not happen
    /// (or, for a lost commit acknowledgement, may have happened; it was not acknowledged).
    #[error("database error during {op}: {reason}")]
    Database {
        /// What the store was doing.
        op: &'static str,
        /// The server's message (with its SQLSTATE code in parentheses) or the connection failure.
        reason: String,
    },
    /// A store location or option is malformed (e.g. a PostgreSQL URL without a namespace).
    #[error("invalid store configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An error reported by the sled engine.
    #[cfg(not(target_arch = "wasm32"))]
    #[error("sled error during {op}: {source}")]
    Sled {
        /// What the store was doing.
        op: &'static str,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
}

fn key_suffix(key: Option<&[u8]>) -> String {
    match key {
        Some(k) => format!(" (key {})", crate::keys::display_key(k)),
        None => String::new(),
    }
}

impl StoreError {
    /// Builds an [`StoreError::Io`] from parts.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io { op, path: path.into(), source }
    }

    /// Returns true for [`StoreError::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Corruption { .. })
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
