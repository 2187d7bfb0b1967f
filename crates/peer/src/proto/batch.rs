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

use std::cell::RefCell;
use std::collections::HashMap;

use replikativ_crdt::{ActorId, Commit, ContentId, CrdtKind, Dot, IdMap, OrEntry, OrMapOp, TxRef, Value};

use super::message::AnyOp;
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
    /// The datatype: 0 an OR-Map (entries above), 1 a CDVCS (every commit is a graph entry).
    kind: u8,
    /// CDVCS: the op's method (0 handshake, 1 commit, 2 merge, 3 pull).
    method: u8,
    /// CDVCS, per commit: varint parent count, then per parent a reference (0: the next 32 bytes
    /// of `ids`; k: the k-th latest commit of the batch before it).
    parents: ByteBuf,
    /// CDVCS: varint count of the heads, then a reference each (as for parents, counted from the
    /// end of the batch).
    heads: ByteBuf,
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
    commits: IdMap<usize>,
    last_ts: u64,
    bytes: usize,
    /// The parents a CDVCS commit being added must have (checked against its record).
    parents: Option<Vec<ContentId>>,
    /// Ids the batch names without carrying their values (records the sender lacks, params over
    /// [`MAX_INLINE_PARAMS`], parents outside the batch): what the receiver may fetch from the
    /// sender (see `Peer::offer`).
    pub(crate) referenced: Vec<ContentId>,
}

/// A commit record as the sender has it: its encoding, parsed, and a way to read its params.
pub(crate) struct CommitSource<'a> {
    pub(crate) record: &'a [u8],
    pub(crate) commit: &'a Commit,
}

impl BatchEncoder {
    /// An encoder of CDVCS graph entries.
    pub(crate) fn cdvcs() -> BatchEncoder {
        let mut e = BatchEncoder::default();
        e.c.kind = 1;
        e
    }

    /// A reference to a commit: its position from the end of the batch, or the id itself.
    fn reference(&mut self, id: &ContentId, heads: bool) {
        let n = self.commits.len();
        let col = if heads { &mut self.c.heads } else { &mut self.c.parents };
        match self.commits.get(id) {
            Some(&i) => put_varint(col, (n - i) as u64),
            None => {
                put_varint(col, 0);
                self.c.ids.extend_from_slice(id.as_bytes());
                self.referenced.push(*id);
            }
        }
    }

    /// Adds a CDVCS graph entry (parents before children), with its commit record and params as
    /// for [`push`](Self::push).
    pub(crate) fn push_commit_entry(
        &mut self,
        entry: &replikativ_crdt::cdvcs::GraphEntry,
        source: Option<CommitSource<'_>>,
        params: &dyn Fn(&ContentId) -> Option<Vec<u8>>,
    ) {
        let before = self.size();
        self.entries += 1;
        put_varint(&mut self.c.parents, entry.parents.len() as u64);
        for p in &entry.parents {
            self.reference(p, false);
        }
        self.parents = Some(entry.parents.clone());
        self.push_commit(&entry.id, source, params);
        self.parents = None;
        let n = self.commits.len();
        self.commits.insert(entry.id, n);
        self.bytes += self.size() - before;
    }

    /// The CDVCS batch, with the op's method and heads.
    pub(crate) fn finish_cdvcs(
        mut self,
        method: replikativ_crdt::cdvcs::CdvcsMethod,
        heads: &std::collections::BTreeSet<ContentId>,
    ) -> Vec<u8> {
        use replikativ_crdt::cdvcs::CdvcsMethod as M;
        self.c.method = match method {
            M::Handshake => 0,
            M::Commit => 1,
            M::Merge => 2,
            M::Pull => 3,
        };
        put_varint(&mut self.c.heads, heads.len() as u64);
        for h in heads {
            self.reference(h, true);
        }
        self.finish()
    }

