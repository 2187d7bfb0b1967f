//! Serializing any serde type into a [`Value`], and `Value` itself through serde.
//!
//! # Representation
//!
//! [`to_value`] maps the serde data model onto [`Value`] like `serde_json` does, except that bytes
//! stay bytes and map keys may be any value. The serializer is human-readable
//! (`is_human_readable() == true`), so types such as [`ContentId`](crate::ContentId) pick their
//! textual form.
//!
//! | serde                                        | `Value`                                   |
//! |----------------------------------------------|-------------------------------------------|
//! | unit, unit struct, `None`                    | `Nil`                                     |
//! | `Some(x)`                                    | the value of `x`                          |
//! | `bool`                                       | `Bool`                                    |
//! | every integer type                           | `Int` (`u128` above `i128::MAX` is an error) |
//! | `f32`, `f64`                                 | `Float`                                   |
//! | `char`, `str`                                | `String`                                  |
//! | bytes (`serialize_bytes`, e.g. `serde_bytes`) | `Bytes`                                  |
//! | seq, tuple, tuple struct                     | `List`                                    |
//! | map                                          | `Map` (keys of any type; a later duplicate key wins) |
//! | struct                                       | `Map` from `String` field names           |
//! | newtype struct                               | the inner value                           |
//! | unit variant                                 | `String(variant name)`                    |
//! | newtype variant                              | `Map { name: inner value }`               |
//! | tuple variant                                | `Map { name: List }`                      |
//! | struct variant                               | `Map { name: Map of fields }`             |
//!
//! A plain `Vec<u8>` is a sequence to serde and so becomes a `List` of `Int`s; wrap it with
//! `serde_bytes` to get `Bytes`. Deserializing accepts both forms (see [`from_value`](super::from_value)).
//!
//! `Value`'s own `Serialize` writes `Nil` as unit, `Int` as `i64` when it fits, else `u64`, else
//! `i128`, `Float` as `f64`, `String` as a str, `Bytes` as bytes, `List` as a seq and `Map` as a map,
//! so it round-trips through self-describing formats such as JSON (except that JSON has no bytes
//! and only string keys) and MessagePack.

use std::collections::BTreeMap;

use serde::ser::{self, Serialize, Serializer};

use super::{Value, ValueError};

/// Converts any serializable type into a [`Value`].
///
/// The mapping is described in the table below; [`from_value`](super::from_value) is its inverse.
///
/// | serde                                 | `Value`                                        |
/// |---------------------------------------|------------------------------------------------|
/// | unit, unit struct, `None`             | `Nil`                                          |
/// | `Some(x)`, newtype struct             | the inner value                                |
/// | `bool` / integers / `f32`, `f64`      | `Bool` / `Int` / `Float`                       |
/// | `char`, `str` / bytes                 | `String` / `Bytes`                             |
/// | seq, tuple, tuple struct              | `List`                                         |
/// | map / struct                          | `Map` (any keys) / `Map` with `String` keys    |
/// | unit variant                          | `String(name)`                                 |
/// | newtype, tuple, struct variant        | `Map { name: payload }` (externally tagged)    |
///
/// # Errors
///
/// A `u128` above `i128::MAX` gives [`ValueError::IntegerTooLarge`]; an error raised by the type's
/// `Serialize` implementation is passed on as [`ValueError::Custom`].
///
/// ```
/// use replikativ_crdt::Value;
/// use replikativ_crdt::value::to_value;
///
/// let v = to_value(&(1u8, "a", None::<bool>)).unwrap();
/// assert_eq!(v, Value::list([Value::Int(1), Value::from("a"), Value::Nil]));
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer)
}

/// In human-readable formats (JSON, and [`to_value`] itself) a value is written as natural data. In
/// binary formats (msgpack on the wire and in stores) it is written as its canonical encoding in one
/// byte string, so it crosses any binary format bit-exactly (integers beyond 64 bits included) and
/// keeps its content id.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(&self.encode());
        }
        match self {
            Value::Nil => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => {
                if let Ok(i) = i64::try_from(*i) {
                    serializer.serialize_i64(i)
                } else if let Ok(u) = u64::try_from(*i) {
                    serializer.serialize_u64(u)
                } else {
                    serializer.serialize_i128(*i)
                }
            }
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => serializer.collect_seq(items),
            Value::Map(entries) => serializer.collect_map(entries),
        }
    }
}

/// The serializer behind [`to_value`].
struct ValueSerializer;

fn variant_map(variant: &'static str, payload: Value) -> Value {
    Value::Map(BTreeMap::from([(Value::String(variant.to_owned()), payload)]))
}

