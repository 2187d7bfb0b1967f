//! Property tests of the value model: canonical encoding, content ids and the serde bridge.

use std::collections::BTreeMap;

use proptest::prelude::*;
use replikativ_crdt::Value;
use replikativ_crdt::value::{ValueError, from_value, to_value};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Strategies

/// Integers from the whole `i128` range (`wide`) or only those `i64`/`u64` can hold.
fn arb_int(wide: bool) -> BoxedStrategy<i128> {
    let narrow = prop_oneof![
        (-3i128..=3),
        any::<i64>().prop_map(i128::from),
        any::<u64>().prop_map(i128::from),
        Just(i128::from(i64::MIN)),
        Just(i128::from(u64::MAX)),
    ];
    if wide {
        prop_oneof![4 => narrow, 1 => any::<i128>(), 1 => prop::sample::select(vec![i128::MIN, i128::MAX])]
            .boxed()
    } else {
        narrow.boxed()
    }
}

fn arb_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => prop::num::f64::ANY,
        1 => prop::sample::select(vec![
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff8_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
        ]),
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
        prop::sample::select(vec!["", "a", "a\u{0}", "\u{0}", "grüße 🌍", "nil"]).prop_map(str::to_owned),
    ]
}

fn arb_leaf(wide_ints: bool) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        arb_int(wide_ints).prop_map(Value::Int),
        arb_float().prop_map(Value::Float),
        arb_string().prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
    ]
}

/// Any value: bounded depth and size, with mixed-type map keys.
fn arb_value_with(wide_ints: bool) -> impl Strategy<Value = Value> {
    arb_leaf(wide_ints).prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::vec((inner.clone(), inner), 0..6)
                .prop_map(|entries| Value::Map(entries.into_iter().collect())),
        ]
    })
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_value_with(true)
}

/// Values over a tiny alphabet, so that pairs are often equal or nearly equal.
fn arb_small_value() -> impl Strategy<Value = Value> {
    let leaf = prop::sample::select(vec![
        Value::Nil,
        Value::Bool(false),
        Value::Int(0),
        Value::Int(1),
        Value::Float(0.0),
        Value::Float(-0.0),
        Value::from(""),
        Value::from("a"),
        Value::from("a\u{0}"),
        Value::Bytes(vec![]),
        Value::Bytes(vec![0]),
    ]);
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::List),
            prop::collection::vec((inner.clone(), inner), 0..3)
                .prop_map(|entries| Value::Map(entries.into_iter().collect())),
        ]
    })
}

/// Map entries in insertion order.
type Entries = Vec<(Value, Value)>;

/// Distinct-keyed entries, and the same entries in a shuffled order.
fn arb_entries_and_shuffle() -> impl Strategy<Value = (Entries, Entries)> {
    prop::collection::vec((arb_value(), arb_value()), 0..10).prop_flat_map(|mut entries| {
        let mut seen = std::collections::BTreeSet::new();
        entries.retain(|(k, _)| seen.insert(k.clone()));
        (Just(entries.clone()), Just(entries).prop_shuffle())
    })
}

/// JSON documents that `serde_json::Value` can hold. Floats are short dyadic fractions, which JSON text
/// carries exactly (`serde_json` parses other decimals with a last-bit error unless its
/// `float_roundtrip` feature is on).
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (any::<i16>(), 0..8).prop_map(|(m, e)| serde_json::Value::from(f64::from(m) / f64::from(1 << e))),
        Just(serde_json::Value::from(-0.0)),
        arb_string().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((arb_string(), inner), 0..6)
                .prop_map(|entries| serde_json::Value::Object(entries.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// Canonical encoding and content ids

proptest! {
    #[test]
    fn encoded_len_is_the_length_of_the_encoding(v in arb_value()) {
        prop_assert_eq!(v.encoded_len(), v.encode().len());
    }

    #[test]
    fn decode_inverts_encode(v in arb_value()) {
        let bytes = v.encode();
        let back = Value::decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(back.encode(), bytes);
        let mut appended = vec![0xaa];
        v.encode_into(&mut appended);
        prop_assert_eq!(&appended[1..], &v.encode()[..]);
        prop_assert_eq!(v.content_id(), replikativ_crdt::ContentId::hash_bytes(&v.encode()));
    }

    #[test]
    fn map_identity_ignores_insertion_order((entries, shuffled) in arb_entries_and_shuffle()) {
        let a = Value::Map(entries.into_iter().collect());
        let b = Value::Map(shuffled.into_iter().collect());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.encode(), b.encode());
        prop_assert_eq!(a.content_id(), b.content_id());
    }

    #[test]
    fn distinct_values_have_distinct_encodings(v1 in arb_value(), v2 in arb_value()) {
        prop_assert_eq!(v1 == v2, v1.encode() == v2.encode(), "{:?} vs {:?}", v1, v2);
        prop_assert_eq!(v1 == v2, v1.content_id() == v2.content_id(), "{:?} vs {:?}", v1, v2);
    }

    #[test]
    fn near_equal_values_are_told_apart(v1 in arb_small_value(), v2 in arb_small_value()) {
        prop_assert_eq!(v1 == v2, v1.encode() == v2.encode(), "{:?} vs {:?}", v1, v2);
        prop_assert_eq!(v1 == v2, v1.content_id() == v2.content_id(), "{:?} vs {:?}", v1, v2);
        // The encoding is prefix-free: no value's encoding is a proper prefix of another's.
        let (e1, e2) = (v1.encode(), v2.encode());
        prop_assert!(e1 == e2 || !(e2.starts_with(&e1) || e1.starts_with(&e2)));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = Value::decode(&bytes) {
            prop_assert_eq!(v.encode(), bytes);
        }
    }

    #[test]
    fn mutated_encodings_decode_canonically_or_not_at_all(
        v in arb_value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let mut bytes = v.encode();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
        }
        if let Ok(decoded) = Value::decode(&bytes) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }
}

