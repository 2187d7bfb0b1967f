//! Transactions and commits: the immutable, content-addressed records datatypes refer to.
//!
//! A [`Transaction`] is data, `(function name, params)`: the function is never executed from the
//! wire; applications map names to their own reducers. A [`Commit`] records transactions with
//! author and timestamp (and parents, for CDVCS). Its id covers every field, author and timestamp
//! included, so equal transactions by different authors are different commits. In a commit, each
//! transaction's params are referenced by content id, so equal params are stored once and large
//! params can be fetched lazily; the function name is stored inline (it is a short name, and
//! hashing it separately would cost a fetch for nothing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{OpError, ValidationError};
use crate::{ContentId, Value};

/// The kinds of replicated datatypes, as named on the wire and in commits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrdtKind {
    /// Observed-remove multi-value map ([`crate::OrMap`]).
    Ormap,
    /// Confluent distributed version control ([`crate::Cdvcs`]).
    Cdvcs,
    /// Last-writer-wins register ([`crate::LwwRegister`]).
    Lww,
    /// Grow-only set ([`crate::GSet`]).
    Gset,
}

impl CrdtKind {
    /// The kind's wire name.
    pub fn name(self) -> &'static str {
        match self {
            CrdtKind::Ormap => "ormap",
            CrdtKind::Cdvcs => "cdvcs",
            CrdtKind::Lww => "lww",
            CrdtKind::Gset => "gset",
        }
    }

    fn from_name(name: &str) -> Option<CrdtKind> {
        [CrdtKind::Ormap, CrdtKind::Cdvcs, CrdtKind::Lww, CrdtKind::Gset]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

impl std::fmt::Display for CrdtKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CrdtKind::Ormap => "OR-Map",
            CrdtKind::Cdvcs => "CDVCS",
            CrdtKind::Lww => "LWW register",
            CrdtKind::Gset => "G-Set",
        })
    }
}

/// One transaction: a function name for the application's reducers and its parameters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Transaction {
    /// The reducer's name (replikativ's `trans-fn`).
    pub function: String,
    /// Its parameters.
    pub params: Value,
}

impl Transaction {
    /// The transaction `function(params)`.
    pub fn new(function: impl Into<String>, params: impl Into<Value>) -> Transaction {
        Transaction { function: function.into(), params: params.into() }
    }

    /// The reference a commit stores: the function name and the id of the params.
    pub fn to_ref(&self) -> TxRef {
        TxRef { function: self.function.clone(), params: self.params.content_id() }
    }
}

/// A transaction as a commit records it: function name and the content id of the params.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TxRef {
    /// The reducer's name.
    pub function: String,
    /// Content id of the params value.
    pub params: ContentId,
}

/// An immutable commit record, stored under its content id.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Commit {
    /// The datatype it belongs to.
    pub crdt: CrdtKind,
    /// Parent commits in order (CDVCS; empty for the root and for OR-Map commits).
    pub parents: Vec<ContentId>,
    /// The transactions, params by reference.
    pub transactions: Vec<TxRef>,
    /// Who made it (the stage's user, e.g. `mail:alice@example.org`).
    pub author: String,
    /// When, in milliseconds since the Unix epoch (passed in by the caller).
    pub ts: u64,
}

/// The commit record format version written into every commit value.
pub const COMMIT_VERSION: i128 = 1;

fn id_value(id: &ContentId) -> Value {
    Value::Bytes(id.as_bytes().to_vec())
}

fn value_id(v: &Value, field: &'static str) -> Result<ContentId, ValidationError> {
    match v {
        Value::Bytes(b) => {
            let bytes: [u8; 32] =
                b.as_slice().try_into().map_err(|_| ValidationError::BadCommit { field })?;
            Ok(ContentId::from_bytes(bytes))
        }
        _ => Err(ValidationError::BadCommit { field }),
    }
}

