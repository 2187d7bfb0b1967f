//! HTTP beside the websocket: the node's listen port answers plain HTTP requests (health,
//! readiness, Prometheus metrics, optional static files) and upgrades websocket requests to peer
//! connections; [`websocket_router`] and [`ops_router`] mount the same endpoints into an
//! application's own [`axum`] server (`docs/design.md` §8.5).
//!
//! Mounting a node's websocket endpoint at `/replikativ` of an application's server:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use replikativ_peer::node::http::{ops_router, websocket_router};
//! use replikativ_peer::stage::Stage;
//! use replikativ_store::MemoryStore;
//!
//! let stage = Stage::builder(Arc::new(MemoryStore::new())).user("mail:app@example.org").spawn().await?;
//! let app = Router::new()
//!     .route("/", get(|| async { "my application" }))
//!     .merge(websocket_router(stage.node(), "/replikativ"))
//!     .merge(ops_router(stage.node()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     // `ConnectInfo` gives the node each peer's address (for logs and access policies).
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! });
//! // Other peers connect to ws://ADDR/replikativ.
//! let other = Stage::builder(Arc::new(MemoryStore::new())).user("mail:bob@example.org").spawn().await?;
//! other.node().connect(&format!("ws://{addr}/replikativ")).await?;
//! # other.shutdown().await; stage.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Node, Shared};
use crate::middleware::Remote;
use crate::proto::{Direction, Refusal};

/// The buckets of the barrier latency histogram (seconds): 50 µs to about 3 s.
pub(crate) fn barrier_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16))
}

/// How long the readiness check waits for the protocol core to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A router that upgrades websocket requests at `path` to peer connections of `node`, for an
/// application's own [`axum`] server (see the module docs).
///
/// The node's limits hold for these connections too: each holds one of
/// [`NodeConfig::max_connections`](super::NodeConfig::max_connections) permits from the upgrade
/// until it closes (over the cap: an HTTP 503), the frame and message limits of
/// [`WsConfig`](super::WsConfig) apply, and refusals are counted in the node's status. Reading
/// the request head (the handshake timeout and size limit of the node's own listener) is the
/// application server's business. Serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the node learns each peer's address;
/// without it, connections are named `unknown`.
pub fn websocket_router(node: &Node, path: &str) -> Router {
    Router::new().route(path, any(upgrade_handler)).with_state(node.shared.clone())
}

/// A router with the node's operational endpoints: `GET /healthz`, `GET /readyz`,
/// `GET /metrics` (Prometheus text format) and `GET /connections` (JSON: each open connection
/// with its counters); see `docs/design.md` §8.5.
pub fn ops_router(node: &Node) -> Router {
    ops_routes(node.shared.clone())
}

fn ops_routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .with_state(shared)
}

