//! # replikativ
//!
//! CRDT peer-to-peer replication: applications keep shared state on every device, live, with
//! conflicts resolved automatically and nothing lost when the network drops. This facade re-exports
//! the workspace crates:
//!
//! - [`crdt`]: the pure replicated datatypes (OR-Map, CDVCS, LWW register, G-Set) and the canonical
//!   value model with content addressing;
//! - [`store`]: durable storage backends (memory, file, sled) behind one trait;
//! - [`peer`]: the replication protocol and node, and the [`peer::stage::Stage`] an application
//!   holds.
//!
//! Two stages on durable file stores replicate a CDVCS (a git-like history) over a loopback
//! websocket; both agree on one order of the history:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use replikativ::crdt::Transaction;
//! use replikativ::peer::stage::Stage;
//! use replikativ::store::FileStore;
//!
//! let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let alice = Stage::builder(Arc::new(FileStore::open(a_dir.path())?)).user("mail:alice@example.org").spawn().await?;
//! let bob = Stage::builder(Arc::new(FileStore::open(b_dir.path())?)).user("mail:bob@example.org").spawn().await?;
//! let addr = alice.node().listen("127.0.0.1:0").await?;
//!
//! let account = alice.create_cdvcs(None).await?;
//! alice.transact(&account, vec![Transaction::new("deposit", 10)]).await?; // durable when it returns
//! bob.subscribe([account.clone()]).await?;
//! bob.node().connect(&format!("ws://{addr}")).await?;
//!
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
//! while bob.log(&account).await.map_or(true, |log| log.len() < 2) {
//!     assert!(tokio::time::Instant::now() < deadline, "replicated in time");
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! assert_eq!(bob.log(&account).await?, alice.log(&account).await?);
//! # alice.shutdown().await; bob.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See `docs/design.md` for the normative data model, wire format and store layout, and the README
//! for the command line.

pub use replikativ_crdt as crdt;
pub use replikativ_peer as peer;
pub use replikativ_store as store;
