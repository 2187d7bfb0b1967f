//! The node's listen port speaks plain HTTP beside the websocket upgrade: `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text, parsed here; a counter moves after a write), static files with
//! `NodeConfig::web`, clear answers to bad requests; and the embedding of a node's websocket
//! endpoint into an application's own axum server (`examples/axum_app.rs`, run here).

mod common;

#[path = "../examples/axum_app.rs"]
#[allow(dead_code)]
mod example;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::{Backend, bounded, eventually, link, spawn_peer, spawn_with};
use replikativ::crdt::{Transaction, Value};
use replikativ::peer::stage::Stage;
use replikativ::store::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One raw HTTP/1.1 request; the status code, the headers (lower-case names) and the body.
async fn request(addr: SocketAddr, raw: &str) -> (u16, BTreeMap<String, String>, String) {
    bounded("http request", async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
        tcp.write_all(raw.as_bytes()).await.expect("writes");
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await.expect("reads");
        let reply = String::from_utf8(reply).expect("utf-8");
        let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.lines();
        let status =
            lines.next().expect("status line").split(' ').nth(1).expect("code").parse().expect("number");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    })
    .await
}

/// A GET that does not ask to close: the node's port answers one request per connection.
async fn get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")).await
}

/// A GET that asks the server to close after it (an application's axum server keeps alive).
async fn get_closing(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")).await
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number in {line:?}"));
        samples.insert(name.to_owned(), value);
    }
    samples
}

