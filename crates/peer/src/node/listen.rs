//! Accepting connections: the connection cap, bounded handshakes (the HTTP request head of a
//! websocket upgrade or of a plain HTTP request), and backing off when `accept` fails
//! (`docs/design.md` §11.2). Each accepted connection carries one HTTP/1.1 request, answered by
//! [`super::http`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt as _;

use super::http::{Accepted, listener_router, upgrade, wants_websocket};
use super::tls::{ChannelBinding, ServerTls};
use super::{NodeError, Shared};
use crate::proto::Refusal;

/// How long answering one plain HTTP request (after its head arrived) may take at most:
/// `/metrics` or a static file to a client that reads slowly (`docs/design.md` §11.2).
pub(crate) const HTTP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one accepted connection: on a TLS listener (`tls`), first the TLS handshake, then one
/// HTTP request (answered with `Connection: close`), either a websocket upgrade (the connection
/// then runs as a peer connection, holding `permit` until it closes) or a plain request answered
/// by `router`. The TLS handshake and the request head together must arrive within the handshake
/// timeout and the handshake byte budget.
async fn serve_connection(
    shared: Arc<Shared>,
    router: Router,
    stream: TcpStream,
    peer_addr: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let ws = shared.config.ws;
    let deadline = tokio::time::Instant::now() + ws.handshake_timeout;
    let Some(acceptor) = tls else {
        let lift = Arc::new(AtomicBool::new(false));
        let (stream, exceeded) = HandshakeLimit::new(stream, ws.max_handshake_bytes, lift.clone());
        let accepted = Accepted { permit: Arc::new(permit), lift, binding: ChannelBinding::PLAIN };
        return serve_http(shared, router, stream, peer_addr, accepted, exceeded, deadline).await;
    };
    // What the client sends first: a TLS handshake record (0x16), or a plain HTTP request (a
    // letter), which is told to use TLS. A client that closes at once is no refusal (a TCP check).
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => {
            shared.refuse(Refusal::HandshakeTimeout);
            tracing::debug!(%peer_addr, "no TLS handshake in time; closed");
            return;
        }
        Ok(Err(_)) | Ok(Ok(0)) => return,
        Ok(Ok(_)) if first[0].is_ascii_alphabetic() => {
            shared.refuse(Refusal::HandshakeFailed);
            tracing::debug!(%peer_addr, "plain HTTP on the TLS port; answered 400");
            refuse_plain(stream, ws.max_handshake_bytes, deadline).await;
            return;
        }
        Ok(Ok(_)) => {}
    }
    let lift = Arc::new(AtomicBool::new(false));
    let (stream, exceeded) = HandshakeLimit::new(stream, ws.max_handshake_bytes, lift.clone());
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let why = if exceeded.load(Ordering::Relaxed) {
                Refusal::HandshakeTooLarge
            } else {
                Refusal::HandshakeFailed
            };
            shared.refuse(why);
            tracing::debug!(%peer_addr, refusal = %why, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.refuse(Refusal::HandshakeTimeout);
            tracing::debug!(%peer_addr, "TLS handshake not finished in time; closed");
            return;
        }
    };
    let binding = match ChannelBinding::of(stream.get_ref().1) {
        Ok(b) => b,
        Err(e) => {
            // Never after a finished handshake; refused rather than run without its binding.
            shared.refuse(Refusal::HandshakeFailed);
            tracing::warn!(%peer_addr, error = %e, "TLS exporter unavailable; closed");
            return;
        }
    };
    let accepted = Accepted { permit: Arc::new(permit), lift, binding };
    serve_http(shared, router, stream, peer_addr, accepted, exceeded, deadline).await;
}

