//! Golden vectors: the canonical encoding and content id of named values are pinned in
//! `tests/vectors/values.json`, so any change to the encoding (and so to every content id) is caught.

use std::collections::{BTreeMap, BTreeSet};

use replikativ_crdt::Value;

const VECTORS: &str = include_str!("vectors/values.json");

fn s(x: &str) -> Value {
    Value::from(x)
}

/// Every value the vector file pins, by name.
fn named_values() -> Vec<(&'static str, Value)> {
    let mixed_keys = Value::map([
        (Value::Nil, s("nil key")),
        (Value::Bool(true), s("bool key")),
        (Value::Int(-7), s("int key")),
        (Value::Float(2.5), s("float key")),
        (s("k"), s("string key")),
        (Value::Bytes(vec![0xca, 0xfe]), s("bytes key")),
        (Value::list([1, 2]), s("list key")),
        (Value::map([("inner", 1)]), s("map key")),
    ]);
    let nested_map = Value::map([
        ("name", s("replikativ")),
        ("tags", Value::list(["crdt", "p2p"])),
        (
            "meta",
            Value::map([
                (s("version"), Value::Int(1)),
                (s("extra"), Value::map([(Value::Int(0), Value::Nil)])),
            ]),
        ),
    ]);
    let entries = [(s("b"), Value::Int(2)), (Value::Int(1), s("one")), (s("a"), Value::list([Value::Nil]))];
    let forward: BTreeMap<Value, Value> = entries.iter().cloned().collect();
    let backward: BTreeMap<Value, Value> = entries.iter().rev().cloned().collect();
    vec![
        ("nil", Value::Nil),
        ("true", Value::Bool(true)),
        ("false", Value::Bool(false)),
        ("int 0", Value::Int(0)),
        ("int 1", Value::Int(1)),
        ("int -1", Value::Int(-1)),
        ("int 64", Value::Int(64)),
        ("int i64::MAX", Value::from(i64::MAX)),
        ("int i64::MIN", Value::from(i64::MIN)),
        ("int u64::MAX", Value::from(u64::MAX)),
        ("int 10^30", Value::Int(10i128.pow(30))),
        ("int i128::MAX", Value::Int(i128::MAX)),
        ("int i128::MIN", Value::Int(i128::MIN)),
        ("float 1.5", Value::Float(1.5)),
        ("float 0.0", Value::Float(0.0)),
        ("float -0.0", Value::Float(-0.0)),
        ("float NaN", Value::Float(f64::NAN)),
        ("float inf", Value::Float(f64::INFINITY)),
        ("float -inf", Value::Float(f64::NEG_INFINITY)),
        ("string empty", s("")),
        ("string a", s("a")),
        ("string hello", s("hello")),
        ("string unicode", s("grüße 🌍")),
        ("string with NUL", s("a\u{0}b")),
        ("bytes empty", Value::Bytes(vec![])),
        ("bytes some", Value::Bytes(vec![0x00, 0x01, 0x7f, 0x80, 0xff])),
        ("list empty", Value::list(Vec::<Value>::new())),
        ("list [nil]", Value::list([Value::Nil])),
        ("list [\"a\\u0000\"]", Value::list(["a\u{0}"])),
        ("list [\"a\", nil, nil]", Value::list([s("a"), Value::Nil, Value::Nil])),
        (
            "list nested",
            Value::list([
                Value::list([Value::Int(1), Value::list([Value::Int(2), Value::list(Vec::<Value>::new())])]),
                Value::list([Value::Nil]),
                Value::list([s("x")]),
            ]),
        ),
        ("map empty", Value::map(Vec::<(Value, Value)>::new())),
        ("map string keys", Value::map([("a", 1), ("b", 2)])),
        ("map mixed keys", mixed_keys),
        ("map nested", nested_map),
        ("map inserted forward", Value::Map(forward)),
        ("map inserted backward", Value::Map(backward)),
    ]
}

struct Vector {
    name: String,
    encoding: Vec<u8>,
    content_id: String,
}

