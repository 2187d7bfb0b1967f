//! Ownership of a store directory through a lock file: exclusive for writers, shared for read-only
//! handles.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Name of the lock file inside a store directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Holds an exclusive `flock` on `<dir>/LOCK` until dropped. The kernel releases it when the process dies,
/// so a crashed owner never blocks the next open.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or fails with [`StoreError::Locked`] if another handle or process has it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked { path: PathBuf::from(dir) }),
            Err(TryLockError::Error(e)) => Err(StoreError::io("lock", &path, e)),
        }
    }

    /// Takes a shared lock for a read-only handle, never creating the lock file: fails with
    /// [`StoreError::Locked`] while a writer holds the exclusive lock, and keeps writers out while it is
    /// held. Returns `None` (no lock) when `<dir>/LOCK` does not exist or this process may not open it;
    /// a read-only handle then reads without one (see `FileStore::open_read_only` for why that is safe).
    pub(crate) fn acquire_shared(dir: &Path) -> Result<Option<DirLock>> {
        let path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(file) => file,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {
                tracing::debug!(path = %path.display(), error = %e, "read-only open without a lock");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("open lock file", &path, e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(DirLock { _file: file })),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked { path: PathBuf::from(dir) }),
            Err(TryLockError::Error(e)) => Err(StoreError::io("lock", &path, e)),
        }
    }
}

/// Fails with [`StoreError::NotFound`] unless `dir` is an existing directory.
pub(crate) fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotFound { path: dir.to_path_buf(), reason: "it is not a directory" }),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            Err(StoreError::NotFound { path: dir.to_path_buf(), reason: "the directory does not exist" })
        }
        Err(e) => Err(StoreError::io("stat store directory", dir, e)),
    }
}

/// Creates `dir` if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io("fsync directory", dir, e))
}
