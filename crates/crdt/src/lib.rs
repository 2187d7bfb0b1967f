//! Pure replicated datatypes for replikativ.
//!
//! (crate docs in progress)

pub mod causal;
pub mod cdvcs;
pub mod commit;
pub mod error;
pub mod gset;
pub mod hash;
pub mod lww;
pub mod ormap;
mod traits;
pub mod value;

pub use causal::{ActorId, Dot, Hlc};
pub use cdvcs::{Cdvcs, CdvcsOp, CommitGraph};
pub use commit::{Commit, CrdtKind, Staged, Transaction, TxRef};
pub use error::{OpError, ValidationError};
pub use gset::{GSet, GSetOp};
pub use hash::ContentId;
pub use lww::{LwwOp, LwwRegister};
pub use ormap::{OrEntry, OrMap, OrMapOp};
pub use traits::Crdt;
pub use value::Value;
