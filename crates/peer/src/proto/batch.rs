//! Compact OR-Map batches: catch-up parts encoded column by column, without content ids, and
//! compressed.
//!
//! A catch-up part of an OR-Map (entries with their commit records and params inline) used to
//! travel as a `Publish` in named msgpack: per entry a 16-byte actor, a 32-byte commit id, the
//! commit record (with its 32-byte params id) and the params, about 400 bytes for `k{i} -> i`.
//! Ids are incompressible, and the receiver recomputes them anyway to verify the values, so a
//! batch carries none: per entry the key, the dot (an index into a table of actors, the counter as
//! a delta) and a reference to a commit of the batch; per commit its author (a table index), its
//! timestamp (a delta) and its transactions (a table index for the function name, the params
//! inline). The receiver rebuilds each commit record from its columns and hashes it: the ids it
//! stores are the ones it computed, so nothing unverifiable is trusted. A record that the columns
//! do not reproduce byte for byte (a commit with parents, say) travels whole; params over
//! [`MAX_INLINE_PARAMS`] travel by id and are fetched.
//!
//! The columns are msgpack byte strings of LEB128 varints (so a run of equal values is a run of
//! equal bytes) and the whole is DEFLATE-compressed (pure Rust `miniz_oxide`, which the wasm client
//! builds too). Decoding is bounded: at most [`MAX_BATCH_BYTES`] decompressed, every count checked
//! against what is left, every key and value decoded with the canonical decoder.

use std::collections::HashMap;
use std::io::{Read, Write};

use replikativ_crdt::{ActorId, Commit, ContentId, CrdtKind, Dot, OrEntry, OrMapOp, TxRef, Value};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The batch format this peer writes and reads.
pub const BATCH_FORMAT: u8 = 1;
/// Bytes a batch may take decompressed at most (a larger one is refused, whatever it says).
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Params larger than this travel by id (the receiver fetches them), not inline.
pub const MAX_INLINE_PARAMS: usize = 64 << 10;
/// Entries one batch may carry at most.
pub const MAX_BATCH_ENTRIES: usize = 1 << 16;

#[derive(Serialize, Deserialize, Default)]
struct Columns {
    format: u8,
    actors: Vec<ActorId>,
    authors: Vec<String>,
    functions: Vec<String>,
    /// Per entry: 0 an add, 1 a removal.
    flags: ByteBuf,
    /// Per entry: varint length, canonical key.
    keys: ByteBuf,
    /// Per entry: varint index into `actors`.
    actor: ByteBuf,
    /// Per entry: zigzag varint delta from the previous counter of the same actor in the batch.
    counter: ByteBuf,
    /// Per entry: varint, 0 for the next new commit, k for the k-th latest commit before it.
    commit: ByteBuf,
    /// Per commit: 0 rebuilt from the columns, 1 the whole record in `raw`, 2 by id (the next 32
    /// bytes of `ids`; the receiver fetches it).
    mode: ByteBuf,
    /// Per rebuilt commit: varint index into `authors`.
    author: ByteBuf,
    /// Per rebuilt commit: zigzag varint delta from the previous rebuilt commit's timestamp.
    ts: ByteBuf,
    /// Per rebuilt commit: varint number of transactions.
    ntx: ByteBuf,
    /// Per transaction: varint index into `functions`.
    func: ByteBuf,
    /// Per transaction: varint 0 (params by id, the next 32 bytes of `ids`) or n + 1 (n bytes of
    /// canonical params follow).
    params: ByteBuf,
    /// Per whole-record commit: varint length, the record; then varint count and the params
    /// values it names (length-prefixed).
    raw: ByteBuf,
    /// Ids of params (and commits) that travel by id.
    ids: ByteBuf,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Why a batch does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad batch: {0}")]
pub struct BatchError(pub String);

fn bad(why: impl Into<String>) -> BatchError {
    BatchError(why.into())
}

/// A reader over one column.
struct Col<'a> {
    name: &'static str,
    bytes: &'a [u8],
}