    /// Whether the batch holds this commit already (an entry naming it again needs no record).
    pub(crate) fn has_commit(&self, id: &ContentId) -> bool {
        self.commits.contains_key(id)
    }

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
        put_varint(&mut self.c.keys, entry.key.encoded_len() as u64);
        entry.key.encode_into(&mut self.c.keys);
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
            + c.parents.len()
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
            self.referenced.push(*id);
            return;
        };
        let c = source.commit;
        // The columns reproduce the record only if it is the canonical form of the commit (then
        // the receiver's hash of the rebuilt record is `id`, the hash of these bytes), of the
        // batch's kind, with the graph entry's parents.
        let rebuilt = match &self.parents {
            None => c.crdt == CrdtKind::Ormap && c.parents.is_empty(),
            Some(parents) => c.crdt == CrdtKind::Cdvcs && &c.parents == parents,
        } && c.encode() == source.record;
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
        let a = match self.authors.get(&c.author) {
            Some(&a) => a,
            None => {
                let a = self.authors.len();
                self.authors.insert(c.author.clone(), a);
                self.c.authors.push(c.author.clone());
                a
            }
        };
        put_varint(&mut self.c.author, a as u64);
        put_varint(&mut self.c.ts, zigzag(c.ts as i64 - self.last_ts as i64));
        self.last_ts = c.ts;
        put_varint(&mut self.c.ntx, c.transactions.len() as u64);
        for tx in &c.transactions {
            let f = match self.functions.get(&tx.function) {
                Some(&f) => f,
                None => {
                    let f = self.functions.len();
                    self.functions.insert(tx.function.clone(), f);
                    self.c.functions.push(tx.function.clone());
                    f
                }
            };
            put_varint(&mut self.c.func, f as u64);
            match params(&tx.params).filter(|v| v.len() <= MAX_INLINE_PARAMS) {
                Some(v) => {
                    put_varint(&mut self.c.params, v.len() as u64 + 1);
                    self.c.params.extend_from_slice(&v);
                }
                None => {
                    put_varint(&mut self.c.params, 0);
                    self.c.ids.extend_from_slice(tx.params.as_bytes());
                    self.referenced.push(tx.params);
                }
            }
        }
    }

    /// The batch: the columns in msgpack, DEFLATE-compressed.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.c.format = BATCH_FORMAT;
        let raw = rmp_serde::to_vec(&self.c).expect("columns always encode");
        deflate(&raw, 3)
    }
}

/// A decoded batch: the op, and the values it carried by the ids computed here from their bytes,
/// with the commit records parsed.
#[derive(Debug)]
pub struct Decoded {
    /// The entries, as an op (an OR-Map or a CDVCS op).
    pub op: AnyOp,
    /// Commit records and params, by the hash of their bytes.
    pub values: IdMap<Vec<u8>>,
    /// The commit records among `values` that parse.
    pub commits: IdMap<Commit>,
}

/// A commit record from `value`, parsed.
fn record_of(
    id: &ContentId,
    value: &dyn Fn(&ContentId) -> Option<Vec<u8>>,
) -> (Option<Vec<u8>>, Option<Commit>) {
    let record = value(id);
    let commit =
        record.as_ref().and_then(|r| Value::decode(r).ok()).and_then(|v| Commit::from_value(&v).ok());
    (record, commit)
}

fn source<'a>(record: &'a Option<Vec<u8>>, commit: &'a Option<Commit>) -> Option<CommitSource<'a>> {
    Some(CommitSource { record: record.as_ref()?, commit: commit.as_ref()? })
}

/// Encodes entries (`true` for a removal) as one batch, reading commit records and params from
/// `value` (tools and tests; the peer builds its batches entry by entry with the same encoder).
pub fn encode(entries: &[(bool, OrEntry)], value: &dyn Fn(&ContentId) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut enc = BatchEncoder::default();
    for (removal, e) in entries {
        let (record, commit) = record_of(&e.commit, value);
        let source = source(&record, &commit);
        enc.push(*removal, e, source, value);
    }
    enc.finish()
}

