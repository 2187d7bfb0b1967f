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
use crate::proto::{ConnId, Direction, FrameError, Input, Message, Refusal};

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
    /// The websocket handshake (the HTTP upgrade, in and out) must finish within this time, or
    /// the connection is closed ([`Refusal::HandshakeTimeout`]). 10 s by default.
    pub handshake_timeout: Duration,
    /// Bytes an incoming handshake request may have at most ([`Refusal::HandshakeTooLarge`]).
    /// 16 KiB by default.
    pub max_handshake_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame: 16 << 20,
            max_message: 16 << 20,
            read_buffer: 16 << 10,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_handshake_bytes: 16 << 10,
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
        let shared = task_shared;
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let (stream, peer_addr) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    // E.g. out of file descriptors: retrying at once would spin. Established
                    // connections are served meanwhile (they run in their own tasks).
                    shared.refuse(Refusal::AcceptFailed);
                    let delay = backoff.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            // Every incoming connection, from accept to close, holds one of `max_connections`
            // permits; over the cap it is refused at once.
            let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                shared.refuse(Refusal::MaxConnections);
                refuse_busy(&stream);
                tracing::debug!(%peer_addr, "connection refused: max_connections reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let ws = &shared.config.ws;
                let (stream, exceeded) = HandshakeLimit::new(stream, ws.max_handshake_bytes);
                let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(ws.tungstenite()));
                match tokio::time::timeout(ws.handshake_timeout, handshake).await {
                    Ok(Ok(mut ws)) => {
                        ws.get_mut().lift();
                        run(shared, ws, Remote::Peer(peer_addr.to_string()), Direction::Inbound).await
                    }
                    Ok(Err(e)) => {
                        let why = if exceeded.load(Ordering::Relaxed) {
                            Refusal::HandshakeTooLarge
                        } else {
                            Refusal::HandshakeFailed
                        };
                        shared.refuse(why);
                        tracing::debug!(%peer_addr, refusal = %why, error = %e, "websocket handshake failed");
                    }
                    Err(_) => {
                        shared.refuse(Refusal::HandshakeTimeout);
                        tracing::debug!(%peer_addr, "websocket handshake not finished in time; closed");
                    }
                }
            });
        }
    });
    shared.tasks.lock().expect("poisoned").push(task);
    Ok(local)
}

/// Tells a client over the connection cap why it is refused (an HTTP 503, written only if the
/// socket takes it at once: nothing waits for a refused client) and closes the connection.
fn refuse_busy(stream: &tokio::net::TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 21\r\n\r\ntoo many connections\n",
    );
}

/// The delay after a failed `accept`: 5 ms doubling to 1 s, reset by a successful one; the
/// failure is logged at most once per 10 s (with how many were not logged).
#[derive(Debug)]
struct AcceptBackoff {
    delay: Duration,
    last_log: Option<std::time::Instant>,
    unlogged: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { delay: Duration::from_millis(5), last_log: None, unlogged: 0 }
    }
}

impl AcceptBackoff {
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn reset(&mut self) {
        self.delay = Duration::from_millis(5);
    }

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        let now = std::time::Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY) {
            tracing::warn!(error = %e, retry_in = ?self.delay, failures_not_logged = self.unlogged, "accept failed; backing off");
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }
}

/// An accepted stream that fails reads past a byte budget until [`HandshakeLimit::lift`] is
/// called: it bounds what a client may send before its websocket handshake is done.
#[derive(Debug)]
pub(crate) struct HandshakeLimit<S> {
    inner: S,
    remaining: Option<usize>,
    exceeded: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> HandshakeLimit<S> {
    fn new(inner: S, budget: usize) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let exceeded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (HandshakeLimit { inner, remaining: Some(budget), exceeded: exceeded.clone() }, exceeded)
    }

