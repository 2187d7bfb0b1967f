//! The PostgreSQL backend (feature `postgres`): one namespace of a shared database per node, guarded by a
//! lease. Schema, lease and crash contract: `docs/design.md` §7.7.

use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::engine::{self, Engine, RawOp, engine_store_methods, lock};
use crate::error::{Result, StoreError};
use crate::{Limits, Store};

/// The schema version this build creates and understands. Version history: `docs/design.md` §7.7.
pub const PG_SCHEMA_VERSION: i32 = 2;

/// Size of one blob chunk row: 256 KiB.
pub const PG_BLOB_CHUNK: usize = 256 * 1024;

/// Longest namespace name, in bytes.
pub const PG_MAX_NAMESPACE_LEN: usize = 64;

/// How long one store operation may take before the connection is considered dead.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout used when the URL gives none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Key of the transaction-level advisory lock that serializes schema migrations of a database.
const MIGRATION_LOCK: i64 = 0x7270_6b5f_7363_6865; // "rpk_sche"

/// The migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE rk_ns (ns text PRIMARY KEY, epoch bigint NOT NULL);
     CREATE TABLE rk_kv (ns text NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (ns, k));
     CREATE TABLE rk_blob (ns text NOT NULL, name bytea NOT NULL, generation bigint NOT NULL, len bigint NOT NULL,
                           crc bigint NOT NULL, chunks int NOT NULL, PRIMARY KEY (ns, name));
     CREATE TABLE rk_blob_chunk (ns text NOT NULL, name bytea NOT NULL, generation bigint NOT NULL, seq int NOT NULL,
                                 chunk bytea NOT NULL, PRIMARY KEY (ns, name, generation, seq));
     CREATE SEQUENCE rk_blob_gen;",
    // v2: the lease check of a write batch as one function, so a batch is a single round trip.
    "CREATE FUNCTION rk_fence(p_ns text, p_epoch bigint) RETURNS void LANGUAGE plpgsql AS $$
     BEGIN
       PERFORM 1 FROM rk_ns WHERE ns = p_ns AND epoch = p_epoch FOR SHARE;
       IF NOT FOUND THEN RAISE EXCEPTION 'replikativ: lease lost'; END IF;
     END $$;",
];

/// The message `rk_fence` raises when the namespace's lease epoch is no longer this node's.
const LEASE_LOST: &str = "replikativ: lease lost";

/// Where a [`PgStore`] lives: server, database, user, namespace, and the password (never displayed).
///
/// Parsed from `postgres://USER@HOST:PORT/DB?namespace=NAME[&password_file=PATH][&connect_timeout=S]`. The
/// password comes from the file named by `password_file`, else from the `PGPASSWORD` environment variable; a
/// password inside the URL is refused, because URLs end up in logs, shell histories and process lists.
#[derive(Clone)]
pub struct PgOptions {
    config: Config,
    namespace: String,
    shown: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

fn invalid(reason: impl Into<String>) -> StoreError {
    StoreError::InvalidConfig { reason: reason.into() }
}

impl PgOptions {
    /// Parses a store URL (see the type docs), reading the password from `password_file` or `PGPASSWORD`.
    pub fn from_url(url: &str) -> Result<PgOptions> {
        PgOptions::from_url_with(url, std::env::var("PGPASSWORD").ok())
    }

    /// [`PgOptions::from_url`] with the `PGPASSWORD` value given (tests; `None`: not set).
    pub fn from_url_with(url: &str, pgpassword: Option<String>) -> Result<PgOptions> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| invalid("a PostgreSQL store URL starts with postgres://"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = location.split('/').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if userinfo.is_some_and(|u| u.contains(':')) {
            return Err(invalid(
                "the URL holds a password: give it in PGPASSWORD or in a file named by password_file=PATH instead \
                 (URLs end up in logs and process lists)",
            ));
        }
        let user = userinfo.filter(|u| !u.is_empty()).ok_or_else(|| {
            invalid("the URL names no user: write postgres://USER@HOST:PORT/DB?namespace=NAME")
        })?;
        if hostport.is_empty() {
            return Err(invalid("the URL names no host: write postgres://USER@HOST:PORT/DB?namespace=NAME"));
        }
        let mut namespace = None;
        let mut password_file = None;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "namespace" => namespace = Some(v.to_string()),
                "password_file" => password_file = Some(v.to_string()),
                "password" => {
                    return Err(invalid(
                        "the URL holds a password: give it in PGPASSWORD or in a file named by password_file=PATH",
                    ));
                }
                "connect_timeout" | "application_name" | "keepalives" | "keepalives_idle" => {
                    passed.push(pair.to_string())
                }
                other => {
                    return Err(invalid(format!(
                        "unknown URL parameter {other:?} (known: namespace, password_file, connect_timeout, \
                         application_name, keepalives, keepalives_idle)"
                    )));
                }
            }
        }
        let namespace = namespace
            .ok_or_else(|| invalid("the URL names no namespace: add ?namespace=NAME (one per node)"))?;
        check_namespace(&namespace)?;
        let base = format!("postgres://{location}");
        let rebuilt = if passed.is_empty() { base } else { format!("{base}?{}", passed.join("&")) };
        let mut config: Config =
            rebuilt.parse().map_err(|e| invalid(format!("the URL does not parse: {e}")))?;
        if !passed.iter().any(|p| p.starts_with("connect_timeout=")) {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if !passed.iter().any(|p| p.starts_with("application_name=")) {
            config.application_name("replikativ");
        }
        if let Some(path) = &password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("cannot read the password file {path}: {e}")))?;
            config.password(text.trim_end_matches(['\n', '\r']));
        } else if let Some(pw) = pgpassword {
            config.password(pw);
        }
        let db = location.split_once('/').map(|(_, d)| d).filter(|d| !d.is_empty()).unwrap_or(user);
        let shown = format!("postgres://{user}@{hostport}/{db}?namespace={namespace}");
        Ok(PgOptions { config, namespace, shown })
    }

    /// The namespace this node owns.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