impl<'a> Col<'a> {
    fn new(name: &'static str, bytes: &'a [u8]) -> Col<'a> {
        Col { name, bytes }
    }

    fn varint(&mut self) -> Result<u64, BatchError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) =
                self.bytes.split_first().ok_or_else(|| bad(format!("{} column ends early", self.name)))?;
            self.bytes = rest;
            if i == 9 && b > 1 {
                return Err(bad(format!("{} column: varint overflows", self.name)));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad(format!("{} column: varint too long", self.name)))
    }

    fn index(&mut self, len: usize) -> Result<usize, BatchError> {
        let i = self.varint()?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < len)
            .ok_or_else(|| bad(format!("{} index out of range", self.name)))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], BatchError> {
        let n = usize::try_from(n).ok().filter(|n| *n <= self.bytes.len());
        let n = n.ok_or_else(|| bad(format!("{} column ends early", self.name)))?;
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], BatchError> {
        let n = self.varint()?;
        self.take(n)
    }

    fn done(&self) -> Result<(), BatchError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} column has trailing bytes", self.name)))
        }
    }
}

/// Builds one batch entry by entry.
#[derive(Default)]
pub(crate) struct BatchEncoder {
    c: Columns,
    entries: usize,
    actors: HashMap<ActorId, usize>,
    last_counter: Vec<u64>,
    authors: HashMap<String, usize>,
    functions: HashMap<String, usize>,
    commits: HashMap<ContentId, usize>,
    last_ts: u64,
    bytes: usize,
}

/// A commit record as the sender has it: its encoding, parsed, and a way to read its params.
pub(crate) struct CommitSource<'a> {
    pub(crate) record: &'a [u8],
    pub(crate) commit: &'a Commit,
}

impl BatchEncoder {
    /// Entries so far.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    /// Bytes of the columns so far (before compression): what bounds a batch.
    pub(crate) fn raw_bytes(&self) -> usize {
        self.bytes
    }

    /// Adds an entry. `source` is its commit record (read only the first time the batch names that
    /// commit; `None` if the sender does not have it: then it goes by id); `params` reads a params
    /// value.
    pub(crate) fn push(
        &mut self,
        removal: bool,
        entry: &OrEntry,
        source: Option<CommitSource<'_>>,
        params: &dyn Fn(&ContentId) -> Option<Vec<u8>>,
    ) {
        let before = self.size();
        self.entries += 1;
        self.c.flags.push(u8::from(removal));
        let key = entry.key.encode();
        put_varint(&mut self.c.keys, key.len() as u64);
        self.c.keys.extend_from_slice(&key);
        let next = self.actors.len();
        let a = *self.actors.entry(entry.dot.actor).or_insert(next);
        if a == next {
            self.c.actors.push(entry.dot.actor);
            self.last_counter.push(0);
        }
        put_varint(&mut self.c.actor, a as u64);
        let delta = entry.dot.counter as i64 - self.last_counter[a] as i64;
        self.last_counter[a] = entry.dot.counter;
        put_varint(&mut self.c.counter, zigzag(delta));
        let n = self.commits.len();
        if let Some(&i) = self.commits.get(&entry.commit) {
            put_varint(&mut self.c.commit, (n - i) as u64);
        } else {
            put_varint(&mut self.c.commit, 0);
            self.commits.insert(entry.commit, n);
            self.push_commit(&entry.commit, source, params);
        }
        self.bytes += self.size() - before;
    }

    fn size(&self) -> usize {
        let c = &self.c;
        c.flags.len()
            + c.keys.len()
            + c.actor.len()
            + c.counter.len()
            + c.commit.len()
            + c.mode.len()
            + c.author.len()
            + c.ts.len()
            + c.ntx.len()
            + c.func.len()
            + c.params.len()
            + c.raw.len()
            + c.ids.len()
            + c.actors.len() * 18
            + c.authors.iter().chain(&c.functions).map(|s| s.len() + 2).sum::<usize>()
    }

