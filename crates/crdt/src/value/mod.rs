//! The dynamic [`Value`] every replicated datum is made of.
//!
//! A value is self-describing data: nil, booleans, integers, floats, strings, bytes, lists and maps
//! (with any value as key). It has exactly one canonical encoding ([`Value::encode`], specified in
//! `docs/design.md`) and its content id is the blake3 hash of that encoding ([`Value::content_id`]).
//! Any serde type converts to and from a value with [`to_value`] and [`from_value`].

pub(crate) mod canonical;
mod de;
mod error;
mod ser;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

pub use canonical::{DecodeError, MAX_DEPTH};
pub use de::from_value;
pub use error::ValueError;
pub use ser::to_value;

use crate::hash::ContentId;

/// A dynamic, self-describing value with one canonical encoding.
///
/// Equality, ordering and hashing are structural and total: floats compare by their bits (after
/// every NaN is folded into one canonical NaN), so `Value` is `Eq + Ord + Hash` and can be a map
/// key. The order sorts first by kind (`Nil < Bool < Int < Float < String < Bytes < List < Map`),
/// then by content; map entries are kept, encoded and hashed in this order.
#[derive(Clone, Default)]
pub enum Value {
    /// The absent value (JSON `null`, Rust `()` and `None`).
    #[default]
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer. Every Rust integer type up to `i128`/`u64` fits; `u128` beyond `i128::MAX` does not.
    Int(i128),
    /// A 64-bit float. All NaNs are the same value.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A map, ordered by key.
    Map(BTreeMap<Value, Value>),
}

/// The one NaN bit pattern a [`Value::Float`] encodes to.
pub(crate) const CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// The bits of a float as it is compared, hashed and encoded: every NaN folds into one.
pub(crate) fn canonical_float_bits(f: f64) -> u64 {
    if f.is_nan() { CANONICAL_NAN_BITS } else { f.to_bits() }
}

impl Value {
    /// Rank of the variant in the total order (and its position among the encoding tags).
    fn rank(&self) -> u8 {
        match self {
            Value::Nil => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::String(_) => 4,
            Value::Bytes(_) => 5,
            Value::List(_) => 6,
            Value::Map(_) => 7,
        }
    }

    /// The canonical encoding of this value (see `docs/design.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        canonical::encode_into(self, &mut out);
        out
    }

    /// The length of the canonical encoding, without making it.
    pub fn encoded_len(&self) -> usize {
        canonical::encoded_len(self)
    }

    /// Appends the canonical encoding of this value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        canonical::encode_into(self, out);
    }

    /// Decodes a value from exactly its canonical encoding.
    ///
    /// Rejects anything that is not the canonical form of some value (unsorted or duplicate map
    /// keys, over-long integers, non-canonical NaNs, trailing bytes), so
    /// `Value::decode(b)?.encode() == b` for every accepted `b`.
    pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
        canonical::decode(bytes)
    }

    /// The content id: blake3 of the canonical encoding.
    pub fn content_id(&self) -> ContentId {
        let mut hasher = blake3::Hasher::new();
        canonical::encode_to_hasher(self, &mut hasher);
        ContentId::from_bytes(*hasher.finalize().as_bytes())
    }

    /// Builds a map value from key/value pairs (later duplicates replace earlier ones).
    pub fn map<K: Into<Value>, V: Into<Value>>(entries: impl IntoIterator<Item = (K, V)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Builds a list value.
    pub fn list<V: Into<Value>>(items: impl IntoIterator<Item = V>) -> Value {
        Value::List(items.into_iter().map(Into::into).collect())
    }

    /// The string, if this is a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a [`Value::Int`] within `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// The map, if this is a [`Value::Map`].
    pub fn as_map(&self) -> Option<&BTreeMap<Value, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The list, if this is a [`Value::List`].
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Looks up a string key in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?.get(&Value::String(key.to_owned()))
    }

    /// Whether lists and maps nest at most [`MAX_DEPTH`] levels, the limit [`Value::decode`]
    /// accepts. Every value a datatype admits (locally or from the wire) is checked, so no replica
    /// stores a value that another cannot decode. Iterative, so hostile depth cannot overflow the
    /// stack here.
    pub fn within_depth_limit(&self) -> bool {
        let mut stack: Vec<(&Value, usize)> = vec![(self, 0)];
        while let Some((v, depth)) = stack.pop() {
            match v {
                Value::List(items) => {
                    if depth >= MAX_DEPTH {
                        return false;
                    }
                    stack.extend(items.iter().map(|i| (i, depth + 1)));
                }
                Value::Map(entries) => {
                    if depth >= MAX_DEPTH {
                        return false;
                    }
                    stack.extend(entries.iter().flat_map(|(k, v)| [(k, depth + 1), (v, depth + 1)]));
                }
                _ => {}
            }
        }
        true
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Nil, Value::Nil) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => {
                f64::from_bits(canonical_float_bits(*a)).total_cmp(&f64::from_bits(canonical_float_bits(*b)))
            }
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.iter().cmp(b.iter()),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Value::Nil => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::Float(f) => canonical_float_bits(*f).hash(state),
            Value::String(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::List(l) => l.hash(state),
            Value::Map(m) => m.hash(state),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "#bytes[{}]", hex::encode(b)),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Map(m) => f.debug_map().entries(m).finish(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Int(i128::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, i128, u8, u16, u32, u64);

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as i128)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Bytes(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::List(v)
    }
}

impl From<BTreeMap<Value, Value>> for Value {
    fn from(v: BTreeMap<Value, Value>) -> Value {
        Value::Map(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Nil, Into::into)
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Nil
    }
}