    /// Ends the budget (the handshake is done).
    fn lift(&mut self) {
        self.remaining = None;
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HandshakeLimit<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Some(remaining), std::task::Poll::Ready(Ok(()))) = (this.remaining.as_mut(), &polled) {
            let read = buf.filled().len() - before;
            if read > *remaining {
                this.exceeded.store(true, Ordering::Relaxed);
                return std::task::Poll::Ready(Err(std::io::Error::other("handshake request too large")));
            }
            *remaining -= read;
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HandshakeLimit<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub(crate) async fn connect(shared: Arc<Shared>, url: &str) -> Result<(), NodeError> {
    let ws = dial(&shared, url).await.map_err(|reason| NodeError::Connect { url: url.to_owned(), reason })?;
    supervise(shared, url, Some(ws));
    Ok(())
}

/// One outgoing connection attempt, bounded by the handshake timeout (a server that accepts and
/// never answers must not hold the supervisor forever).
async fn dial(shared: &Shared, url: &str) -> Result<Ws, String> {
    let ws = &shared.config.ws;
    let attempt = tokio_tungstenite::connect_async_with_config(url, Some(ws.tungstenite()), true);
    match tokio::time::timeout(ws.handshake_timeout, attempt).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no websocket handshake within {:?}", ws.handshake_timeout)),
    }
}

/// Like [`connect`], but returns at once: the first connection is made in the background and
/// retried with backoff like every later one (a peer that is down at start is normal).
pub(crate) fn connect_retrying(shared: Arc<Shared>, url: &str) -> Result<(), NodeError> {
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
        .map_err(|e| NodeError::Connect { url: url.to_owned(), reason: e.to_string() })?;
    if !matches!(request.uri().scheme_str(), Some("ws")) {
        return Err(NodeError::Connect {
            url: url.to_owned(),
            reason: "only ws:// URLs are supported".into(),
        });
    }
    supervise(shared, url, None);
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Keeps the outgoing connection to `url` up: runs it, and re-establishes it with backoff whenever
/// it drops (or, with no `first` connection, until it is first made), until the node shuts down or
/// [`super::Node::disconnect`].
fn supervise(shared: Arc<Shared>, url: &str, first: Option<Ws>) {
    let url_owned = url.to_owned();
    let task_shared = shared.clone();
    let supervisor = tokio::spawn(async move {
        let shared = task_shared;
        let backoff = shared.config.reconnect;
        let mut ws = first;
        let mut delay = backoff.initial;
        let mut shutdown = shared.shutdown.subscribe();
        let mut attempt: u64 = 0;
        // Without a first connection, try at once.
        let mut wait = ws.is_some();
        loop {
            if let Some(ws) = ws.take() {
                delay = backoff.initial;
                run(shared.clone(), ws, Remote::Peer(url_owned.clone()), Direction::Outbound).await;
            }
            if *shutdown.borrow() {
                return;
            }
            if wait {
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
            }
            wait = true;
            match dial(&shared, &url_owned).await {
                Ok(new_ws) => ws = Some(new_ws),
                Err(e) => {
                    tracing::warn!(url = %url_owned, error = %e, next_attempt_in = ?delay, "connecting failed; retrying")
                }
            }
        }
    });
    if let Some(old) = shared.outgoing.lock().expect("poisoned").insert(url.to_owned(), supervisor) {
        old.abort();
    }
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
///
/// Reading and writing are separate tasks, so a connection whose writes wait for the remote (a full
/// TCP window) keeps reading: two peers sending to each other at full speed can never block each
/// other. The middleware chain is shared between the two (a mutex held only while items pass
/// through it).
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
    let chain = Arc::new(std::sync::Mutex::new(chain(&shared, conn, &remote, metrics.clone())));
    let (tx, rx) = mpsc::channel::<ConnCmd>(shared.config.outbox);
    let core = shared.core.clone();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attach = CoreMsg::Attach { conn, tx: tx.clone(), remote: remote.clone(), queued: queued.clone() };
    if core.send(attach).await.is_err()
        || core.send(CoreMsg::Input(Input::Connected { conn, direction })).await.is_err()
    {
        return;
    }
    let (sink, stream) = ws.split();
    // Frames the reader must send itself (answers injected by the chain, close reasons) go to the
    // writer on their own small channel, so they never wait behind the core's outbox.
    let (wire_tx, wire_rx) = mpsc::channel::<WsMessage>(64);
    // Remote commands in flight: node-wide id -> the client's id.
    let commands = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<u64, u64>::new()));
    let mut writer = tokio::spawn(write_loop(
        shared.clone(),
        conn,
        sink,
        rx,
        wire_rx,
        chain.clone(),
        commands.clone(),
        metrics.clone(),
        queued,
    ));
    let mut reader = tokio::spawn(read_loop(shared.clone(), conn, stream, wire_tx, chain, commands, metrics));
    // Whichever side ends first ends the connection (the writer flushes a close frame first).
    let reason = tokio::select! {
        r = &mut reader => {
            let reason = r.unwrap_or_else(|e| format!("reader failed: {e}"));
            // Let the writer send what the reader queued (e.g. a close frame), then stop it.
            drop(tx);
            if tokio::time::timeout(std::time::Duration::from_millis(200), &mut writer).await.is_err() {
                writer.abort();
            }
            reason
        }
        w = &mut writer => {
            reader.abort();
            w.unwrap_or_else(|e| format!("writer failed: {e}"))
        }
    };
    tracing::info!(conn, ?remote, %reason, "connection closed");
    let _ = core.send(CoreMsg::Input(Input::Closed { conn })).await;
    shared.metrics.lock().expect("poisoned").remove(&conn);
}

type Chained = Arc<std::sync::Mutex<Chain>>;
type Commands = Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>;

