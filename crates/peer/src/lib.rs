//! The replikativ peer: the replication protocol core and (with the `runtime` feature) the
//! networked node, with the [`stage::Stage`] an application holds.
//!
//! Two stages, each with its own store, replicate a shared list over a loopback websocket:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use replikativ_peer::stage::Stage;
//! use replikativ_crdt::{Transaction, Value};
//! use replikativ_store::MemoryStore;
//!
//! let alice = Stage::builder(Arc::new(MemoryStore::new())).user("mail:alice@example.org").spawn().await?;
//! let bob = Stage::builder(Arc::new(MemoryStore::new())).user("mail:bob@example.org").spawn().await?;
//! let addr = alice.node().listen("127.0.0.1:0").await?;
//!
//! // Alice owns a list; Bob subscribes to it and connects.
//! let list = alice.create_ormap(None).await?;
//! bob.subscribe([list.clone()]).await?;
//! bob.node().connect(&format!("ws://{addr}")).await?;
//!
//! // A write is durable when it returns, and reaches Bob moments later.
//! alice.assoc(&list, "milk".into(), vec![Transaction::new("add", 2)]).await?;
//! let mut changes = bob.changes(&list);
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
//! while bob.get(&list, &Value::from("milk")).await.map_or(true, |v| v.is_empty()) {
//!     assert!(tokio::time::Instant::now() < deadline, "replicated in time");
//!     let _ = tokio::time::timeout(Duration::from_millis(100), changes.recv()).await;
//! }
//! assert_eq!(bob.get(&list, &"milk".into()).await?[0].transactions[0].params, Value::from(2));
//! # alice.shutdown().await; bob.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The layers, from the wire inward (`docs/design.md` §6.0 maps the files):
//! - [`connection`]: one connection's pipeline (decode, [`middleware`] chain, encode), driven by
//!   the node's websocket tasks, the in-process stage and the simulation alike;
//! - [`proto`]: the sans-IO protocol core ([`proto::Peer`]): events in, effects out, time and the
//!   actor id passed in, the store called directly. It builds without tokio (`cargo check -p
//!   replikativ-peer --no-default-features`), so the same code runs in the deterministic
//!   simulation (module `sim`, feature `test-utils`) and in the node;
//! - [`auth`]: keys, the authentication handshake and the built-in access rules;
//! - [`node`]: the tokio runtime around it (websockets, `ws://` and `wss://` ([`node::tls`]),
//!   barrier thread, limits);
//! - [`stage`]: the application's handle; [`realize`]: streaming into application state.

pub mod auth;
#[cfg(feature = "runtime")]
pub mod client;
pub mod connection;
pub mod middleware;
#[cfg(feature = "runtime")]
pub mod node;
pub mod proto;
#[cfg(feature = "runtime")]
pub mod realize;
/// Without the runtime, only the pure planning of realization (the browser client drives it).
#[cfg(not(feature = "runtime"))]
pub mod realize {
    pub mod plan;
}
#[cfg(any(test, feature = "test-utils"))]
pub mod sim;
#[cfg(feature = "runtime")]
pub mod stage;

pub use replikativ_crdt as crdt;
pub use replikativ_store as store;