impl Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SerializeList;
    type SerializeTuple = SerializeList;
    type SerializeTupleStruct = SerializeList;
    type SerializeTupleVariant = SerializeTupleVariant;
    type SerializeMap = SerializeMap;
    type SerializeStruct = SerializeMap;
    type SerializeStructVariant = SerializeStructVariant;

    fn is_human_readable(&self) -> bool {
        true
    }

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        i128::try_from(v).map(Value::Int).map_err(|_| ValueError::IntegerTooLarge(v))
    }

    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(v.into()))
    }

    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::String(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::String(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Nil)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ValueError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Nil)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Nil)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::String(variant.to_owned()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        Ok(variant_map(variant, value.serialize(self)?))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SerializeList, ValueError> {
        Ok(SerializeList { items: Vec::with_capacity(len.unwrap_or(0).min(4096)) })
    }

    fn serialize_tuple(self, len: usize) -> Result<SerializeList, ValueError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SerializeList, ValueError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SerializeTupleVariant, ValueError> {
        Ok(SerializeTupleVariant { variant, items: Vec::with_capacity(len.min(4096)) })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<SerializeMap, ValueError> {
        Ok(SerializeMap { entries: BTreeMap::new(), pending_key: None })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<SerializeMap, ValueError> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<SerializeStructVariant, ValueError> {
        Ok(SerializeStructVariant { variant, fields: BTreeMap::new() })
    }
}

/// Collects a seq, tuple or tuple struct into a [`Value::List`].
struct SerializeList {
    items: Vec<Value>,
}

impl ser::SerializeSeq for SerializeList {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.items.push(to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, ValueError> {
        Ok(Value::List(self.items))
    }
}

impl ser::SerializeTuple for SerializeList {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SerializeList {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

/// Collects a tuple variant into `Map { variant: List }`.
struct SerializeTupleVariant {
    variant: &'static str,
    items: Vec<Value>,
}

impl ser::SerializeTupleVariant for SerializeTupleVariant {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.items.push(to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, ValueError> {
        Ok(variant_map(self.variant, Value::List(self.items)))
    }
}

/// Collects a map or struct into a [`Value::Map`].
struct SerializeMap {
    entries: BTreeMap<Value, Value>,
    pending_key: Option<Value>,
}

impl ser::SerializeMap for SerializeMap {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.pending_key = Some(to_value(key)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| ValueError::Custom("serialize_value called before serialize_key".into()))?;
        self.entries.insert(key, to_value(value)?);
        Ok(())
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), ValueError> {
        self.entries.insert(to_value(key)?, to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, ValueError> {
        Ok(Value::Map(self.entries))
    }
}

impl ser::SerializeStruct for SerializeMap {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.entries.insert(Value::String(key.to_owned()), to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, ValueError> {
        Ok(Value::Map(self.entries))
    }
}

/// Collects a struct variant into `Map { variant: Map of fields }`.
struct SerializeStructVariant {
    variant: &'static str,
    fields: BTreeMap<Value, Value>,
}

impl ser::SerializeStructVariant for SerializeStructVariant {
    type Ok = Value;
    type Error = ValueError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.fields.insert(Value::String(key.to_owned()), to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, ValueError> {
        Ok(variant_map(self.variant, Value::Map(self.fields)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_map_as_documented() {
        assert_eq!(to_value(&()).unwrap(), Value::Nil);
        assert_eq!(to_value(&None::<u8>).unwrap(), Value::Nil);
        assert_eq!(to_value(&Some(3u8)).unwrap(), Value::Int(3));
        assert_eq!(to_value(&u64::MAX).unwrap(), Value::Int(u64::MAX.into()));
        assert_eq!(to_value(&i128::MIN).unwrap(), Value::Int(i128::MIN));
        assert_eq!(to_value(&(i128::MAX as u128)).unwrap(), Value::Int(i128::MAX));
        assert_eq!(to_value(&u128::MAX), Err(ValueError::IntegerTooLarge(u128::MAX)));
        assert_eq!(to_value(&1.5f32).unwrap(), Value::Float(1.5));
        assert_eq!(to_value(&'x').unwrap(), Value::from("x"));
        assert_eq!(to_value(serde_bytes::Bytes::new(b"ab")).unwrap(), Value::Bytes(b"ab".to_vec()));
        assert_eq!(to_value(&vec![1u8, 2]).unwrap(), Value::list([1u8, 2]));
    }

    #[test]
    fn map_keys_keep_their_type() {
        let map = BTreeMap::from([(1u8, "a"), (2, "b")]);
        assert_eq!(to_value(&map).unwrap(), Value::map([(1u8, "a"), (2, "b")]));
    }
}
