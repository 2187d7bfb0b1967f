//! Deserializing any serde type from a [`Value`], and `Value` itself through serde.
//!
//! # Representation
//!
//! [`from_value`] is the inverse of [`to_value`](super::to_value) (see the table in `ser.rs`), and
//! like it is human-readable (`is_human_readable() == true`). Self-describing dispatch
//! (`deserialize_any`) visits:
//!
//! | `Value`  | visitor call                                                              |
//! |----------|---------------------------------------------------------------------------|
//! | `Nil`    | `visit_unit`                                                              |
//! | `Bool`   | `visit_bool`                                                              |
//! | `Int`    | `visit_i64` if it fits, else `visit_u64` if it fits, else `visit_i128`    |
//! | `Float`  | `visit_f64`                                                               |
//! | `String` | `visit_string`                                                            |
//! | `Bytes`  | `visit_byte_buf`                                                          |
//! | `List`   | `visit_seq` (every element must be consumed)                              |
//! | `Map`    | `visit_map`, entries in key order                                         |
//!
//! Type-directed hints refine this:
//!
//! - options: `Nil` is `None`, anything else is `Some` of it;
//! - integer types: an `Int` in range is visited with the exact type, one out of range is
//!   [`ValueError::IntegerOutOfRange`];
//! - seqs and tuples also accept `Bytes`, as a sequence of `u8` integers (so a plain `Vec<u8>`
//!   reads both its own `List` form and `Bytes`);
//! - bytes and byte bufs also accept a `List` of integers in `0..=255`, visited as a byte buf;
//! - enums are externally tagged: a `String` is a unit variant, a single-entry `Map` is
//!   `{ variant: payload }` (a unit variant may carry `Nil` as payload);
//! - newtype structs are transparent; unit structs are `Nil`;
//! - identifiers (field and variant names) are strings, or non-negative `Int` indices;
//! - structs read a `Map` by field name (or a `List` in field order).
//!
//! `Value`'s own `Deserialize` accepts everything a self-describing format produces: unit and
//! `None` become `Nil`, every integer up to `i128` (and `u128` up to `i128::MAX`) becomes `Int`,
//! `f32`/`f64` become `Float`, `char`/str become `String`, bytes become `Bytes`, seqs become `List`
//! and maps become `Map` (a later duplicate key replaces an earlier one).

use std::collections::{BTreeMap, btree_map};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};

use super::{Value, ValueError};

/// Converts a [`Value`] into any deserializable type.
///
/// The inverse of [`to_value`](super::to_value): `from_value(to_value(&x)?)? == x` for every
/// serde type whose `Serialize` and `Deserialize` agree. Beyond that it is lenient where the value
/// model allows two spellings: a `Vec<u8>` reads `Bytes` as well as a `List` of integers, a
/// `serde_bytes::ByteBuf` reads a `List` of integers in `0..=255` as well as `Bytes`, a unit enum
/// variant reads `"Name"` or `{"Name": nil}`, and a struct reads a `List` of its fields in order.
///
/// # Errors
///
/// [`ValueError::IntegerOutOfRange`] when an `Int` does not fit the requested integer type, and
/// [`ValueError::Custom`] with serde's message for any other mismatch (a missing field, an
/// unknown variant, a string where a number was expected, …).
///
/// ```
/// use replikativ_crdt::Value;
/// use replikativ_crdt::value::from_value;
///
/// let pair: (u8, Option<String>) = from_value(Value::list([Value::Int(7), Value::Nil])).unwrap();
/// assert_eq!(pair, (7, None));
/// assert!(from_value::<u8>(Value::Int(300)).is_err());
/// ```
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    T::deserialize(ValueDeserializer(value))
}

/// Reads natural data from human-readable formats, and the canonical encoding (one byte string,
/// checked by [`Value::decode`]) from binary ones; see the `Serialize` impl.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(ValueVisitor)
        } else {
            deserializer.deserialize_bytes(CanonicalVisitor)
        }
    }
}

/// Decodes a value from its canonical encoding.
struct CanonicalVisitor;

impl<'de> Visitor<'de> for CanonicalVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the canonical encoding of a value")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Value::decode(v).map_err(E::custom)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

/// Builds a [`Value`] from whatever a self-describing deserializer reports.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v).map(Value::Int).map_err(|_| E::custom(ValueError::IntegerTooLarge(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some((key, value)) = map.next_entry()? {
            entries.insert(key, value);
        }
        Ok(Value::Map(entries))
    }
}

