//! Websocket connections (tokio-tungstenite) and the in-process stage connection.
//!
//! `ws://` only for now. TLS (`wss://`) plugs in at [`connect`] (a rustls connector for
//! `connect_async_tls_with_config`) and [`listen`] (a `tokio_rustls::TlsAcceptor` around the accepted
//! stream before `accept_async_with_config`); the rest of the connection is the same.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{ConnCmd, CoreMsg, NodeError, Shared, register_metrics};
use crate::middleware::{AccessControl, Chain, ConnMetrics, Item, Metrics, Middleware, Remote, Trace};
use crate::proto::{ConnId, Direction, FrameError, Input, Message};

/// Websocket limits and keep-alive.
#[derive(Clone, Copy, Debug)]
pub struct WsConfig {
    /// Largest frame accepted (bytes); larger closes the connection.
    pub max_frame: usize,
    /// Largest message accepted (bytes).
    pub max_message: usize,
    /// Read buffer per connection (bytes).
    pub read_buffer: usize,
    /// Interval of keep-alive pings.
    pub ping_interval: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame: 16 << 20,
            max_message: 16 << 20,
            read_buffer: 16 << 10,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl WsConfig {
    fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(64 << 10)
            .max_write_buffer_size(16 << 20)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_frame))
    }
}

/// The chain of a connection: metrics and trace nearest the network, then the application's
/// middleware, then access control nearest the core.
pub(crate) fn chain(shared: &Shared, conn: ConnId, remote: &Remote, metrics: Arc<ConnMetrics>) -> Chain {
    let mut layers: Vec<Box<dyn Middleware>> =
        vec![Box::new(Metrics::new(metrics)), Box::new(Trace::new(conn))];
    layers.extend(shared.config.middleware.iter().map(|f| f(conn, remote)));
    if shared.config.remote_commands && *remote != Remote::Stage {
        layers.push(Box::new(crate::middleware::RemoteStage));
    }
    if let Some(policy) = &shared.config.policy {
        layers.push(Box::new(AccessControl::new(remote.clone(), policy.clone())));
    }
    Chain::new(layers)
}

pub(crate) async fn listen(shared: Arc<Shared>, addr: &str) -> Result<std::net::SocketAddr, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen { addr: addr.to_owned(), source })?;
    let local =
        listener.local_addr().map_err(|source| NodeError::Listen { addr: addr.to_owned(), source })?;
    shared.listening.lock().expect("poisoned").push(format!("ws://{local}"));
    let mut shutdown = shared.shutdown.subscribe();
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let (stream, peer_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = task_shared.clone();
            tokio::spawn(async move {
                let config = shared.config.ws.tungstenite();
                match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
                    Ok(ws) => run(shared, ws, Remote::Peer(peer_addr.to_string()), Direction::Inbound).await,
                    Err(e) => tracing::info!(%peer_addr, error = %e, "websocket handshake failed"),
                }
            });
        }
    });
    shared.tasks.lock().expect("poisoned").push(task);
    Ok(local)
}

pub(crate) async fn connect(shared: Arc<Shared>, url: &str) -> Result<(), NodeError> {
    let config = shared.config.ws.tungstenite();
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| NodeError::Connect { url: url.to_owned(), reason: e.to_string() })?;
    let url_owned = url.to_owned();
    let task_shared = shared.clone();
    let supervisor = tokio::spawn(async move {
        let shared = task_shared;
        let backoff = shared.config.reconnect;
        let mut ws = Some(ws);
        let mut delay = backoff.initial;
        let mut shutdown = shared.shutdown.subscribe();
        let mut attempt: u64 = 0;
        loop {
            if let Some(ws) = ws.take() {
                delay = backoff.initial;
                run(shared.clone(), ws, Remote::Peer(url_owned.clone()), Direction::Outbound).await;
            }
            if *shutdown.borrow() {
                return;
            }
            // Jitter from the attempt number and the clock: no RNG needed for spreading retries.
            attempt += 1;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let jitter =
                delay.mul_f64(((nanos as u64 ^ attempt.wrapping_mul(0x9e37_79b9)) % 500) as f64 / 1000.0);
            tokio::select! {
                _ = tokio::time::sleep(delay + jitter) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(backoff.max);
            match tokio_tungstenite::connect_async_with_config(
                url_owned.as_str(),
                Some(shared.config.ws.tungstenite()),
                true,
            )
            .await
            {
                Ok((new_ws, _)) => ws = Some(new_ws),
                Err(e) => tracing::info!(url = %url_owned, error = %e, ?delay, "reconnect failed"),
            }
        }
    });
    if let Some(old) = shared.outgoing.lock().expect("poisoned").insert(url.to_owned(), supervisor) {
        old.abort();
    }
    Ok(())
}

