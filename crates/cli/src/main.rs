//! The `replikativ` command line: run peers, connect them, read and edit replicated data.

mod backend;
mod output;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use replikativ_crdt::{ActorId, Address, ContentId, CrdtKind, Transaction, Value, to_value};
use replikativ_peer::node::{Node, NodeConfig};
use replikativ_peer::proto::{Command, CommitValue, Query, Reply};
use replikativ_store::{FileStore, MemoryStore, SledStore, Store};

use backend::Backend;

/// The node allocates many small buffers per op; mimalloc runs the core about a quarter faster than
/// the system allocator on this workload (see docs/design.md, § Measured performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The port `serve` listens on unless told otherwise.
const DEFAULT_PORT: u16 = 31744;
/// Exit codes: 2 bad usage (also clap's), 3 a peer cannot be reached, 4 a store or data error.
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
pub(crate) const EXIT_DATA: u8 = 4;

/// A failure: exit code and one sentence.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

/// replikativ: CRDT peer-to-peer replication of OR-Maps, CDVCS, LWW registers and G-Sets.
///
/// Run a peer with `serve`; read and edit data with `ormap`, `cdvcs`, `lww` and `gset`, either on a
/// running peer (--peer ws://HOST:PORT) or directly on a local store no peer holds (--store). Addresses
/// are USER/UUID; values and transactions are JSON.
#[derive(Debug, Parser)]
#[command(name = "replikativ", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Run a peer: listen for websocket connections, connect to other peers, replicate.
    ///
    /// The peer keeps its state in the store (an embedded file store in ./replikativ-data by
    /// default) and replicates every address it or its peers subscribe to. It accepts the data
    /// commands of this tool from its connections (bind it to 127.0.0.1, the default, unless every
    /// client may edit every address). Peers given with --connect may be down: the peer keeps trying
    /// with backoff. Logs go to stderr; --log-level or RUST_LOG sets the level. SIGINT (Ctrl-C) and
    /// SIGTERM shut down gracefully.
    Serve(ServeArgs),
    /// OR-Map: an observed-remove, multi-value map.
    #[command(subcommand)]
    Ormap(OrmapCmd),
    /// CDVCS: a git-like commit graph with heads, commit, merge, pull and fork.
    #[command(subcommand)]
    Cdvcs(CdvcsCmd),
    /// LWW register: the last write wins.
    #[command(subcommand)]
    Lww(LwwCmd),
    /// G-Set: a grow-only set.
    #[command(subcommand)]
    Gset(GsetCmd),
    /// Print each change of an address as one JSON line, live, until interrupted (needs --peer).
    Watch {
        /// The address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// A peer's id, connections and subscriptions.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Show a JSON value's canonical encoding (hex) and its content id (blake3 of the encoding).
    ///
    /// JSON objects become maps, arrays lists, integers ints, other numbers floats.
    Value {
        /// The value as JSON, e.g. '{"name": "Hal"}'.
        json: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = format!("127.0.0.1:{DEFAULT_PORT}"))]
    listen: String,
    /// Where to keep data: file:DIR (crash-safe embedded store), sled:DIR, or memory.
    #[arg(long, default_value = "file:./replikativ-data")]
    store: String,
    /// A peer to connect to (ws://HOST:PORT), repeatable. It need not be up: the peer keeps
    /// trying with backoff, and reconnects whenever the connection drops.
    #[arg(long = "connect", value_name = "URL")]
    connect: Vec<String>,
    /// Behave as a client: only forward the subscriptions that overlap with this peer's own,
    /// instead of taking on every subscription of its peers (a server).
    #[arg(long)]
    client: bool,
    /// The peer id, used when the store has none yet (default: a random one).
    #[arg(long)]
    peer_id: Option<String>,
    /// Log level; RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    #[command(flatten)]
    limits: Limits,
}