async fn metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, headers, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].contains("text"), "{headers:?}");
    assert!(body.trim_end().ends_with("# EOF"), "an OpenMetrics exposition ends with # EOF");
    parse_metrics(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_on_the_websocket_port() {
    let server = spawn_peer("server", Backend::File).await;
    let (status, headers, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let before = metrics(server.addr).await;
    for name in [
        "replikativ_connections",
        "replikativ_subscriptions",
        "replikativ_addresses",
        "replikativ_store_bytes",
        "replikativ_publications_received_total",
        "replikativ_bytes_received_total",
        "replikativ_refusals_total{reason=\"max-connections\"}",
        "replikativ_barrier_duration_seconds_count",
    ] {
        assert!(before.contains_key(name), "{name} missing in {before:?}");
    }
    let received = before["replikativ_publications_received_total"];

    // A write by another peer, over a websocket on the same port, moves the counters.
    let client = spawn_peer("client", Backend::Memory).await;
    let map = bounded("create", client.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", server.stage.subscribe([map.clone()])).await.unwrap();
    link(&client, &server).await;
    bounded("assoc", client.stage.assoc(&map, "milk".into(), vec![Transaction::new("add", 2)]))
        .await
        .unwrap();
    eventually("the write reached the server", || async {
        server.stage.get(&map, &Value::from("milk")).await.is_ok_and(|v| v.len() == 1)
    })
    .await;
    let after = metrics(server.addr).await;
    assert!(
        after["replikativ_publications_received_total"] > received,
        "publications received: {received} before, {} after",
        after["replikativ_publications_received_total"]
    );
    assert!(after["replikativ_bytes_received_total"] > before["replikativ_bytes_received_total"]);
    assert!(after["replikativ_connections"] >= 2.0, "the stage and the client: {after:?}");
    assert!(after["replikativ_addresses"] >= 1.0);
    // Per connection: the client's connection with its counters.
    let (status, headers, body) = get(server.addr, "/connections").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    // Both name the peer that answered (a client behind a load balancer checks it).
    assert_eq!(headers["x-replikativ-peer-id"], "server", "{headers:?}");
    assert_eq!(get(server.addr, "/metrics").await.1["x-replikativ-peer-id"], "server");
    let conns: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON list");
    let client_conn = conns
        .iter()
        .find(|c| c["peer_id"] == "client")
        .unwrap_or_else(|| panic!("the client's connection in {body}"));
    assert!(client_conn["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(client_conn["publications_in"].as_u64().unwrap() >= 1, "{client_conn}");
    assert!(client_conn["bytes_in"].as_u64().unwrap() > 0);
    assert!(conns.iter().any(|c| c["remote"] == "stage"), "{body}");
    // The write was made durable by at least one barrier on the file store.
    assert!(after["replikativ_barrier_duration_seconds_count"] > 0.0);
    bounded("shutdown", client.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers_and_count_as_refusals() {
    let server = spawn_peer("server", Backend::Memory).await;
    // Without a web directory, other paths are a 404 that says what the port serves.
    let (status, _, body) = get(server.addr, "/index.html").await;
    assert_eq!(status, 404);
    assert!(body.contains("/healthz"), "{body}");
    // An upgrade request without its key is a 400 naming what is missing, counted.
    let (status, _, body) = request(
        server.addr,
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
    // Not HTTP at all.
    let (status, _, _) = request(server.addr, "hello there\r\n\r\n").await;
    assert_eq!(status, 400);
    eventually("both are counted as handshake failures", || async {
        let status = server.stage.node().status().await.unwrap();
        status.refusals.by_name().get("handshake-failed") == Some(&2)
    })
    .await;
    bounded("shutdown", server.stage.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_from_the_web_directory_and_nothing_outside_it() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<h1>todo</h1>\n").unwrap();
    std::fs::create_dir(web.path().join("js")).unwrap();
    std::fs::write(web.path().join("js/app.js"), "console.log(1)\n").unwrap();
    let outside = web.path().parent().unwrap().join(format!("secret-{}", std::process::id()));
    std::fs::write(&outside, "secret\n").unwrap();
    let mut cfg = common::config("server");
    cfg.web = Some(web.path().to_owned());
    let server = spawn_with("server", Backend::Memory, Arc::new(tempfile::tempdir().unwrap()), cfg).await;

    let (status, headers, body) = get(server.addr, "/").await;
    assert_eq!((status, body.as_str()), (200, "<h1>todo</h1>\n"));
    assert!(headers["content-type"].starts_with("text/html"), "{headers:?}");
    let (status, headers, body) = get(server.addr, "/js/app.js").await;
    assert_eq!((status, body.as_str()), (200, "console.log(1)\n"));
    assert!(headers["content-type"].contains("javascript"), "{headers:?}");
    let name = outside.file_name().unwrap().to_str().unwrap();
    for path in [format!("/../{name}"), format!("/%2e%2e/{name}"), "/missing.html".to_owned()] {
        let (status, _, body) = get(server.addr, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("secret"));
    }
    // The operational endpoints and the websocket still answer beside the files.
    assert_eq!(get(server.addr, "/healthz").await.0, 200);
    let client = spawn_peer("client", Backend::Memory).await;
    link(&client, &server).await;
    let _ = std::fs::remove_file(&outside);
    bounded("shutdown", client.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_embedding_example_runs() {
    bounded("the example", example::run()).await.expect("the example runs to completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_endpoint_replicates_and_keeps_the_connection_cap() {
    let mut cfg = common::config("app");
    cfg.max_connections = Some(1);
    let server = bounded(
        "spawn",
        Stage::builder(Arc::new(MemoryStore::new())).user("mail:app@example.org").config(cfg).spawn(),
    )
    .await
    .unwrap();
    let todos = bounded("create", server.create_ormap(None)).await.unwrap();
    let addr = bounded("serve", example::serve(example::app(&server, todos.clone()))).await.unwrap();
    // The application's own routes answer.
    let (status, _, body) = get_closing(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("todo app"));
    // Only the configured path is the websocket endpoint.
    let url = format!("ws://{addr}/replikativ");
    let bob =
        Stage::builder(Arc::new(MemoryStore::new())).user("mail:bob@example.org").spawn().await.unwrap();
    bounded("subscribe", bob.subscribe([todos.clone()])).await.unwrap();
    bounded("connect", bob.node().connect(&url)).await.expect("connects at /replikativ");
    bounded("assoc", server.assoc(&todos, "eggs".into(), vec![Transaction::new("add", 6)])).await.unwrap();
    eventually("bob receives the write", || async {
        bob.get(&todos, &Value::from("eggs")).await.is_ok_and(|v| v.len() == 1)
    })
    .await;
    let (status, _, body) = get_closing(addr, "/api/todos").await;
    assert_eq!((status, body.as_str()), (200, "1 todos\n"));
    // A second peer is over max_connections (1): refused with a 503 and counted.
    let carol =
        Stage::builder(Arc::new(MemoryStore::new())).user("mail:carol@example.org").spawn().await.unwrap();
    let refused = bounded("connect", carol.node().connect(&url)).await;
    assert!(refused.is_err(), "a second connection is over the cap");
    let status = bounded("status", server.node().status()).await.unwrap();
    assert_eq!(status.refusals.by_name().get("max-connections"), Some(&1));
    // The connection shows the peer's address (ConnectInfo), not "unknown".
    assert!(
        status.connections.iter().any(|(_, remote, _)| remote.to_string().starts_with("127.0.0.1:")),
        "{:?}",
        status.connections
    );
    bounded("shutdown", carol.shutdown()).await;
    bounded("shutdown", bob.shutdown()).await;
    bounded("shutdown", server.shutdown()).await;
}
