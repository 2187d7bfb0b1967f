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

/// Waits for the node's first frame: a node with authentication on opens with `auth-hello`, and
/// the handshake runs (proving `user`, or nothing with a fresh node key); a node without sends its
/// plain `hello` first, and nothing is proved. Returns the node's key if it authenticated.
async fn authenticate(
    ws: &mut Ws,
    user: Option<&crate::auth::SecretKey>,
    exporter: [u8; crate::auth::handshake::EXPORTER_LEN],
) -> Result<Option<crate::auth::PublicKey>, String> {
    use crate::auth::{Handshake, Identity, Progress};
    let identity = Identity {
        node: crate::auth::SecretKey::generate().map_err(|e| e.to_string())?,
        user: user.cloned(),
    };
    let (mut hs, hello) =
        Handshake::start(crate::proto::Direction::Outbound, identity, exporter).map_err(|e| e.to_string())?;
    let mut first = true;
    loop {
        let frame = match ws.next().await {
            None => return Err("the node closed the connection".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(format!(
                    "the node closed the connection: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                ));
            }
            Some(Ok(_)) => continue,
        };
        match hs.receive(&frame) {
            // The node does not authenticate: its hello is for the core, which does not need it.
            Err(e) if first && e.plain_hello => return Ok(None),
            Err(e) => return Err(format!("authentication failed: {e}")),
            Ok(Progress::Send(proof)) => {
                ws.send(WsMessage::Binary(hello.clone().into())).await.map_err(|e| e.to_string())?;
                ws.send(WsMessage::Binary(proof.into())).await.map_err(|e| e.to_string())?;
            }
            Ok(Progress::Done(principal)) => return Ok(Some(principal.node)),
        }
        first = false;
    }
}

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
    /// public roots, [`ClientTls::webpki_roots`]) as `client_id`, without a user key (a node with
    /// authentication on sees an anonymous principal).
    pub async fn connect(url: &str, client_id: &str) -> Result<RemoteClient, ClientError> {
        RemoteClient::open(url, client_id, &ClientTls::webpki_roots(), None).await
    }

    /// Connects to the node at `url` as `client_id`, proving `user` if the node authenticates
    /// (see [`crate::auth::handshake`]): its commands then run as that user. A node with
    /// authentication off accepts the connection as before (nothing is proved). `wss://` is
    /// verified against the public roots.
    pub async fn connect_as(
        url: &str,
        client_id: &str,
        user: Option<&crate::auth::SecretKey>,
    ) -> Result<RemoteClient, ClientError> {
        RemoteClient::open(url, client_id, &ClientTls::webpki_roots(), user).await
    }

    /// Connects to the node at `url` as `client_id`, without a user key; a `wss://` node's
    /// certificate is verified with `tls` (e.g. [`ClientTls::with_ca_pem`]). A certificate that
    /// cannot be verified is a [`ClientError::Connect`] whose reason says which check failed.
    pub async fn connect_with(
        url: &str,
        client_id: &str,
        tls: &ClientTls,
    ) -> Result<RemoteClient, ClientError> {
        RemoteClient::open(url, client_id, tls, None).await
    }

    /// The general form of the above: `wss://` verified with `tls`, `user` proved if the node
    /// authenticates. On `wss://` the authentication handshake is bound to the TLS session (its
    /// exporter, [`RemoteClient::channel_binding`]), so a proof cannot be relayed into another
    /// session; a TLS-terminating proxy between client and node therefore makes authentication
    /// fail (terminate TLS at the node).
    pub async fn open(
        url: &str,
        client_id: &str,
        tls: &ClientTls,
        user: Option<&crate::auth::SecretKey>,
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
        let authenticated =
            tokio::time::timeout(CONNECT_TIMEOUT, authenticate(&mut ws, user, *binding.exporter()))
                .await
                .map_err(|_| ClientError::Connect {
                    url: url.to_owned(),
                    reason: format!("no authentication within {CONNECT_TIMEOUT:?}"),
                })?;
        let principal =
            authenticated.map_err(|reason| ClientError::Connect { url: url.to_owned(), reason })?;
        if let Some(node) = &principal {
            tracing::debug!(%node, "authenticated to the node");
        }
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
    ///
    /// (The node's own principal, when it authenticated, was checked at connect.)
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

    /// Presents read capabilities to the node (see [`crate::auth::cap`]): its reads then also
    /// cover what they grant, until they expire. A refused one is answered with an `error`,
    /// which the next [`RemoteClient::call`] returns.
    pub async fn present(&mut self, caps: &[crate::auth::ReadCap]) -> Result<(), ClientError> {
        if caps.is_empty() {
            return Ok(());
        }
        let msg = crate::auth::cap::caps_message(caps);
        self.ws
            .send(WsMessage::Binary(msg.encode().into()))
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
