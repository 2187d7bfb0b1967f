//! JS values to and from replikativ [`Value`]s (the mapping is in the crate docs and
//! `docs/design.md` §13.4).

use std::collections::BTreeMap;

use js_sys::{Array, BigInt, Map, Object, Reflect, Uint8Array};
use replikativ_crdt::value::MAX_DEPTH;
use replikativ_crdt::{Transaction, Value};
use wasm_bindgen::{JsCast, JsValue};

/// Largest integer a JS number holds exactly (2^53 - 1); larger integers come back as `BigInt`.
pub const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;

/// A JS value as a replikativ value, or why it has none (a function, a symbol, a cycle or a value
/// nested deeper than [`MAX_DEPTH`], a `BigInt` beyond 128 bits).
pub fn to_value(js: &JsValue) -> Result<Value, String> {
    to_value_at(js, 0)
}

fn to_value_at(js: &JsValue, depth: usize) -> Result<Value, String> {
    if js.is_null() || js.is_undefined() {
        return Ok(Value::Nil);
    }
    if let Some(b) = js.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(n) = js.as_f64() {
        // A number that is a safe integer is an integer; any other number is a float.
        if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER as f64 {
            return Ok(Value::Int(n as i128));
        }
        return Ok(Value::Float(n));
    }
    if let Some(s) = js.as_string() {
        return Ok(Value::String(s));
    }
    if js.is_bigint() {
        let text: String = js.unchecked_ref::<BigInt>().to_string(10).map_err(|e| format!("{e:?}"))?.into();
        return text
            .parse::<i128>()
            .map(Value::Int)
            .map_err(|_| format!("BigInt {text} does not fit 128 bits"));
    }
    if let Some(bytes) = js.dyn_ref::<Uint8Array>() {
        return Ok(Value::Bytes(bytes.to_vec()));
    }
    if js.is_function() || js.is_symbol() {
        return Err("functions and symbols are not values".into());
    }
    if depth >= MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels (or a cycle)"));
    }
    if let Some(array) = js.dyn_ref::<Array>() {
        return array
            .iter()
            .map(|item| to_value_at(&item, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    if let Some(map) = js.dyn_ref::<Map>() {
        let mut out = BTreeMap::new();
        let mut failed = None;
        map.for_each(&mut |v, k| {
            if failed.is_some() {
                return;
            }
            match (to_value_at(&k, depth + 1), to_value_at(&v, depth + 1)) {
                (Ok(k), Ok(v)) => {
                    out.insert(k, v);
                }
                (Err(e), _) | (_, Err(e)) => failed = Some(e),
            }
        });
        return match failed {
            Some(e) => Err(e),
            None => Ok(Value::Map(out)),
        };
    }
    if js.is_object() {
        let mut out = BTreeMap::new();
        for entry in Object::entries(js.unchecked_ref::<Object>()).iter() {
            let pair: Array = entry.unchecked_into();
            let key = pair.get(0).as_string().unwrap_or_default();
            out.insert(Value::String(key), to_value_at(&pair.get(1), depth + 1)?);
        }
        return Ok(Value::Map(out));
    }
    Err(format!("{js:?} is not a value"))
}

/// A replikativ value as a JS value.
pub fn to_js(value: &Value) -> JsValue {
    match value {
        Value::Nil => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        Value::Int(i) if i.abs() <= MAX_SAFE_INTEGER => JsValue::from_f64(*i as f64),
        Value::Int(i) => match BigInt::new(&JsValue::from_str(&i.to_string())) {
            Ok(b) => b.into(),
            Err(_) => JsValue::from_str(&i.to_string()),
        },
        Value::Float(f) => JsValue::from_f64(*f),
        Value::String(s) => JsValue::from_str(s),
        Value::Bytes(b) => Uint8Array::from(&b[..]).into(),
        Value::List(items) => items.iter().map(to_js).collect::<Array>().into(),
        Value::Map(entries) if entries.keys().all(|k| matches!(k, Value::String(_))) => {
            let object = Object::new();
            for (k, v) in entries {
                let _ = Reflect::set(&object, &to_js(k), &to_js(v));
            }
            object.into()
        }
        Value::Map(entries) => {
            let map = Map::new();
            for (k, v) in entries {
                map.set(&to_js(k), &to_js(v));
            }
            map.into()
        }
    }
}

/// Transactions from JS: a list of `[function, params]` pairs, or one pair.
pub fn to_transactions(js: &JsValue) -> Result<Vec<Transaction>, String> {
    let bad = || "transactions must be a list of [function, params] pairs, e.g. [[\"add\", 1]]".to_owned();
    let value = to_value(js)?;
    let pair = |v: &Value| match v.as_list() {
        Some([Value::String(f), params]) => Ok(Transaction::new(f.clone(), params.clone())),
        _ => Err(bad()),
    };
    match value.as_list() {
        Some([]) => Err("the transaction list is empty: give at least one [function, params] pair".into()),
        Some([Value::String(_), _]) => Ok(vec![pair(&value)?]),
        Some(items) => items.iter().map(pair).collect(),
        None => Err(bad()),
    }
}

/// Transactions as JS: `[[function, params], ...]`.
pub fn transactions_to_js(txs: &[Transaction]) -> JsValue {
    txs.iter()
        .map(|t| -> JsValue {
            let pair = Array::new();
            pair.push(&JsValue::from_str(&t.function));
            pair.push(&to_js(&t.params));
            pair.into()
        })
        .collect::<Array>()
        .into()
}
