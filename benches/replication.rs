//! End-to-end replication benchmarks over real websockets on 127.0.0.1 (client and server nodes in
//! one process, sharing the machine's cores):
//!
//! 1. throughput: N OR-Map assocs on A (with 128 and with 1024 in flight), time until B has every
//!    one, with MemoryStore and FileStore; against raw tokio-tungstenite streams measured in the same
//!    run: the same number of frames of the same size as A sent to B, and one frame per op of the
//!    bytes per op A sent (flushed per frame, and fed with a flush every 64 frames);
//! 2. commit-to-visible latency of M sequential CDVCS commits, one hop (A to B) and two hops (A to B
//!    to C), from the `transact` call until the commit shows in B's (C's) change stream;
//! 3. catch-up: A makes K CDVCS commits while B is offline, then B connects: time to converge and
//!    bytes on B's connection (in + out) against the bytes of the commits' content (canonical
//!    encodings of the commit records and params).
//! 4. TLS: the throughput case (W=1024) and the one-hop latency of case 2 over `wss://` and over
//!    `ws://`, alternating run by run in the same process, and the cost of a connection (C
//!    sequential `RemoteClient` connects and closes: TCP, TLS, websocket handshake, hello); medians
//!    and the ratio wss / ws (certificates made at start with rcgen; rustls with the ring provider).
//!
//! Each case runs several times and the median (with min and max) is printed.
//!
//! `cargo bench --bench replication` (N = 100 000, M = 1000, K = 10 000, 3 runs);
//! `REPLIKATIV_BENCH_QUICK=1` shrinks the sizes (N = 5000, M = 200, K = 1000);
//! `REPLIKATIV_BENCH_RUNS=5` sets the number of runs, `REPLIKATIV_BENCH_WINDOWS=128,512` the windows
//! of the throughput case; `REPLIKATIV_BENCH_AUTH=1` runs every node with authentication on (the
//! handshake and the authorization gate on every connection; the nodes trust each other's keys); `--features bench-system-allocator` runs on
//! the system allocator instead of mimalloc (the `replikativ` binary's); `--features postgres` with
//! `REPLIKATIV_PG_URL` set adds PgStore (`REPLIKATIV_BENCH_ONLY="1 file postgres"`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use replikativ::crdt::{Address, Commit, ContentId, CrdtKind, Transaction, Value};
use replikativ::peer::client::RemoteClient;
use replikativ::peer::middleware::{Emit, Item, Middleware, Remote};
use replikativ::peer::node::NodeConfig;
use replikativ::peer::node::tls::{ClientTls, ServerTls};
use replikativ::peer::proto::{AnyOp, Message};
use replikativ::peer::stage::{ChangesError, Stage};
use replikativ::store::{FileStore, MemoryStore, Store};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The allocator the `replikativ` binary runs with (see docs/design.md);
/// `--features bench-system-allocator` measures with the system allocator instead.
#[cfg(not(feature = "bench-system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bound of every wait: a benchmark that stalls fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(300);

/// How long B may lag behind A's last acknowledgement in the throughput case before the run counts
/// as stalled (reported, left out of the median).
const STALL: Duration = Duration::from_secs(60);

/// Assocs in flight in the throughput case (a window per case).
const IN_FLIGHT: [usize; 2] = [128, 1024];

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    File,
    /// A namespace of the PostgreSQL server at `REPLIKATIV_PG_URL` (only when that is set).
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "MemoryStore",
            Backend::File => "FileStore",
            Backend::Postgres => "PgStore",
        }
    }

    /// The word that selects it in `REPLIKATIV_BENCH_ONLY`.
    fn key(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::File => "file",
            Backend::Postgres => "postgres",
        }
    }

    fn open(self, dir: &Path) -> Arc<dyn Store> {
        match self {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::File => Arc::new(FileStore::open(dir).expect("file store opens")),
            Backend::Postgres => open_postgres(dir),
        }
    }
}

