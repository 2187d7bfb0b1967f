//! Turning values, commits and states into JSON and human-readable lines.

use replikativ_crdt::{ContentId, Value};
use replikativ_peer::proto::CommitValue;

/// A value as JSON: maps whose keys are all strings become objects, other maps lists of
/// `[key, value]` pairs; bytes become `{"$bytes": "<hex>"}`; integers beyond 64 bits strings.
pub(crate) fn json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
            (Ok(n), _) => J::from(n),
            (_, Ok(n)) => J::from(n),
            _ => J::String(i.to_string()),
        },
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number)
        }
        Value::String(s) => J::String(s.clone()),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "$bytes": hex })
        }
        Value::List(items) => J::Array(items.iter().map(json).collect()),
        Value::Map(entries) => {
            if entries.keys().all(|k| matches!(k, Value::String(_))) {
                J::Object(
                    entries
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), json(v)))
                        .collect(),
                )
            } else {
                J::Array(entries.iter().map(|(k, v)| J::Array(vec![json(k), json(v)])).collect())
            }
        }
    }
}

/// A commit as JSON: `{id, author, ts, parents, transactions: [[function, params]...]}`.
pub(crate) fn commit_json(c: &CommitValue) -> serde_json::Value {
    serde_json::json!({
        "id": c.id.to_string(),
        "author": c.author,
        "ts": c.ts,
        "parents": c.parents.iter().map(ContentId::to_string).collect::<Vec<_>>(),
        "transactions": c.transactions.iter().map(|t| serde_json::json!([t.function, json(&t.params)])).collect::<Vec<_>>(),
    })
}

/// A commit on one line: `id-prefix  author  function(params) ...`.
pub(crate) fn commit_line(c: &CommitValue) -> String {
    let txs: Vec<String> =
        c.transactions.iter().map(|t| format!("{}({})", t.function, json(&t.params))).collect();
    format!("{}  {}  {}", &c.id.to_string()[..12], c.author, txs.join(" "))
}