fn check_namespace(ns: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if ns.is_empty() || ns.len() > PG_MAX_NAMESPACE_LEN || !ns.chars().all(ok_char) {
        return Err(invalid(format!(
            "namespace {ns:?} must be 1 to {PG_MAX_NAMESPACE_LEN} characters of A-Z a-z 0-9 - _ ."
        )));
    }
    Ok(())
}

fn db_err(op: &'static str, e: tokio_postgres::Error) -> StoreError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    };
    StoreError::Database { op, reason }
}

/// Whether an error is a timeout (the session may be stuck: replace it).
fn timed_out(e: &StoreError) -> bool {
    matches!(e, StoreError::Database { reason, .. } if reason.contains("(timed out)"))
}

/// Prepared statements of one connection.
struct Stmts {
    lease: Statement,
    fence: Statement,
    upsert: Statement,
    delete: Statement,
    delete_range: Statement,
    get: Statement,
    range: Statement,
    blob_meta: Statement,
    blob_chunk: Statement,
    blob_gen: Statement,
    blob_put_chunk: Statement,
    blob_unlink: Statement,
    blob_drop_chunks: Statement,
    blob_link: Statement,
}

impl Stmts {
    async fn prepare(c: &Client) -> Result<Stmts> {
        let p = |sql: &'static str| async move { c.prepare(sql).await.map_err(|e| db_err("prepare", e)) };
        Ok(Stmts {
            lease: p("SELECT epoch FROM rk_ns WHERE ns = $1 FOR SHARE").await?,
            get: p("SELECT v FROM rk_kv WHERE ns = $1 AND k = $2").await?,
            range: p("SELECT k, v FROM rk_kv WHERE ns = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4").await?,
            fence: p("SELECT rk_fence($1, $2)").await?,
            upsert: p("INSERT INTO rk_kv (ns, k, v) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                       ON CONFLICT (ns, k) DO UPDATE SET v = EXCLUDED.v")
            .await?,
            delete: p("DELETE FROM rk_kv WHERE ns = $1 AND k = ANY($2::bytea[])").await?,
            delete_range: p("DELETE FROM rk_kv WHERE ns = $1 AND k >= $2 AND k < $3").await?,
            blob_meta: p("SELECT generation, len, crc, chunks FROM rk_blob WHERE ns = $1 AND name = $2").await?,
            blob_chunk: p("SELECT chunk FROM rk_blob_chunk WHERE ns = $1 AND name = $2 AND generation = $3 AND seq = $4")
                .await?,
            blob_gen: p("SELECT nextval('rk_blob_gen')").await?,
            blob_put_chunk: p("INSERT INTO rk_blob_chunk (ns, name, generation, seq, chunk) VALUES ($1, $2, $3, $4, $5)")
                .await?,
            blob_unlink: p("DELETE FROM rk_blob WHERE ns = $1 AND name = $2 RETURNING generation").await?,
            blob_drop_chunks: p("DELETE FROM rk_blob_chunk WHERE ns = $1 AND name = $2 AND generation = $3").await?,
            blob_link: p("INSERT INTO rk_blob (ns, name, generation, len, crc, chunks) VALUES ($1, $2, $3, $4, $5, $6)")
                .await?,
        })
    }
}

/// One open connection and its statements.
struct Conn {
    client: Client,
    st: Stmts,
}

/// The three sessions of an open store: the lease session (holds the advisory lock), the writer, a reader.
struct Conns {
    lease: Arc<Client>,
    write: Arc<tokio::sync::Mutex<Conn>>,
    read: Arc<Conn>,
    broken: AtomicBool,
}

impl Conns {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::SeqCst) && !self.any_closed()
    }

    /// Whether a session's connection has ended (the writer is checked only if it is not in use).
    fn any_closed(&self) -> bool {
        self.lease.is_closed()
            || self.read.client.is_closed()
            || self.write.try_lock().is_ok_and(|w| w.client.is_closed())
    }

    /// After a failed operation: marks the sessions for replacement if the failure was the connection's.
    fn note_failure(&self, e: &StoreError) {
        if timed_out(e) || self.any_closed() {
            self.broken.store(true, Ordering::SeqCst);
        }
    }
}

/// State shared by the store and its open blob readers.
struct Shared {
    opts: PgOptions,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    conns: Mutex<Option<Arc<Conns>>>,
    closed: AtomicBool,
    /// Set when another node took the namespace over while this one was disconnected.
    poisoned: Mutex<Option<String>>,
    epoch: i64,
    lock_key: String,
}