/// The router of the node's own listener: the operational endpoints, and static files from
/// `web` (if given) for every other path. Websocket upgrades are routed before it (any path).
pub(crate) fn listener_router(shared: Arc<Shared>, web: Option<PathBuf>) -> Router {
    let router = ops_routes(shared);
    match web {
        Some(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router.fallback(not_found),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this port serves websocket peers, /healthz, /readyz, /metrics (and static files with --web)\n",
    )
}

async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if *shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n".into());
    }
    if shared.connections.available_permits() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: max_connections reached\n".into());
    }
    let node = Node { shared };
    match tokio::time::timeout(READY_TIMEOUT, node.status()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the protocol core does not answer\n".into()),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response<Body> {
    let node = Node { shared: shared.clone() };
    let status = match tokio::time::timeout(READY_TIMEOUT, node.status()).await {
        Ok(Ok(status)) => status,
        _ => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "the protocol core does not answer\n".into());
        }
    };
    let mut registry = Registry::with_prefix("replikativ");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        &mut registry,
        "connections",
        "Open connections (remote peers and in-process stages)",
        n(status.connections.len()),
    );
    gauge(&mut registry, "max_connections", "The cap on incoming connections", n(status.max_connections));
    gauge(
        &mut registry,
        "subscriptions",
        "Addresses the peer is subscribed to",
        n(status.subscriptions.len()),
    );
    gauge(&mut registry, "addresses", "Addresses with a state", n(status.addresses));
    gauge(
        &mut registry,
        "quarantined_records",
        "Stored records skipped when the peer opened",
        n(status.recovery.len()),
    );
    if let Some(bytes) = shared.store.size_on_disk() {
        gauge(
            &mut registry,
            "store_bytes",
            "Size of the store on disk",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        );
    }
    let totals = super::metric_totals(&shared);
    counter(&mut registry, "messages_received", "Protocol messages received", totals.items_in);
    counter(&mut registry, "messages_sent", "Protocol messages sent", totals.items_out);
    counter(
        &mut registry,
        "publications_received",
        "Publications and batches received (ops in)",
        totals.publications_in,
    );
    counter(
        &mut registry,
        "publications_sent",
        "Publications and batches sent (ops out)",
        totals.publications_out,
    );
    counter(&mut registry, "fetches_received", "Fetch requests received", totals.fetches_in);
    counter(&mut registry, "bytes_received", "Websocket frame bytes received", totals.bytes_in);
    counter(&mut registry, "bytes_sent", "Websocket frame bytes sent", totals.bytes_out);
    counter(&mut registry, "errors", "Errors and refusals sent or received in messages", totals.errors);
    counter(
        &mut registry,
        "dropped_messages",
        "Messages dropped because a connection's outbox was full",
        status.dropped,
    );
    counter(&mut registry, "catch_up_batches_sent", "Catch-up batches sent", status.catch_up_batches);
    counter(
        &mut registry,
        "catch_up_publications_sent",
        "Catch-up publications sent",
        status.catch_up_publications,
    );
    let refusals = Family::<Vec<(&'static str, &'static str)>, Counter<u64>>::default();
    // Every reason is listed (0 until it happens), so a dashboard sees the series from the start.
    for reason in Refusal::ALL {
        refusals.get_or_create(&vec![("reason", reason.as_str())]).inc_by(status.refusals.get(reason));
    }
    registry.register("refusals", "What the node refused, by reason", refusals);
    registry.register_with_unit(
        "barrier_duration",
        "Durability barriers (store sync): how long each took",
        prometheus_client::registry::Unit::Seconds,
        shared.barrier_seconds.clone(),
    );
    let mut body = String::new();
    if encode(&mut body, &registry).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n".into());
    }
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    with_peer_id(response, &status.peer_id)
}

/// The header naming the peer that answered (`/metrics`, `/connections`): a client that combines
/// them with a websocket `status` can tell whether one node answered all (behind a load balancer,
/// successive connections reach different nodes).
pub const PEER_ID_HEADER: &str = "x-replikativ-peer-id";

fn with_peer_id(mut response: Response<Body>, peer_id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(peer_id) {
        response.headers_mut().insert(PEER_ID_HEADER, v);
    }
    response
}

/// One open connection and its counters, as `GET /connections` lists them.
#[derive(Debug, serde::Serialize)]
struct ConnectionInfo {
    conn: crate::proto::ConnId,
    /// The remote's address (`stage` for an in-process stage).
    remote: String,
    /// The remote's peer id once it said hello.
    peer_id: Option<String>,
    /// Whether the connection runs over TLS (the node's own `wss://` listener or dialer).
    tls: bool,
    #[serde(flatten)]
    counters: crate::middleware::MetricsSnapshot,
}