/// What one connection, or all of them, may cost the peer. What is refused is counted by reason
/// in `replikativ status`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits (refusals are counted by reason in `status`)")]
struct Limits {
    /// Incoming connections open at once, handshakes included; more are refused with an HTTP 503
    /// [default: the descriptor limit less 64, at most 10000]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Time a client has to finish the websocket handshake (e.g. 10s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: std::time::Duration,
    /// Bytes a handshake request may have
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 10)]
    max_handshake_bytes: usize,
    /// A connection silent this long is closed
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
    /// Largest websocket message accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_frame_bytes: usize,
    /// Addresses the peer subscribes to at most; what its connections subscribe to beyond that is
    /// not taken on
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_subscriptions: usize,
    /// Addresses one subscribe message may name; more closes the connection
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_subscriptions_per_connection: usize,
    /// How far ahead of this peer's clock a received LWW write may be stamped; later ones are
    /// refused
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    max_clock_skew: std::time::Duration,
    /// Publications waiting on one connection (for values being fetched); more closes it
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_queued_publications: usize,
    /// Bytes of values those waiting publications may hold; more closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_queued_bytes: usize,
    /// Bytes of messages queued to one connection that does not read; more are dropped (and the
    /// connection caught up once it reads again)
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    outbox_bytes: usize,
    /// Bytes of messages queued to all connections together
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    outbox_total_bytes: usize,
}

impl Limits {
    /// The node configuration these limits make (everything else default).
    fn apply(&self, config: &mut NodeConfig) {
        config.max_connections = self.max_connections;
        config.ws.handshake_timeout = self.handshake_timeout;
        config.ws.max_handshake_bytes = self.max_handshake_bytes;
        config.ws.idle_timeout = self.idle_timeout;
        config.ws.max_frame = self.max_frame_bytes;
        config.ws.max_message = self.max_frame_bytes;
        config.peer.max_subscriptions = self.max_subscriptions;
        config.peer.max_subscriptions_per_connection = self.max_subscriptions_per_connection;
        config.peer.max_clock_skew = self.max_clock_skew;
        config.peer.max_queued_publications = self.max_queued_publications;
        config.peer.max_queued_bytes = self.max_queued_bytes;
        config.outbox_bytes = self.outbox_bytes;
        config.outbox_total_bytes = self.outbox_total_bytes;
    }
}

