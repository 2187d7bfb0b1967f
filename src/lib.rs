//! # replikativ
//!
//! Facade over the workspace crates of replikativ for Rust, a CRDT peer-to-peer replication node and
//! library:
//!
//! - [`crdt`]: the pure replicated datatypes (OR-Map, CDVCS, LWW register, G-Set) and the canonical
//!   value model with content addressing;
//! - [`store`]: durable storage backends (memory, file, sled) behind one trait;
//! - [`peer`]: the replication protocol and node.
//!
//! See `docs/design.md` for the normative data model and encodings.

pub use replikativ_crdt as crdt;
pub use replikativ_peer as peer;
pub use replikativ_store as store;
