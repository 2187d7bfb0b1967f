//! Pure replicated datatypes for replikativ: no IO, no clock, no randomness. Ids, actors and
//! timestamps are arguments, so every replica, simulation and test is deterministic.
//!
//! # Data model
//!
//! - A [`Value`] is dynamic, self-describing data (nil, bools, integers, floats, strings, bytes,
//!   lists, maps) with exactly one canonical encoding; its [`ContentId`] is the blake3 hash of that
//!   encoding. Any serde type converts with [`to_value`] / [`from_value`].
//! - A replicated datatype lives at an [`Address`], `[user, uuid]`.
//! - Changes are [`Transaction`]s, `(function name, params)`: data, never code. Applications map
//!   function names to their own reducers. Datatypes with history (OR-Map, CDVCS) record them in
//!   immutable, content-addressed [`Commit`]s.
//! - Every datatype implements [`Crdt`]: local operations change the state and return an op (a
//!   delta) that other replicas `apply`; applying is commutative, associative and idempotent.
//!
//! | datatype | what it is |
//! |---|---|
//! | [`OrMap`] | observed-remove multi-value map: concurrent assocs keep every value (a conflict), add wins over a concurrent dissoc |
//! | [`Cdvcs`] | git-like commit graph with heads, commit, merge, pull and fork; one deterministic linearization |
//! | [`LwwRegister`] | last-writer-wins register on a hybrid logical clock |
//! | [`GSet`] | grow-only set |
//!
//! # Two replicas diverge, exchange ops, converge
//!
//! ```
//! use replikativ_crdt::{ActorId, Cdvcs, Crdt, OrMap, Transaction, Value};
//!
//! // An OR-Map edited on two replicas at once.
//! let (alice, bob) = (ActorId::from_u128(1), ActorId::from_u128(2));
//! let mut a = OrMap::default();
//! let mut b = OrMap::default();
//! let from_a = a.assoc("color".into(), vec![Transaction::new("set", "red")], alice, "mail:alice@example.org", 10)?;
//! let from_b = b.assoc("color".into(), vec![Transaction::new("set", "blue")], bob, "mail:bob@example.org", 11)?;
//! // Each replica applies the other's op (in any order, any number of times).
//! b.apply(&from_a.op)?;
//! a.apply(&from_b.op)?;
//! a.apply(&from_b.op)?;
//! assert_eq!(a, b);
//! // Both values are live: a conflict the application resolves, here by dissoc + assoc.
//! assert_eq!(a.conflicts().len(), 1);
//!
//! // The values themselves live in commit records, addressed by content.
//! let commit_id = a.get(&Value::from("color"))[0];
//! let record = from_a.values.get(&commit_id).or(from_b.values.get(&commit_id)).unwrap();
//! assert_eq!(record.content_id(), commit_id);
//!
//! // A CDVCS: concurrent commits give two heads; a merge makes one history everyone agrees on.
//! let (mut x, root) = Cdvcs::new("mail:alice@example.org", 0);
//! let mut y = Cdvcs::default();
//! y.apply(&root.op)?;
//! let cx = x.transact("mail:alice@example.org", 1, vec![Transaction::new("deposit", 5)])?;
//! let cy = y.transact("mail:bob@example.org", 1, vec![Transaction::new("deposit", 7)])?;
//! x.apply(&cy.op)?;
//! y.apply(&cx.op)?;
//! assert_eq!(x.heads().len(), 2);
//! let heads: Vec<_> = x.heads().iter().copied().collect();
//! let merge = x.merge("mail:alice@example.org", 2, &heads, None, vec![])?;
//! y.apply(&merge.op)?;
//! assert_eq!(x.linearize(), y.linearize());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod address;
pub mod causal;
pub mod cdvcs;
pub mod commit;
pub mod dots;
pub mod error;
pub mod gset;
pub mod hash;
pub mod lww;
pub mod ormap;
mod traits;
pub mod value;

pub use address::{Address, AddressError, MAX_USER_LEN};
pub use causal::{ActorId, Dot, Hlc, MAX_DOT_COUNTER};
pub use cdvcs::{Cdvcs, CdvcsOp, CommitGraph};
pub use commit::{Commit, CrdtKind, Staged, Transaction, TxRef};
pub use dots::{DotSet, MAX_DOT_RUNS};
pub use error::{OpError, ValidationError};
pub use gset::{GSet, GSetOp};
pub use hash::{ContentId, IdBuildHasher, IdMap, IdSet};
pub use lww::{LwwOp, LwwRegister};
pub use ormap::{OrEntry, OrMap, OrMapOp};
pub use traits::Crdt;
pub use value::{Value, ValueError, from_value, to_value};