impl Shared {
    /// Runs `fut` on the store's own runtime and waits for it on this thread (which may be any thread,
    /// also a tokio worker: it only blocks, it never enters a runtime).
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let rt = lock(&self.rt);
            let rt = rt.as_ref().ok_or(StoreError::Closed)?;
            rt.spawn(async move {
                let r = match tokio::time::timeout(OP_TIMEOUT, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Database {
                        op: "operation",
                        reason: format!(
                            "no answer from PostgreSQL within {} s (timed out)",
                            OP_TIMEOUT.as_secs()
                        ),
                    }),
                };
                let _ = tx.send(r);
            });
        }
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if let Some(reason) = &*lock(&self.poisoned) {
            return Err(StoreError::Poisoned { reason: reason.clone() });
        }
        Ok(())
    }

    /// The open sessions; reconnects (and re-takes the lease) if they were lost.
    fn conns(&self) -> Result<Arc<Conns>> {
        self.check_open()?;
        let mut guard = lock(&self.conns);
        if let Some(c) = &*guard
            && c.usable()
        {
            return Ok(c.clone());
        }
        // A lease session that is still alive is kept: it holds the lock (a new session could not take
        // it until the server has ended the old one).
        let old_lease = guard.take().and_then(|old| {
            tracing::warn!(store = %self.opts, "connection to PostgreSQL lost; reconnecting");
            (!old.lease.is_closed()).then(|| old.lease.clone())
        });
        let opts = self.opts.clone();
        let key = self.lock_key.clone();
        let epoch = self.epoch;
        let conns = self.block(async move {
            let lease = match old_lease {
                Some(l) => l,
                None => Arc::new(retake_lease(&opts, &key).await?),
            };
            let ns = opts.namespace.clone();
            let row = lease
                .query_opt("SELECT epoch FROM rk_ns WHERE ns = $1", &[&ns])
                .await
                .map_err(|e| db_err("read lease", e))?;
            let current: Option<i64> = row.map(|r| r.get(0));
            if current != Some(epoch) {
                return Err(StoreError::Poisoned {
                    reason: format!(
                        "the namespace {} was opened by another node while this one was disconnected (lease epoch {epoch}, now {current:?})",
                        opts.namespace
                    ),
                });
            }
            open_sessions(&opts, lease).await
        });
        match conns {
            Ok(c) => {
                let c = Arc::new(c);
                *guard = Some(c.clone());
                tracing::info!(store = %self.opts, "reconnected to PostgreSQL");
                Ok(c)
            }
            Err(e @ StoreError::Poisoned { .. }) => {
                *lock(&self.poisoned) = Some(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs an operation on the sessions and marks them broken if the connection failed.
    fn run<T: Send + 'static, F>(&self, f: impl FnOnce(Arc<Conns>, String, i64) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let conns = self.conns()?;
        let r = self.block(f(conns.clone(), self.opts.namespace.clone(), self.epoch));
        if let Err(e) = &r {
            conns.note_failure(e);
            if let StoreError::Poisoned { reason } = e {
                *lock(&self.poisoned) = Some(reason.clone());
            }
        }
        r
    }

    /// Releases the lease and drops the sessions (close and drop).
    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(conns) = lock(&self.conns).take() {
            let key = self.lock_key.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            if let Some(rt) = &*lock(&self.rt) {
                rt.spawn(async move {
                    let unlock = async {
                        conns
                            .lease
                            .execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&key])
                            .await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), unlock).await;
                    drop(conns);
                    let _ = tx.send(());
                });
                let _ = rx.recv_timeout(Duration::from_secs(6));
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(rt) = lock(&self.rt).take() {
            rt.shutdown_background();
        }
    }
}

