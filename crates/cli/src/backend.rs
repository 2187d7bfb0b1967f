//! Where data commands run: on a running node (`--peer`, through its remote-command middleware), or
//! directly on a local store that no node holds.

use std::sync::Arc;

use replikativ_crdt::ActorId;
use replikativ_peer::client::{ClientError, RemoteClient};
use replikativ_peer::proto::{Command, Reply, StageError};
use replikativ_peer::stage::Stage;
use replikativ_store::Store;

use crate::{EXIT_DATA, EXIT_UNREACHABLE, Failure};

pub(crate) enum Backend {
    Remote(Box<RemoteClient>),
    Local { stage: Stage, store: Arc<dyn Store> },
}

impl Backend {
    pub(crate) async fn remote(
        url: &str,
        tls: &replikativ_peer::node::tls::ClientTls,
        key: Option<&replikativ_peer::auth::SecretKey>,
        caps: &[replikativ_peer::auth::ReadCap],
    ) -> Result<Backend, Failure> {
        let mut client = RemoteClient::open(url, "replikativ-cli", tls, key)
            .await
            .map_err(|e| Failure(EXIT_UNREACHABLE, e.to_string()))?;
        client.present(caps).await.map_err(|e| Failure(EXIT_UNREACHABLE, e.to_string()))?;
        Ok(Backend::Remote(Box::new(client)))
    }

    pub(crate) async fn local(store: Arc<dyn Store>) -> Result<Backend, Failure> {
        let stage = Stage::builder(store.clone())
            .actor(ActorId::from(uuid::Uuid::new_v4()))
            .spawn()
            .await
            .map_err(|e| Failure(EXIT_DATA, format!("cannot start a peer on the store: {e}")))?;
        Ok(Backend::Local { stage, store })
    }

    /// Runs a command; the command's own error is given back as it is (`Err(Ok(e))`), a failure
    /// to reach the node as a failure (`Err(Err(f))`).
    pub(crate) async fn call_checked(&mut self, cmd: Command) -> Result<Reply, Result<StageError, Failure>> {
        let result = match self {
            Backend::Remote(client) => client
                .call(cmd)
                .await
                .map_err(|e: ClientError| Err(Failure(EXIT_UNREACHABLE, e.to_string())))?,
            Backend::Local { stage, .. } => stage.command(cmd).await,
        };
        result.map_err(Ok)
    }

    /// Runs a command; command errors are data errors.
    pub(crate) async fn call(&mut self, cmd: Command) -> Result<Reply, Failure> {
        let result = match self {
            Backend::Remote(client) => client.call(cmd).await.map_err(|e: ClientError| match e {
                ClientError::Connect { .. } => Failure(EXIT_UNREACHABLE, e.to_string()),
                other => Failure(EXIT_UNREACHABLE, other.to_string()),
            })?,
            Backend::Local { stage, .. } => stage.command(cmd).await,
        };
        result.map_err(crate::data::stage_failure)
    }

    pub(crate) async fn close(self) -> Result<(), Failure> {
        match self {
            Backend::Remote(client) => client.close().await,
            Backend::Local { stage, store } => {
                stage.shutdown().await;
                store.close().map_err(|e| Failure(EXIT_DATA, format!("closing the store failed: {e}")))?;
            }
        }
        Ok(())
    }
}
