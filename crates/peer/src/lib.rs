//! The replikativ peer: the replication protocol core and (with the `runtime` feature) the
//! networked node.
//!
//! The protocol core ([`proto::Peer`]) is sans-IO: events in, effects out, time and the actor id
//! passed in, the store called directly. It builds without tokio
//! (`cargo check -p replikativ-peer --no-default-features`), so the same code runs in the
//! deterministic simulation (module `sim`, feature `test-utils`) and in the node.

#[cfg(feature = "runtime")]
pub mod client;
pub mod connection;
pub mod middleware;
#[cfg(feature = "runtime")]
pub mod node;
pub mod proto;
#[cfg(feature = "runtime")]
pub mod realize;
#[cfg(any(test, feature = "test-utils"))]
pub mod sim;
#[cfg(feature = "runtime")]
pub mod stage;

pub use replikativ_crdt as crdt;
pub use replikativ_store as store;
