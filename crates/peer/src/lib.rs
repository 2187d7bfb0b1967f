//! The replikativ peer: replication protocol core and networked node.
//!
//! This crate is at its start: the sans-IO protocol core, the middleware chain, the websocket
//! transport and the stage API are built in the protocol and networked-peer issues. For now it
//! re-exports the datatypes it will replicate.

pub use replikativ_crdt as crdt;
pub use replikativ_store as store;
