//! One websocket connection: a reader task and a writer task around the connection's
//! [`Connection`] pipeline (decode, middleware chain, encode).
//!
//! Reading and writing are separate tasks, so a connection whose writes wait for the remote (a
//! full TCP window) keeps reading: two peers sending to each other at full speed can never block
//! each other. The pipeline is shared by the two behind a mutex held only while an item passes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::tls::ChannelBinding;
use super::{ConnCmd, CoreMsg, Shared, register_metrics};
use crate::connection::Connection;
use crate::middleware::{ChainSpec, ConnMetrics, Item, Remote, standard_chain};
use crate::proto::{ConnId, Direction, Input, Refusal};

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
    pub(super) fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(64 << 10)
            .max_write_buffer_size(16 << 20)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_frame))
    }
}

/// The chain spec of the node's connections (a remote's principal and the gate are added by
/// [`run`] for authenticated connections).
pub(crate) fn chain_spec(shared: &Shared) -> ChainSpec<'_> {
    ChainSpec {
        middleware: &shared.config.middleware,
        remote_commands: shared.config.remote_commands,
        policy: shared.config.policy.as_ref(),
        ..ChainSpec::default()
    }
}

/// How the authentication handshake ended.
enum Authenticated {
    /// The remote proved this principal.
    Principal(crate::auth::Principal),
    /// A node this node dialed does not authenticate: it sent its plain `hello` (kept here for
    /// the core). A dialed node is trusted anyway (see `crate::auth::AuthGate::dialed`), so the
    /// link runs as with authentication off.
    Plain(Vec<u8>),
}

/// Runs the authentication handshake ([`crate::auth::handshake`]) on a fresh websocket, within
/// the handshake timeout: the remote's principal, or why it failed (the remote was told, and
/// the refusal counted).
async fn authenticate<S>(
    shared: &Shared,
    auth: &super::NodeAuth,
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    direction: Direction,
    binding: ChannelBinding,
) -> Result<Authenticated, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use crate::auth::{Handshake, Progress};
    // The TLS session's exporter, or zeros on plain ws (see the handshake's module docs).
    let exporter = *binding.exporter();
    let fail = |why: Refusal, detail: String| {
        shared.refuse(why);
        crate::proto::CloseReason::new(why, detail).to_string()
    };
    let (mut hs, hello) = Handshake::start(direction, auth.identity(), exporter)
        .map_err(|e| fail(Refusal::AuthFailed, e.to_string()))?;
    let exchange = async {
        ws.send(WsMessage::Binary(hello.into())).await.map_err(|e| format!("write failed: {e}"))?;
        loop {
            let frame = match ws.next().await {
                None => return Err("the remote closed the connection during authentication".to_owned()),
                Some(Err(e)) => return Err(format!("the connection was lost during authentication: {e}")),
                Some(Ok(WsMessage::Binary(b))) => b,
                Some(Ok(WsMessage::Close(f))) => {
                    let reason = f.map(|f| crate::proto::message::clip(&f.reason)).unwrap_or_default();
                    return Err(format!("closed by the remote during authentication: {reason}"));
                }
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(fail(
                        Refusal::AuthRequired,
                        "a text frame instead of the authentication handshake".into(),
                    ));
                }
                Some(Ok(_)) => continue,
            };
            match hs.receive(&frame) {
                Ok(Progress::Send(proof)) => ws
                    .send(WsMessage::Binary(proof.into()))
                    .await
                    .map_err(|e| format!("write failed: {e}"))?,
                Ok(Progress::Done(principal)) => return Ok(Authenticated::Principal(principal)),
                Err(e) if e.plain_hello && direction == Direction::Outbound => {
                    return Ok(Authenticated::Plain(frame.to_vec()));
                }
                Err(e) => return Err(fail(e.refusal, e.detail)),
            }
        }
    };
    match tokio::time::timeout(shared.config.ws.handshake_timeout, exchange).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(reason)) => {
            let _ = ws.send(close_frame(&reason)).await;
            Err(reason)
        }
        Err(_) => {
            let reason = fail(
                Refusal::HandshakeTimeout,
                format!("no authentication within {:?}", shared.config.ws.handshake_timeout),
            );
            let _ = ws.send(close_frame(&reason)).await;
            Err(reason)
        }
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