fn file_vectors() -> Vec<Vector> {
    let json: serde_json::Value = serde_json::from_str(VECTORS).expect("values.json is JSON");
    let field = |entry: &serde_json::Value, key: &str| -> String {
        entry[key].as_str().unwrap_or_else(|| panic!("entry {entry} lacks string field {key:?}")).to_owned()
    };
    json["vectors"]
        .as_array()
        .expect("a \"vectors\" array")
        .iter()
        .map(|entry| Vector {
            name: field(entry, "name"),
            encoding: hex::decode(field(entry, "encoding")).expect("hex encoding"),
            content_id: field(entry, "content_id"),
        })
        .collect()
}

#[test]
fn every_vector_matches_the_implementation() {
    let values: BTreeMap<&str, Value> = named_values().into_iter().collect();
    let vectors = file_vectors();
    assert!(vectors.len() >= 24, "only {} vectors", vectors.len());
    let mut seen = BTreeSet::new();
    for vector in &vectors {
        assert!(seen.insert(vector.name.as_str()), "vector {:?} appears twice", vector.name);
        let value = values
            .get(vector.name.as_str())
            .unwrap_or_else(|| panic!("vector {:?} in values.json is not built by this test", vector.name));
        assert_eq!(
            hex::encode(value.encode()),
            hex::encode(&vector.encoding),
            "encoding of {:?}",
            vector.name
        );
        assert_eq!(value.content_id().to_hex(), vector.content_id, "content id of {:?}", vector.name);
        assert_eq!(
            replikativ_crdt::ContentId::hash_bytes(&vector.encoding).to_hex(),
            vector.content_id,
            "content id of {:?} is not blake3 of its encoding",
            vector.name
        );
        assert_eq!(&Value::decode(&vector.encoding).expect("decodes"), value, "decoding {:?}", vector.name);
    }
    for name in values.keys() {
        assert!(seen.contains(name), "value {name:?} has no vector in values.json");
    }
}

#[test]
fn maps_from_either_insertion_order_are_one_vector() {
    let vectors = file_vectors();
    let find = |name: &str| vectors.iter().find(|v| v.name == name).expect(name);
    let (a, b) = (find("map inserted forward"), find("map inserted backward"));
    assert_eq!(a.encoding, b.encoding);
    assert_eq!(a.content_id, b.content_id);
}

#[test]
fn colliding_inputs_of_the_original_hasher_have_distinct_vectors() {
    let vectors = file_vectors();
    let find = |name: &str| vectors.iter().find(|v| v.name == name).expect(name);
    for (x, y) in [("list empty", "list [nil]"), ("list [\"a\\u0000\"]", "list [\"a\", nil, nil]")] {
        assert_ne!(find(x).encoding, find(y).encoding, "{x} vs {y}");
        assert_ne!(find(x).content_id, find(y).content_id, "{x} vs {y}");
    }
}

/// Encodings derived by hand from the table in `value/canonical.rs`, tying the spec to the code.
#[test]
fn hand_checked_encodings() {
    let cases: [(Value, &str); 13] = [
        (Value::Nil, "00"),
        (Value::Bool(false), "01"),
        (Value::Bool(true), "02"),
        (Value::Int(0), "0300"),
        (Value::Int(1), "0302"),    // zigzag(1) = 2
        (Value::Int(-1), "0301"),   // zigzag(-1) = 1
        (Value::Int(64), "038001"), // zigzag(64) = 128 = LEB128 80 01
        (Value::Float(1.5), "043ff8000000000000"),
        (s("a"), "050161"),
        (Value::Bytes(vec![]), "0600"),
        (Value::list(Vec::<Value>::new()), "0700"),
        (Value::list([Value::Nil]), "070100"),
        (Value::map([(s("a"), Value::Int(1))]), "08010501610302"),
    ];
    for (value, hex) in cases {
        assert_eq!(hex::encode(value.encode()), hex, "{value:?}");
        assert_eq!(&Value::decode(&value.encode()).unwrap(), &value);
    }
}
