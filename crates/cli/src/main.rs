//! The `replikativ` command line: run peers, connect them, read and edit replicated data.

mod backend;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use replikativ_crdt::{ActorId, Address, ContentId, CrdtKind, Transaction, Value, to_value};
use replikativ_peer::node::{Node, NodeConfig};
use replikativ_peer::proto::{Command, CommitValue, CrdtState, Reply};
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
#[command(version, about, long_about)]
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
    /// client may edit every address). Logs go to stderr; --log-level or RUST_LOG sets the level.
    /// Ctrl-C shuts down gracefully.
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
    /// A peer to connect to (ws://HOST:PORT), kept connected with reconnects. Repeatable.
    #[arg(long = "connect", value_name = "URL")]
    connect: Vec<String>,
    /// Behave as a client: only forward the subscriptions that overlap with this peer's own,
    /// instead of taking on every subscription of its peers (a server).
    #[arg(long)]
    client: bool,
    /// The peer id, used when the store has none yet (default: a random one).
    #[arg(long)]
    peer_id: Option<String>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Where a data command runs.
#[derive(Debug, Args)]
struct Target {
    /// A running peer to work on (ws://HOST:PORT). Without it, the command opens --store itself.
    #[arg(long, global = true)]
    peer: Option<String>,
    /// The store to open when there is no --peer (it must not be held by a running peer).
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
    let cli = Cli::parse();
    if let Top::Value { json } = &cli.command {
        return report(value_cmd(json));
    }
    if let Top::Serve(args) = &cli.command {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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

fn open_store(spec: &str) -> Result<Arc<dyn Store>, Failure> {
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    let dir = PathBuf::from(path);
    let open_err = |e: replikativ_store::StoreError| {
        let hint = if matches!(e, replikativ_store::StoreError::Locked { .. }) {
            " (a running peer holds it: use --peer ws://HOST:PORT to work through that peer)"
        } else {
            ""
        };
        Failure(EXIT_DATA, format!("cannot open the store {spec}: {e}{hint}"))
    };
    match kind {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        "file" if !path.is_empty() => Ok(Arc::new(FileStore::open(&dir).map_err(open_err)?)),
        "sled" if !path.is_empty() => Ok(Arc::new(SledStore::open(&dir).map_err(open_err)?)),
        _ => Err(Failure(EXIT_USAGE, format!("unknown store {spec:?}: use file:DIR, sled:DIR or memory"))),
    }
}

async fn backend(target: &Target) -> Result<Backend, Failure> {
    match &target.peer {
        Some(url) => Backend::remote(url).await,
        None => Backend::local(open_store(&target.store)?).await,
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
            with_backend(target, |b, t| Box::pin(async move { status(b, t).await })).await
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
    Ok(())
}

/// A data command's work on an open backend.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + 'a>>;

/// Runs one data command: opens the backend, runs `f`, closes the backend whatever `f` returned.
async fn with_backend(
    target: Target,
    f: impl for<'a> FnOnce(&'a mut Backend, &'a Target) -> Step<'a>,
) -> Result<(), Failure> {
    let mut b = backend(&target).await?;
    let result = f(&mut b, &target).await;
    let closed = b.close().await;
    result.and(closed)
}

/// Runs a command that needs no output but success.
async fn call(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, move |b, _| Box::pin(async move { b.call(cmd).await.map(|_| ()) })).await
}

/// Runs a command that makes a commit and prints its id.
async fn commit(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, move |b, t| {
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
async fn made(target: Target, address: Address, cmd: Command) -> Result<(), Failure> {
    with_backend(target, move |b, t| {
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
    made(c.target, address, cmd).await
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

async fn state(b: &mut Backend, address: &Address) -> Result<CrdtState, Failure> {
    match b.call(Command::Read { address: address.clone() }).await? {
        Reply::State(Some(s)) => Ok(*s),
        _ => Err(Failure(EXIT_DATA, format!("no replicated datatype at {address}"))),
    }
}

fn wrong(address: &Address, want: &str) -> Failure {
    Failure(EXIT_DATA, format!("{address} does not hold a {want}"))
}

async fn read_ormap(b: &mut Backend, address: &Address) -> Result<replikativ_crdt::OrMap, Failure> {
    match state(b, address).await? {
        CrdtState::Ormap(m) => Ok(m),
        _ => Err(wrong(address, "OR-Map")),
    }
}

async fn read_cdvcs(b: &mut Backend, address: &Address) -> Result<replikativ_crdt::Cdvcs, Failure> {
    match state(b, address).await? {
        CrdtState::Cdvcs(c) => Ok(c),
        _ => Err(wrong(address, "CDVCS")),
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
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let ids = read_ormap(b, &address).await?.get(&key);
                    print_commits(t, &b.commits(ids).await?);
                    Ok(())
                })
            })
            .await
        }
        OrmapCmd::Keys { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    print_list(t, read_ormap(b, &address).await?.keys().map(output::json).collect());
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
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let order = read_cdvcs(b, &address).await?.linearize();
                    print_commits(t, &b.commits(order).await?);
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Heads { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let c = read_cdvcs(b, &address).await?;
                    let heads: Vec<String> = c.heads().iter().map(ContentId::to_string).collect();
                    print_value(t, serde_json::json!(heads), &heads.join("\n"));
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Merge { address, heads, target } => {
            let address = parse_address(&address)?;
            let given = heads.iter().map(|h| parse_id(h)).collect::<Result<Vec<_>, _>>()?;
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let heads = if given.is_empty() {
                        read_cdvcs(b, &address).await?.heads().iter().copied().collect()
                    } else {
                        given
                    };
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
            made(target, into.clone(), Command::Fork { from, into }).await
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
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let CrdtState::Lww(r) = state(b, &address).await? else {
                        return Err(wrong(&address, "LWW register"));
                    };
                    let j = output::json(r.get());
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
            with_backend(target, move |b, t| {
                Box::pin(async move {
                    let CrdtState::Gset(s) = state(b, &address).await? else {
                        return Err(wrong(&address, "G-Set"));
                    };
                    print_list(t, s.elements().iter().map(output::json).collect());
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
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stage.shutdown().await;
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let store = open_store(&args.store)?;
    let config = NodeConfig {
        peer_id: args
            .peer_id
            .unwrap_or_else(|| format!("peer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        extend: !args.client,
        remote_commands: true,
        ..NodeConfig::default()
    };
    let node = Node::start(store.clone(), config, ActorId::from(uuid::Uuid::new_v4()))
        .map_err(|e| Failure(EXIT_DATA, format!("cannot start the peer: {e}")))?;
    let addr = node.listen(&args.listen).await.map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
    println!("replikativ peer {} listening on ws://{addr} (store: {})", node.peer_id(), args.store);
    for url in &args.connect {
        if let Err(e) = node.connect(url).await {
            node.shutdown().await;
            return Err(Failure(EXIT_UNREACHABLE, e.to_string()));
        }
        println!("connected to {url}");
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot wait for Ctrl-C");
    }
    println!("shutting down");
    node.shutdown().await;
    store.close().map_err(|e| Failure(EXIT_DATA, format!("closing the store failed: {e}")))
}