/// Reads frames, runs them through the chain and hands them to the core. Returns why it stopped.
async fn read_loop<R>(
    shared: Arc<Shared>,
    conn: ConnId,
    mut stream: R,
    wire: mpsc::Sender<WsMessage>,
    chain: Chained,
    commands: Commands,
    metrics: Arc<ConnMetrics>,
) -> String
where
    R: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let core = shared.core.clone();
    let idle = shared.config.ws.idle_timeout;
    loop {
        let frame = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                shared.refuse(Refusal::IdleTimeout);
                let reason = "idle timeout".to_owned();
                let _ = wire.send(close_frame(&reason)).await;
                return reason;
            }
            Ok(frame) => frame,
        };
        let bytes = match frame {
            None => return "the remote closed the connection".into(),
            Some(Err(e)) => {
                // E.g. a frame over the size limit: tell the remote before dropping it.
                shared.refuse(Refusal::BadWebsocketFrame);
                let reason = format!("bad frame: {e}");
                let _ = wire.send(close_frame(&reason)).await;
                return reason;
            }
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            Some(Ok(WsMessage::Close(frame))) => {
                return format!(
                    "closed by the remote: {}",
                    frame.map(|f| crate::proto::message::clip(&f.reason)).unwrap_or_default()
                );
            }
            Some(Ok(WsMessage::Text(_))) => {
                shared.refuse(Refusal::TextFrame);
                let reason = "text frames are not part of the protocol".to_owned();
                let _ = wire.send(close_frame(&reason)).await;
                return reason;
            }
            Some(Ok(_)) => continue, // ping / pong
        };
        metrics.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let msg = match Message::decode(&bytes) {
            Ok(msg) => msg,
            Err(FrameError::UnknownKind(kind)) => {
                shared.refuse(Refusal::UnknownKind);
                let err = Message::Error { reason: format!("unknown message kind {kind:?}; ignored") };
                let _ = wire.send(WsMessage::Binary(err.encode().into())).await;
                continue;
            }
            Err(e) => {
                shared.refuse(match e {
                    FrameError::UnsupportedVersion(_) => Refusal::UnsupportedVersion,
                    _ => Refusal::MalformedFrame,
                });
                let reason = e.to_string();
                let close = Message::Close { reason: reason.clone() };
                let _ = wire.send(WsMessage::Binary(close.encode().into())).await;
                let _ = wire.send(close_frame(&reason)).await;
                return reason;
            }
        };
        let (up, down) = chain.lock().expect("poisoned").inbound(Item::Message(msg));
        for item in up {
            let sent = match item {
                Item::Message(msg) => core.send(CoreMsg::Input(Input::Message { conn, msg })).await,
                // A remote command: give it a node-wide id, answer with the client's.
                Item::Command { id: theirs, cmd } => {
                    let id = shared.next_command.fetch_add(1, Ordering::Relaxed);
                    commands.lock().expect("poisoned").insert(id, theirs);
                    core.send(CoreMsg::Command { conn, id, cmd }).await
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return "the node stopped".into();
            }
        }
        for item in down {
            if let Item::Message(m) = item
                && wire.send(WsMessage::Binary(m.encode().into())).await.is_err()
            {
                return "the writer stopped".into();
            }
        }
    }
}

/// Drains the outbox (through the chain) and the reader's frames into the socket, feeding frames
/// and flushing when nothing more is queued; sends keep-alive pings. Returns why it stopped.
#[allow(clippy::too_many_arguments)]
async fn write_loop<W>(
    shared: Arc<Shared>,
    conn: ConnId,
    mut sink: W,
    mut rx: mpsc::Receiver<ConnCmd>,
    mut wire: mpsc::Receiver<WsMessage>,
    chain: Chained,
    commands: Commands,
    metrics: Arc<ConnMetrics>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) -> String
where
    W: futures::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let core = shared.core.clone();
    let mut ping = tokio::time::interval(shared.config.ws.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            frame = wire.recv() => {
                let Some(frame) = frame else { return "the reader stopped".into() };
                let closing = matches!(frame, WsMessage::Close(_));
                if let WsMessage::Binary(b) = &frame {
                    metrics.bytes_out.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                if sink.send(frame).await.is_err() {
                    return "write failed".into();
                }
                if closing {
                    return "closed".into();
                }
            }
            cmd = rx.recv() => {
                let item = match cmd {
                    None => return "the node stopped".into(),
                    Some(ConnCmd::Close(reason)) => {
                        let _ = sink.send(close_frame(&reason)).await;
                        return reason;
                    }
                    Some(ConnCmd::Item(Item::Reply { id, result })) => {
                        let Some(theirs) = commands.lock().expect("poisoned").remove(&id) else { continue };
                        Item::Reply { id: theirs, result }
                    }
                    Some(ConnCmd::Item(item)) => {
                        if let Item::Message(m) = &item {
                            queued.fetch_sub(m.approx_size(), Ordering::Relaxed);
                        }
                        item
                    }
                };
                let (down, up) = chain.lock().expect("poisoned").outbound(item);
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
                            return "write failed".into();
                        }
                    }
                }
                // Batch: flush when nothing more is queued right now.
                if rx.is_empty() && sink.flush().await.is_err() {
                    return "write failed".into();
                }
            }
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    return "write failed".into();
                }
            }
        }
    }
}
