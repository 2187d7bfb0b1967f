//! Outgoing connections: dialing with a bounded handshake, and the supervisor that keeps a
//! connection up with backoff and jitter.

use std::sync::Arc;

use super::ws::run;
use super::{NodeError, Shared};
use crate::middleware::Remote;
use crate::proto::Direction;

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