/// A fresh namespace of the server at `REPLIKATIV_PG_URL` (the `postgres` feature).
#[cfg(feature = "postgres")]
fn open_postgres(dir: &Path) -> Arc<dyn Store> {
    let base = std::env::var("REPLIKATIV_PG_URL").expect("REPLIKATIV_PG_URL");
    let name: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("dir")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let url = format!("{base}?namespace=bench-{}-{name}", std::process::id());
    Arc::new(replikativ::store::PgStore::open_url(&url).expect("postgres store opens"))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_: &Path) -> Arc<dyn Store> {
    panic!("the postgres backend needs `--features postgres`")
}

/// Counts the publish frames (publications and live batches) a node sends to remote peers.
#[derive(Debug, Default)]
struct FrameStats {
    frames: AtomicU64,
}

#[derive(Debug)]
struct FrameSizer {
    stats: Arc<FrameStats>,
}

impl Middleware for FrameSizer {
    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        if let Item::Message(Message::Publish(_) | Message::Batch(_)) = &item {
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
        }
        emit.down(item);
    }
}

struct Peer {
    stage: Stage,
    _dir: tempfile::TempDir,
}

/// The bench's TLS identity (a CA and a certificate for localhost it signed) and a client
/// configuration that trusts the CA, made once.
fn bench_tls() -> &'static (ServerTls, ClientTls) {
    static TLS: std::sync::OnceLock<(ServerTls, ClientTls)> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "replikativ bench CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = ServerTls::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        (server, ClientTls::with_ca_pem(ca_cert.pem().as_bytes()).unwrap())
    })
}

/// Whether links run over plain websockets or TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Ws,
    Wss,
}

async fn spawn(name: &str, backend: Backend, stats: Option<Arc<FrameStats>>) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config =
        NodeConfig { peer_id: name.into(), client_tls: Some(bench_tls().1.clone()), ..NodeConfig::default() };
    if std::env::var("REPLIKATIV_BENCH_AUTH").is_ok_and(|v| v == "1") {
        use replikativ::peer::auth::{AuthPolicy, SecretKey};
        let key = |n: &str| SecretKey::from_seed(ContentId::hash_bytes(n.as_bytes()).as_bytes());
        let mut policy = AuthPolicy::default();
        policy.trusted.extend(["a", "b", "c"].map(|n| key(n).public()));
        config.auth = Some(replikativ::peer::node::NodeAuth {
            node_key: key(name),
            user: None,
            policy: Arc::new(policy),
            caps: Vec::new(),
        });
    }
    if let Some(stats) = stats {
        config.middleware.push(Arc::new(move |_, remote| {
            let stats = if *remote == Remote::Stage { Arc::default() } else { stats.clone() };
            Box::new(FrameSizer { stats })
        }));
    }
    let stage = bounded(
        "spawn",
        Stage::builder(backend.open(dir.path()))
            .user(format!("mail:{name}@example.org"))
            .config(config)
            .spawn(),
    )
    .await
    .expect("stage starts");
    Peer { stage, _dir: dir }
}

async fn link(from: &Peer, to: &Peer) {
    link_over(from, to, Transport::Ws).await
}

async fn link_over(from: &Peer, to: &Peer, transport: Transport) {
    let node = to.stage.node();
    let url = match transport {
        Transport::Ws => {
            let addr = bounded("listen", node.listen("127.0.0.1:0")).await.expect("listens");
            format!("ws://{addr}")
        }
        Transport::Wss => {
            let tls = bench_tls().0.clone();
            let addr = bounded("listen", node.listen_tls("127.0.0.1:0", tls)).await.expect("listens");
            format!("wss://localhost:{}", addr.port())
        }
    };
    bounded("connect", from.stage.node().connect(&url)).await.expect("connects");
}

/// What both nodes report while B waits for data (printed when a run stalls).
async fn diagnose(a: &Peer, b: &Peer, map: &Address) -> String {
    let len = |p: &Peer| {
        let (stage, map) = (p.stage.clone(), map.clone());
        async move { stage.ormap(&map).await.map(|m| m.len()).unwrap_or(0) }
    };
    let status = |p: &Peer| {
        let node = p.stage.node().clone();
        async move { node.status().await.map(|s| (s.connections, s.dropped)) }
    };
    format!(
        "A has {} keys, B has {}; A status {:?}, metrics {:?}; B status {:?}, metrics {:?}",
        len(a).await,
        len(b).await,
        status(a).await,
        a.stage.node().metrics(),
        status(b).await,
        b.stage.node().metrics()
    )
}

