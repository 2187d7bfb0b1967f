//! Accepting connections: the connection cap, bounded handshakes, and backing off when `accept`
//! fails (`docs/design.md` §11.2).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;

use super::ws::run;
use super::{NodeError, Shared};
use crate::middleware::Remote;
use crate::proto::{Direction, Refusal};

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