/// A duration: a number with a unit, `ms`, `s`, `m` or `h` (e.g. `500ms`, `10s`, `10m`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?} has no unit: use ms, s, m or h (e.g. 10s)")),
    };
    ms.map(std::time::Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// Where a data command runs.
#[derive(Debug, Args)]
struct Target {
    /// A running peer to work on (ws://HOST:PORT). Without it, the command opens --store itself.
    #[arg(long, global = true)]
    peer: Option<String>,
    /// The store to open when there is no --peer (it must not be held by a running peer). Only the
    /// create commands make a new store; reads open it read-only.
    #[arg(long, global = true, default_value = "file:./replikativ-data")]
    store: String,
    /// The user commits are made as (the owner of new addresses).
    #[arg(long, global = true, env = "REPLIKATIV_USER", default_value = "mail:cli@localhost")]
    user: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum OrmapCmd {
    /// Create an OR-Map; prints its address.
    Create(Create),
    /// Add a value under a key: TXS is a JSON list of [function, params] pairs.
    Assoc {
        address: String,
        key: String,
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove every value of a key, recording revert transactions (JSON, default []).
    Dissoc {
        address: String,
        key: String,
        revert: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The live values of a key (several when edited concurrently).
    Get {
        address: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// The keys with live values.
    Keys {
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum CdvcsCmd {
    /// Create a CDVCS; prints its address.
    Create(Create),
    /// Commit transactions (JSON list of [function, params] pairs) on the single head.
    Commit {
        address: String,
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// The linearized history (the same order on every replica).
    Log {
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// The heads (several after concurrent commits).
    Heads {
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// Merge the heads (in the given order, default: all heads sorted).
    Merge {
        address: String,
        heads: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pull FROM into INTO (a fast-forward unless --allow-induced-conflict).
    Pull {
        from: String,
        into: String,
        #[arg(long)]
        allow_induced_conflict: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Fork FROM to the --user (same id); prints the new address.
    Fork {
        from: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum LwwCmd {
    /// Create an LWW register; prints its address.
    Create(Create),
    /// Write a JSON value.
    Set {
        address: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The current value.
    Get {
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum GsetCmd {
    /// Create a G-Set; prints its address.
    Create(Create),
    /// Add a JSON value.
    Add {
        address: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The elements.
    List {
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
struct Create {
    /// The id (a UUID; default: a fresh one).
    #[arg(long)]
    id: Option<uuid::Uuid>,
    #[command(flatten)]
    target: Target,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // --help and --version: clap's own output, on stdout.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let (line, hint) = usage::render(&err, &Cli::command(), &args);
            eprintln!("{line}");
            eprintln!("{hint}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Top::Value { json } = &cli.command {
        return report(value_cmd(json));
    }
    if let Top::Serve(args) = &cli.command {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return report(Err(Failure(1, format!("cannot start the runtime: {e}")))),
    };
    report(runtime.block_on(run(cli.command)))
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn value_cmd(json: &str) -> Result<(), Failure> {
    let value = parse_json(json, "value")?;
    let hex: String = value.encode().iter().map(|b| format!("{b:02x}")).collect();
    println!("encoding: {hex}");
    println!("id:       {}", value.content_id());
    Ok(())
}

fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Failure(EXIT_USAGE, format!("the {what} is not valid JSON: {e}")))?;
    to_value(&parsed).map_err(|e| Failure(EXIT_USAGE, format!("the {what} is not a value: {e}")))
}

/// A key: JSON if it parses as JSON, else the text itself.
fn parse_key(text: &str) -> Value {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|j| to_value(&j).ok())
        .unwrap_or_else(|| Value::from(text))
}

/// Transactions: a JSON list of `[function, params]` pairs (or one pair).
fn parse_txs(text: &str) -> Result<Vec<Transaction>, Failure> {
    let value = parse_json(text, "transaction list")?;
    let bad = || {
        Failure(
            EXIT_USAGE,
            format!("transactions must be a JSON list of [function, params] pairs, got {text}"),
        )
    };
    let pair = |v: &Value| match v.as_list() {
        Some([Value::String(f), params]) => Ok(Transaction::new(f.clone(), params.clone())),
        _ => Err(bad()),
    };
    match value.as_list() {
        Some([Value::String(_), _]) => Ok(vec![pair(&value)?]),
        Some(items) => items.iter().map(pair).collect(),
        None => Err(bad()),
    }
}

fn parse_address(text: &str) -> Result<Address, Failure> {
    text.parse().map_err(|e: replikativ_crdt::AddressError| Failure(EXIT_USAGE, e.to_string()))
}

/// How a command opens its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Open for writing, creating the store if there is none (`serve`, the create commands).
    Create,
    /// Open an existing store for writing, never creating one (edits of existing addresses).
    Existing,
    /// Open an existing store read-only: create nothing, write nothing (the reads). A sled store,
    /// which has no read-only mode, is opened for writing, without creating one.
    ReadOnly,
}

fn open_store(spec: &str, access: Access) -> Result<Arc<dyn Store>, Failure> {
    use replikativ_store::StoreError;
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    let dir = PathBuf::from(path);
    let open_err = |e: StoreError| open_failure(spec, access, e);
    let store: Arc<dyn Store> = match (kind, access) {
        ("memory", _) => Arc::new(MemoryStore::new()),
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
fn open_failure(spec: &str, access: Access, e: replikativ_store::StoreError) -> Failure {
    use replikativ_store::StoreError;
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    match &e {
        StoreError::Locked { .. } => Failure(
            EXIT_DATA,
            format!(
                "cannot open the store {spec}: {e} (a running peer holds it: use --peer ws://HOST:PORT to work through that peer)"
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

fn unknown_store(spec: &str) -> Failure {
    Failure(EXIT_USAGE, format!("unknown store {spec:?}: use file:DIR, sled:DIR or memory"))
}

/// Whether an IO error means the file system refused a write (permissions, a read-only mount).
fn denied(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem)
}

/// Why a sled store that may not be written cannot be read either.
fn sled_read_only_refusal(dir: &std::path::Path) -> String {
    format!(
        "cannot read the sled store {}: sled 0.34 has no read-only mode and must open its files for writing, which is not allowed here (copy it somewhere writable, or keep read-only data in a file: store)",
        dir.display()
    )
}

async fn backend(target: &Target, access: Access) -> Result<Backend, Failure> {
    match &target.peer {
        Some(url) => Backend::remote(url).await,
        None => Backend::local(open_store(&target.store, access)?).await,
    }
}

async fn run(command: Top) -> Result<(), Failure> {
    match command {
        Top::Serve(args) => serve(args).await,
        Top::Value { .. } => unreachable!("handled before the runtime starts"),
        Top::Ormap(cmd) => ormap(cmd).await,
        Top::Cdvcs(cmd) => cdvcs(cmd).await,
        Top::Lww(cmd) => lww(cmd).await,
        Top::Gset(cmd) => gset(cmd).await,
        Top::Watch { address, target } => watch(&address, &target).await,
        Top::Status { target } => {
            with_backend(target, Access::ReadOnly, |b, t| Box::pin(async move { status(b, t).await })).await
        }
    }
}

/// Prints the peer's status.
async fn status(b: &mut Backend, target: &Target) -> Result<(), Failure> {
    let Reply::Status(status) = b.call(Command::Status).await? else {
        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
    };
    if target.json {
        println!("{}", serde_json::to_string(&status).expect("encodes"));
        return Ok(());
    }
    println!("peer id:       {}", status.peer_id);
    println!("role:          {}", if status.extend { "server" } else { "client" });
    println!("listening on:  {}", status.listen.join(", "));
    match status.store_bytes {
        Some(bytes) => println!("store size:    {bytes} bytes"),
        None => println!("store size:    (in memory)"),
    }
    println!("connections:   {}", status.connections.join(", "));
    println!("subscriptions: {}", status.subscriptions.len());
    for a in &status.subscriptions {
        println!("  {a}");
    }
    println!("addresses:     {}", status.addresses);
    let refused: u64 = status.refusals.values().sum();
    println!("refused:       {refused}");
    for (reason, n) in &status.refusals {
        println!("  {reason}: {n}");
    }
    if !status.recovery.is_empty() {
        println!("skipped at open (moved aside): {}", status.recovery.len());
        for q in &status.recovery {
            println!(
                "  {}: {} (now at {})",
                q.key,
                q.reason,
                q.moved_to.as_deref().unwrap_or("not moved: read-only")
            );
        }
    }
    Ok(())
}

/// A data command's work on an open backend.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + 'a>>;

/// Runs one data command: opens the backend, runs `f`, closes the backend whatever `f` returned.
async fn with_backend(
    target: Target,
    access: Access,
    f: impl for<'a> FnOnce(&'a mut Backend, &'a Target) -> Step<'a>,
) -> Result<(), Failure> {
    let mut b = backend(&target, access).await?;
    let result = f(&mut b, &target).await;
    let closed = b.close().await;
    result.and(closed)
}

/// Runs a command that needs no output but success (an edit of an existing address).
async fn call(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, Access::Existing, move |b, _| Box::pin(async move { b.call(cmd).await.map(|_| ()) }))
        .await
}

/// Runs a command that makes a commit on an existing address and prints its id.
async fn commit(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, Access::Existing, move |b, t| {
        Box::pin(async move {
            if let Reply::Commit(id) = b.call(cmd).await? {
                print_value(t, serde_json::json!({ "commit": id.to_string() }), &id.to_string());
            }
            Ok(())
        })
    })
    .await
}

/// Runs a command that creates `address` and prints it.
async fn made(target: Target, access: Access, address: Address, cmd: Command) -> Result<(), Failure> {
    with_backend(target, access, move |b, t| {
        Box::pin(async move {
            b.call(cmd).await?;
            print_value(t, serde_json::json!({ "address": address.to_string() }), &address.to_string());
            Ok(())
        })
    })
    .await
}

async fn create(kind: CrdtKind, c: Create) -> Result<(), Failure> {
    let address = Address::new(c.target.user.clone(), c.id.unwrap_or_else(uuid::Uuid::new_v4))
        .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
    let cmd = Command::Create { address: address.clone(), kind, author: c.target.user.clone() };
    made(c.target, Access::Create, address, cmd).await
}

fn print_value(target: &Target, json: serde_json::Value, text: &str) {
    if target.json { println!("{json}") } else { println!("{text}") }
}

/// Prints items as one JSON array, or one per line.
fn print_list(target: &Target, items: Vec<serde_json::Value>) {
    if target.json {
        println!("{}", serde_json::Value::Array(items));
    } else {
        for item in items {
            println!("{item}");
        }
    }
}

/// Prints commits as one JSON array, or one per line.
fn print_commits(target: &Target, commits: &[CommitValue]) {
    if target.json {
        println!("{}", serde_json::Value::Array(commits.iter().map(output::commit_json).collect()));
    } else {
        for c in commits {
            println!("{}", output::commit_line(c));
        }
    }
}

/// Runs a query on the node or store: only the answer is read (not the whole state).
async fn query(b: &mut Backend, address: &Address, query: Query) -> Result<Reply, Failure> {
    b.call_checked(Command::Query { address: address.clone(), query }).await.map_err(|e| match e {
        Ok(replikativ_peer::proto::StageError::WrongKind { address, expected, .. }) => {
            Failure(EXIT_DATA, format!("{address} does not hold a {expected}"))
        }
        Ok(other) => Failure(EXIT_DATA, other.to_string()),
        Err(failure) => failure,
    })
}

fn unexpected(reply: &Reply) -> Failure {
    Failure(EXIT_DATA, format!("unexpected reply: {reply:?}").chars().take(200).collect())
}

async fn read_heads(b: &mut Backend, address: &Address) -> Result<Vec<ContentId>, Failure> {
    match query(b, address, Query::Heads).await? {
        Reply::Heads(h) => Ok(h.into_iter().collect()),
        other => Err(unexpected(&other)),
    }
}

async fn commits_of(b: &mut Backend, address: &Address, q: Query) -> Result<Vec<CommitValue>, Failure> {
    match query(b, address, q).await? {
        Reply::Commits(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

async fn ormap(cmd: OrmapCmd) -> Result<(), Failure> {
    match cmd {
        OrmapCmd::Create(c) => create(CrdtKind::Ormap, c).await,
        OrmapCmd::Assoc { address, key, txs, target } => {
            let (address, key, txs) = (parse_address(&address)?, parse_key(&key), parse_txs(&txs)?);
            let author = target.user.clone();
            commit(target, Command::Assoc { address, key, txs, author }).await
        }
        OrmapCmd::Dissoc { address, key, revert, target } => {
            let address = parse_address(&address)?;
            let revert = match revert {
                Some(r) => parse_txs(&r)?,
                None => vec![],
            };
            let author = target.user.clone();
            call(target, Command::Dissoc { address, key: parse_key(&key), revert, author }).await
        }
        OrmapCmd::Get { address, key, target } => {
            let (address, key) = (parse_address(&address)?, parse_key(&key));
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::Get { key }).await?);
                    Ok(())
                })
            })
            .await
        }
        OrmapCmd::Keys { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Keys(keys) = query(b, &address, Query::Keys).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    print_list(t, keys.iter().map(output::json).collect());
                    Ok(())
                })
            })
            .await
        }
    }
}

fn parse_id(text: &str) -> Result<ContentId, Failure> {
    text.parse().map_err(|e: replikativ_crdt::hash::ParseContentIdError| Failure(EXIT_USAGE, e.to_string()))
}

async fn cdvcs(cmd: CdvcsCmd) -> Result<(), Failure> {
    match cmd {
        CdvcsCmd::Create(c) => create(CrdtKind::Cdvcs, c).await,
        CdvcsCmd::Commit { address, txs, target } => {
            let (address, txs) = (parse_address(&address)?, parse_txs(&txs)?);
            let author = target.user.clone();
            commit(target, Command::Transact { address, txs, author }).await
        }
        CdvcsCmd::Log { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::History).await?);
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Heads { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let heads: Vec<String> =
                        read_heads(b, &address).await?.iter().map(ContentId::to_string).collect();
                    print_value(t, serde_json::json!(heads), &heads.join("\n"));
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Merge { address, heads, target } => {
            let address = parse_address(&address)?;
            let given = heads.iter().map(|h| parse_id(h)).collect::<Result<Vec<_>, _>>()?;
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    let heads = if given.is_empty() { read_heads(b, &address).await? } else { given };
                    let cmd = Command::Merge { address, heads, correcting: vec![], author: t.user.clone() };
                    if let Reply::Commit(id) = b.call(cmd).await? {
                        print_value(t, serde_json::json!({ "commit": id.to_string() }), &id.to_string());
                    }
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Pull { from, into, allow_induced_conflict, target } => {
            let (from, into) = (parse_address(&from)?, parse_address(&into)?);
            call(target, Command::Pull { from, into, tip: None, allow_induced_conflict }).await
        }
        CdvcsCmd::Fork { from, target } => {
            let from = parse_address(&from)?;
            let into =
                Address::new(target.user.clone(), from.id).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            made(target, Access::Existing, into.clone(), Command::Fork { from, into }).await
        }
    }
}

async fn lww(cmd: LwwCmd) -> Result<(), Failure> {
    match cmd {
        LwwCmd::Create(c) => create(CrdtKind::Lww, c).await,
        LwwCmd::Set { address, value, target } => {
            let (address, value) = (parse_address(&address)?, parse_json(&value, "value")?);
            call(target, Command::LwwSet { address, value }).await
        }
        LwwCmd::Get { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Value(v) = query(b, &address, Query::Register).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    let j = output::json(&v);
                    print_value(t, j.clone(), &j.to_string());
                    Ok(())
                })
            })
            .await
        }
    }
}

async fn gset(cmd: GsetCmd) -> Result<(), Failure> {
    match cmd {
        GsetCmd::Create(c) => create(CrdtKind::Gset, c).await,
        GsetCmd::Add { address, value, target } => {
            let (address, element) = (parse_address(&address)?, parse_json(&value, "value")?);
            call(target, Command::GsetAdd { address, element }).await
        }
        GsetCmd::List { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Elements(elements) = query(b, &address, Query::Elements).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    print_list(t, elements.iter().map(output::json).collect());
                    Ok(())
                })
            })
            .await
        }
    }
}

/// Watches through a client peer of its own (memory store) connected to `--peer`: every change of
/// the address that reaches it is printed as one JSON line.
async fn watch(address: &str, target: &Target) -> Result<(), Failure> {
    let address = parse_address(address)?;
    let url =
        target.peer.clone().ok_or_else(|| Failure(EXIT_USAGE, "watch needs --peer ws://HOST:PORT".into()))?;
    let mut signals = Signals::install()?;
    let stage = replikativ_peer::stage::Stage::builder(Arc::new(MemoryStore::new()))
        .user(target.user.clone())
        .extend(false)
        .spawn()
        .await
        .map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
    let mut changes = stage.changes(&address);
    stage.subscribe([address.clone()]).await.map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
    stage.node().connect(&url).await.map_err(|e| Failure(EXIT_UNREACHABLE, e.to_string()))?;
    // A spinner while the address catches up, only when a person is watching stderr.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("catching up {address}"));
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    let mut progress = progress;
    loop {
        tokio::select! {
            event = changes.recv() => match event {
                Ok(event) => {
                    if let Some(bar) = progress.take() {
                        bar.finish_and_clear();
                    }
                    let op = serde_json::to_value(&event.op).unwrap_or_else(|_| serde_json::json!(format!("{:?}", event.op)));
                    println!("{}", serde_json::json!({ "address": event.address.to_string(), "op": op }));
                }
                Err(replikativ_peer::stage::ChangesError::Lagged(n)) => {
                    eprintln!("warning: {n} changes were skipped");
                }
                Err(e) => return Err(Failure(EXIT_UNREACHABLE, e.to_string())),
            },
            _ = signals.recv() => break,
        }
    }
    stage.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM, installed before anything starts so that neither kills the process abruptly.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| signal(kind).map_err(|e| Failure(1, format!("cannot handle signals: {e}")));
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    // A URL that can never work is a usage error, reported before anything starts.
    if let Some(url) = args.connect.iter().find(|u| !u.starts_with("ws://")) {
        return Err(Failure(
            EXIT_USAGE,
            format!("cannot connect to {url}: only ws://HOST:PORT URLs are supported"),
        ));
    }
    let store = open_store(&args.store, Access::Create)?;
    let mut config = NodeConfig {
        peer_id: args
            .peer_id
            .unwrap_or_else(|| format!("peer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        extend: !args.client,
        remote_commands: true,
        ..NodeConfig::default()
    };
    args.limits.apply(&mut config);
    let node = match Node::start(store.clone(), config, ActorId::from(uuid::Uuid::new_v4())) {
        Ok(node) => node,
        Err(e) => {
            let _ = store.close();
            return Err(Failure(EXIT_DATA, format!("cannot start the peer: {e}")));
        }
    };
    let started = async {
        let addr = node.listen(&args.listen).await.map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
        println!("replikativ peer {} listening on ws://{addr} (store: {})", node.peer_id(), args.store);
        for url in &args.connect {
            // An unreachable peer is normal at start: the node keeps trying in the background (each
            // failed attempt is a WARN log line with the delay before the next one).
            node.connect_retrying(url).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            println!("connecting to {url} (retrying in the background)");
        }
        Ok(())
    };
    let started: Result<(), Failure> = started.await;
    if started.is_ok() {
        let signal = signals.recv().await;
        println!("shutting down ({signal}): closing connections");
    }
    // A second signal while shutting down ends the process at once: what the peer acknowledged is
    // durable already, and the store recovers whatever else was in flight like after a crash.
    tokio::select! {
        () = node.shutdown() => {}
        signal = signals.recv() => {
            eprintln!("error: {signal} while shutting down: exiting at once, without closing the store");
            std::process::exit(1);
        }
    }
    let closed = store.close().map_err(|e| Failure(EXIT_DATA, format!("closing the store failed: {e}")));
    if started.is_ok() && closed.is_ok() {
        println!("shut down cleanly: the store is closed");
    }
    started.and(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(std::time::Duration::from_secs(10)));
        assert_eq!(parse_duration("10m"), Ok(std::time::Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(std::time::Duration::from_secs(7200)));
        for bad in ["10", "s", "", "1.5s", "-1s", "10 s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_sled_store_that_may_not_be_written_is_refused_with_the_reason() {
        let denied = replikativ_store::StoreError::Io {
            op: "open lock file",
            path: "/data/LOCK".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let Failure(code, message) = open_failure("sled:/data", Access::ReadOnly, denied);
        assert_eq!(code, EXIT_DATA);
        assert!(
            message.starts_with("cannot read the sled store /data: sled 0.34 has no read-only mode"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1);
        // A write command gets the plain error.
        let denied = replikativ_store::StoreError::Io {
            op: "open lock file",
            path: "/data/LOCK".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let Failure(_, message) = open_failure("sled:/data", Access::Existing, denied);
        assert!(message.starts_with("cannot open the store sled:/data: I/O error"), "{message}");
    }
}