/// Answers a plain HTTP request on a TLS port with a 400 naming the fix, after reading its head
/// (bounded by the byte budget and the deadline: closing with unread bytes would reset the
/// connection before the client reads the answer).
async fn refuse_plain(mut stream: TcpStream, budget: usize, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < budget {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        const BODY: &str = "this port speaks TLS: use wss:// (or https://)\n";
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout_at(deadline, answer).await;
}

/// Serves the one HTTP request of a connection (see [`serve_connection`]).
async fn serve_http<S>(
    shared: Arc<Shared>,
    router: Router,
    stream: S,
    peer_addr: std::net::SocketAddr,
    accepted: Accepted,
    exceeded: Arc<AtomicBool>,
    deadline: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = shared.config.ws;
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<()>();
    let head_tx = std::sync::Mutex::new(Some(head_tx));
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(tx) = head_tx.lock().expect("poisoned").take() {
            let _ = tx.send(());
        }
        req.extensions_mut().insert(ConnectInfo(peer_addr));
        req.extensions_mut().insert(accepted.clone());
        let shared = svc_shared.clone();
        let router = router.clone();
        async move {
            let mut response = if wants_websocket(req.headers()) {
                upgrade(shared, req).await
            } else {
                router.oneshot(req.map(Body::new)).await?
            };
            // One request per connection: hyper closes after a `Connection: close` response.
            // (Not `keep_alive(false)`: hyper would then overwrite the `Connection: Upgrade` of
            // a 101 answer.)
            if response.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Room above the byte budget, so the budget (counted as handshake-too-large) trips first.
    builder.max_buf_size(ws.max_handshake_bytes.saturating_add(8 << 10).max(8 << 10));
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        r = &mut conn => r,
        head = tokio::time::timeout_at(deadline, head_rx) => {
            if head.is_err() {
                shared.refuse(Refusal::HandshakeTimeout);
                tracing::debug!(%peer_addr, "request head not received in time; closed");
                return;
            }
            match tokio::time::timeout(HTTP_RESPONSE_TIMEOUT, &mut conn).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%peer_addr, "HTTP response not finished in time; closed");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        let why = if exceeded.load(Ordering::Relaxed) || e.is_parse_too_large() {
            Refusal::HandshakeTooLarge
        } else {
            Refusal::HandshakeFailed
        };
        shared.refuse(why);
        tracing::debug!(%peer_addr, refusal = %why, error = %e, "HTTP request or websocket handshake failed");
    }
}

pub(crate) async fn listen(
    shared: Arc<Shared>,
    addr: &str,
    tls: Option<ServerTls>,
) -> Result<std::net::SocketAddr, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen { addr: addr.to_owned(), source })?;
    let local =
        listener.local_addr().map_err(|source| NodeError::Listen { addr: addr.to_owned(), source })?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    shared.listening.lock().expect("poisoned").push(format!("{scheme}://{local}"));
    let acceptor = tls.map(|t| t.acceptor());
    let mut shutdown = shared.shutdown.subscribe();
    let router = listener_router(shared.clone(), shared.config.web.clone());
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
            tokio::spawn(serve_connection(
                shared.clone(),
                router.clone(),
                stream,
                peer_addr,
                permit,
                acceptor.clone(),
            ));
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

/// An accepted stream that fails reads past a byte budget until its `lifted` flag is set (by the
/// websocket upgrade): it bounds what a client may send before its websocket handshake is done,
/// and what a plain HTTP request may have.
#[derive(Debug)]
pub(crate) struct HandshakeLimit<S> {
    inner: S,
    remaining: usize,
    lifted: Arc<AtomicBool>,
    exceeded: Arc<AtomicBool>,
}

impl<S> HandshakeLimit<S> {
    fn new(inner: S, budget: usize, lifted: Arc<AtomicBool>) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        (HandshakeLimit { inner, remaining: budget, lifted, exceeded: exceeded.clone() }, exceeded)
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
        if let std::task::Poll::Ready(Ok(())) = &polled
            && !this.lifted.load(Ordering::Relaxed)
        {
            let read = buf.filled().len() - before;
            if read > this.remaining {
                this.exceeded.store(true, Ordering::Relaxed);
                return std::task::Poll::Ready(Err(std::io::Error::other("handshake request too large")));
            }
            this.remaining -= read;
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
