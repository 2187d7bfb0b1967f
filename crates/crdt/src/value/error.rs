//! The error of converting between serde types and [`Value`](super::Value).

use std::fmt;

/// Why a serde type could not be converted to or from a [`Value`](super::Value).
///
/// Returned by [`to_value`](super::to_value) and [`from_value`](super::from_value). Most errors come
/// from the `Serialize`/`Deserialize` implementations themselves (or from serde's own type checks,
/// e.g. "invalid type: string \"x\", expected u8") and arrive as [`ValueError::Custom`] with serde's
/// message; the value model's own limits have their own variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A message from a `Serialize` or `Deserialize` implementation, or one of serde's type errors.
    #[error("{0}")]
    Custom(String),
    /// A `u128` above `i128::MAX` was serialized: [`Value::Int`](super::Value::Int) holds an `i128`.
    #[error("integer {0} is too large for a value (the largest is i128::MAX)")]
    IntegerTooLarge(u128),
    /// An integer does not fit the integer type it is deserialized into.
    #[error("integer {value} is out of range for {target}")]
    IntegerOutOfRange {
        /// The integer in the value.
        value: i128,
        /// The Rust type asked for (`"u8"`, `"i64"`, …).
        target: &'static str,
    },
}

impl serde::ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::Custom(msg.to_string())
    }
}

impl serde::de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::Custom(msg.to_string())
    }
}
