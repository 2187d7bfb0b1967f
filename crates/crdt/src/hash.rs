//! Content ids: the blake3 hash of a value's canonical encoding.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The 32-byte content id of a value: `blake3(canonical encoding)`.
///
/// Displayed and parsed as 64 lowercase hex digits. Serialized as a hex string in human-readable
/// formats (JSON) and as 32 raw bytes otherwise (msgpack, the canonical value encoding).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

/// Hashes the first 8 bytes only: the id is a cryptographic hash already, so they are uniformly
/// distributed, and hash maps keyed by ids do a fifth of the hashing work.
impl std::hash::Hash for ContentId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// Why a string is not a content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a content id (expected 64 hex digits): {input:?}")]
pub struct ParseContentIdError {
    input: String,
}

impl ContentId {
    /// The id with the given hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> ContentId {
        ContentId(bytes)
    }

    /// The hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// blake3 of raw bytes (use [`crate::Value::content_id`] for values).
    ///
    /// No domain prefix separates raw bytes from value encodings (the raw bytes `[0x00]` hash like
    /// the encoding of nil), so never key raw blobs and values by these ids in one keyspace.
    pub fn hash_bytes(bytes: &[u8]) -> ContentId {
        ContentId(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are plenty to tell ids apart in logs and test failures.
        write!(f, "#{}", &self.to_hex()[..16])
    }
}

impl FromStr for ContentId {
    type Err = ParseContentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(s, &mut bytes) {
            Ok(()) if s.len() == 64 => Ok(ContentId(bytes)),
            _ => Err(ParseContentIdError { input: s.chars().take(80).collect() }),
        }
    }
}

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = ContentId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content id (32 bytes or 64 hex digits)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ContentId, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ContentId, E> {
                let bytes: [u8; 32] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(ContentId(bytes))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ContentId, A::Error> {
                let mut bytes = [0u8; 32];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(33, &self));
                }
                Ok(ContentId(bytes))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(IdVisitor)
        } else {
            deserializer.deserialize_bytes(IdVisitor)
        }
    }
}

/// The hasher of [`IdMap`] and [`IdSet`]: foldhash, seeded at random per map. A content id is
/// already a uniform hash, but ids named on the wire are chosen by the sender, so the maps stay
/// keyed (SipHash, the default, cost several percent of a peer's time per op).
pub type IdBuildHasher = foldhash::fast::RandomState;

/// A hash map keyed by content ids.
pub type IdMap<V> = std::collections::HashMap<ContentId, V, IdBuildHasher>;

/// A hash set of content ids.
pub type IdSet = std::collections::HashSet<ContentId, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_bad_input() {
        let id = ContentId::hash_bytes(b"hello");
        assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
        assert!("abc".parse::<ContentId>().is_err());
        assert!("zz".repeat(32).parse::<ContentId>().is_err());
        assert!(format!("{id}0").parse::<ContentId>().is_err());
    }
}