/// Encodes a CDVCS op's graph entries (parents before children) as one batch, reading commit
/// records and params from `value` (tools and tests; the peer uses the same encoder).
pub fn encode_cdvcs(op: &replikativ_crdt::CdvcsOp, value: &dyn Fn(&ContentId) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut enc = BatchEncoder::cdvcs();
    for e in &op.commits {
        let (record, commit) = record_of(&e.id, value);
        let source = source(&record, &commit);
        enc.push_commit_entry(e, source, value);
    }
    enc.finish_cdvcs(op.method, &op.heads)
}

/// DEFLATE-compresses raw columns as a batch carries them (fuzzing explores the columns).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    deflate(raw, 1)
}

thread_local! {
    // One compressor and one decompressor per thread, reset for every batch: a fresh DEFLATE
    // state zeroes a few hundred KiB of tables, which cost more than compressing a live batch of a
    // few dozen ops.
    static DEFLATE: RefCell<Option<(u32, flate2::Compress)>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

/// Raw DEFLATE of `raw` at `level`, with this thread's compressor.
fn deflate(raw: &[u8], level: u32) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    DEFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let c = match &mut *cell {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            slot => &mut slot.insert((level, Compress::new(Compression::new(level), false))).1,
        };
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        loop {
            let done = c.total_in() as usize;
            match c
                .compress_vec(&raw[done..], &mut out, FlushCompress::Finish)
                .expect("compressing in memory")
            {
                Status::StreamEnd => return out,
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(256)),
            }
        }
    })
}

/// The raw columns of a batch (at most [`MAX_BATCH_BYTES`]): the input must be exactly one raw
/// DEFLATE stream.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    use flate2::{Decompress, FlushDecompress, Status};
    INFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = match &mut *cell {
            Some(d) => {
                d.reset(false);
                d
            }
            slot => slot.insert(Decompress::new(false)),
        };
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).clamp(256, MAX_BATCH_BYTES + 1));
        loop {
            let (read, written) = (d.total_in() as usize, d.total_out());
            let status = d
                .decompress_vec(&data[read..], &mut out, FlushDecompress::None)
                .map_err(|e| bad(format!("does not decompress: {e}")))?;
            if out.len() > MAX_BATCH_BYTES {
                return Err(bad(format!("more than {MAX_BATCH_BYTES} bytes decompressed")));
            }
            match status {
                Status::StreamEnd if (d.total_in() as usize) < data.len() => {
                    return Err(bad("bytes after the end of the compressed stream"));
                }
                Status::StreamEnd => return Ok(out),
                Status::Ok | Status::BufError => {
                    if out.len() == out.capacity() {
                        // Room for more, never beyond one byte over the bound (then refused above).
                        let more = out.capacity().min(MAX_BATCH_BYTES + 1 - out.len());
                        out.reserve_exact(more);
                    } else if d.total_in() as usize == read && d.total_out() == written {
                        return Err(bad("does not decompress: the compressed stream ends early"));
                    }
                }
            }
        }
    })
}

/// Reads the commits of a batch from its columns, keeping every value under the hash of its bytes.
struct CommitReader<'a> {
    c: &'a Columns,
    mode: Col<'a>,
    author: Col<'a>,
    ts: Col<'a>,
    ntx: Col<'a>,
    func: Col<'a>,
    params: Col<'a>,
    raw: Col<'a>,
    ids: Col<'a>,
    last_ts: u64,
    values: IdMap<Vec<u8>>,
    commits: IdMap<Commit>,
    /// The batch's commits in order (what references point into).
    table: Vec<ContentId>,
}