async fn connect(opts: &PgOptions) -> Result<Client> {
    let (client, connection) = opts.config.connect(NoTls).await.map_err(|e| db_err("connect", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Takes the lock again after the lease session was lost. The server may not have ended the old session
/// yet (its lock then still looks held), so a refusal is retried for up to 2 s.
async fn retake_lease(opts: &PgOptions, key: &str) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match connect_lease(opts, key).await {
            Err(StoreError::NamespaceLocked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// Connects the lease session and takes the namespace's advisory lock.
async fn connect_lease(opts: &PgOptions, key: &str) -> Result<Client> {
    let lease = connect(opts).await?;
    let row = lease
        .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(|e| db_err("take the namespace lock", e))?;
    if !row.get::<_, bool>(0) {
        return Err(StoreError::NamespaceLocked {
            namespace: opts.namespace.clone(),
            server: opts.shown.clone(),
        });
    }
    Ok(lease)
}

async fn open_conn(opts: &PgOptions) -> Result<Conn> {
    let client = connect(opts).await?;
    client
        .batch_execute("SET synchronous_commit = on; SET standard_conforming_strings = on")
        .await
        .map_err(|e| db_err("configure the session", e))?;
    let st = Stmts::prepare(&client).await?;
    Ok(Conn { client, st })
}

async fn open_sessions(opts: &PgOptions, lease: Arc<Client>) -> Result<Conns> {
    let write = open_conn(opts).await?;
    let read = open_conn(opts).await?;
    Ok(Conns {
        lease,
        write: Arc::new(tokio::sync::Mutex::new(write)),
        read: Arc::new(read),
        broken: AtomicBool::new(false),
    })
}

/// Creates or migrates the schema (serialized across nodes by a transaction-level advisory lock).
async fn migrate(c: &mut Client) -> Result<i32> {
    let tx = c.transaction().await.map_err(|e| db_err("begin migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db_err("lock the schema", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rk_schema (id smallint PRIMARY KEY CHECK (id = 1), version int NOT NULL)",
    )
    .await
    .map_err(|e| db_err("create rk_schema", e))?;
    let found: i32 = tx
        .query_opt("SELECT version FROM rk_schema WHERE id = 1", &[])
        .await
        .map_err(|e| db_err("read the schema version", e))?
        .map_or(0, |r| r.get(0));
    if found > PG_SCHEMA_VERSION {
        return Err(StoreError::InvalidConfig {
            reason: format!(
                "the database holds replikativ schema version {found}, newer than the {PG_SCHEMA_VERSION} this build \
                 understands: upgrade replikativ"
            ),
        });
    }
    if found < 0 {
        return Err(invalid(format!("the database holds an invalid replikativ schema version {found}")));
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(|e| db_err("migrate the schema", e))?;
        tracing::info!(from = v, to = v + 1, "migrated the replikativ schema");
    }
    tx.execute(
        "INSERT INTO rk_schema (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        &[&PG_SCHEMA_VERSION],
    )
    .await
    .map_err(|e| db_err("write the schema version", e))?;
    tx.commit().await.map_err(|e| db_err("commit migration", e))?;
    Ok(found)
}

/// Fails unless this node still holds the namespace's lease (row-locked until the transaction ends, so a
/// node taking the namespace over waits for it).
async fn check_lease(
    c: &impl tokio_postgres::GenericClient,
    st: &Stmts,
    ns: &String,
    epoch: i64,
) -> Result<()> {
    let row = c.query_opt(&st.lease, &[ns]).await.map_err(|e| db_err("check the lease", e))?;
    let current: Option<i64> = row.map(|r| r.get(0));
    if current == Some(epoch) {
        Ok(())
    } else {
        Err(StoreError::Poisoned {
            reason: format!(
                "the namespace {ns} was taken over by another node (lease epoch {epoch}, now {current:?})"
            ),
        })
    }
}

/// A store in one namespace of a PostgreSQL database.
///
/// * **Lease**: opening takes a session-level advisory lock on the namespace on a dedicated connection
///   (a second opener gets [`StoreError::NamespaceLocked`]; the lock dies with the session, so a killed node
///   frees it) and increments the namespace's lease epoch in `rk_ns`. Every write transaction reads the
///   epoch `FOR SHARE` and fails if it changed, so a node that lost its session cannot write after another
///   one took the namespace over.
/// * **Schema**: created and migrated by the store itself (table `rk_schema`, [`PG_SCHEMA_VERSION`]).
/// * **Writes**: every batch is one transaction committed with `synchronous_commit = on`, so it is durable
///   when it returns; [`Store::sync`] has nothing left to do.
/// * **Blobs**: in chunks of [`PG_BLOB_CHUNK`] bytes, written in one transaction, read one chunk at a time.
/// * **Connection loss**: the failing operation returns [`StoreError::Database`]; the next one reconnects
///   and re-takes the lease.
///
/// Calls block the calling thread; the store runs its own small tokio runtime, so they may come from
/// any thread.
pub struct PgStore {
    shared: Arc<Shared>,
    writer: Mutex<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("location", &self.shared.opts.shown).finish()
    }
}

impl PgStore {
    /// Opens (creating the schema and the namespace if needed) the store at `url`; see [`PgOptions`].
    pub fn open_url(url: &str) -> Result<PgStore> {
        PgStore::open(PgOptions::from_url(url)?)
    }

    /// Opens the store described by `opts`. Fails with [`StoreError::NamespaceLocked`] if another node
    /// (or another handle in this process) holds the namespace.
    pub fn open(opts: PgOptions) -> Result<PgStore> {
        PgStore::open_with(opts, true)
    }

    /// Opens an existing namespace like [`PgStore::open`], but never creates one: fails with
    /// [`StoreError::NotFound`] if the namespace was never opened for writing (the schema itself is
    /// created or migrated if needed).
    pub fn open_existing(opts: PgOptions) -> Result<PgStore> {
        PgStore::open_with(opts, false)
    }

    fn open_with(opts: PgOptions, create: bool) -> Result<PgStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("replikativ-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start the PostgreSQL client runtime", PathBuf::new(), e))?;
        let lock_key = format!("replikativ-ns:{}", opts.namespace);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (o, k) = (opts.clone(), lock_key.clone());
        rt.spawn(async move {
            let r = tokio::time::timeout(OP_TIMEOUT, async move {
                let lease = connect_lease(&o, &k).await?;
                let mut setup = connect(&o).await?;
                migrate(&mut setup).await?;
                let ns = o.namespace.clone();
                if !create {
                    let known = setup
                        .query_opt("SELECT 1 FROM rk_ns WHERE ns = $1", &[&ns])
                        .await
                        .map_err(|e| db_err("look up the namespace", e))?;
                    if known.is_none() {
                        return Err(StoreError::NotFound {
                            path: PathBuf::from(o.shown.clone()),
                            reason: "the namespace does not exist in this database",
                        });
                    }
                }
                let epoch: i64 = setup
                    .query_one(
                        "INSERT INTO rk_ns (ns, epoch) VALUES ($1, 1) \
                         ON CONFLICT (ns) DO UPDATE SET epoch = rk_ns.epoch + 1 RETURNING epoch",
                        &[&ns],
                    )
                    .await
                    .map_err(|e| db_err("take the lease", e))?
                    .get(0);
                drop(setup);
                Ok::<_, StoreError>((open_sessions(&o, Arc::new(lease)).await?, epoch))
            })
            .await
            .unwrap_or_else(|_| Err(invalid("opening the PostgreSQL store timed out")));
            let _ = tx.send(r);
        });
        let result = rx.recv().map_err(|_| StoreError::Closed)?;
        let (conns, epoch) = match result {
            Ok(v) => v,
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        Ok(PgStore {
            shared: Arc::new(Shared {
                opts,
                rt: Mutex::new(Some(rt)),
                conns: Mutex::new(Some(Arc::new(conns))),
                closed: AtomicBool::new(false),
                poisoned: Mutex::new(None),
                epoch,
                lock_key,
            }),
            writer: Mutex::new(()),
        })
    }

    /// The namespace this store owns.
    pub fn namespace(&self) -> &str {
        &self.shared.opts.namespace
    }

    /// Where the store lives, without the password.
    pub fn location(&self) -> String {
        self.shared.opts.shown.clone()
    }

    /// The lease epoch this handle holds (incremented by every open of the namespace).
    pub fn lease_epoch(&self) -> i64 {
        self.shared.epoch
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// A run of puts and deletes on distinct keys, or a range delete.
enum Segment {
    Keys { put_k: Vec<Vec<u8>>, put_v: Vec<Vec<u8>>, del: Vec<Vec<u8>> },
    Range(Vec<u8>, Vec<u8>),
}

fn segments(ops: Vec<RawOp>) -> Vec<Segment> {
    fn flush(map: &mut std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>, out: &mut Vec<Segment>) {
        if map.is_empty() {
            return;
        }
        let (mut put_k, mut put_v, mut del) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in std::mem::take(map) {
            match v {
                Some(v) => {
                    put_k.push(k);
                    put_v.push(v);
                }
                None => del.push(k),
            }
        }
        out.push(Segment::Keys { put_k, put_v, del });
    }
    let mut out = Vec::new();
    let mut map = std::collections::BTreeMap::new();
    for op in ops {
        match op {
            RawOp::Put(k, v) => {
                map.insert(k, Some(v));
            }
            RawOp::Delete(k) => {
                map.insert(k, None);
            }
            RawOp::DeleteRange(s, e) => {
                flush(&mut map, &mut out);
                out.push(Segment::Range(s, e));
            }
        }
    }
    flush(&mut map, &mut out);
    out
}

/// Batches of at most this many key and value bytes go as one query of hex text (one round trip);
/// larger ones as binary arrays through prepared statements (a few round trips, half the bytes).
const SMALL_BATCH: usize = 64 * 1024;

fn segment_bytes(segs: &[Segment]) -> usize {
    segs.iter()
        .map(|s| match s {
            Segment::Keys { put_k, put_v, del } => put_k.iter().chain(put_v).chain(del).map(Vec::len).sum(),
            Segment::Range(a, b) => a.len() + b.len(),
        })
        .sum()
}

/// Appends `'\x<hex>'` (a bytea literal; the session has `standard_conforming_strings = on`).
fn push_bytea(out: &mut String, b: &[u8]) {
    out.push_str("'\\x");
    out.push_str(&crate::keys::hex(b));
    out.push('\'');
}

/// One multi-statement simple query for a batch: the lease check, then the segments in order. PostgreSQL
/// runs such a query as one implicit transaction (an error anywhere rolls all of it back) and commits it
/// at the end, so a batch is atomic and costs one round trip. Only hex digits, the checked namespace
/// (`A-Z a-z 0-9 - _ .`) and integers are spliced into the text.
fn batch_sql(ns: &str, epoch: i64, segs: Vec<Segment>) -> String {
    let size: usize = segs
        .iter()
        .map(|s| match s {
            Segment::Keys { put_k, put_v, del } => {
                put_k.iter().chain(put_v).chain(del).map(|b| 2 * b.len() + 16).sum::<usize>() + 64
            }
            Segment::Range(a, b) => 2 * (a.len() + b.len()) + 96,
        })
        .sum();
    let mut q = String::with_capacity(size + 128);
    q.push_str(&format!("SELECT rk_fence('{ns}', {epoch});"));
    for seg in segs {
        match seg {
            Segment::Keys { put_k, put_v, del } => {
                if !del.is_empty() {
                    q.push_str(&format!("DELETE FROM rk_kv WHERE ns = '{ns}' AND k IN ("));
                    for (i, k) in del.iter().enumerate() {
                        if i > 0 {
                            q.push(',');
                        }
                        push_bytea(&mut q, k);
                    }
                    q.push_str(");");
                }
                if !put_k.is_empty() {
                    q.push_str("INSERT INTO rk_kv (ns, k, v) VALUES ");
                    for (i, (k, v)) in put_k.iter().zip(&put_v).enumerate() {
                        if i > 0 {
                            q.push(',');
                        }
                        q.push_str(&format!("('{ns}',"));
                        push_bytea(&mut q, k);
                        q.push(',');
                        push_bytea(&mut q, v);
                        q.push(')');
                    }
                    q.push_str(" ON CONFLICT (ns, k) DO UPDATE SET v = EXCLUDED.v;");
                }
            }
            Segment::Range(a, b) => {
                q.push_str(&format!("DELETE FROM rk_kv WHERE ns = '{ns}' AND k >= "));
                push_bytea(&mut q, &a);
                q.push_str(" AND k < ");
                push_bytea(&mut q, &b);
                q.push(';');
            }
        }
    }
    q
}

impl Engine for PgStore {
    fn write_guard(&self) -> Result<MutexGuard<'_, ()>> {
        let g = lock(&self.writer);
        self.shared.check_open()?;
        Ok(g)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.shared.run(move |c, ns, _| async move {
            let row =
                c.read.client.query_opt(&c.read.st.get, &[&ns, &key]).await.map_err(|e| db_err("get", e))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn raw_range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = (start.to_vec(), end.to_vec());
        let limit: Option<i64> = i64::try_from(max).ok();
        self.shared.run(move |c, ns, _| async move {
            let rows = c
                .read
                .client
                .query(&c.read.st.range, &[&ns, &start, &end, &limit])
                .await
                .map_err(|e| db_err("range scan", e))?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn raw_apply(&self, ops: Vec<RawOp>) -> Result<()> {
        let segs = segments(ops);
        let lease_lost = |ns: &str, epoch: i64| StoreError::Poisoned {
            reason: format!(
                "the namespace {ns} was taken over by another node (this node's lease epoch {epoch})"
            ),
        };
        let fenced = |e: &tokio_postgres::Error| e.as_db_error().is_some_and(|d| d.message() == LEASE_LOST);
        if segment_bytes(&segs) <= SMALL_BATCH {
            // Small: one round trip of hex text.
            let sql = batch_sql(&self.shared.opts.namespace, self.shared.epoch, segs);
            return self.shared.run(move |c, ns, epoch| async move {
                let w = c.write.clone().lock_owned().await;
                match w.client.batch_execute(&sql).await {
                    Ok(()) => Ok(()),
                    Err(e) if fenced(&e) => Err(lease_lost(&ns, epoch)),
                    Err(e) => Err(db_err("write batch", e)),
                }
            });
        }
        // Large: binary arrays through prepared statements in one explicit transaction.
        self.shared.run(move |c, ns, epoch| async move {
            let mut w = c.write.clone().lock_owned().await;
            let Conn { client, st } = &mut *w;
            let tx = client.transaction().await.map_err(|e| db_err("begin", e))?;
            match tx.execute(&st.fence, &[&ns, &epoch]).await {
                Ok(_) => {}
                Err(e) if fenced(&e) => return Err(lease_lost(&ns, epoch)),
                Err(e) => return Err(db_err("check the lease", e)),
            }
            for seg in &segs {
                match seg {
                    Segment::Keys { put_k, put_v, del } => {
                        if !del.is_empty() {
                            tx.execute(&st.delete, &[&ns, del]).await.map_err(|e| db_err("delete", e))?;
                        }
                        if !put_k.is_empty() {
                            tx.execute(&st.upsert, &[&ns, put_k, put_v])
                                .await
                                .map_err(|e| db_err("put", e))?;
                        }
                    }
                    Segment::Range(s, e) => {
                        tx.execute(&st.delete_range, &[&ns, s, e])
                            .await
                            .map_err(|e| db_err("delete range", e))?;
                    }
                }
            }
            tx.commit().await.map_err(|e| db_err("commit", e))
        })
    }

    fn engine_limits(&self) -> Limits {
        Limits::default()
    }
}

impl Store for PgStore {
    engine_store_methods!();

    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> Result<u64> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        let _g = self.write_guard()?;
        let sh = &self.shared;
        let conns = sh.conns()?;
        let ns = sh.opts.namespace.clone();
        let epoch = sh.epoch;
        let name = name.to_vec();
        let w = sh.block(lock_writer(conns.write.clone()))?;
        // Each step runs on the store's runtime, holding the writer session between steps.
        let step = |w: tokio::sync::OwnedMutexGuard<Conn>, what: Step| {
            let (ns, name) = (ns.clone(), name.clone());
            sh.block(async move {
                let r = run_step(&w, &ns, &name, epoch, what).await;
                Ok((w, r))
            })
        };
        let (mut w, r) = step(w, Step::Begin)?;
        let mut result = r.map(|_| 0u64);
        let mut generation = 0i64;
        if result.is_ok() {
            let (w2, r) = step(w, Step::Gen)?;
            w = w2;
            match r {
                Ok(g) => generation = g,
                Err(e) => result = Err(e),
            }
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut total = 0u64;
        let mut seq = 0i32;
        while result.is_ok() {
            let mut chunk = Vec::with_capacity(PG_BLOB_CHUNK);
            match (&mut *data).take(PG_BLOB_CHUNK as u64).read_to_end(&mut chunk) {
                Ok(_) => {}
                Err(e) => {
                    result = Err(StoreError::io("read blob source", PathBuf::new(), e));
                    break;
                }
            }
            if chunk.is_empty() && seq > 0 {
                break;
            }
            let last = chunk.len() < PG_BLOB_CHUNK;
            hasher.update(&chunk);
            total += chunk.len() as u64;
            let (w2, r) = step(w, Step::Chunk(generation, seq, chunk))?;
            w = w2;
            if let Err(e) = r {
                result = Err(e);
            }
            seq += 1;
            if last {
                break;
            }
        }
        if result.is_ok() {
            let crc = i64::from(hasher.finalize());
            let (w2, r) = step(w, Step::Link { generation, len: total as i64, crc, chunks: seq })?;
            w = w2;
            result = r.map(|_| total);
        }
        if result.is_err() {
            let (w2, _) = step(w, Step::Rollback)?;
            w = w2;
        }
        drop(w);
        if let Err(e) = &result {
            conns.note_failure(e);
            if let StoreError::Poisoned { reason } = e {
                *lock(&sh.poisoned) = Some(reason.clone());
            }
        }
        result
    }

    fn open_blob(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        let n = name.to_vec();
        let meta = self.shared.run(move |c, ns, _| async move {
            let row = c
                .read
                .client
                .query_opt(&c.read.st.blob_meta, &[&ns, &n])
                .await
                .map_err(|e| db_err("open blob", e))?;
            Ok(row.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2), r.get::<_, i32>(3))))
        })?;
        Ok(meta.map(|(generation, len, crc, chunks)| {
            Box::new(PgBlobReader {
                shared: self.shared.clone(),
                name: name.to_vec(),
                generation,
                len: len as u64,
                crc: crc as u32,
                chunks,
                next: 0,
                buf: Vec::new(),
                pos: 0,
                read: 0,
                hasher: crc32fast::Hasher::new(),
                checked: false,
            }) as Box<dyn Read + Send>
        }))
    }

    fn delete_blob(&self, name: &[u8]) -> Result<bool> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        let _g = self.write_guard()?;
        let name = name.to_vec();
        self.shared.run(move |c, ns, epoch| async move {
            let mut w = c.write.clone().lock_owned().await;
            let Conn { client, st } = &mut *w;
            let tx = client.transaction().await.map_err(|e| db_err("begin", e))?;
            check_lease(&tx, st, &ns, epoch).await?;
            let old =
                tx.query_opt(&st.blob_unlink, &[&ns, &name]).await.map_err(|e| db_err("delete blob", e))?;
            let existed = match old {
                Some(row) => {
                    let generation: i64 = row.get(0);
                    tx.execute(&st.blob_drop_chunks, &[&ns, &name, &generation])
                        .await
                        .map_err(|e| db_err("delete blob chunks", e))?;
                    true
                }
                None => false,
            };
            tx.commit().await.map_err(|e| db_err("commit", e))?;
            Ok(existed)
        })
    }

    fn sync(&self) -> Result<()> {
        // Every write committed with synchronous_commit = on before it returned: nothing is pending.
        self.shared.check_open()
    }

    fn close(&self) -> Result<()> {
        let _g = lock(&self.writer);
        self.shared.shutdown();
        Ok(())
    }
}

/// One step of a streamed blob write.
enum Step {
    Begin,
    Gen,
    Chunk(i64, i32, Vec<u8>),
    Link { generation: i64, len: i64, crc: i64, chunks: i32 },
    Rollback,
}

async fn run_step(w: &Conn, ns: &String, name: &Vec<u8>, epoch: i64, step: Step) -> Result<i64> {
    let c = &w.client;
    let st = &w.st;
    match step {
        Step::Begin => {
            c.batch_execute("BEGIN").await.map_err(|e| db_err("begin", e))?;
            check_lease(c, st, ns, epoch).await?;
            Ok(0)
        }
        Step::Gen => {
            let row = c.query_one(&st.blob_gen, &[]).await.map_err(|e| db_err("blob generation", e))?;
            Ok(row.get(0))
        }
        Step::Chunk(generation, seq, chunk) => {
            c.execute(&st.blob_put_chunk, &[ns, name, &generation, &seq, &chunk])
                .await
                .map_err(|e| db_err("write blob chunk", e))?;
            Ok(0)
        }
        Step::Link { generation, len, crc, chunks } => {
            if let Some(row) =
                c.query_opt(&st.blob_unlink, &[ns, name]).await.map_err(|e| db_err("replace blob", e))?
            {
                let old: i64 = row.get(0);
                c.execute(&st.blob_drop_chunks, &[ns, name, &old])
                    .await
                    .map_err(|e| db_err("drop old blob", e))?;
            }
            c.execute(&st.blob_link, &[ns, name, &generation, &len, &crc, &chunks])
                .await
                .map_err(|e| db_err("write blob", e))?;
            c.batch_execute("COMMIT").await.map_err(|e| db_err("commit", e))?;
            Ok(0)
        }
        Step::Rollback => {
            c.batch_execute("ROLLBACK").await.map_err(|e| db_err("rollback", e))?;
            Ok(0)
        }
    }
}

/// Locking a session as a `Result` future (for [`Shared::block`]).
async fn lock_writer(w: Arc<tokio::sync::Mutex<Conn>>) -> Result<tokio::sync::OwnedMutexGuard<Conn>> {
    Ok(w.lock_owned().await)
}

/// Streams a blob one chunk row at a time and checks its CRC at the end.
struct PgBlobReader {
    shared: Arc<Shared>,
    name: Vec<u8>,
    generation: i64,
    len: u64,
    crc: u32,
    chunks: i32,
    next: i32,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
    hasher: crc32fast::Hasher,
    checked: bool,
}

impl std::fmt::Debug for PgBlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBlobReader")
            .field("generation", &self.generation)
            .field("next", &self.next)
            .finish()
    }
}

impl PgBlobReader {
    fn fetch(&mut self) -> io::Result<()> {
        let (name, generation, seq) = (self.name.clone(), self.generation, self.next);
        let chunk = self
            .shared
            .run(move |c, ns, _| async move {
                let row = c
                    .read
                    .client
                    .query_opt(&c.read.st.blob_chunk, &[&ns, &name, &generation, &seq])
                    .await
                    .map_err(|e| db_err("read blob chunk", e))?;
                Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })
            .map_err(io::Error::other)?;
        match chunk {
            Some(c) => {
                self.buf = c;
                self.pos = 0;
                self.next += 1;
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "blob {} was replaced or deleted while it was read",
                    crate::keys::display_key(&self.name)
                ),
            )),
        }
    }
}

impl Read for PgBlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() && self.next < self.chunks {
            self.fetch()?;
        }
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.hasher.update(&out[..n]);
            self.pos += n;
            self.read += n as u64;
            return Ok(n);
        }
        if !self.checked {
            self.checked = true;
            if self.read != self.len || self.hasher.clone().finalize() != self.crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} failed its checksum", crate::keys::display_key(&self.name)),
                ));
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parses_and_never_shows_the_password() {
        let o = PgOptions::from_url_with(
            "postgres://alice@db.example:5433/rk?namespace=node-1",
            Some("s3cret".into()),
        )
        .expect("parse");
        assert_eq!(o.namespace(), "node-1");
        assert_eq!(o.to_string(), "postgres://alice@db.example:5433/rk?namespace=node-1");
        assert!(!format!("{o:?}").contains("s3cret"));
        assert_eq!(o.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(o.config.get_dbname(), Some("rk"));
    }

    #[test]
    fn url_errors_are_precise() {
        let err = |u: &str| PgOptions::from_url_with(u, None).expect_err(u).to_string();
        assert!(err("postgres://alice:pw@h/db?namespace=a").contains("PGPASSWORD"));
        assert!(err("postgres://alice@h/db?namespace=a&password=pw").contains("password"));
        assert!(err("postgres://alice@h/db").contains("namespace"));
        assert!(err("postgres://h/db?namespace=a").contains("no user"));
        assert!(err("postgres://alice@h/db?namespace=a/b").contains("namespace"));
        assert!(err("postgres://alice@h/db?namespace=a&sslmode=require").contains("unknown URL parameter"));
        assert!(err("mysql://alice@h/db?namespace=a").contains("postgres://"));
        assert!(
            err("postgres://alice@h/db?namespace=a&password_file=/nonexistent/pw").contains("password file")
        );
    }

    #[test]
    fn password_file_wins_over_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pw");
        std::fs::write(&p, "from-file\n").expect("write");
        let url = format!("postgres://bob@127.0.0.1:1/db?namespace=n&password_file={}", p.display());
        let o = PgOptions::from_url_with(&url, Some("from-env".into())).expect("parse");
        assert_eq!(o.config.get_password(), Some(&b"from-file"[..]));
    }

    #[test]
    fn segments_keep_order_around_range_deletes() {
        let segs = segments(vec![
            RawOp::Put(b"a".to_vec(), b"1".to_vec()),
            RawOp::Put(b"a".to_vec(), b"2".to_vec()),
            RawOp::Delete(b"b".to_vec()),
            RawOp::DeleteRange(b"a".to_vec(), b"z".to_vec()),
            RawOp::Put(b"c".to_vec(), b"3".to_vec()),
        ]);
        assert_eq!(segs.len(), 3);
        match &segs[0] {
            Segment::Keys { put_k, put_v, del } => {
                assert_eq!(
                    (put_k.clone(), put_v.clone(), del.clone()),
                    (vec![b"a".to_vec()], vec![b"2".to_vec()], vec![b"b".to_vec()])
                );
            }
            Segment::Range(..) => panic!("expected keys first"),
        }
        assert!(matches!(&segs[1], Segment::Range(..)));
        assert!(matches!(&segs[2], Segment::Keys { put_k, .. } if put_k == &vec![b"c".to_vec()]));
    }
}