async fn dropped(p: &Peer) -> u64 {
    bounded("status", p.stage.node().status()).await.map(|s| s.dropped).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput

struct Throughput {
    /// From the first assoc until B has them all (`None`: B did not within [`STALL`] after A
    /// acknowledged them all).
    visible: Option<Duration>,
    /// From the first assoc until A acknowledged them all.
    acked: Duration,
    /// Publish frames (publications and live batches) A sent to B.
    frames: u64,
    /// Bytes A sent to B (every frame).
    bytes: u64,
    /// Messages dropped by A's and B's nodes (full outboxes).
    dropped: (u64, u64),
}

async fn throughput(backend: Backend, n: usize, window: usize, transport: Transport) -> Throughput {
    let stats = Arc::new(FrameStats::default());
    let a = spawn("a", backend, Some(stats.clone())).await;
    let b = spawn("b", backend, None).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
    link_over(&b, &a, transport).await;
    bounded("b gets the map", async {
        while b.stage.ormap(&map).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // B counts the keys it has seen in its change stream (re-reading the state if it lags).
    let done = Arc::new(Notify::new());
    let counter = {
        let (stage, map, done) = (b.stage.clone(), map.clone(), done.clone());
        let mut changes = b.stage.changes(&map);
        tokio::spawn(async move {
            let mut keys: BTreeSet<Value> = BTreeSet::new();
            while keys.len() < n {
                // Events the node drops (a full stage outbox) are not reported to the receiver: when
                // the stream goes quiet, read the state.
                match tokio::time::timeout(Duration::from_millis(50), changes.recv()).await {
                    Ok(Ok(event)) => {
                        if let AnyOp::Ormap(op) = event.op {
                            keys.extend(op.adds.into_iter().map(|e| e.key));
                        }
                    }
                    Ok(Err(ChangesError::Lagged(_))) | Err(_) => {
                        if let Ok(m) = stage.ormap(&map).await {
                            keys.extend(m.keys().cloned());
                        }
                    }
                    Ok(Err(_)) => return,
                }
            }
            done.notify_one();
        })
    };

    let start = Instant::now();
    let mut tasks: JoinSet<Result<ContentId, replikativ::peer::proto::StageError>> = JoinSet::new();
    for i in 0..n {
        if tasks.len() >= window {
            bounded("assoc", tasks.join_next()).await.unwrap().unwrap().expect("assoc");
        }
        let (stage, map) = (a.stage.clone(), map.clone());
        tasks.spawn(async move {
            stage.assoc(&map, Value::from(format!("k{i:07}")), vec![Transaction::new("set", i as i64)]).await
        });
    }
    while let Some(r) = bounded("assoc", tasks.join_next()).await {
        r.unwrap().expect("assoc");
    }
    let acked = start.elapsed();
    let mut waiting = std::pin::pin!(done.notified());
    let mut stalled = Duration::ZERO;
    let visible = loop {
        match tokio::time::timeout(Duration::from_secs(10), waiting.as_mut()).await {
            Ok(()) => break Some(start.elapsed()),
            Err(_) => {
                stalled += Duration::from_secs(10);
                eprintln!("stalled for {stalled:?}: {}", diagnose(&a, &b, &map).await);
                if stalled >= STALL {
                    break None;
                }
            }
        }
    };
    counter.abort();
    let result = Throughput {
        visible,
        acked,
        frames: stats.frames.load(Ordering::Relaxed),
        bytes: a.stage.node().metrics().values().map(|m| m.bytes_out).sum(),
        dropped: (dropped(&a).await, dropped(&b).await),
    };
    bounded("shutdown", b.stage.shutdown()).await;
    bounded("shutdown", a.stage.shutdown()).await;
    result
}

/// A raw tokio-tungstenite stream of `n` binary frames of `size` bytes over loopback; returns the
/// time until the receiver has read them all.
async fn raw_stream(n: usize, size: usize, batch: bool) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut got = 0;
        while got < n {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(b))) => {
                    assert_eq!(b.len(), size);
                    got += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("raw stream ended early: {other:?}"),
            }
        }
        Instant::now()
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}"), None, true).await.unwrap();
    let payload: tokio_tungstenite::tungstenite::Bytes =
        (0..size).map(|i| i as u8).collect::<Vec<u8>>().into();
    let start = Instant::now();
    for i in 0..n {
        let frame = WsMessage::Binary(payload.clone());
        if batch {
            ws.feed(frame).await.unwrap();
            if i % 64 == 63 {
                ws.flush().await.unwrap();
            }
        } else {
            ws.send(frame).await.unwrap();
        }
    }
    ws.flush().await.unwrap();
    let end = bounded("raw receiver", receiver).await.unwrap();
    let _ = ws.close(None).await;
    end - start
}

