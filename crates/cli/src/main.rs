//! The `replikativ` command line: run a peer, and inspect the value model.
//!
//! `serve` runs a node; data commands (`ormap`, `cdvcs`, `lww`, `gset`, `watch`, `status`) come
//! with the command-line issue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use replikativ_crdt::{ActorId, Value, to_value};
use replikativ_peer::node::{Node, NodeConfig};
use replikativ_store::{FileStore, MemoryStore, SledStore, Store};

/// The port `serve` listens on unless told otherwise.
const DEFAULT_PORT: u16 = 31744;

/// replikativ: CRDT peer-to-peer replication of OR-Maps, CDVCS, LWW registers and G-Sets.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a peer: listen for websocket connections, connect to other peers, replicate.
    ///
    /// The peer keeps its state in the store (an embedded file store in ./replikativ-data by
    /// default) and replicates every address it or its peers subscribe to. Logs go to stderr;
    /// RUST_LOG sets the level (e.g. RUST_LOG=debug). Ctrl-C shuts down gracefully.
    Serve {
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
    },
    /// Show a JSON value's canonical encoding (hex) and its content id (blake3 of the encoding).
    ///
    /// Content ids name every commit and params value replikativ stores and replicates; this shows
    /// the id a value gets. JSON objects become maps, arrays lists, integers ints, other numbers
    /// floats.
    Value {
        /// The value as JSON, e.g. '{"name": "Hal"}'.
        json: String,
    },
}

/// Exit codes: 2 bad usage (also clap's), 3 a peer cannot be reached, 4 a store or data error.
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_DATA: u8 = 4;

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Value { json } => value(&json),
        Command::Serve { listen, store, connect, client, peer_id } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(serve(listen, store, connect, client, peer_id))
        }
    }
}

fn value(json: &str) -> ExitCode {
    let parsed: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_USAGE, format!("the value is not valid JSON: {e}")),
    };
    let value: Value = match to_value(&parsed) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_DATA, format!("cannot convert the JSON to a value: {e}")),
    };
    let hex: String = value.encode().iter().map(|b| format!("{b:02x}")).collect();
    println!("encoding: {hex}");
    println!("id:       {}", value.content_id());
    ExitCode::SUCCESS
}

/// Opens the store named by `file:DIR`, `sled:DIR` or `memory`.
fn open_store(spec: &str) -> Result<Arc<dyn Store>, (u8, String)> {
    let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
    let dir = PathBuf::from(path);
    let open_err =
        |e: replikativ_store::StoreError| (EXIT_DATA, format!("cannot open the store {spec}: {e}"));
    match kind {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        "file" if !path.is_empty() => Ok(Arc::new(FileStore::open(&dir).map_err(open_err)?)),
        "sled" if !path.is_empty() => Ok(Arc::new(SledStore::open(&dir).map_err(open_err)?)),
        _ => Err((EXIT_USAGE, format!("unknown store {spec:?}: use file:DIR, sled:DIR or memory"))),
    }
}

async fn serve(
    listen: String,
    store: String,
    connect: Vec<String>,
    client: bool,
    peer_id: Option<String>,
) -> ExitCode {
    let store_handle = match open_store(&store) {
        Ok(s) => s,
        Err((code, message)) => return fail(code, message),
    };
    let config = NodeConfig {
        peer_id: peer_id
            .unwrap_or_else(|| format!("peer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        extend: !client,
        ..NodeConfig::default()
    };
    let node = match Node::start(store_handle.clone(), config, ActorId::from(uuid::Uuid::new_v4())) {
        Ok(n) => n,
        Err(e) => return fail(EXIT_DATA, format!("cannot start the peer: {e}")),
    };
    let addr = match node.listen(&listen).await {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    println!("replikativ peer {} listening on ws://{addr} (store: {store})", node.peer_id());
    for url in &connect {
        if let Err(e) = node.connect(url).await {
            node.shutdown().await;
            return fail(EXIT_UNREACHABLE, e);
        }
        println!("connected to {url}");
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot wait for Ctrl-C");
    }
    println!("shutting down");
    node.shutdown().await;
    if let Err(e) = store_handle.close() {
        return fail(EXIT_DATA, format!("closing the store failed: {e}"));
    }
    ExitCode::SUCCESS
}