/// What the reader and the writer of one connection share.
struct Link {
    shared: Arc<Shared>,
    conn: ConnId,
    connection: Mutex<Connection>,
    metrics: Arc<ConnMetrics>,
    /// Bytes of messages queued in the outbox (see `NodeConfig::outbox_bytes`).
    queued: Arc<AtomicUsize>,
}

impl Link {
    /// Hands items to the core (waiting while its channel is full: backpressure). `Err` if the
    /// node stopped.
    async fn to_core(&self, items: Vec<Item>) -> Result<(), ()> {
        let core = &self.shared.core;
        for item in items {
            let msg = match item {
                Item::Message(msg) => CoreMsg::Input(Input::Message { conn: self.conn, msg }),
                Item::Command { id, cmd } => CoreMsg::Command { conn: self.conn, id, cmd },
                _ => continue,
            };
            core.send(msg).await.map_err(|_| ())?;
        }
        Ok(())
    }

    fn next_command(&self) -> u64 {
        self.shared.next_command.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why the writer stops when the reader has ended.
const READER_STOPPED: &str = "the reader stopped";

/// Runs one websocket connection until it closes. `binding` is its transport's (the TLS
/// exporter, or [`ChannelBinding::PLAIN`]): registered before anything is read, so whatever runs
/// the connection finds it from the first message on ([`super::Node::channel_binding`]).
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    remote: Remote,
    direction: Direction,
    binding: ChannelBinding,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut first_frame = None;
    let principal = match &shared.config.auth {
        None => None,
        Some(auth) => match authenticate(&shared, auth, &mut ws, direction, binding).await {
            Ok(Authenticated::Principal(principal)) => {
                tracing::debug!(remote = %remote, %principal, "authenticated");
                if direction == Direction::Outbound && !auth.caps.is_empty() {
                    let frame = crate::auth::cap::caps_message(&auth.caps).encode();
                    if ws.send(WsMessage::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                Some(principal)
            }
            Ok(Authenticated::Plain(hello)) => {
                tracing::info!(remote = %remote, "the dialed node does not authenticate: linked without authentication");
                first_frame = Some(hello);
                None
            }
            Err(reason) => {
                // A dialed link failing is news for the operator; a client that cannot
                // authenticate is routine (it is counted).
                if direction == Direction::Outbound {
                    tracing::warn!(remote = %remote, %reason, "authentication failed");
                } else {
                    tracing::debug!(remote = %remote, %reason, "authentication failed");
                }
                return;
            }
        },
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.bindings.lock().expect("poisoned").insert(conn, binding);
    let metrics = register_metrics(&shared, conn);
    let counter: crate::auth::gate::RefusalCounter = {
        let shared = shared.clone();
        Arc::new(move |why| shared.refuse(why))
    };
    let mut spec = chain_spec(&shared);
    spec.principal = principal.as_ref();
    spec.auth = shared.config.auth.as_ref().map(|a| &a.policy);
    spec.count = Some(&counter);
    spec.dialed = direction == Direction::Outbound;
    let chain = standard_chain(conn, &remote, metrics.clone(), spec);
    let (tx, rx) = mpsc::channel::<ConnCmd>(shared.config.outbox);
    let queued = Arc::new(AtomicUsize::new(0));
    let core = shared.core.clone();
    let attach = CoreMsg::Attach { conn, tx: tx.clone(), remote: remote.clone(), queued: queued.clone() };
    if core.send(attach).await.is_err()
        || core.send(CoreMsg::Input(Input::Connected { conn, direction })).await.is_err()
    {
        super::retire_metrics(&shared, conn);
        return;
    }
    tracing::debug!(conn, remote = %remote, ?direction, tls = binding.is_tls(), "connection opened");
    let link = Arc::new(Link {
        shared: shared.clone(),
        conn,
        connection: Mutex::new(Connection::new(chain)),
        metrics,
        queued,
    });
    // The hello a dialed node without authentication sent during the handshake: the core's.
    if let Some(frame) = first_frame {
        link.metrics.bytes_in.fetch_add(frame.len() as u64, Ordering::Relaxed);
        let inbound = link.connection.lock().expect("poisoned").receive_frame(&frame, || link.next_command());
        if link.to_core(inbound.to_core).await.is_err() {
            return;
        }
    }
    let (sink, stream) = ws.split();
    // Frames the reader must send itself (answers injected by the chain, close reasons) go to the
    // writer on their own small channel, so they never wait behind the core's outbox.
    let (wire_tx, wire_rx) = mpsc::channel::<WsMessage>(64);
    let mut writer = tokio::spawn(write_loop(link.clone(), sink, rx, wire_rx));
    let mut reader = tokio::spawn(read_loop(link, stream, wire_tx));
    // If this future is dropped before the tasks end (`Node::disconnect` aborts the supervisor of
    // a dialed link), the tasks would live on with the socket: end them, and tell the core.
    let mut teardown = Teardown {
        tasks: [reader.abort_handle(), writer.abort_handle()],
        core: core.clone(),
        shared: shared.clone(),
        conn,
        armed: true,
    };
    // Whichever side ends first ends the connection (the writer flushes a close frame first).
    // Biased to the reader: when it ends (e.g. on the remote's close frame), the writer ends
    // right after it ("the reader stopped"), and the reader's reason is the one to report.
    let reason = tokio::select! {
        biased;
        r = &mut reader => {
            let reason = r.unwrap_or_else(|e| format!("reader failed: {e}"));
            // Let the writer send what the reader queued (e.g. a close frame), then stop it.
            drop(tx);
            if tokio::time::timeout(Duration::from_millis(200), &mut writer).await.is_err() {
                writer.abort();
            }
            reason
        }
        w = &mut writer => {
            let w = w.unwrap_or_else(|e| format!("writer failed: {e}"));
            if w == READER_STOPPED {
                // Both ended at once, the writer polled first: the reader's reason, if it has one.
                match tokio::time::timeout(Duration::from_millis(200), &mut reader).await {
                    Ok(Ok(r)) => r,
                    _ => {
                        reader.abort();
                        w
                    }
                }
            } else {
                reader.abort();
                w
            }
        }
    };
    // Incoming connections open and close routinely (every command line call is one): DEBUG.
    // A link this node dialed (`connect`) dropping is news for the operator: INFO. A failed
    // write (the network or the remote misbehaved): WARN.
    if reason.starts_with("write failed") {
        tracing::warn!(conn, remote = %remote, %reason, "connection closed");
    } else if direction == Direction::Outbound {
        tracing::info!(conn, remote = %remote, %reason, "connection closed");
    } else {
        tracing::debug!(conn, remote = %remote, %reason, "connection closed");
    }
    teardown.armed = false;
    let _ = core.send(CoreMsg::Input(Input::Closed { conn })).await;
    super::retire_metrics(&shared, conn);
}

/// See [`run`]: ends a connection whose `run` was dropped midway.
struct Teardown {
    tasks: [tokio::task::AbortHandle; 2],
    core: mpsc::Sender<CoreMsg>,
    shared: Arc<Shared>,
    conn: crate::proto::ConnId,
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for task in &self.tasks {
            task.abort();
        }
        tracing::debug!(conn = self.conn, "connection closed: its link was dropped (disconnect)");
        let closed = CoreMsg::Input(Input::Closed { conn: self.conn });
        if let Err(mpsc::error::TrySendError::Full(closed)) = self.core.try_send(closed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let core = self.core.clone();
            runtime.spawn(async move {
                let _ = core.send(closed).await;
            });
        }
        super::retire_metrics(&self.shared, self.conn);
    }
}

/// The next binary frame, or why the connection ends (after telling the remote where it can be
/// told: idle timeout, a bad websocket frame, a text frame).
async fn next_frame<R>(link: &Link, stream: &mut R, wire: &mpsc::Sender<WsMessage>) -> Result<Vec<u8>, String>
where
    R: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let refused = |why: Refusal, detail: String| async move {
            link.shared.refuse(why);
            let reason = crate::proto::CloseReason::new(why, detail).to_string();
            let _ = wire.send(close_frame(&reason)).await;
            Err(reason)
        };
        let frame = match tokio::time::timeout(link.shared.config.ws.idle_timeout, stream.next()).await {
            Err(_) => return refused(Refusal::IdleTimeout, "idle timeout".into()).await,
            Ok(frame) => frame,
        };
        match frame {
            None => return Err("the remote closed the connection".into()),
            // The socket ended or failed without a closing handshake: the network, or a remote
            // that went away; not a bad frame.
            Some(Err(
                e @ (WsError::Io(_)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            )) => return Err(format!("the connection was lost: {e}")),
            // E.g. a frame over the size limit: tell the remote before dropping it.
            Some(Err(e)) => return refused(Refusal::BadWebsocketFrame, format!("bad frame: {e}")).await,
            Some(Ok(WsMessage::Binary(bytes))) => return Ok(bytes.into()),
            Some(Ok(WsMessage::Close(frame))) => {
                let reason = frame.map(|f| crate::proto::message::clip(&f.reason)).unwrap_or_default();
                return Err(format!("closed by the remote: {reason}"));
            }
            Some(Ok(WsMessage::Text(_))) => {
                return refused(Refusal::TextFrame, "text frames are not part of the protocol".into()).await;
            }
            Some(Ok(_)) => continue, // ping / pong
        }
    }
}

/// Reads frames, runs them through the pipeline and hands them to the core. Returns why it
/// stopped.
async fn read_loop<R>(link: Arc<Link>, mut stream: R, wire: mpsc::Sender<WsMessage>) -> String
where
    R: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let bytes = match next_frame(&link, &mut stream, &wire).await {
            Ok(bytes) => bytes,
            Err(reason) => return reason,
        };
        link.metrics.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let inbound = link.connection.lock().expect("poisoned").receive_frame(&bytes, || link.next_command());
        if let Some(why) = inbound.refused {
            link.shared.refuse(why);
        }
        for item in inbound.to_remote {
            if let Item::Message(m) = item
                && wire.send(WsMessage::Binary(m.encode().into())).await.is_err()
            {
                return "the writer stopped".into();
            }
        }
        if let Some((_, reason)) = inbound.close {
            let _ = wire.send(close_frame(&reason)).await;
            return reason;
        }
        if link.to_core(inbound.to_core).await.is_err() {
            return "the node stopped".into();
        }
    }
}

