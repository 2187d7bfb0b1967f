//! The node under attack from outside (issue F): a real `replikativ serve` with `ulimit -n 256`,
//! set for the child process alone, gets 500 idle pre-handshake connections, 300 connections that
//! finish the websocket handshake and hold their descriptors (so the node runs out of them and
//! `accept` fails), and a flood of junk subscriptions. Meanwhile two healthy client peers,
//! connected before the attack, replicate an edit every 200 ms: each must arrive within a second,
//! the whole time. Afterwards the node accepts again, counted what it refused, holds no more junk
//! subscriptions than its limit, and its log stayed small (the accept loop once wrote ~4 million
//! lines in 15 s when out of descriptors).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use replikativ_crdt::{Address, Transaction, Value};
use replikativ_peer::proto::{Hello, Message, PROTOCOL_VERSION, Subscribe};
use replikativ_peer::stage::Stage;
use replikativ_store::MemoryStore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The node's log may grow by this much during the attack at most.
const MAX_LOG: u64 = 256 << 10;
/// Junk subscriptions the node may take on.
const MAX_SUBSCRIPTIONS: usize = 500;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` under `ulimit -n 256`, logging to `log`; returns the child and its URL.
fn serve_limited(store: &str, log: &std::path::Path) -> (Node, String) {
    let script = format!(
        "ulimit -n 256 && exec {} serve --listen 127.0.0.1:0 --store {store} --max-connections 1000 \
         --handshake-timeout 2s --idle-timeout 30s --max-subscriptions {MAX_SUBSCRIPTIONS}",
        env!("CARGO_BIN_EXE_replikativ")
    );
    let mut child = Command::new("sh")
        .env("REPLIKATIV_AUTH", "off")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("sh runs");
    let url = common::listening_url(&mut child);
    (Node(child), url)
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn client(name: &str, url: &str, map: Option<Address>) -> (Stage, Address) {
    let stage = bounded(
        "spawn",
        Stage::builder(Arc::new(MemoryStore::new()))
            .user(format!("mail:{name}@example.org"))
            .extend(false)
            .spawn(),
    )
    .await
    .unwrap();
    let map = match map {
        Some(m) => m,
        None => bounded("create", stage.create_ormap(None)).await.unwrap(),
    };
    bounded("subscribe", stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", stage.node().connect(url)).await.unwrap();
    (stage, map)
}

/// Edits through `a` every 200 ms until `stop`, and waits for each to reach `b`; returns the
/// slowest delivery (or fails at the first over `limit`).
async fn probe(a: Stage, b: Stage, map: Address, stop: Arc<AtomicBool>, limit: Duration) -> (u64, Duration) {
    let mut n = 0u64;
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = Value::from(format!("probe-{n}"));
        let start = Instant::now();
        let id = bounded("assoc", a.assoc(&map, key.clone(), vec![Transaction::new("set", n as i64)]))
            .await
            .expect("the healthy peer's edit is acknowledged");
        loop {
            if b.get(&map, &key).await.is_ok_and(|v| v.iter().any(|c| c.id == id)) {
                break;
            }
            assert!(start.elapsed() < limit, "edit {n} took over {limit:?} to replicate during the attack");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (n, slowest)
}

/// A websocket client that says hello and then holds its descriptor; `None` if the node did not
/// take it (refused, or out of descriptors).
async fn holder(
    url: String,
) -> Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>> {
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url))
        .await
        .ok()?
        .ok()?;
    let hello =
        Message::Hello(Hello { version: PROTOCOL_VERSION, peer_id: "holder".into(), features: vec![] });
    ws.send(WsMessage::Binary(hello.encode().into())).await.ok()?;
    Some(ws)
}

fn status_json(url: &str) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_replikativ"))
        .args(["status", "--peer", url, "--json"])
        .output()
        .ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_descriptors_keeps_replicating_and_logs_little() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let store = format!("file:{}", dir.path().join("data").display());
    let (mut node, url) = serve_limited(&store, &log);
    let (a, map) = client("a", &url, None).await;
    let (b, _) = client("b", &url, Some(map.clone())).await;
    // Warm up: the healthy pair replicates before the attack.
    let stop = Arc::new(AtomicBool::new(false));
    let probe_task =
        tokio::spawn(probe(a.clone(), b.clone(), map.clone(), stop.clone(), Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_before = std::fs::metadata(&log).unwrap().len();
    let host = url.trim_start_matches("ws://").to_owned();

    // 1. 500 connections that never start the handshake.
    let mut idle = Vec::new();
    for _ in 0..500 {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&host)).await
        {
            idle.push(tcp);
        }
    }
    // 2. 300 that finish it and hold their descriptors (with the idle ones, more than the node has).
    let holders: Vec<_> = futures::future::join_all((0..300).map(|_| holder(url.clone()))).await;
    let mut holders: Vec<_> = holders.into_iter().flatten().collect();
    assert!(!holders.is_empty(), "some connections got in");
    // 3. Junk subscriptions on what got in: 40 rounds of 250 fresh addresses.
    let mut junk_sent = 0;
    for round in 0..40u128 {
        let Some(ws) = holders.get_mut(round as usize % 4) else { break };
        let addresses = (0..250)
            .map(|i| Address::new("mail:junk", uuid::Uuid::from_u128(round * 1000 + i)).unwrap())
            .collect();
        let sub = Message::Subscribe(Subscribe { id: round as u64 + 1, addresses, extend: true });
        if ws.send(WsMessage::Binary(sub.encode().into())).await.is_ok() {
            junk_sent += 250;
        }
    }
    // Keep the pressure on past the handshake timeout (idle ones are closed, more come in).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..100 {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(&host)).await
        {
            idle.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The attack ends.
    drop(idle);
    for mut ws in holders {
        let _ = tokio::time::timeout(Duration::from_millis(100), ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (edits, slowest) = bounded("probe", probe_task).await.expect("every edit replicated within a second");
    assert!(edits >= 20, "the probe ran the whole time ({edits} edits)");
    eprintln!("{edits} edits replicated during the attack, the slowest in {slowest:?}");

    // The node accepts again, and says what it refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || status_json(&url)
        })
        .await
        .unwrap()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the node does not accept again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refused = &status["refusals"];
    eprintln!("refusals: {refused}");
    assert!(refused["accept-failed"].as_u64().unwrap_or(0) > 0, "the node ran out of descriptors: {refused}");
    assert!(refused["handshake-timeout"].as_u64().unwrap_or(0) > 0, "{refused}");
    let junk =
        status["subscriptions"].as_array().unwrap().iter().filter(|a| a["user"] == "mail:junk").count();
    assert!(junk <= MAX_SUBSCRIPTIONS, "{junk} junk subscriptions held");
    assert!(junk_sent > MAX_SUBSCRIPTIONS, "the flood was bigger than the limit");
    let grew = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(grew < MAX_LOG, "the log grew by {grew} bytes during the attack");
    eprintln!("the log grew by {grew} bytes");

    // And it still shuts down cleanly.
    a.shutdown().await;
    b.shutdown().await;
    let pid = node.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
}