fn close_frame(reason: &str) -> WsMessage {
    // A close reason has at most 123 bytes: cut on a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame { code: CloseCode::Policy, reason: reason[..end].to_owned().into() }))
}

/// Runs one websocket connection until it closes.
async fn run<S>(
    shared: Arc<Shared>,
    ws: tokio_tungstenite::WebSocketStream<S>,
    remote: Remote,
    direction: Direction,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let metrics = register_metrics(&shared, conn);
    let mut chain = chain(&shared, conn, &remote, metrics.clone());
    let (tx, mut rx) = mpsc::channel::<ConnCmd>(shared.config.outbox);
    let core = shared.core.clone();
    if core.send(CoreMsg::Attach { conn, tx, remote: remote.clone() }).await.is_err()
        || core.send(CoreMsg::Input(Input::Connected { conn, direction })).await.is_err()
    {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let ws_config = shared.config.ws;
    let mut ping = tokio::time::interval(ws_config.ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // Remote commands in flight: node-wide id -> the client's id.
    let mut commands: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let reason: String = 'conn: loop {
        tokio::select! {
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let bytes = match frame {
                    None => break 'conn "the remote closed the connection".into(),
                    Some(Err(e)) => {
                        // E.g. a frame over the size limit: tell the remote before dropping it.
                        let reason = format!("bad frame: {e}");
                        let _ = sink.send(close_frame(&reason)).await;
                        break 'conn reason;
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => bytes,
                    Some(Ok(WsMessage::Close(frame))) => {
                        break 'conn format!("closed by the remote: {}", frame.map(|f| f.reason.to_string()).unwrap_or_default());
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        let reason = "text frames are not part of the protocol".to_owned();
                        let _ = sink.send(close_frame(&reason)).await;
                        break 'conn reason;
                    }
                    Some(Ok(_)) => continue, // ping / pong
                };
                metrics.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let msg = match Message::decode(&bytes) {
                    Ok(msg) => msg,
                    Err(FrameError::UnknownKind(kind)) => {
                        let err = Message::Error { reason: format!("unknown message kind {kind:?}; ignored") };
                        let _ = sink.send(WsMessage::Binary(err.encode().into())).await;
                        continue;
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let close = Message::Close { reason: reason.clone() };
                        let _ = sink.send(WsMessage::Binary(close.encode().into())).await;
                        let _ = sink.send(close_frame(&reason)).await;
                        break 'conn reason;
                    }
                };
                let (up, down) = chain.inbound(Item::Message(msg));
                for item in up {
                    let sent = match item {
                        Item::Message(msg) => core.send(CoreMsg::Input(Input::Message { conn, msg })).await,
                        // A remote command: give it a node-wide id, answer with the client's.
                        Item::Command { id: theirs, cmd } => {
                            let id = shared.next_command.fetch_add(1, Ordering::Relaxed);
                            commands.insert(id, theirs);
                            core.send(CoreMsg::Command { conn, id, cmd }).await
                        }
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        break 'conn "the node stopped".into();
                    }
                }
                for item in down {
                    if let Item::Message(m) = item {
                        let bytes = m.encode();
                        metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                            break 'conn "write failed".into();
                        }
                    }
                }
            }
            cmd = rx.recv() => {
                let item = match cmd {
                    None => break 'conn "the node stopped".into(),
                    Some(ConnCmd::Close(reason)) => {
                        let _ = sink.send(close_frame(&reason)).await;
                        break 'conn reason;
                    }
                    Some(ConnCmd::Item(Item::Reply { id, result })) => {
                        let Some(theirs) = commands.remove(&id) else { continue };
                        Item::Reply { id: theirs, result }
                    }
                    Some(ConnCmd::Item(item)) => item,
                };
                let (down, up) = chain.outbound(item);
                for item in up {
                    if let Item::Message(msg) = item {
                        let _ = core.send(CoreMsg::Input(Input::Message { conn, msg })).await;
                    }
                }
                for item in down {
                    if let Item::Message(m) = item {
                        let bytes = m.encode();
                        metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if sink.feed(WsMessage::Binary(bytes.into())).await.is_err() {
                            break 'conn "write failed".into();
                        }
                    }
                }
                // Batch: flush when nothing more is queued right now.
                if rx.is_empty() && sink.flush().await.is_err() {
                    break 'conn "write failed".into();
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ws_config.idle_timeout {
                    let reason = "idle timeout".to_owned();
                    let _ = sink.send(close_frame(&reason)).await;
                    break 'conn reason;
                }
                if sink.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break 'conn "write failed".into();
                }
            }
        }
    };
    tracing::info!(conn, ?remote, %reason, "connection closed");
    let _ = core.send(CoreMsg::Input(Input::Closed { conn })).await;
    shared.metrics.lock().expect("poisoned").remove(&conn);
}