/// How a value shows up in serde's "invalid type" messages.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Nil => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
            (Ok(i), _) => Unexpected::Signed(i),
            (_, Ok(u)) => Unexpected::Unsigned(u),
            _ => Unexpected::Other("128-bit integer"),
        },
        Value::Float(f) => Unexpected::Float(*f),
        Value::String(s) => Unexpected::Str(s),
        Value::Bytes(b) => Unexpected::Bytes(b),
        Value::List(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

fn invalid_type(value: &Value, expected: &dyn de::Expected) -> ValueError {
    de::Error::invalid_type(unexpected(value), expected)
}

/// A list of integers in `0..=255` as bytes, or the list back if it is anything else.
fn list_as_bytes(items: Vec<Value>) -> Result<Vec<u8>, Vec<Value>> {
    let all_bytes = items.iter().all(|v| matches!(v, Value::Int(i) if u8::try_from(*i).is_ok()));
    if !all_bytes {
        return Err(items);
    }
    Ok(items.iter().map(|v| if let Value::Int(i) = v { *i as u8 } else { unreachable!() }).collect())
}

/// Visits a sequence, then insists that the visitor consumed all of it.
fn visit_list<'de, I, V>(items: I, visitor: V) -> Result<V::Value, ValueError>
where
    I: ExactSizeIterator<Item = Value>,
    V: Visitor<'de>,
{
    let len = items.len();
    let mut seq = SeqDeserializer { items };
    let out = visitor.visit_seq(&mut seq)?;
    match seq.items.len() {
        0 => Ok(out),
        left => Err(de::Error::invalid_length(len, &format!("{} elements", len - left).as_str())),
    }
}

/// The deserializer behind [`from_value`]: owns the value it takes apart.
struct ValueDeserializer(Value);

impl<'de> IntoDeserializer<'de, ValueError> for ValueDeserializer {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $ty:ident, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            match self.0 {
                Value::Int(i) => match $ty::try_from(i) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(ValueError::IntegerOutOfRange { value: i, target: stringify!($ty) }),
                },
                other => ValueDeserializer(other).deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for ValueDeserializer {
    type Error = ValueError;

    fn is_human_readable(&self) -> bool {
        true
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Nil => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => {
                if let Ok(i) = i64::try_from(i) {
                    visitor.visit_i64(i)
                } else if let Ok(u) = u64::try_from(i) {
                    visitor.visit_u64(u)
                } else {
                    visitor.visit_i128(i)
                }
            }
            Value::Float(f) => visitor.visit_f64(f),
            Value::String(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) => visit_list(items.into_iter(), visitor),
            Value::Map(entries) => {
                let mut map = MapDeserializer { entries: entries.into_iter(), value: None };
                visitor.visit_map(&mut map)
            }
        }
    }

    deserialize_integer! {
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Nil => visitor.visit_none(),
            other => visitor.visit_some(ValueDeserializer(other)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::List(items) => match list_as_bytes(items) {
                Ok(bytes) => visitor.visit_byte_buf(bytes),
                Err(items) => visit_list(items.into_iter(), visitor),
            },
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::Bytes(bytes) => visit_list(bytes.into_iter().map(|b| Value::Int(b.into())), visitor),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            Value::String(name) => {
                visitor.visit_enum(EnumDeserializer { variant: Value::String(name), payload: None })
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (variant, payload) = entries.into_iter().next().expect("one entry");
                visitor.visit_enum(EnumDeserializer { variant, payload: Some(payload) })
            }
            other => Err(invalid_type(&other, &"a string or a map with a single key (an enum variant)")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        // Field and variant identifiers take indices as `u64` only (derived visitors have no `visit_i64`).
        match self.0 {
            Value::Int(i) if i >= 0 && i <= i128::from(u64::MAX) => visitor.visit_u64(i as u64),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        drop(self);
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool f32 f64 char str string unit unit_struct map struct
    }
}

/// Hands a list's elements to a visitor.
struct SeqDeserializer<I> {
    items: I,
}

impl<'de, I: ExactSizeIterator<Item = Value>> SeqAccess<'de> for SeqDeserializer<I> {
    type Error = ValueError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        self.items.next().map(|item| seed.deserialize(ValueDeserializer(item))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Hands a map's entries to a visitor, in key order.
struct MapDeserializer {
    entries: btree_map::IntoIter<Value, Value>,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for MapDeserializer {
    type Error = ValueError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ValueError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(ValueDeserializer(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, ValueError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| ValueError::Custom("next_value called before next_key".into()))?;
        seed.deserialize(ValueDeserializer(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An externally tagged enum: the variant (a name, or an index) and its payload, if any.
struct EnumDeserializer {
    variant: Value,
    payload: Option<Value>,
}

impl<'de> EnumAccess<'de> for EnumDeserializer {
    type Error = ValueError;
    type Variant = VariantDeserializer;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), ValueError> {
        let variant = seed.deserialize(ValueDeserializer(self.variant))?;
        Ok((variant, VariantDeserializer { payload: self.payload }))
    }
}

/// The payload of an enum variant.
struct VariantDeserializer {
    payload: Option<Value>,
}

impl VariantDeserializer {
    /// The payload of a variant that must have one.
    fn require(self, expected: &str) -> Result<Value, ValueError> {
        self.payload.ok_or_else(|| de::Error::invalid_type(Unexpected::UnitVariant, &expected))
    }
}

impl<'de> VariantAccess<'de> for VariantDeserializer {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        match self.payload {
            None | Some(Value::Nil) => Ok(()),
            Some(other) => Err(invalid_type(&other, &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, ValueError> {
        seed.deserialize(ValueDeserializer(self.require("newtype variant")?))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, ValueError> {
        ValueDeserializer(self.require("tuple variant")?).deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        ValueDeserializer(self.require("struct variant")?).deserialize_any(visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_check_their_range() {
        assert_eq!(from_value::<u8>(Value::Int(255)).unwrap(), 255);
        assert_eq!(
            from_value::<u8>(Value::Int(256)),
            Err(ValueError::IntegerOutOfRange { value: 256, target: "u8" })
        );
        assert_eq!(from_value::<i128>(Value::Int(i128::MIN)).unwrap(), i128::MIN);
        assert!(from_value::<u128>(Value::Int(-1)).is_err());
        assert!(from_value::<u32>(Value::from("1")).unwrap_err().to_string().contains("expected u32"));
        // Integers read as floats, like in JSON.
        assert_eq!(from_value::<f64>(Value::Int(2)).unwrap(), 2.0);
    }

    #[test]
    fn bytes_and_lists_read_each_other() {
        let bytes = Value::Bytes(vec![1, 2, 255]);
        let list = Value::list([1u8, 2, 255]);
        assert_eq!(from_value::<Vec<u8>>(bytes.clone()).unwrap(), vec![1, 2, 255]);
        assert_eq!(from_value::<Vec<u8>>(list.clone()).unwrap(), vec![1, 2, 255]);
        assert_eq!(from_value::<serde_bytes::ByteBuf>(list).unwrap().into_vec(), vec![1, 2, 255]);
        assert_eq!(from_value::<serde_bytes::ByteBuf>(bytes).unwrap().into_vec(), vec![1, 2, 255]);
        assert!(from_value::<serde_bytes::ByteBuf>(Value::list([256])).is_err());
        assert_eq!(from_value::<[u8; 2]>(Value::Bytes(vec![7, 8])).unwrap(), [7, 8]);
    }

    #[test]
    fn leftover_list_elements_are_an_error() {
        assert!(from_value::<(u8, u8)>(Value::list([1, 2, 3])).is_err());
        assert!(from_value::<(u8, u8)>(Value::list([1])).is_err());
    }

    #[test]
    fn options_and_enums() {
        assert_eq!(from_value::<Option<u8>>(Value::Nil).unwrap(), None);
        assert_eq!(from_value::<Option<u8>>(Value::Int(1)).unwrap(), Some(1));
        assert!(from_value::<Result<u8, String>>(Value::list([1])).is_err());
        assert!(from_value::<Result<u8, String>>(Value::map([("Ok", 1), ("Err", 2)])).is_err());
        assert_eq!(from_value::<Result<u8, String>>(Value::map([("Ok", 1)])).unwrap(), Ok(1));
        // Variants (and fields) may also be named by index.
        assert_eq!(from_value::<Result<u8, String>>(Value::map([(1, "e")])).unwrap(), Err("e".into()));
    }
}
