//! The contract every replicated datatype keeps.

use crate::ContentId;
use crate::commit::CrdtKind;
use crate::error::ValidationError;

/// A replicated datatype: a state that local operations change, producing ops (deltas) that every
/// other replica applies.
///
/// Laws (property-tested for every datatype): applying ops is commutative, associative and
/// idempotent, so any permutation of a set of ops, with duplicates, gives the same state as
/// joining the states; [`Crdt::merge`] of two states equals applying one's [`Crdt::state_op`] to
/// the other. An op that does not validate is refused as a whole and leaves the state unchanged.
pub trait Crdt: Clone + Default + PartialEq {
    /// The op (delta) type; a whole state is an op too.
    type Op: Clone + PartialEq + std::fmt::Debug;

    /// The datatype's kind.
    const KIND: CrdtKind;

    /// Checks that `op` can be applied to this state.
    fn validate_op(&self, op: &Self::Op) -> Result<(), ValidationError>;

    /// Validates and applies `op`. Returns whether the state changed (a replica re-broadcasts only
    /// ops that changed it). On error the state is unchanged.
    fn apply(&mut self, op: &Self::Op) -> Result<bool, ValidationError>;

    /// The whole state as one op (sent on handshakes and catch-up).
    fn state_op(&self) -> Self::Op;

    /// Joins another replica's state into this one. Returns whether this state changed.
    fn merge(&mut self, other: &Self) -> Result<bool, ValidationError> {
        self.apply(&other.state_op())
    }

    /// The content-addressed commit records an op refers to; a replica must hold them (fetching
    /// what it lacks) before it applies the op.
    fn commit_ids(op: &Self::Op) -> Vec<ContentId>;
}
