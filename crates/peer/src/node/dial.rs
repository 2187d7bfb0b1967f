//! Outgoing connections: dialing with a bounded handshake, and the supervisor that keeps a
//! connection up with backoff and jitter.

use std::sync::Arc;

use super::tls::{ChannelBinding, ClientTls, MaybeTls};
use super::ws::run;
use super::{NodeError, Shared};
use crate::middleware::Remote;
use crate::proto::Direction;

pub(crate) async fn connect(shared: Arc<Shared>, url: &str) -> Result<(), NodeError> {
    let ws = dial(&shared, url).await.map_err(|reason| NodeError::Connect { url: url.to_owned(), reason })?;
    supervise(shared, url, Some(ws));
    Ok(())
}

/// One outgoing connection attempt (TCP, TLS for `wss://`, the websocket handshake), bounded as a
/// whole by the handshake timeout (a server that accepts and never answers must not hold the
/// supervisor forever).
async fn dial(shared: &Shared, url: &str) -> Result<(Ws, ChannelBinding), String> {
    let ws = &shared.config.ws;
    let tls = shared.client_tls();
    let attempt = handshake(url, ws.tungstenite(), &tls);
    match tokio::time::timeout(ws.handshake_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no websocket handshake within {:?}", ws.handshake_timeout)),
    }
}

/// The byte stream to `url` ([`super::tls::connect_stream`]), then the websocket handshake on it.
/// Unbounded: callers bound it.
pub(crate) async fn handshake(
    url: &str,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    tls: &ClientTls,
) -> Result<(Ws, ChannelBinding), String> {
    let (stream, binding) = super::tls::connect_stream(url, tls).await?;
    match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _)) => Ok((ws, binding)),
        Err(e) => Err(handshake_failure(e)),
    }
}

/// One sentence for a failed websocket handshake; an HTTP answer is quoted (the node's answer to a
/// plain request on a TLS port says to use wss://).
fn handshake_failure(e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).trim().to_owned())
                .filter(|b| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default();
            format!("the server answered HTTP {}{body}", response.status())
        }
        other => other.to_string(),
    }
}

/// Like [`connect`], but returns at once: the first connection is made in the background and
/// retried with backoff like every later one (a peer that is down at start is normal).
pub(crate) fn connect_retrying(shared: Arc<Shared>, url: &str) -> Result<(), NodeError> {
    super::tls::target(url).map_err(|reason| NodeError::Connect { url: url.to_owned(), reason })?;
    supervise(shared, url, None);
    Ok(())
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<MaybeTls>;

/// Keeps the outgoing connection to `url` up: runs it, and re-establishes it with backoff whenever
/// it drops (or, with no `first` connection, until it is first made), until the node shuts down or
/// [`super::Node::disconnect`].
fn supervise(shared: Arc<Shared>, url: &str, first: Option<(Ws, ChannelBinding)>) {
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
            if let Some((ws, binding)) = ws.take() {
                delay = backoff.initial;
                run(shared.clone(), ws, Remote::Peer(url_owned.clone()), Direction::Outbound, binding).await;
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