impl<'a> CommitReader<'a> {
    fn new(c: &'a Columns) -> CommitReader<'a> {
        CommitReader {
            c,
            mode: Col::new("mode", &c.mode),
            author: Col::new("author", &c.author),
            ts: Col::new("ts", &c.ts),
            ntx: Col::new("ntx", &c.ntx),
            func: Col::new("func", &c.func),
            params: Col::new("params", &c.params),
            raw: Col::new("raw", &c.raw),
            ids: Col::new("ids", &c.ids),
            last_ts: 0,
            values: IdMap::default(),
            commits: IdMap::default(),
            table: Vec::new(),
        }
    }

    fn id(&mut self) -> Result<ContentId, BatchError> {
        Ok(ContentId::from_bytes(self.ids.take(32)?.try_into().expect("32 bytes")))
    }

    /// A reference: 0 an id from `ids`, k the k-th latest commit of the batch.
    fn reference(&mut self, col: &mut Col<'_>) -> Result<ContentId, BatchError> {
        match col.varint()? {
            0 => self.id(),
            k => {
                let k = usize::try_from(k).ok().filter(|k| *k <= self.table.len());
                Ok(self.table[self.table.len() - k.ok_or_else(|| bad("commit reference out of range"))?])
            }
        }
    }

    /// The next commit: rebuilt (of `crdt`, with `parents`), whole, or by id.
    fn next(&mut self, crdt: CrdtKind, parents: Vec<ContentId>) -> Result<ContentId, BatchError> {
        let id = match self.mode.varint()? {
            0 => {
                let c = self.c;
                let who = c.authors[self.author.index(c.authors.len())?].clone();
                let t = (self.last_ts as i64).checked_add(unzigzag(self.ts.varint()?)).filter(|t| *t >= 0);
                self.last_ts = t.ok_or_else(|| bad("timestamp out of range"))? as u64;
                let k = self.ntx.varint()?;
                if k > self.func.bytes.len() as u64 {
                    return Err(bad("more transactions than the columns hold"));
                }
                let mut transactions = Vec::with_capacity(k as usize);
                for _ in 0..k {
                    let function = c.functions[self.func.index(c.functions.len())?].clone();
                    let len = self.params.varint()?;
                    let pid = if len == 0 {
                        self.id()?
                    } else {
                        let bytes = self.params.take(len - 1)?;
                        Value::decode(bytes).map_err(|e| bad(format!("params: {e}")))?;
                        let pid = ContentId::hash_bytes(bytes);
                        self.values.entry(pid).or_insert_with(|| bytes.to_vec());
                        pid
                    };
                    transactions.push(TxRef { function, params: pid });
                }
                let commit = Commit { crdt, parents, transactions, author: who, ts: self.last_ts };
                let bytes = commit.encode();
                let id = ContentId::hash_bytes(&bytes);
                self.values.insert(id, bytes);
                self.commits.insert(id, commit);
                id
            }
            1 => {
                let record = self.raw.bytes()?;
                let id = ContentId::hash_bytes(record);
                let value = Value::decode(record).map_err(|e| bad(format!("commit record: {e}")))?;
                if let Ok(parsed) = Commit::from_value(&value) {
                    self.commits.insert(id, parsed);
                }
                self.values.insert(id, record.to_vec());
                let extra = self.raw.varint()?;
                if extra > self.raw.bytes.len() as u64 {
                    return Err(bad("more values than the raw column holds"));
                }
                for _ in 0..extra {
                    let v = self.raw.bytes()?;
                    Value::decode(v).map_err(|e| bad(format!("params: {e}")))?;
                    self.values.entry(ContentId::hash_bytes(v)).or_insert_with(|| v.to_vec());
                }
                id
            }
            2 => self.id()?,
            m => return Err(bad(format!("commit mode {m}"))),
        };
        self.table.push(id);
        Ok(id)
    }

    fn done(&self) -> Result<(), BatchError> {
        for col in
            [&self.mode, &self.author, &self.ts, &self.ntx, &self.func, &self.params, &self.raw, &self.ids]
        {
            col.done()?;
        }
        Ok(())
    }
}

/// Decodes a batch (see the module docs for what is checked).
pub fn decode(data: &[u8]) -> Result<Decoded, BatchError> {
    let raw = decompress(data)?;
    let c: Columns = super::message::from_msgpack(&raw).map_err(|e| bad(format!("columns: {e}")))?;
    if c.format != BATCH_FORMAT {
        return Err(bad(format!("format {} (this peer reads format {BATCH_FORMAT})", c.format)));
    }
    match c.kind {
        0 => decode_ormap(&c),
        1 => decode_cdvcs(&c),
        k => Err(bad(format!("datatype {k}"))),
    }
}

fn decode_cdvcs(c: &Columns) -> Result<Decoded, BatchError> {
    use replikativ_crdt::cdvcs::{CdvcsMethod, GraphEntry};
    let method = match c.method {
        0 => CdvcsMethod::Handshake,
        1 => CdvcsMethod::Commit,
        2 => CdvcsMethod::Merge,
        3 => CdvcsMethod::Pull,
        m => return Err(bad(format!("method {m}"))),
    };
    let mut r = CommitReader::new(c);
    let mut parents_col = Col::new("parents", &c.parents);
    let mut commits = Vec::new();
    while !parents_col.bytes.is_empty() {
        if commits.len() >= MAX_BATCH_ENTRIES {
            return Err(bad(format!("more than {MAX_BATCH_ENTRIES} commits")));
        }
        let k = parents_col.varint()?;
        if k > parents_col.bytes.len() as u64 {
            return Err(bad("more parents than the column holds"));
        }
        let mut parents = Vec::with_capacity(k as usize);
        for _ in 0..k {
            parents.push(r.reference(&mut parents_col)?);
        }
        let id = r.next(CrdtKind::Cdvcs, parents.clone())?;
        commits.push(GraphEntry { id, parents });
    }
    let mut heads_col = Col::new("heads", &c.heads);
    let n = heads_col.varint()?;
    if n > heads_col.bytes.len() as u64 {
        return Err(bad("more heads than the column holds"));
    }
    let mut heads = std::collections::BTreeSet::new();
    for _ in 0..n {
        heads.insert(r.reference(&mut heads_col)?);
    }
    heads_col.done()?;
    r.done()?;
    if !c.flags.is_empty()
        || !c.keys.is_empty()
        || !c.actor.is_empty()
        || !c.counter.is_empty()
        || !c.commit.is_empty()
    {
        return Err(bad("OR-Map columns in a CDVCS batch"));
    }
    let op = AnyOp::Cdvcs(replikativ_crdt::CdvcsOp { method, commits, heads });
    Ok(Decoded { op, values: r.values, commits: r.commits })
}

fn decode_ormap(c: &Columns) -> Result<Decoded, BatchError> {
    let n = c.flags.len();
    if n > MAX_BATCH_ENTRIES {
        return Err(bad(format!("{n} entries (at most {MAX_BATCH_ENTRIES})")));
    }
    if !c.parents.is_empty() || !c.heads.is_empty() {
        return Err(bad("CDVCS columns in an OR-Map batch"));
    }
    let (mut keys, mut actor, mut counter, mut commit) = (
        Col::new("keys", &c.keys),
        Col::new("actor", &c.actor),
        Col::new("counter", &c.counter),
        Col::new("commit", &c.commit),
    );
    let mut r = CommitReader::new(c);
    let mut last_counter = vec![0u64; c.actors.len()];
    let mut op = OrMapOp::default();
    for &flag in c.flags.iter() {
        let key = Value::decode(keys.bytes()?).map_err(|e| bad(format!("key: {e}")))?;
        let a = actor.index(c.actors.len())?;
        let delta = unzigzag(counter.varint()?);
        let value = (last_counter[a] as i64).checked_add(delta).filter(|v| *v > 0);
        let count = value.ok_or_else(|| bad("counter out of range"))? as u64;
        last_counter[a] = count;
        let cid = match commit.varint()? {
            0 => r.next(CrdtKind::Ormap, Vec::new())?,
            back => {
                let back = usize::try_from(back).ok().filter(|b| *b <= r.table.len());
                r.table[r.table.len() - back.ok_or_else(|| bad("commit reference out of range"))?]
            }
        };
        let entry = OrEntry { key, dot: Dot::new(c.actors[a], count), commit: cid };
        match flag {
            0 => op.adds.push(entry),
            1 => op.removals.push(entry),
            f => return Err(bad(format!("entry flag {f}"))),
        }
    }
    for col in [&keys, &actor, &counter, &commit] {
        col.done()?;
    }
    r.done()?;
    Ok(Decoded { op: AnyOp::Ormap(op), values: r.values, commits: r.commits })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use replikativ_crdt::{Crdt, OrMap, Transaction};
    use std::collections::BTreeMap;

    type Built = (OrMap, Vec<(bool, OrEntry)>, IdMap<Vec<u8>>);

    fn build(n: u64) -> Built {
        let actor = ActorId::from_u128(9);
        let mut m = OrMap::default();
        let mut store = IdMap::default();
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

    fn encode(entries: &[(bool, OrEntry)], store: &IdMap<Vec<u8>>) -> Vec<u8> {
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
        let AnyOp::Ormap(op) = &d.op else { panic!("an OR-Map op") };
        let mut back = OrMap::default();
        back.apply(op).unwrap();
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
        assert_eq!(d.op, AnyOp::Ormap(OrMapOp { adds: vec![e], removals: vec![] }));
        assert_eq!(d.values[&cid], record);
        assert!(d.values.contains_key(&params.content_id()));
    }

    /// A diverged and merged CDVCS history: parents travel as references, every commit record is
    /// rebuilt (the merge too) and the op applies to a fresh replica, equal to the original.
    #[test]
    fn a_cdvcs_batch_round_trips_parents_and_merges() {
        use replikativ_crdt::Cdvcs;
        let mut store: IdMap<Vec<u8>> = IdMap::default();
        let mut keep = |values: BTreeMap<ContentId, Value>| {
            store.extend(values.into_iter().map(|(id, v)| (id, v.encode())));
        };
        let (mut a, root) = Cdvcs::new("a", 1);
        keep(root.values);
        let mut b = a.clone();
        for i in 0..50 {
            keep(a.transact("a", 10 + i, vec![Transaction::new("add", i as i64)]).unwrap().values);
            keep(b.transact("b", 10 + i, vec![Transaction::new("sub", i as i64)]).unwrap().values);
        }
        a.apply(&b.state_op()).unwrap();
        let heads: Vec<ContentId> = a.heads().iter().copied().collect();
        assert_eq!(heads.len(), 2);
        keep(a.merge("a", 99, &heads, None, vec![]).unwrap().values);
        let state = a.state_op();
        let data = encode_cdvcs(&state, &|id| store.get(id).cloned());
        let d = decode(&data).unwrap();
        assert_eq!(d.op, AnyOp::Cdvcs(state.clone()));
        let mut back = Cdvcs::default();
        let AnyOp::Cdvcs(op) = &d.op else { panic!("a CDVCS op") };
        back.apply(op).unwrap();
        assert_eq!(back.heads(), a.heads());
        for e in &state.commits {
            assert_eq!(d.values.get(&e.id), store.get(&e.id), "the record of {:?} was rebuilt", e.id);
        }
        let per_commit = data.len() as f64 / state.commits.len() as f64;
        assert!(per_commit < 16.0, "{per_commit} bytes per commit");
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
        // Truncated anywhere, or followed by anything: an error, never a hang.
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().0.contains("after the end"));
        assert!(decode(&data).is_ok(), "the thread's decompressor is reset after errors");
        // A bomb: far more than MAX_BATCH_BYTES of zeros compressed.
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; MAX_BATCH_BYTES + 10]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(decode(&bomb).unwrap_err().0.contains("decompressed"));
    }
}
