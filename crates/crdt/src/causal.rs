//! Causality: who wrote ([`ActorId`]), which of their writes ([`Dot`]), and when ([`Hlc`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A replica that writes: each live stage (or peer session) has its own.
///
/// Dots and clocks are unique only if no two replicas ever write under one actor id at the same
/// time, so an actor id must never be shared by two processes; the peer derives a fresh one for
/// every stage session. Sixteen bytes (a UUID's worth); displayed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId([u8; 16]);

/// Hex in human-readable formats (JSON), 16 raw bytes otherwise.
impl Serialize for ActorId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_string())
        } else {
            serde_bytes::Bytes::new(&self.0).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
            let bytes: [u8; 16] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
            Ok(ActorId(bytes))
        }
    }
}

impl ActorId {
    /// The actor with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> ActorId {
        ActorId(bytes)
    }

    /// The actor's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// An actor id made from a small number (tests, examples, simulations).
    pub const fn from_u128(n: u128) -> ActorId {
        ActorId(n.to_be_bytes())
    }
}

impl From<uuid::Uuid> for ActorId {
    fn from(u: uuid::Uuid) -> ActorId {
        ActorId(*u.as_bytes())
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", &hex::encode(self.0)[..8])
    }
}

impl FromStr for ActorId {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes)?;
        Ok(ActorId(bytes))
    }
}

/// One write of one actor: the actor and its per-actor counter (1, 2, 3, ...).
///
/// Dots tag OR-Map entries: unique without randomness, and a set of them summarizes as a version
/// vector (the highest counter per actor). Counters are at most [`MAX_DOT_COUNTER`]: an op with a
/// larger one is refused, so a forged dot can never push a writer's counter to the end of its range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who wrote.
    pub actor: ActorId,
    /// The writer's counter, starting at 1.
    pub counter: u64,
}

/// The largest dot counter an op may carry: 2^53 - 1 (no writer makes that many writes; it is also
/// the largest integer JavaScript represents exactly).
pub const MAX_DOT_COUNTER: u64 = (1 << 53) - 1;

impl Dot {
    /// The dot `(actor, counter)`.
    pub const fn new(actor: ActorId, counter: u64) -> Dot {
        Dot { actor, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}", self.actor, self.counter)
    }
}

/// A hybrid logical clock timestamp: wall-clock milliseconds, a logical counter for events within
/// one millisecond (or while the wall clock lags behind a timestamp already seen), and the actor as
/// the final tie-break. Ordered lexicographically in that order, so two distinct writers never
/// produce equal timestamps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (as passed in by the caller).
    pub wall_ms: u64,
    /// Logical counter within `wall_ms`.
    pub counter: u32,
    /// The writer.
    pub actor: ActorId,
}

impl Hlc {
    /// The timestamp for a new event by `actor` at wall time `now_ms`, after every timestamp in
    /// `seen` (the latest the replica knows of). Never goes backwards, even when the wall clock does.
    /// `None` when no timestamp is after `seen` (its wall time and counter are both at their
    /// maximum: only a forged stamp can be there).
    pub fn next(seen: Option<&Hlc>, now_ms: u64, actor: ActorId) -> Option<Hlc> {
        match seen {
            Some(last) if last.wall_ms >= now_ms => match last.counter.checked_add(1) {
                Some(counter) => Some(Hlc { wall_ms: last.wall_ms, counter, actor }),
                // The logical counter ran out within one millisecond: borrow the next millisecond.
                None => Some(Hlc { wall_ms: last.wall_ms.checked_add(1)?, counter: 0, actor }),
            },
            _ => Some(Hlc { wall_ms: now_ms, counter: 0, actor }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_is_monotonic_when_the_wall_clock_goes_back() {
        let a = ActorId::from_u128(1);
        let t1 = Hlc::next(None, 1000, a).unwrap();
        let t2 = Hlc::next(Some(&t1), 900, a).unwrap();
        let t3 = Hlc::next(Some(&t2), 1000, a).unwrap();
        let t4 = Hlc::next(Some(&t3), 1001, a).unwrap();
        assert!(t1 < t2 && t2 < t3 && t3 < t4);
        assert_eq!((t4.wall_ms, t4.counter), (1001, 0));
    }

    #[test]
    fn hlc_at_the_end_of_its_range_does_not_wrap() {
        let a = ActorId::from_u128(1);
        let full = Hlc { wall_ms: u64::MAX, counter: u32::MAX, actor: ActorId::from_bytes([0xff; 16]) };
        assert_eq!(Hlc::next(Some(&full), 5, a), None, "no stamp is after it: never wrap to an earlier one");
        let counter_full = Hlc { wall_ms: 7, counter: u32::MAX, actor: a };
        let next = Hlc::next(Some(&counter_full), 5, a).unwrap();
        assert!(next > counter_full);
        assert_eq!((next.wall_ms, next.counter), (8, 0));
    }

    #[test]
    fn actor_breaks_ties() {
        let t1 = Hlc::next(None, 5, ActorId::from_u128(1)).unwrap();
        let t2 = Hlc::next(None, 5, ActorId::from_u128(2)).unwrap();
        assert!(t1 < t2);
    }

    #[test]
    fn actor_id_is_hex_in_json_and_bytes_in_msgpack() {
        let a = ActorId::from_u128(0xabc);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<ActorId>(&json).unwrap(), a);
        let mp = rmp_serde::to_vec(&a).unwrap();
        assert_eq!(mp.len(), 18, "bin8 header + 16 bytes");
        assert_eq!(rmp_serde::from_slice::<ActorId>(&mp).unwrap(), a);
    }

    #[test]
    fn actor_id_parses_its_display() {
        let a = ActorId::from_u128(0xdead_beef);
        assert_eq!(a.to_string().parse::<ActorId>().unwrap(), a);
        assert!("xyz".parse::<ActorId>().is_err());
    }
}
