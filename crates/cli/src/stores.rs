//! Opening a store for a command: created, existing, or read-only, with one sentence when it fails.

use super::*;

/// The store of `serve` and of the data commands when no --store is given.
pub(crate) const DEFAULT_STORE: &str = "file:./replikativ-data";

/// How a command opens its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Open for writing, creating the store if there is none (`serve`, the create commands).
    Create,
    /// Open an existing store for writing, never creating one (edits of existing addresses).
    Existing,
    /// Open an existing store read-only: create nothing, write nothing (the reads). A sled store,
    /// which has no read-only mode, is opened for writing, without creating one.
    ReadOnly,
}

pub(crate) fn open_store(spec: &str, access: Access) -> Result<Arc<dyn Store>, Failure> {
    use replikativ_store::StoreError;
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    let dir = PathBuf::from(path);
    let open_err = |e: StoreError| open_failure(spec, access, e);
    let store: Arc<dyn Store> = match (kind, access) {
        ("memory", _) => Arc::new(MemoryStore::new()),
        // postgres://USER@HOST:PORT/DB?namespace=NAME; the password comes from PGPASSWORD or
        // password_file=PATH, never from the URL (it is printed and logged).
        ("postgres" | "postgresql", _) => {
            let opts = replikativ_store::PgOptions::from_url(spec)
                .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            let store = match access {
                Access::Create => replikativ_store::PgStore::open(opts),
                // A PostgreSQL namespace has no read-only open: reads take the lease like writes.
                Access::Existing | Access::ReadOnly => replikativ_store::PgStore::open_existing(opts),
            };
            Arc::new(store.map_err(open_err)?)
        }
        ("file" | "sled", _) if path.is_empty() => return Err(unknown_store(spec)),
        ("file", Access::Create) => Arc::new(FileStore::open(&dir).map_err(open_err)?),
        ("file", Access::Existing) => Arc::new(FileStore::open_existing(&dir).map_err(open_err)?),
        ("file", Access::ReadOnly) => Arc::new(FileStore::open_read_only(&dir).map_err(open_err)?),
        ("sled", Access::Create) => Arc::new(SledStore::open(&dir).map_err(open_err)?),
        ("sled", Access::Existing | Access::ReadOnly) => {
            Arc::new(SledStore::open_existing(&dir).map_err(open_err)?)
        }
        _ => return Err(unknown_store(spec)),
    };
    Ok(store)
}

/// The one sentence for a store that does not open.
pub(crate) fn open_failure(spec: &str, access: Access, e: replikativ_store::StoreError) -> Failure {
    use replikativ_store::StoreError;
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    match &e {
        StoreError::Locked { .. } | StoreError::NamespaceLocked { .. } => Failure(
            EXIT_DATA,
            format!(
                "cannot open the store {spec}: {e} (a running peer holds it: use --peer ws://HOST:PORT to work through that peer)"
            ),
        ),
        StoreError::NotFound { .. } if spec == DEFAULT_STORE => Failure(
            EXIT_DATA,
            format!(
                "{e} (without --peer or --store, commands use the store {DEFAULT_STORE}: give --peer ws://HOST:PORT to work through a running peer, or --store; only serve and the create commands make a new store)"
            ),
        ),
        StoreError::NotFound { .. } => {
            Failure(EXIT_DATA, format!("{e} (only serve and the create commands make a new store)"))
        }
        StoreError::Io { source, .. } if kind == "sled" && access == Access::ReadOnly && denied(source) => {
            Failure(EXIT_DATA, sled_read_only_refusal(std::path::Path::new(path)))
        }
        _ => Failure(EXIT_DATA, format!("cannot open the store {spec}: {e}")),
    }
}

pub(crate) fn unknown_store(spec: &str) -> Failure {
    Failure(
        EXIT_USAGE,
        format!(
            "unknown store {spec:?}: use file:DIR, sled:DIR, postgres://USER@HOST:PORT/DB?namespace=NAME or memory"
        ),
    )
}

/// Whether an IO error means the file system refused a write (permissions, a read-only mount).
pub(crate) fn denied(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem)
}

/// Why a sled store that may not be written cannot be read either.
pub(crate) fn sled_read_only_refusal(dir: &std::path::Path) -> String {
    format!(
        "cannot read the sled store {}: sled 0.34 has no read-only mode and must open its files for writing, which is not allowed here (copy it somewhere writable, or keep read-only data in a file: store)",
        dir.display()
    )
}