#[test]
fn original_hasher_collisions_do_not_happen() {
    let pairs = [
        (Value::list(Vec::<Value>::new()), Value::list([Value::Nil])),
        (Value::list(["a\u{0}"]), Value::list([Value::from("a"), Value::Nil, Value::Nil])),
        (Value::map(Vec::<(Value, Value)>::new()), Value::map([(Value::Nil, Value::Nil)])),
        (Value::Int(1), Value::Float(1.0)),
        (Value::from("a"), Value::Bytes(b"a".to_vec())),
        (Value::list([Value::list([1]), Value::list([2])]), Value::list([Value::list([1, 2])])),
    ];
    for (a, b) in pairs {
        assert_ne!(a, b);
        assert_ne!(a.encode(), b.encode(), "{a:?} vs {b:?}");
        assert_ne!(a.content_id(), b.content_id(), "{a:?} vs {b:?}");
    }
}

#[test]
fn all_nans_are_one_value() {
    let nans = [f64::NAN, -f64::NAN, f64::from_bits(0x7ff0_0000_0000_0001), f64::from_bits(u64::MAX)];
    for nan in nans {
        assert_eq!(Value::Float(nan), Value::Float(f64::NAN));
        assert_eq!(Value::Float(nan).content_id(), Value::Float(f64::NAN).content_id());
    }
    assert_ne!(Value::Float(0.0).content_id(), Value::Float(-0.0).content_id());
}

// ---------------------------------------------------------------------------------------------
// serde

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meters(u32);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Triple(i8, String, Option<u16>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Key {
    Root,
    Id(u64),
    Path(Vec<String>),
    Span { from: i32, to: i32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Op {
    Noop,
    Put(String),
    Move(i32, i64),
    Rename { from: String, to: Option<String> },
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
    Nested(Box<Op>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    marker: Marker,
    meters: Meters,
    triple: Triple,
    ops: Vec<Op>,
    maybe: Option<Key>,
    plain_bytes: Vec<u8>,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    big: u64,
    huge: i128,
    letter: char,
    ratio: f32,
    by_id: BTreeMap<u64, String>,
    by_pair: BTreeMap<(i16, bool), Vec<u8>>,
    by_key: BTreeMap<Key, Option<bool>>,
    nested: BTreeMap<String, BTreeMap<i32, Vec<Key>>>,
    unit: (),
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        Just(Key::Root),
        any::<u64>().prop_map(Key::Id),
        prop::collection::vec(arb_string(), 0..3).prop_map(Key::Path),
        (any::<i32>(), any::<i32>()).prop_map(|(from, to)| Key::Span { from, to }),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        Just(Op::Noop),
        arb_string().prop_map(Op::Put),
        (any::<i32>(), any::<i64>()).prop_map(|(a, b)| Op::Move(a, b)),
        (arb_string(), proptest::option::of(arb_string())).prop_map(|(from, to)| Op::Rename { from, to }),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Op::Blob),
    ];
    leaf.prop_recursive(2, 4, 1, |inner| inner.prop_map(|op| Op::Nested(Box::new(op))))
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        (any::<u32>(), (any::<i8>(), arb_string(), proptest::option::of(any::<u16>()))),
        prop::collection::vec(arb_op(), 0..4),
        proptest::option::of(arb_key()),
        (prop::collection::vec(any::<u8>(), 0..6), prop::collection::vec(any::<u8>(), 0..6)),
        (prop_oneof![any::<u64>(), Just(u64::MAX)], arb_int(true), any::<char>(), prop::num::f32::NORMAL),
        prop::collection::btree_map(any::<u64>(), arb_string(), 0..3),
        prop::collection::btree_map(
            (any::<i16>(), any::<bool>()),
            prop::collection::vec(any::<u8>(), 0..3),
            0..3,
        ),
        prop::collection::btree_map(arb_key(), proptest::option::of(any::<bool>()), 0..3),
        prop::collection::btree_map(
            arb_string(),
            prop::collection::btree_map(any::<i32>(), prop::collection::vec(arb_key(), 0..2), 0..2),
            0..2,
        ),
    )
        .prop_map(
            |(
                (meters, (a, b, c)),
                ops,
                maybe,
                (plain_bytes, bytes),
                (big, huge, letter, ratio),
                by_id,
                by_pair,
                by_key,
                nested,
            )| Record {
                marker: Marker,
                meters: Meters(meters),
                triple: Triple(a, b, c),
                ops,
                maybe,
                plain_bytes,
                bytes,
                big,
                huge,
                letter,
                ratio,
                by_id,
                by_pair,
                by_key,
                nested,
                unit: (),
            },
        )
}

proptest! {
    #[test]
    fn derived_types_round_trip_through_value(record in arb_record()) {
        let value = to_value(&record).expect("serializes");
        let back: Record = from_value(value.clone()).expect("deserializes");
        prop_assert_eq!(&back, &record);
        // The value itself survives its canonical encoding.
        let decoded: Record = from_value(Value::decode(&value.encode()).unwrap()).unwrap();
        prop_assert_eq!(decoded, record);
    }

    #[test]
    fn value_is_its_own_serde_image(v in arb_value()) {
        prop_assert_eq!(&to_value(&v).unwrap(), &v);
        prop_assert_eq!(from_value::<Value>(v.clone()).unwrap(), v);
    }

    #[test]
    fn json_round_trips_through_value(json in arb_json()) {
        let value = to_value(&json).unwrap();
        let back: serde_json::Value = from_value(value.clone()).unwrap();
        prop_assert_eq!(&back, &json);
        // And through JSON text, with Value's own Serialize/Deserialize.
        let text = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), json);
        prop_assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn msgpack_round_trips_value(v in arb_value_with(false)) {
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        let back: Value = rmp_serde::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, v);
    }
}