async fn connections(State(shared): State<Arc<Shared>>) -> Response<Body> {
    let node = Node { shared };
    let status = match tokio::time::timeout(READY_TIMEOUT, node.status()).await {
        Ok(Ok(status)) => status,
        _ => return text(StatusCode::SERVICE_UNAVAILABLE, "the protocol core does not answer\n".into()),
    };
    let metrics = node.metrics();
    let list: Vec<ConnectionInfo> = status
        .connections
        .iter()
        .cloned()
        .map(|(conn, remote, peer_id)| ConnectionInfo {
            conn,
            remote: remote.to_string(),
            peer_id,
            tls: node.channel_binding(conn).is_some_and(|b| b.is_tls()),
            counters: metrics.get(&conn).copied().unwrap_or_default(),
        })
        .collect();
    let mut response = Response::new(Body::from(serde_json::to_string(&list).expect("encodes")));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_peer_id(response, &status.peer_id)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// What the node's own listener hands the upgrade handler with each request.
#[derive(Clone)]
pub(crate) struct Accepted {
    /// The connection's permit (taken at accept).
    pub(crate) permit: Arc<OwnedSemaphorePermit>,
    /// Lifts the handshake byte budget once the connection is a websocket.
    pub(crate) lift: Arc<AtomicBool>,
    /// The connection's TLS exporter (or zeros).
    pub(crate) binding: super::tls::ChannelBinding,
}

/// Whether a request asks for a websocket upgrade (an `Upgrade: websocket` header).
pub(crate) fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn upgrade_handler(State(shared): State<Arc<Shared>>, req: Request) -> Response<Body> {
    upgrade(shared, req).await
}

/// Upgrades a websocket request to a peer connection (RFC 6455 §4.2): checks the request,
/// answers 101 and runs the connection on the upgraded stream in its own task.
pub(crate) async fn upgrade<B>(shared: Arc<Shared>, mut req: axum::http::Request<B>) -> Response<Body> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let peer_name = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    let problem = if req.method() != Method::GET {
        Some("a websocket handshake is a GET request")
    } else if !wants_websocket(headers) || !has_token(header::CONNECTION, "upgrade") {
        Some("expected the headers Upgrade: websocket and Connection: Upgrade")
    } else if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        Some("expected Sec-WebSocket-Version: 13")
    } else if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        Some("missing Sec-WebSocket-Key")
    } else {
        None
    };
    if let Some(problem) = problem {
        shared.refuse(Refusal::HandshakeFailed);
        tracing::debug!(peer = %peer_name, problem, "websocket handshake refused");
        let mut response = text(StatusCode::BAD_REQUEST, format!("bad websocket handshake: {problem}\n"));
        response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    if *shared.shutdown.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down\n".into());
    }
    let accepted = req.extensions().get::<Accepted>().cloned();
    let (permit, lift, binding) = match accepted {
        Some(a) => (a.permit, Some(a.lift), a.binding),
        // Mounted in an application's server: take a permit here. The application's server
        // terminates TLS (if any), out of the node's sight: the binding is PLAIN.
        None => match shared.connections.clone().try_acquire_owned() {
            Ok(p) => (Arc::new(p), None, super::tls::ChannelBinding::PLAIN),
            Err(_) => {
                shared.refuse(Refusal::MaxConnections);
                tracing::debug!(peer = %peer_name, "connection refused: max_connections reached");
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n".into());
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        },
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).expect("checked above").as_bytes().to_vec();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let shared = task_shared;
        let _permit = permit;
        let upgraded = match tokio::time::timeout(shared.config.ws.handshake_timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => {
                shared.refuse(Refusal::HandshakeFailed);
                tracing::debug!(peer = %peer_name, error = %e, "websocket upgrade failed");
                return;
            }
            Err(_) => {
                shared.refuse(Refusal::HandshakeTimeout);
                tracing::debug!(peer = %peer_name, "websocket upgrade not finished in time");
                return;
            }
        };
        if let Some(lift) = lift {
            lift.store(true, Ordering::Relaxed);
        }
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(shared.config.ws.tungstenite()),
        )
        .await;
        super::ws::run(shared, ws, Remote::Peer(peer_name), Direction::Inbound, binding).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(&key)).expect("base64 is a valid header value"),
    );
    response
}