    fn push_commit(
        &mut self,
        id: &ContentId,
        source: Option<CommitSource<'_>>,
        params: &dyn Fn(&ContentId) -> Option<Vec<u8>>,
    ) {
        let Some(source) = source else {
            // Not at hand (a replica normally holds every record its state names): by id, and the
            // receiver fetches it.
            self.c.mode.push(2);
            self.c.ids.extend_from_slice(id.as_bytes());
            return;
        };
        let c = source.commit;
        // The columns reproduce the record only if it is the canonical form of the commit (then
        // the receiver's hash of the rebuilt record is `id`, the hash of these bytes).
        let rebuilt = c.crdt == CrdtKind::Ormap && c.parents.is_empty() && c.encode() == source.record;
        if !rebuilt {
            self.c.mode.push(1);
            put_varint(&mut self.c.raw, source.record.len() as u64);
            self.c.raw.extend_from_slice(source.record);
            let values: Vec<Vec<u8>> = c.transactions.iter().filter_map(|t| params(&t.params)).collect();
            put_varint(&mut self.c.raw, values.len() as u64);
            for v in values {
                put_varint(&mut self.c.raw, v.len() as u64);
                self.c.raw.extend_from_slice(&v);
            }
            return;
        }
        self.c.mode.push(0);
        let next = self.authors.len();
        let a = *self.authors.entry(c.author.clone()).or_insert(next);
        if a == next {
            self.c.authors.push(c.author.clone());
        }
        put_varint(&mut self.c.author, a as u64);
        put_varint(&mut self.c.ts, zigzag(c.ts as i64 - self.last_ts as i64));
        self.last_ts = c.ts;
        put_varint(&mut self.c.ntx, c.transactions.len() as u64);
        for tx in &c.transactions {
            let next = self.functions.len();
            let f = *self.functions.entry(tx.function.clone()).or_insert(next);
            if f == next {
                self.c.functions.push(tx.function.clone());
            }
            put_varint(&mut self.c.func, f as u64);
            match params(&tx.params).filter(|v| v.len() <= MAX_INLINE_PARAMS) {
                Some(v) => {
                    put_varint(&mut self.c.params, v.len() as u64 + 1);
                    self.c.params.extend_from_slice(&v);
                }
                None => {
                    put_varint(&mut self.c.params, 0);
                    self.c.ids.extend_from_slice(tx.params.as_bytes());
                }
            }
        }
    }

    /// The batch: the columns in msgpack, DEFLATE-compressed.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.c.format = BATCH_FORMAT;
        let raw = rmp_serde::to_vec(&self.c).expect("columns always encode");
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(raw.len() / 3),
            flate2::Compression::new(3),
        );
        enc.write_all(&raw).expect("writing to memory");
        enc.finish().expect("writing to memory")
    }
}

/// A decoded batch: the op, and the values it carried by the ids computed here from their bytes,
/// with the commit records parsed.
#[derive(Debug)]
pub struct Decoded {
    /// The entries, as an op.
    pub op: OrMapOp,
    /// Commit records and params, by the hash of their bytes.
    pub values: HashMap<ContentId, Vec<u8>>,
    /// The commit records among `values` that parse.
    pub commits: HashMap<ContentId, Commit>,
}

/// Encodes entries (`true` for a removal) as one batch, reading commit records and params from
/// `value` (tools and tests; the peer builds its batches entry by entry with the same encoder).
pub fn encode(entries: &[(bool, OrEntry)], value: &dyn Fn(&ContentId) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut enc = BatchEncoder::default();
    for (removal, e) in entries {
        let record = value(&e.commit);
        let commit =
            record.as_ref().and_then(|r| Value::decode(r).ok()).and_then(|v| Commit::from_value(&v).ok());
        let source = match (&record, &commit) {
            (Some(r), Some(c)) => Some(CommitSource { record: r, commit: c }),
            _ => None,
        };
        enc.push(*removal, e, source, value);
    }
    enc.finish()
}

/// DEFLATE-compresses raw columns as a batch carries them (fuzzing explores the columns).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(raw).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The raw columns of a batch (at most [`MAX_BATCH_BYTES`]).
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut raw = Vec::new();
    let mut dec = flate2::read::DeflateDecoder::new(data).take(MAX_BATCH_BYTES as u64 + 1);
    dec.read_to_end(&mut raw).map_err(|e| bad(format!("does not decompress: {e}")))?;
    if raw.len() > MAX_BATCH_BYTES {
        return Err(bad(format!("more than {MAX_BATCH_BYTES} bytes decompressed")));
    }
    Ok(raw)
}

