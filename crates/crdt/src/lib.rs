//! Pure replicated datatypes for replikativ.
//!
//! (crate docs in progress)

pub mod hash;
pub mod value;

pub use hash::ContentId;
pub use value::Value;
