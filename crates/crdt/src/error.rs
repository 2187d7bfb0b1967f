//! Errors: [`ValidationError`] for ops and values that must be refused, [`OpError`] for local
//! operations the state does not allow.

use crate::ContentId;

/// A received op or value that does not validate; applying it is refused and the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A commit id already known with other parents (ids are content hashes: the data is forged or
    /// corrupt).
    #[error("commit {id} is already known with different parents")]
    ConflictingParents {
        /// The commit.
        id: ContentId,
    },
    /// A commit that names itself as its parent, or names a parent twice.
    #[error("commit {id} has an invalid parent list")]
    BadParents {
        /// The commit.
        id: ContentId,
    },
    /// An OR-Map entry tag reused for a different commit.
    #[error("OR-Map tag {dot} under one key names two different commits")]
    DotReused {
        /// The reused tag, rendered.
        dot: String,
    },
    /// A commit record with a missing or malformed field.
    #[error("malformed commit record: bad `{field}`")]
    BadCommit {
        /// The field.
        field: &'static str,
    },
    /// A value nested deeper than [`crate::value::MAX_DEPTH`] levels.
    #[error("a value in the op nests deeper than {} levels", crate::value::MAX_DEPTH)]
    TooDeep,
    /// An op whose shape is impossible (e.g. an empty LWW write).
    #[error("malformed op: {reason}")]
    BadOp {
        /// What is wrong.
        reason: &'static str,
    },
}

/// A local operation the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum OpError {
    /// Commit needs exactly one head; merge first.
    #[error("the CDVCS has {} heads; merge them before committing", heads.len())]
    MultipleHeads {
        /// The current heads.
        heads: Vec<ContentId>,
    },
    /// The CDVCS has no commits at all (it was never created or nothing arrived yet).
    #[error("the CDVCS has no commits yet")]
    Empty,
    /// A commit needs at least one transaction.
    #[error("nothing to commit: no transactions")]
    NoTransactions,
    /// Merge was given heads that are not exactly the current heads.
    #[error("the heads given to merge are not the current heads")]
    HeadsDontMatch {
        /// The current heads (local and remote), sorted.
        expected: Vec<ContentId>,
    },
    /// Merge needs at least two heads.
    #[error("nothing to merge: there is only one head")]
    NothingToMerge,
    /// Prepared transactions would be lost in a merge; commit them first.
    #[error("transactions are pending; commit them before merging")]
    TransactionsPending,
    /// The pulled commit is already in the local history.
    #[error("pull unnecessary: commit {tip} is already known")]
    PullUnnecessary {
        /// The remote tip.
        tip: ContentId,
    },
    /// The pull is not a fast-forward: the local history has commits the remote tip lacks.
    #[error("pull would not be a fast-forward (local commits are not ancestors of {tip})")]
    NotSuperset {
        /// The remote tip.
        tip: ContentId,
    },
    /// The remote has several heads or does not contain the named tip.
    #[error("cannot pull {tip}: it is not a commit of the remote with complete history")]
    BadRemoteTip {
        /// The requested tip.
        tip: ContentId,
    },
    /// A fork target that already exists.
    #[error("the fork target already has commits")]
    ForkTargetExists,
    /// A value nested deeper than [`crate::value::MAX_DEPTH`] levels (no replica could decode it).
    #[error("a value nests deeper than {} levels", crate::value::MAX_DEPTH)]
    TooDeep,
    /// Dissoc of a key with no live value.
    #[error("the key has no value to remove")]
    NoSuchKey,
    /// Dissoc of a value that is not live under the key.
    #[error("no live value with that tag under the key")]
    NoSuchEntry,
    /// The writer's clock or counter cannot move past what the replica holds (a stamp or dot at
    /// the end of its range, which only a forged op can have put there): the write would not take
    /// effect, so it is refused.
    #[error("the {0} cannot advance past the largest value the replica holds")]
    ClockExhausted(String),
}