impl Commit {
    /// The commit as a value: `{author, crdt, parents, transactions: [[function, params-id]...], ts,
    /// version}` (ids as 32-byte strings). Its content id is the commit id.
    pub fn to_value(&self) -> Value {
        let txs = self
            .transactions
            .iter()
            .map(|t| Value::List(vec![Value::String(t.function.clone()), id_value(&t.params)]))
            .collect();
        Value::map([
            ("author", Value::String(self.author.clone())),
            ("crdt", Value::String(self.crdt.name().to_owned())),
            ("parents", Value::List(self.parents.iter().map(id_value).collect())),
            ("transactions", Value::List(txs)),
            ("ts", Value::Int(i128::from(self.ts))),
            ("version", Value::Int(COMMIT_VERSION)),
        ])
    }

    /// Reads a commit back from its value, checking every field's shape.
    pub fn from_value(value: &Value) -> Result<Commit, ValidationError> {
        let map = value.as_map().ok_or(ValidationError::BadCommit { field: "commit" })?;
        if map.len() != 6 {
            return Err(ValidationError::BadCommit { field: "commit" });
        }
        let field = |name: &'static str| value.get(name).ok_or(ValidationError::BadCommit { field: name });
        if field("version")? != &Value::Int(COMMIT_VERSION) {
            return Err(ValidationError::BadCommit { field: "version" });
        }
        let crdt = field("crdt")?
            .as_str()
            .and_then(CrdtKind::from_name)
            .ok_or(ValidationError::BadCommit { field: "crdt" })?;
        let author =
            field("author")?.as_str().ok_or(ValidationError::BadCommit { field: "author" })?.to_owned();
        let ts = match field("ts")? {
            Value::Int(t) => u64::try_from(*t).map_err(|_| ValidationError::BadCommit { field: "ts" })?,
            _ => return Err(ValidationError::BadCommit { field: "ts" }),
        };
        let parents = field("parents")?
            .as_list()
            .ok_or(ValidationError::BadCommit { field: "parents" })?
            .iter()
            .map(|p| value_id(p, "parents"))
            .collect::<Result<Vec<_>, _>>()?;
        let transactions = field("transactions")?
            .as_list()
            .ok_or(ValidationError::BadCommit { field: "transactions" })?
            .iter()
            .map(|t| match t.as_list() {
                Some([Value::String(function), params]) => {
                    Ok(TxRef { function: function.clone(), params: value_id(params, "transactions")? })
                }
                _ => Err(ValidationError::BadCommit { field: "transactions" }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Commit { crdt, parents, transactions, author, ts })
    }

    /// The canonical encoding of [`Commit::to_value`], written directly (no value tree is built:
    /// commits are encoded once per op on every replica). Equal to `self.to_value().encode()`.
    pub fn encode(&self) -> Vec<u8> {
        use crate::value::canonical::{
            TAG_BYTES, TAG_INT, TAG_LIST, TAG_MAP, TAG_STRING, put_varint, zigzag,
        };
        fn string(out: &mut Vec<u8>, s: &str) {
            out.push(TAG_STRING);
            put_varint(out, s.len() as u128);
            out.extend_from_slice(s.as_bytes());
        }
        fn id(out: &mut Vec<u8>, id: &ContentId) {
            out.push(TAG_BYTES);
            put_varint(out, 32);
            out.extend_from_slice(id.as_bytes());
        }
        fn int(out: &mut Vec<u8>, i: i128) {
            out.push(TAG_INT);
            put_varint(out, zigzag(i));
        }
        let mut out =
            Vec::with_capacity(96 + 40 * (self.parents.len() + self.transactions.len()) + self.author.len());
        out.push(TAG_MAP);
        put_varint(&mut out, 6);
        // Keys in the canonical (sorted) order.
        string(&mut out, "author");
        string(&mut out, &self.author);
        string(&mut out, "crdt");
        string(&mut out, self.crdt.name());
        string(&mut out, "parents");
        out.push(TAG_LIST);
        put_varint(&mut out, self.parents.len() as u128);
        for p in &self.parents {
            id(&mut out, p);
        }
        string(&mut out, "transactions");
        out.push(TAG_LIST);
        put_varint(&mut out, self.transactions.len() as u128);
        for t in &self.transactions {
            out.push(TAG_LIST);
            put_varint(&mut out, 2);
            string(&mut out, &t.function);
            id(&mut out, &t.params);
        }
        string(&mut out, "ts");
        int(&mut out, i128::from(self.ts));
        string(&mut out, "version");
        int(&mut out, COMMIT_VERSION);
        out
    }

    /// The commit id: the content id of [`Commit::to_value`].
    pub fn id(&self) -> ContentId {
        ContentId::hash_bytes(&self.encode())
    }
}

/// What a local operation produced: the op to apply and replicate, and the new content-addressed
/// values (commits and params) it refers to, which must be stored (and offered to peers) with it.
#[derive(Clone, PartialEq, Debug)]
pub struct Staged<O> {
    /// The op (a delta), already applied to the local state.
    pub op: O,
    /// New values by content id: commit records and transaction params.
    pub values: BTreeMap<ContentId, Value>,
    /// The commit records among `values`, parsed (so a replica storing and sending them need not
    /// parse them back).
    pub commits: BTreeMap<ContentId, Commit>,
}

/// Refuses transactions whose params nest too deep to be decoded by other replicas.
pub(crate) fn check_txs(txs: &[Transaction]) -> Result<(), OpError> {
    if txs.iter().all(|t| t.params.within_depth_limit()) { Ok(()) } else { Err(OpError::TooDeep) }
}

/// Builds a commit from full transactions, returning its id and every new value (the commit record
/// and each params value) keyed by content id.
pub(crate) fn make_commit(
    crdt: CrdtKind,
    parents: Vec<ContentId>,
    txs: &[Transaction],
    author: &str,
    ts: u64,
    values: &mut BTreeMap<ContentId, Value>,
    commits: &mut BTreeMap<ContentId, Commit>,
) -> ContentId {
    let mut refs = Vec::with_capacity(txs.len());
    for tx in txs {
        let params_id = tx.params.content_id();
        values.entry(params_id).or_insert_with(|| tx.params.clone());
        refs.push(TxRef { function: tx.function.clone(), params: params_id });
    }
    let commit = Commit { crdt, parents, transactions: refs, author: author.to_owned(), ts };
    let value = commit.to_value();
    let id = ContentId::hash_bytes(&commit.encode());
    values.insert(id, value);
    commits.insert(id, commit);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_value_round_trips_and_id_covers_author_and_ts() {
        let tx = Transaction::new("set", Value::map([("a", 1)]));
        let c = Commit {
            crdt: CrdtKind::Cdvcs,
            parents: vec![ContentId::hash_bytes(b"p")],
            transactions: vec![tx.to_ref()],
            author: "mail:alice@example.org".into(),
            ts: 7,
        };
        assert_eq!(Commit::from_value(&c.to_value()).unwrap(), c);
        // The direct encoding is the value's, for every shape.
        for commit in [
            c.clone(),
            Commit {
                parents: vec![],
                transactions: vec![],
                author: String::new(),
                ts: 0,
                crdt: CrdtKind::Ormap,
            },
            Commit {
                parents: (0..3).map(|i| ContentId::hash_bytes(&[i])).collect(),
                transactions: (0..200).map(|i| Transaction::new(format!("f{i}"), i).to_ref()).collect(),
                author: "x".repeat(300),
                ts: u64::MAX,
                crdt: CrdtKind::Gset,
            },
        ] {
            assert_eq!(commit.encode(), commit.to_value().encode());
            assert_eq!(commit.id(), commit.to_value().content_id());
        }
        let by_bob = Commit { author: "mail:bob@example.org".into(), ..c.clone() };
        let later = Commit { ts: 8, ..c.clone() };
        assert_ne!(c.id(), by_bob.id());
        assert_ne!(c.id(), later.id());
    }

    #[test]
    fn malformed_commit_values_are_typed_errors() {
        let good = Commit {
            crdt: CrdtKind::Ormap,
            parents: vec![],
            transactions: vec![],
            author: "a".into(),
            ts: 0,
        }
        .to_value();
        let mut map = good.as_map().unwrap().clone();
        map.insert("parents".into(), Value::list([Value::Bytes(vec![1, 2])]));
        assert_eq!(
            Commit::from_value(&Value::Map(map)),
            Err(ValidationError::BadCommit { field: "parents" })
        );
        assert!(Commit::from_value(&Value::Int(3)).is_err());
        let mut extra = good.as_map().unwrap().clone();
        extra.insert("evil".into(), Value::Nil);
        assert!(Commit::from_value(&Value::Map(extra)).is_err());
    }
}
