//! Helpers shared by the multi-peer tests: stages on real stores in temporary directories, real
//! websockets on 127.0.0.1 with OS-assigned ports, and bounded waiting.

#![allow(dead_code, unreachable_pub)]

pub mod certs;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use replikativ::peer::node::{Backoff, NodeConfig, WsConfig};
use replikativ::peer::proto::PeerConfig;
use replikativ::peer::stage::Stage;
use replikativ::store::{FileStore, MemoryStore, SledStore, Store};

/// Which backend a test peer stores in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    File,
    Sled,
    /// A namespace of the PostgreSQL server at `REPLIKATIV_PG_URL`, named after the directory (so a
    /// peer restarted on the same directory reopens the same namespace).
    Postgres,
}

/// Whether the PostgreSQL tests can run: `REPLIKATIV_PG_URL` is set. When it is not, prints why and
/// returns false, unless `CI=true` or `REPLIKATIV_REQUIRE_PG=1`, where it fails the test.
pub fn postgres_available() -> bool {
    pg::base_url().is_some()
}

#[path = "../../crates/store/tests/support/pg.rs"]
pub mod pg;

pub fn open_store(backend: Backend, dir: &Path) -> Arc<dyn Store> {
    match backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        Backend::File => Arc::new(FileStore::open(dir).expect("file store opens")),
        Backend::Sled => Arc::new(SledStore::open(dir).expect("sled store opens")),
        Backend::Postgres => {
            let base = pg::base_url().expect("REPLIKATIV_PG_URL is set (check postgres_available first)");
            let name = dir.file_name().and_then(|n| n.to_str()).expect("utf8 directory name");
            let ns: String = format!("peer-{name}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .collect();
            // A killed holder's lease ends when the server notices its closed socket: wait for that.
            let start = std::time::Instant::now();
            loop {
                match replikativ::store::PgStore::open_url(&pg::url(&base, &ns)) {
                    Ok(s) => break Arc::new(s),
                    Err(replikativ::store::StoreError::NamespaceLocked { .. })
                        if start.elapsed() < Duration::from_secs(10) =>
                    {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("postgres store opens: {e}"),
                }
            }
        }
    }
}

/// Fast timers for tests: anti-entropy every 300 ms, quick reconnects.
pub fn config(peer_id: &str) -> NodeConfig {
    NodeConfig {
        peer_id: peer_id.into(),
        peer: PeerConfig { anti_entropy: Some(Duration::from_millis(300)), ..PeerConfig::default() },
        ws: WsConfig {
            ping_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(5),
            ..WsConfig::default()
        },
        reconnect: Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) },
        ..NodeConfig::default()
    }
}

/// A peer: its stage, its store directory and its listen address.
pub struct TestPeer {
    pub stage: Stage,
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub backend: Backend,
    pub name: String,
}

impl TestPeer {
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

/// Runs a future under the test timeout.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub async fn spawn_peer(name: &str, backend: Backend) -> TestPeer {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    spawn_in(name, backend, dir).await
}

/// Starts a peer on the store in `dir` (reopening whatever is there).
pub async fn spawn_in(name: &str, backend: Backend, dir: Arc<tempfile::TempDir>) -> TestPeer {
    spawn_with(name, backend, dir, config(name)).await
}

/// Starts a peer with a custom node configuration.
pub async fn spawn_with(
    name: &str,
    backend: Backend,
    dir: Arc<tempfile::TempDir>,
    config: NodeConfig,
) -> TestPeer {
    let store = open_store(backend, dir.path());
    let stage = bounded(
        "spawn",
        Stage::builder(store).user(format!("mail:{name}@example.org")).config(config).spawn(),
    )
    .await
    .expect("stage starts");
    let addr = bounded("listen", stage.node().listen("127.0.0.1:0")).await.expect("listens");
    TestPeer { stage, addr, dir, backend, name: name.into() }
}

/// Connects `from` to `to`.
pub async fn link(from: &TestPeer, to: &TestPeer) {
    bounded("connect", from.stage.node().connect(&to.url())).await.expect("connects");
}

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, WAIT, check).await
}

/// [`eventually`] with another deadline (for work that is large on purpose).
pub async fn eventually_within<F, Fut>(what: &str, wait: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if tokio::time::timeout(WAIT, check()).await.unwrap_or(false) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A middleware that, while closed, drops the publications a peer sends (as a partition would):
/// what it drops reaches the others later by anti-entropy.
#[derive(Debug)]
pub struct Gate {
    pub open: Arc<std::sync::atomic::AtomicBool>,
}

impl replikativ::peer::middleware::Middleware for Gate {
    fn outbound(
        &mut self,
        item: replikativ::peer::middleware::Item,
        emit: &mut replikativ::peer::middleware::Emit,
    ) {
        use replikativ::peer::middleware::Item;
        let closed = !self.open.load(std::sync::atomic::Ordering::SeqCst);
        if closed && matches!(&item, Item::Message(m) if m.written().is_some()) {
            return;
        }
        emit.down(item);
    }
}

/// A node configuration with a [`Gate`] on every connection; returns the gate's switch.
pub fn gated(name: &str) -> (NodeConfig, Arc<std::sync::atomic::AtomicBool>) {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut cfg = config(name);
    let switch = open.clone();
    cfg.middleware.push(Arc::new(move |_, _| Box::new(Gate { open: switch.clone() })));
    (cfg, open)
}

/// Websocket (remote peer) connections of a node: id and the remote's peer id once it said hello.
pub async fn peer_conns(peer: &TestPeer) -> Vec<(replikativ::peer::proto::ConnId, Option<String>)> {
    let status = bounded("status", peer.stage.node().status()).await.expect("status");
    status
        .connections
        .into_iter()
        .filter(|(_, remote, _)| matches!(remote, replikativ::peer::middleware::Remote::Peer(_)))
        .map(|(c, _, id)| (c, id))
        .collect()
}