// ---------------------------------------------------------------------------------------------
// 2. Latency

/// When each CDVCS commit first showed in a stage's change stream.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<ContentId, Instant>>,
    notify: Notify,
}

fn record(stage: &Stage, address: &Address) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let mut changes = stage.changes(address);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(event) => {
                    let now = Instant::now();
                    if let AnyOp::Cdvcs(op) = event.op {
                        let mut at = s.at.lock().unwrap();
                        for c in op.commits {
                            at.entry(c.id).or_insert(now);
                        }
                    }
                    s.notify.notify_waiters();
                }
                Err(ChangesError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    seen
}

async fn seen_at(seen: &Seen, id: ContentId) -> Instant {
    loop {
        let notified = seen.notify.notified();
        if let Some(at) = seen.at.lock().unwrap().get(&id) {
            return *at;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
}

/// Per commit: (one hop, two hops).
async fn latency(backend: Backend, m: usize, transport: Transport) -> Vec<(Duration, Duration)> {
    let a = spawn("a", backend, None).await;
    let b = spawn("b", backend, None).await;
    let c = spawn("c", backend, None).await;
    let log = bounded("create", a.stage.create_cdvcs(None)).await.unwrap();
    for p in [&b, &c] {
        bounded("subscribe", p.stage.subscribe([log.clone()])).await.unwrap();
    }
    link_over(&b, &a, transport).await;
    link_over(&c, &b, transport).await;
    bounded("c gets the log", async {
        while c.stage.cdvcs(&log).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (on_b, on_c) = (record(&b.stage, &log), record(&c.stage, &log));
    let mut out = Vec::with_capacity(m);
    for i in 0..m {
        let start = Instant::now();
        let id = bounded("transact", a.stage.transact(&log, vec![Transaction::new("add", i as i64)]))
            .await
            .expect("transact");
        let at_b = bounded("visible on b", seen_at(&on_b, id)).await;
        let at_c = bounded("visible on c", seen_at(&on_c, id)).await;
        out.push((at_b - start, at_c - start));
    }
    for p in [c, b, a] {
        bounded("shutdown", p.stage.shutdown()).await;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 3. Catch-up

struct CatchUp {
    converge: Duration,
    wire: u64,
    content: u64,
    commits: usize,
}

async fn catch_up(backend: Backend, k: usize) -> CatchUp {
    let a = spawn("a", backend, None).await;
    let log = bounded("create", a.stage.create_cdvcs(None)).await.unwrap();
    // Sequential commits on the single head: a linear history of k commits after the root.
    for i in 0..k {
        bounded("transact", a.stage.transact(&log, vec![Transaction::new("add", i as i64)]))
            .await
            .expect("transact");
    }
    let target = bounded("heads", a.stage.heads(&log)).await.unwrap();

    // The content: canonical encodings of every commit record and every distinct params value.
    let history = bounded("log", a.stage.log(&log)).await.unwrap();
    assert_eq!(history.len(), k + 1);
    let mut content = 0u64;
    let mut params = BTreeMap::new();
    for cv in &history {
        let commit = Commit {
            crdt: CrdtKind::Cdvcs,
            parents: cv.parents.clone(),
            transactions: cv.transactions.iter().map(Transaction::to_ref).collect(),
            author: cv.author.clone(),
            ts: cv.ts,
        };
        let record = commit.to_value();
        assert_eq!(record.content_id(), cv.id, "the commit record is recomputed exactly");
        content += record.encode().len() as u64;
        for t in &cv.transactions {
            params.insert(t.params.content_id(), t.params.encode().len() as u64);
        }
    }
    content += params.values().sum::<u64>();

    let b = spawn("b", backend, None).await;
    bounded("subscribe", b.stage.subscribe([log.clone()])).await.unwrap();
    let start = Instant::now();
    link(&b, &a).await;
    bounded("b converges", async {
        loop {
            if b.stage.heads(&log).await.is_ok_and(|h| h == target) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let converge = start.elapsed();
    let wire = b.stage.node().metrics().values().map(|m| m.bytes_in + m.bytes_out).sum();
    let commits = bounded("b's graph", b.stage.cdvcs(&log)).await.unwrap().graph().len();
    bounded("shutdown", b.stage.shutdown()).await;
    bounded("shutdown", a.stage.shutdown()).await;
    CatchUp { converge, wire, content, commits }
}

// ---------------------------------------------------------------------------------------------

fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn run() {
    let quick = std::env::var("REPLIKATIV_BENCH_QUICK").is_ok_and(|v| v == "1");
    let runs = env_usize("REPLIKATIV_BENCH_RUNS").unwrap_or(3).max(1);
    let (n, m, k) = if quick { (5_000, 200, 1_000) } else { (100_000, 1_000, 10_000) };
    let n = env_usize("REPLIKATIV_BENCH_N").unwrap_or(n);
    // A filter on the sections to run: "1", "2", "3" or a combination ("13"); the store: "memory"
    // "file" or "postgres" (PgStore runs when REPLIKATIV_PG_URL names a server).
    let only = std::env::var("REPLIKATIV_BENCH_ONLY").unwrap_or_default();
    let section = |s: char| only.chars().all(|c| !c.is_ascii_digit()) || only.contains(s);
    let pg = cfg!(feature = "postgres") && std::env::var("REPLIKATIV_PG_URL").is_ok_and(|u| !u.is_empty());
    let all = [Backend::Memory, Backend::File, Backend::Postgres];
    let named = all.iter().any(|b| only.contains(b.key()));
    let backends: Vec<Backend> = all
        .into_iter()
        .filter(|b| *b != Backend::Postgres || pg)
        .filter(|b| !named || only.contains(b.key()))
        .collect();
    println!(
        "replication benchmarks: N={n} assocs, M={m} commits, K={k} catch-up commits; median of {runs} runs{}",
        if quick { " (quick)" } else { "" }
    );

    if section('1') {
        section_throughput(n, runs, &backends).await;
    }
    if section('2') {
        section_latency(m, runs, &backends).await;
    }
    if section('3') {
        section_catch_up(k, runs, &backends).await;
    }
    if section('4') {
        section_tls(n, m, runs, &backends).await;
    }
}

async fn section_tls(n: usize, m: usize, runs: usize, backends: &[Backend]) {
    const WINDOW: usize = 1024;
    println!(
        "\n4. TLS: wss:// against ws://, alternating run by run (throughput W={WINDOW}; one-hop latency of {m} commits)"
    );
    println!("{:<48} {:>12} {:>12} {:>12} {:>12}", "case", "median", "min", "max", "ops/s");
    for &backend in backends {
        let mut visible = [Vec::new(), Vec::new()];
        let mut bytes = [Vec::new(), Vec::new()];
        let mut stalled = [0, 0];
        let mut p50 = [Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, transport) in [Transport::Ws, Transport::Wss].into_iter().enumerate() {
                let t = throughput(backend, n, WINDOW, transport).await;
                match t.visible {
                    Some(v) => visible[i].push(v),
                    None => stalled[i] += 1,
                }
                bytes[i].push(t.bytes);
                let mut one_hop: Vec<Duration> =
                    latency(backend, m, transport).await.iter().map(|s| s.0).collect();
                one_hop.sort();
                p50[i].push(percentile(&one_hop, 0.5));
            }
        }
        let mut rates = [0.0f64; 2];
        for (i, name) in ["ws://", "wss://"].into_iter().enumerate() {
            if stalled[i] > 0 {
                println!("    {} of {runs} runs over {name} STALLED (see stderr)", stalled[i]);
            }
            if visible[i].is_empty() {
                continue;
            }
            let med = median(&visible[i]);
            let (lo, hi) = (*visible[i].iter().min().unwrap(), *visible[i].iter().max().unwrap());
            rates[i] = rate(n, med);
            println!(
                "{:<48} {:>12} {:>12} {:>12} {:>12.0}",
                format!("node A->B over {name}, {}, W={WINDOW}", backend.name()),
                ms(med),
                ms(lo),
                ms(hi),
                rates[i]
            );
            println!(
                "    websocket bytes A->B (median): {} ({:.0} B per op)",
                median(&bytes[i]),
                median(&bytes[i]) as f64 / n as f64
            );
        }
        if rates[0] > 0.0 && rates[1] > 0.0 {
            println!("    ratio wss / ws (ops/s, medians): {:.3}", rates[1] / rates[0]);
        }
        let (ws, wss) = (median(&p50[0]), median(&p50[1]));
        println!(
            "    one-hop commit-to-visible p50 (median of runs), {}: ws {}, wss {}; ratio wss / ws {:.3}",
            backend.name(),
            us(ws),
            us(wss),
            wss.as_secs_f64() / ws.as_secs_f64()
        );
    }
    // Connections: the handshake cost, which the cases above pay once.
    let c = if n < 100_000 { 100 } else { 500 };
    let node = spawn("server", Backend::Memory, None).await;
    let plain = bounded("listen", node.stage.node().listen("127.0.0.1:0")).await.unwrap();
    let secure =
        bounded("listen", node.stage.node().listen_tls("127.0.0.1:0", bench_tls().0.clone())).await.unwrap();
    let urls = [format!("ws://{plain}"), format!("wss://localhost:{}", secure.port())];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, url) in urls.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..c {
                let client = bounded("connect", RemoteClient::connect_with(url, "bench", &bench_tls().1))
                    .await
                    .expect("connects");
                bounded("close", client.close()).await;
            }
            times[i].push(start.elapsed());
        }
    }
    let (ws, wss) = (median(&times[0]), median(&times[1]));
    println!(
        "    {c} sequential connections (connect, hello, close), median: ws {} ({:.0}/s), wss {} ({:.0}/s); ratio wss / ws (time) {:.2}",
        ms(ws),
        rate(c, ws),
        ms(wss),
        rate(c, wss),
        wss.as_secs_f64() / ws.as_secs_f64()
    );
    bounded("shutdown", node.stage.shutdown()).await;
}

async fn section_throughput(n: usize, runs: usize, backends: &[Backend]) {
    println!("\n1. throughput: {n} OR-Map assocs on A (a window of W in flight) until B has them all");
    println!("{:<48} {:>12} {:>12} {:>12} {:>12}", "case", "median", "min", "max", "ops/s");
    let row = |name: &str, times: &[Duration], ops: usize| {
        let med = median(times);
        let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        println!("{name:<48} {:>12} {:>12} {:>12} {:>12.0}", ms(med), ms(lo), ms(hi), rate(ops, med));
        rate(ops, med)
    };
    for &backend in backends {
        let windows: Vec<usize> = std::env::var("REPLIKATIV_BENCH_WINDOWS")
            .ok()
            .map(|w| w.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| IN_FLIGHT.to_vec());
        for window in windows {
            let mut visible = Vec::new();
            let mut acked = Vec::new();
            let mut wire = Vec::new();
            let mut stalled = 0;
            for _ in 0..runs {
                let t = throughput(backend, n, window, Transport::Ws).await;
                match t.visible {
                    Some(v) => visible.push(v),
                    None => stalled += 1,
                }
                acked.push(t.acked);
                wire.push((t.frames, t.bytes, t.dropped));
            }
            if stalled > 0 {
                println!(
                    "    {stalled} of {runs} runs STALLED: B lacked ops {STALL:?} after A acknowledged all (see stderr)"
                );
            }
            if visible.is_empty() {
                continue;
            }
            let node = row(&format!("node A->B, {}, W={window} (visible on B)", backend.name()), &visible, n);
            row(&format!("  (acknowledged on A, {}, W={window})", backend.name()), &acked, n);
            for (frames, bytes, dropped) in &wire {
                println!(
                    "    publish frames {frames} ({:.1} ops each), {bytes} B A->B ({:.0} B per op), messages dropped (A, B): {dropped:?}",
                    n as f64 / *frames.max(&1) as f64,
                    *bytes as f64 / n as f64
                );
            }
            // Baselines, measured now: the same frames over a raw websocket (the issue's
            // comparison), and one frame per op as a hand-written app would send them.
            wire.sort();
            let (frames, bytes, _) = wire[wire.len() / 2];
            let frames = frames.max(1) as usize;
            let per_op = (bytes as usize / n).max(1);
            let cases = [
                (
                    format!("  raw ws, the node's frames: {frames} x {} B", bytes as usize / frames),
                    frames,
                    bytes as usize / frames,
                    false,
                ),
                (format!("  raw ws, a frame per op: {n} x {per_op} B"), n, per_op, false),
                ("  raw ws, a frame per op, flush every 64".to_string(), n, per_op, true),
            ];
            for (name, count, size, batch) in cases {
                let mut times = Vec::new();
                for _ in 0..runs {
                    times.push(raw_stream(count, size, batch).await);
                }
                let raw = row(&name, &times, n);
                println!("    ratio node / this baseline (ops/s): {:.3}", node / raw);
            }
        }
    }
}

async fn section_latency(m: usize, runs: usize, backends: &[Backend]) {
    println!("\n2. commit-to-visible latency: {m} sequential CDVCS commits on A, line A-B-C");
    println!("{:<44} {:>12} {:>12} {:>12}", "case", "p50", "p99", "max");
    for &backend in backends {
        let mut p = [[Vec::new(), Vec::new(), Vec::new()], [Vec::new(), Vec::new(), Vec::new()]];
        for _ in 0..runs {
            let samples = latency(backend, m, Transport::Ws).await;
            for (hop, pick) in
                [|s: &(Duration, Duration)| s.0, |s: &(Duration, Duration)| s.1].into_iter().enumerate()
            {
                let mut v: Vec<Duration> = samples.iter().map(pick).collect();
                v.sort();
                p[hop][0].push(percentile(&v, 0.5));
                p[hop][1].push(percentile(&v, 0.99));
                p[hop][2].push(*v.last().unwrap());
            }
        }
        for (hop, name) in ["one hop (A->B)", "two hops (A->B->C)"].into_iter().enumerate() {
            let name = format!("{name}, {}", backend.name());
            println!(
                "{name:<44} {:>12} {:>12} {:>12}",
                us(median(&p[hop][0])),
                us(median(&p[hop][1])),
                us(median(&p[hop][2]))
            );
        }
    }
}

async fn section_catch_up(k: usize, runs: usize, backends: &[Backend]) {
    println!("\n3. catch-up: B offline while A makes {k} CDVCS commits, then B connects");
    println!(
        "{:<44} {:>12} {:>12} {:>12} {:>14} {:>14} {:>8}",
        "case", "median", "min", "max", "wire bytes", "content bytes", "ratio"
    );
    for &backend in backends {
        let mut times = Vec::new();
        let mut wire = Vec::new();
        let mut content = 0;
        for _ in 0..runs {
            let c = catch_up(backend, k).await;
            assert_eq!(c.commits, k + 1, "B has the whole history");
            times.push(c.converge);
            wire.push(c.wire);
            content = c.content;
        }
        let med = median(&times);
        let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        let w = median(&wire);
        let name = format!("catch-up {k} commits, {}", backend.name());
        println!(
            "{name:<44} {:>12} {:>12} {:>12} {:>14} {:>14} {:>8.2}",
            ms(med),
            ms(lo),
            ms(hi),
            w,
            content,
            w as f64 / content as f64
        );
    }
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run());
}
