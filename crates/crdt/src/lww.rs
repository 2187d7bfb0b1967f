//! LWW register: the last write wins, by a hybrid logical clock ([`Hlc`]).
//!
//! A write is stamped after every stamp the replica has seen and after the wall clock, so a
//! replica whose clock lags still writes after what it observed; equal stamps cannot come from two
//! writers (the actor is part of the stamp), and identical stamps with different values (only
//! possible from a forged op) are ordered by the value, so every replica picks the same winner.

use serde::{Deserialize, Serialize};

use crate::commit::CrdtKind;
use crate::error::{OpError, ValidationError};
use crate::{ActorId, ContentId, Crdt, Hlc, Value};

/// A last-writer-wins register replica. Never written: value nil, no stamp.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LwwRegister {
    value: Value,
    stamp: Option<Hlc>,
}

/// An LWW write: the value and its stamp. A whole state is a write too.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LwwOp {
    /// The written value.
    pub value: Value,
    /// When and by whom (absent only for a never-written state).
    pub stamp: Option<Hlc>,
}

impl LwwRegister {
    /// Writes `value` by `actor` at wall time `now_ms`; returns the op to replicate. The write is
    /// stamped after the current stamp, so it always takes effect; when no stamp is after the
    /// current one (a forged stamp at the end of the clock's range) it fails with
    /// [`OpError::ClockExhausted`] instead of silently losing.
    pub fn set(&mut self, value: Value, now_ms: u64, actor: ActorId) -> Result<LwwOp, OpError> {
        if !value.within_depth_limit() {
            return Err(OpError::TooDeep);
        }
        let stamp = Hlc::next(self.stamp.as_ref(), now_ms, actor)
            .ok_or_else(|| OpError::ClockExhausted("clock".into()))?;
        let op = LwwOp { value, stamp: Some(stamp) };
        let changed = self.apply(&op).expect("a local write is valid");
        debug_assert!(changed, "a local write is stamped after the current stamp");
        Ok(op)
    }

    /// The current value (nil if never written).
    pub fn get(&self) -> &Value {
        &self.value
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<&Hlc> {
        self.stamp.as_ref()
    }
}

impl Crdt for LwwRegister {
    type Op = LwwOp;
    const KIND: CrdtKind = CrdtKind::Lww;

    fn validate_op(&self, op: &LwwOp) -> Result<(), ValidationError> {
        if !op.value.within_depth_limit() {
            return Err(ValidationError::TooDeep);
        }
        if op.stamp.is_none() && op.value != Value::Nil {
            return Err(ValidationError::BadOp { reason: "an LWW write without a stamp must be nil" });
        }
        Ok(())
    }

    fn apply(&mut self, op: &LwwOp) -> Result<bool, ValidationError> {
        self.validate_op(op)?;
        if (&op.stamp, &op.value) > (&self.stamp, &self.value) {
            self.stamp = op.stamp;
            self.value = op.value.clone();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn state_op(&self) -> LwwOp {
        LwwOp { value: self.value.clone(), stamp: self.stamp }
    }

    fn commit_ids(_op: &LwwOp) -> Vec<ContentId> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_write_wins_and_lagging_clock_still_advances() {
        let (a, b) = (ActorId::from_u128(1), ActorId::from_u128(2));
        let mut x = LwwRegister::default();
        let mut y = LwwRegister::default();
        let w1 = x.set(Value::map([("a", 1)]), 1_000, a).unwrap();
        y.apply(&w1).unwrap();
        // y's wall clock is behind, but its write comes after what it saw.
        let w2 = y.set(Value::map([("b", "2")]), 10, b).unwrap();
        assert!(x.apply(&w2).unwrap());
        assert_eq!(x, y);
        assert_eq!(x.get(), &Value::map([("b", "2")]));
        assert!(!x.apply(&w1).unwrap(), "an older write changes nothing");
    }

    #[test]
    fn forged_equal_stamps_resolve_by_value() {
        let stamp = Some(Hlc { wall_ms: 5, counter: 0, actor: ActorId::from_u128(1) });
        let p = LwwOp { value: Value::from(1), stamp };
        let q = LwwOp { value: Value::from(2), stamp };
        let mut x = LwwRegister::default();
        let mut y = LwwRegister::default();
        x.apply(&p).unwrap();
        x.apply(&q).unwrap();
        y.apply(&q).unwrap();
        y.apply(&p).unwrap();
        assert_eq!(x, y);
        let bad = LwwOp { value: Value::from(1), stamp: None };
        assert!(x.apply(&bad).is_err());
    }

    /// A forged write at the end of the clock's range must not make later local writes vanish.
    #[test]
    fn a_local_write_after_a_maximal_stamp_fails_instead_of_losing() {
        let forged = LwwOp {
            value: Value::from("forged"),
            stamp: Some(Hlc { wall_ms: u64::MAX, counter: u32::MAX, actor: ActorId::from_bytes([0xff; 16]) }),
        };
        let mut r = LwwRegister::default();
        r.apply(&forged).unwrap();
        assert_eq!(
            r.set(Value::from("mine"), 1_000, ActorId::from_u128(1)),
            Err(OpError::ClockExhausted("clock".into()))
        );
        assert_eq!(r.get(), &Value::from("forged"));
    }
}
