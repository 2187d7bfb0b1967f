//! Embedding a node in an application's own axum server: the application serves its pages and
//! API, and a replikativ node's websocket endpoint at `/replikativ` on the same port (what the
//! original replikativ offered as a ring middleware).
//!
//! Run it with `cargo run --example axum_app`. It starts the application on `127.0.0.1:0` with
//! an in-memory store, connects a second peer (bob) to `ws://ADDR/replikativ`, lets the
//! application write to a shared map, waits until bob sees the write, asks the application's
//! own page and the node's `/healthz` and `/metrics`, and exits by itself.
//!
//! The two routers the node offers:
//! - [`websocket_router`]: the websocket endpoint at a path of your choice; every connection
//!   holds one of the node's `max_connections` permits and runs under its frame limits;
//! - [`ops_router`]: `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text).
//!
//! Serve with `into_make_service_with_connect_info::<SocketAddr>()` so the node sees each peer's
//! address (in logs and for access policies).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use replikativ::crdt::{Address, Transaction, Value};
use replikativ::peer::node::http::{ops_router, websocket_router};
use replikativ::peer::stage::Stage;
use replikativ::store::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The application: its own page and API, plus the node's endpoints.
pub(crate) fn app(stage: &Stage, map: Address) -> Router {
    let api_stage = stage.clone();
    Router::new()
        .route("/", get(|| async { "a todo app with a replikativ node at /replikativ\n" }))
        .route(
            "/api/todos",
            get(move || {
                let stage = api_stage.clone();
                let map = map.clone();
                async move {
                    match stage.keys(&map).await {
                        Ok(keys) => format!("{} todos\n", keys.len()),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
            }),
        )
        .merge(websocket_router(stage.node(), "/replikativ"))
        .merge(ops_router(stage.node()))
}

/// Serves `app` on `127.0.0.1:0`; returns the bound address.
pub(crate) async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    Ok(addr)
}

/// A plain HTTP GET (one request per connection): the status line and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    Ok((head.lines().next().unwrap_or("").to_owned(), body.to_owned()))
}

/// The demo, from start to shutdown; the first error if a step fails.
pub(crate) async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let step = Duration::from_secs(10);
    let server = Stage::builder(Arc::new(MemoryStore::new())).user("mail:app@example.org").spawn().await?;
    let todos = server.create_ormap(None).await?;
    let addr = serve(app(&server, todos.clone())).await?;
    println!("application on http://{addr}/, node at ws://{addr}/replikativ");

    let bob = Stage::builder(Arc::new(MemoryStore::new())).user("mail:bob@example.org").spawn().await?;
    bob.subscribe([todos.clone()]).await?;
    tokio::time::timeout(step, bob.node().connect(&format!("ws://{addr}/replikativ"))).await??;

    server.assoc(&todos, "milk".into(), vec![Transaction::new("add", 2)]).await?;
    let deadline = tokio::time::Instant::now() + step;
    // (Until bob's subscription is answered, bob has no such address: an error.)
    while !bob.get(&todos, &Value::from("milk")).await.is_ok_and(|v| !v.is_empty()) {
        if tokio::time::Instant::now() > deadline {
            return Err("bob did not receive the write in time".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("bob sees milk through the application's port");

    let (status, body) = tokio::time::timeout(step, http_get(addr, "/api/todos")).await??;
    println!("GET /api/todos: {status}: {}", body.trim());
    let (status, _) = tokio::time::timeout(step, http_get(addr, "/healthz")).await??;
    println!("GET /healthz: {status}");
    let (_, metrics) = tokio::time::timeout(step, http_get(addr, "/metrics")).await??;
    let connections = metrics.lines().find(|l| l.starts_with("replikativ_connections ")).unwrap_or("");
    println!("GET /metrics: {connections}");

    bob.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}