/// Drains the outbox (through the pipeline) and the reader's frames into the socket, feeding
/// frames and flushing when nothing more is queued; sends keep-alive pings. Returns why it
/// stopped.
async fn write_loop<W>(
    link: Arc<Link>,
    mut sink: W,
    mut rx: mpsc::Receiver<ConnCmd>,
    mut wire: mpsc::Receiver<WsMessage>,
) -> String
where
    W: futures::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut ping = tokio::time::interval(link.shared.config.ws.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            frame = wire.recv() => {
                let Some(frame) = frame else { return READER_STOPPED.into() };
                let closing = matches!(frame, WsMessage::Close(_));
                if let WsMessage::Binary(b) = &frame {
                    link.metrics.bytes_out.fetch_add(b.len() as u64, Ordering::Relaxed);
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
                    Some(ConnCmd::Item(item, size)) => {
                        link.queued.fetch_sub(size, Ordering::Relaxed);
                        item
                    }
                };
                let flow = link.connection.lock().expect("poisoned").send(item);
                if link.to_core(flow.up).await.is_err() {
                    return "the node stopped".into();
                }
                for item in flow.down {
                    if let Item::Message(m) = item {
                        let bytes = m.encode();
                        // A message over the frame limit would be refused by the remote (and by
                        // the write buffer): never sent, so never retried in a loop.
                        if bytes.len() > link.shared.config.ws.max_message {
                            link.shared.refuse(Refusal::OversizeOutput);
                            tracing::warn!(conn = link.conn, kind = m.kind(), bytes = bytes.len(), max = link.shared.config.ws.max_message, "not sending a message over the frame limit");
                            continue;
                        }
                        link.metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if let Err(e) = sink.feed(WsMessage::Binary(bytes.into())).await {
                            return format!("write failed: {e}");
                        }
                    }
                }
                // Batch: flush when nothing more is queued right now.
                if rx.is_empty() && let Err(e) = sink.flush().await {
                    return format!("write failed: {e}");
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
