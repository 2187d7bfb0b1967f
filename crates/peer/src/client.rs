//! A remote stage client: runs stage commands on a node over a websocket, `ws://` or `wss://`
//! (the node must enable `NodeConfig::remote_commands`). The command line's data commands use it.
//!
//! The client says hello like a peer, never subscribes, and sends commands as custom messages
//! (see [`crate::middleware::RemoteStage`]); each reply comes after the node made the command's
//! writes durable.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::middleware::{COMMAND_TAG, REPLY_TAG};
use crate::proto::{Command, Hello, Message, PROTOCOL_VERSION, Reply, StageError};

use crate::node::Ws;
use crate::node::tls::{ChannelBinding, ClientTls};

/// Why a remote call failed (apart from the command's own error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// The node closed the connection.
    #[error("the node closed the connection: {0}")]
    Closed(String),
    /// The node answered with something that is not a reply.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// How long [`RemoteClient::connect`] waits for the connection (TCP, TLS and the websocket
/// handshake).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection to a node that runs stage commands there.
pub struct RemoteClient {
    ws: Ws,
    next_id: u64,
    binding: ChannelBinding,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient").field("next_id", &self.next_id).finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// Connects to the node at `url` (`ws://host:port`, or `wss://host:port` verified against the
    /// public roots, [`ClientTls::webpki_roots`]) as `client_id`.
    pub async fn connect(url: &str, client_id: &str) -> Result<RemoteClient, ClientError> {
        Self::connect_with(url, client_id, &ClientTls::webpki_roots()).await
    }

    /// Connects to the node at `url` as `client_id`; a `wss://` node's certificate is verified
    /// with `tls` (e.g. [`ClientTls::with_ca_pem`]). A certificate that cannot be verified is a
    /// [`ClientError::Connect`] whose reason says which check failed.
    pub async fn connect_with(
        url: &str,
        client_id: &str,
        tls: &ClientTls,
    ) -> Result<RemoteClient, ClientError> {
        // tungstenite's default limits, as before TLS (the node bounds what it sends).
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        // Bounded: a server that accepts and never answers must not hang the client.
        let (mut ws, binding) =
            tokio::time::timeout(CONNECT_TIMEOUT, crate::node::handshake(url, config, tls))
                .await
                .map_err(|_| ClientError::Connect {
                    url: url.to_owned(),
                    reason: format!("no websocket handshake within {CONNECT_TIMEOUT:?}"),
                })?
                .map_err(|reason| ClientError::Connect { url: url.to_owned(), reason })?;
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer_id: client_id.to_owned(),
            features: vec![],
        });
        ws.send(WsMessage::Binary(hello.encode().into()))
            .await
            .map_err(|e| ClientError::Connect { url: url.to_owned(), reason: e.to_string() })?;
        Ok(RemoteClient { ws, next_id: 1, binding })
    }

    /// The connection's channel binding: its TLS exporter (the node sees the same one), or
    /// zeros on `ws://`.
    pub fn channel_binding(&self) -> ChannelBinding {
        self.binding
    }

    /// Runs a command on the node.
    pub async fn call(&mut self, cmd: Command) -> Result<Result<Reply, StageError>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let data = rmp_serde::to_vec_named(&(id, cmd)).expect("commands encode");
        let msg = Message::Custom { tag: COMMAND_TAG.into(), data: data.into() };
        self.ws
            .send(WsMessage::Binary(msg.encode().into()))
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        loop {
            let frame = match self.ws.next().await {
                None => return Err(ClientError::Closed("connection ended".into())),
                Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                Some(Ok(WsMessage::Binary(bytes))) => bytes,
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(ClientError::Closed(frame.map(|f| f.reason.to_string()).unwrap_or_default()));
                }
                Some(Ok(_)) => continue,
            };
            match Message::decode(&frame) {
                Ok(Message::Custom { tag, data }) if tag == REPLY_TAG => {
                    let (rid, result): (u64, Result<Reply, StageError>) =
                        crate::proto::message::from_msgpack(&data).map_err(ClientError::Protocol)?;
                    if rid == id {
                        return Ok(result);
                    }
                }
                Ok(Message::Close { reason }) => return Err(ClientError::Closed(reason)),
                Ok(Message::Error { reason }) => return Err(ClientError::Protocol(reason)),
                // Hello, acknowledgements, anything else the node sends a peer: not for us.
                Ok(_) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