#[test]
fn representation_follows_the_documented_rules() {
    let s = Value::from;
    assert_eq!(to_value(&Marker).unwrap(), Value::Nil);
    assert_eq!(to_value(&Meters(5)).unwrap(), Value::Int(5));
    assert_eq!(
        to_value(&Triple(1, "x".into(), None)).unwrap(),
        Value::list([Value::Int(1), s("x"), Value::Nil])
    );
    assert_eq!(to_value(&Op::Noop).unwrap(), s("Noop"));
    assert_eq!(to_value(&Op::Put("v".into())).unwrap(), Value::map([("Put", "v")]));
    assert_eq!(to_value(&Op::Move(1, 2)).unwrap(), Value::map([("Move", Value::list([1, 2]))]));
    assert_eq!(
        to_value(&Op::Rename { from: "a".into(), to: None }).unwrap(),
        Value::map([("Rename", Value::map([("from", s("a")), ("to", Value::Nil)]))])
    );
    assert_eq!(to_value(&Op::Blob(vec![1])).unwrap(), Value::map([("Blob", Value::Bytes(vec![1]))]));
    assert_eq!(to_value(&vec![1u8]).unwrap(), Value::list([1]));
    assert_eq!(to_value(&u64::MAX).unwrap(), Value::Int(u64::MAX.into()));
    assert_eq!(
        to_value(&BTreeMap::from([((1, true), 'c')])).unwrap(),
        Value::map([(Value::list([Value::Int(1), Value::Bool(true)]), s("c"))])
    );
    assert_eq!(to_value(&u128::MAX), Err(ValueError::IntegerTooLarge(u128::MAX)));
}

#[test]
fn deserializing_is_lenient_where_documented_and_strict_elsewhere() {
    // A unit variant also reads as `{name: nil}`; a struct also reads from a list of its fields.
    assert_eq!(from_value::<Op>(Value::map([("Noop", Value::Nil)])).unwrap(), Op::Noop);
    assert_eq!(
        from_value::<Key>(Value::map([("Span", Value::list([1, 2]))])).unwrap(),
        Key::Span { from: 1, to: 2 }
    );
    // A plain Vec<u8> reads Bytes, serde_bytes reads a list.
    assert_eq!(from_value::<Vec<u8>>(Value::Bytes(vec![9])).unwrap(), vec![9]);
    assert_eq!(from_value::<Op>(Value::map([("Blob", Value::list([9]))])).unwrap(), Op::Blob(vec![9]));
    // Errors.
    let err = from_value::<Meters>(Value::Int(-1)).unwrap_err();
    assert_eq!(err, ValueError::IntegerOutOfRange { value: -1, target: "u32" });
    assert!(from_value::<Op>(Value::from("Nope")).unwrap_err().to_string().contains("unknown variant"));
    assert!(from_value::<Op>(Value::from("Put")).is_err(), "a newtype variant needs its payload");
    assert!(from_value::<Op>(Value::map([("Put", 1), ("Noop", 2)])).is_err());
    assert!(from_value::<Op>(Value::Int(0)).is_err());
    assert!(
        from_value::<Record>(Value::map([("marker", Value::Nil)]))
            .unwrap_err()
            .to_string()
            .contains("missing field")
    );
    assert!(from_value::<(u8, u8)>(Value::list([1, 2, 3])).is_err());
}