/// Decodes a batch (see the module docs for what is checked).
pub fn decode(data: &[u8]) -> Result<Decoded, BatchError> {
    let raw = decompress(data)?;
    let c: Columns = super::message::from_msgpack(&raw).map_err(|e| bad(format!("columns: {e}")))?;
    if c.format != BATCH_FORMAT {
        return Err(bad(format!("format {} (this peer reads format {BATCH_FORMAT})", c.format)));
    }
    let n = c.flags.len();
    if n > MAX_BATCH_ENTRIES {
        return Err(bad(format!("{n} entries (at most {MAX_BATCH_ENTRIES})")));
    }
    let (mut keys, mut actor, mut counter, mut commit) = (
        Col::new("keys", &c.keys),
        Col::new("actor", &c.actor),
        Col::new("counter", &c.counter),
        Col::new("commit", &c.commit),
    );
    let mut mode = Col::new("mode", &c.mode);
    let (mut author, mut ts, mut ntx, mut func, mut params, mut raw_col, mut ids) = (
        Col::new("author", &c.author),
        Col::new("ts", &c.ts),
        Col::new("ntx", &c.ntx),
        Col::new("func", &c.func),
        Col::new("params", &c.params),
        Col::new("raw", &c.raw),
        Col::new("ids", &c.ids),
    );
    let mut values: HashMap<ContentId, Vec<u8>> = HashMap::new();
    let mut commits: HashMap<ContentId, Commit> = HashMap::new();
    let mut table: Vec<ContentId> = Vec::new();
    let mut last_counter = vec![0u64; c.actors.len()];
    let mut last_ts: u64 = 0;
    let mut op = OrMapOp::default();
    for &flag in c.flags.iter() {
        let key = Value::decode(keys.bytes()?).map_err(|e| bad(format!("key: {e}")))?;
        let a = actor.index(c.actors.len())?;
        let delta = unzigzag(counter.varint()?);
        let value = (last_counter[a] as i64).checked_add(delta).filter(|v| *v > 0);
        let count = value.ok_or_else(|| bad("counter out of range"))? as u64;
        last_counter[a] = count;
        let back = commit.varint()?;
        let cid = if back == 0 {
            let id = match mode.varint()? {
                0 => {
                    let who = c.authors.get(author.index(c.authors.len())?).cloned().expect("checked");
                    let t = (last_ts as i64).checked_add(unzigzag(ts.varint()?)).filter(|t| *t >= 0);
                    last_ts = t.ok_or_else(|| bad("timestamp out of range"))? as u64;
                    let k = ntx.varint()?;
                    if k > func.bytes.len() as u64 {
                        return Err(bad("more transactions than the columns hold"));
                    }
                    let mut transactions = Vec::with_capacity(k as usize);
                    for _ in 0..k {
                        let function = c.functions[func.index(c.functions.len())?].clone();
                        let len = params.varint()?;
                        let pid = if len == 0 {
                            ContentId::from_bytes(ids.take(32)?.try_into().expect("32 bytes"))
                        } else {
                            let bytes = params.take(len - 1)?;
                            Value::decode(bytes).map_err(|e| bad(format!("params: {e}")))?;
                            let pid = ContentId::hash_bytes(bytes);
                            values.entry(pid).or_insert_with(|| bytes.to_vec());
                            pid
                        };
                        transactions.push(TxRef { function, params: pid });
                    }
                    let commit = Commit {
                        crdt: CrdtKind::Ormap,
                        parents: vec![],
                        transactions,
                        author: who,
                        ts: last_ts,
                    };
                    let bytes = commit.encode();
                    let id = ContentId::hash_bytes(&bytes);
                    values.insert(id, bytes);
                    commits.insert(id, commit);
                    id
                }
                1 => {
                    let record = raw_col.bytes()?;
                    let id = ContentId::hash_bytes(record);
                    let value = Value::decode(record).map_err(|e| bad(format!("commit record: {e}")))?;
                    if let Ok(parsed) = Commit::from_value(&value) {
                        commits.insert(id, parsed);
                    }
                    values.insert(id, record.to_vec());
                    let extra = raw_col.varint()?;
                    if extra > raw_col.bytes.len() as u64 {
                        return Err(bad("more values than the raw column holds"));
                    }
                    for _ in 0..extra {
                        let v = raw_col.bytes()?;
                        Value::decode(v).map_err(|e| bad(format!("params: {e}")))?;
                        values.entry(ContentId::hash_bytes(v)).or_insert_with(|| v.to_vec());
                    }
                    id
                }
                2 => ContentId::from_bytes(ids.take(32)?.try_into().expect("32 bytes")),
                m => return Err(bad(format!("commit mode {m}"))),
            };
            table.push(id);
            id
        } else {
            let back = usize::try_from(back).ok().filter(|b| *b <= table.len());
            table[table.len() - back.ok_or_else(|| bad("commit reference out of range"))?]
        };
        let entry = OrEntry { key, dot: Dot::new(c.actors[a], count), commit: cid };
        match flag {
            0 => op.adds.push(entry),
            1 => op.removals.push(entry),
            f => return Err(bad(format!("entry flag {f}"))),
        }
    }
    for col in [&keys, &actor, &counter, &commit, &mode, &author, &ts, &ntx, &func, &params, &raw_col, &ids] {
        col.done()?;
    }
    Ok(Decoded { op, values, commits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use replikativ_crdt::{Crdt, OrMap, Transaction};

    type Built = (OrMap, Vec<(bool, OrEntry)>, HashMap<ContentId, Vec<u8>>);

    fn build(n: u64) -> Built {
        let actor = ActorId::from_u128(9);
        let mut m = OrMap::default();
        let mut store = HashMap::new();
        let mut entries = Vec::new();
        for i in 0..n {
            let s = m
                .assoc(
                    format!("k{i}").into(),
                    vec![Transaction::new("assoc", i)],
                    actor,
                    "mail:a@b",
                    1000 + i,
                )
                .unwrap();
            entries.extend(s.op.adds.iter().map(|e| (false, e.clone())));
            store.extend(s.values.into_iter().map(|(id, v)| (id, v.encode())));
        }
        let rm = m.dissoc(&"k1".into(), vec![Transaction::new("dissoc", "k1")], "mail:a@b", 5).unwrap();
        entries.extend(rm.op.removals.iter().map(|e| (true, e.clone())));
        store.extend(rm.values.into_iter().map(|(id, v)| (id, v.encode())));
        (m, entries, store)
    }

    fn encode(entries: &[(bool, OrEntry)], store: &HashMap<ContentId, Vec<u8>>) -> Vec<u8> {
        let mut enc = BatchEncoder::default();
        let lookup = |id: &ContentId| store.get(id).cloned();
        for (removal, e) in entries {
            let record = &store[&e.commit];
            let commit = Commit::from_value(&Value::decode(record).unwrap()).unwrap();
            enc.push(*removal, e, Some(CommitSource { record, commit: &commit }), &lookup);
        }
        enc.finish()
    }

    #[test]
    fn a_batch_round_trips_with_every_id_recomputed() {
        let (m, entries, store) = build(1000);
        let data = encode(&entries, &store);
        let d = decode(&data).unwrap();
        let mut back = OrMap::default();
        back.apply(&d.op).unwrap();
        assert_eq!(back, m);
        // Every value the entries need came inline, under its true id.
        for (id, bytes) in &d.values {
            assert_eq!(ContentId::hash_bytes(bytes), *id);
            assert_eq!(store.get(id), Some(bytes));
        }
        for (_, e) in &entries {
            assert!(d.values.contains_key(&e.commit));
        }
        let per_op = data.len() as f64 / entries.len() as f64;
        assert!(per_op < 16.0, "{per_op} bytes per op");
    }

    #[test]
    fn a_commit_the_columns_cannot_rebuild_travels_whole() {
        let parent = ContentId::hash_bytes(b"p");
        let params = Value::from(7);
        let commit = Commit {
            crdt: CrdtKind::Cdvcs,
            parents: vec![parent],
            transactions: vec![Transaction::new("f", params.clone()).to_ref()],
            author: "x".into(),
            ts: 3,
        };
        let record = commit.to_value().encode();
        let cid = ContentId::hash_bytes(&record);
        let e = OrEntry { key: "k".into(), dot: Dot::new(ActorId::from_u128(1), 4), commit: cid };
        let mut enc = BatchEncoder::default();
        let lookup = |id: &ContentId| (*id == params.content_id()).then(|| params.encode());
        enc.push(false, &e, Some(CommitSource { record: &record, commit: &commit }), &lookup);
        let d = decode(&enc.finish()).unwrap();
        assert_eq!(d.op.adds, vec![e]);
        assert_eq!(d.values[&cid], record);
        assert!(d.values.contains_key(&params.content_id()));
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let (_, entries, store) = build(50);
        let data = encode(&entries, &store);
        let mut raw = Vec::new();
        flate2::read::DeflateDecoder::new(&data[..]).read_to_end(&mut raw).unwrap();
        for i in 0..raw.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[i] ^= flip;
                let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&bad).unwrap();
                let _ = decode(&enc.finish().unwrap());
            }
        }
        assert!(decode(b"not deflate at all").is_err());
        // A bomb: far more than MAX_BATCH_BYTES of zeros compressed.
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; MAX_BATCH_BYTES + 10]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(decode(&bomb).unwrap_err().0.contains("decompressed"));
    }
}
