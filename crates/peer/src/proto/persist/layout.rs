//! The store key layout of a peer (private to persistence; `docs/design.md` §6.6).
//!
//! | key | value |
//! |---|---|
//! | `peer/config` | msgpack [`PeerRecord`](crate::proto::PeerRecord): peer id, `extend`, subscriptions |
//! | `crdt/<uuid>/<user>` | msgpack [`Snapshot`]: the state and the op-log position it covers (or, for a large state, the number of chunks holding it) |
//! | `s/<16 uuid bytes><user len><user><log_from><i>` | chunk `i` of a large snapshot |
//! | log `o/<16 uuid bytes><user>` | msgpack [`AnyOp`](crate::proto::AnyOp) per input batch that changed the address since the snapshot |
//! | `v/<32 id bytes>` | canonical encoding of a value (commit records, params) |
//! | `quarantine/<key>` | a record that did not load when the peer opened |

use replikativ_crdt::{Address, ContentId};
use serde::{Deserialize, Serialize};

use crate::proto::CrdtState;

pub(super) const CONFIG_KEY: &[u8] = b"peer/config";
pub(super) const CRDT_PREFIX: &[u8] = b"crdt/";
/// The prefix of every snapshot chunk's key.
pub(super) const CHUNK_PREFIX: &[u8] = b"s/";
/// Largest chunk of a snapshot (or the store's value limit, if smaller).
pub(super) const MAX_CHUNK: usize = 1 << 20;

/// A stored state and the op-log position it includes. A snapshot too large for one store value
/// is stored in chunks (see [`chunk_key`]): its record then holds only `log_from` and `chunks`, and
/// the chunks, concatenated, are the encoding of the whole record.
#[derive(Serialize, Deserialize)]
pub(super) struct Snapshot {
    #[serde(default)]
    pub(super) state: Option<CrdtState>,
    /// Log entries before this sequence number are in `state`.
    pub(super) log_from: u64,
    /// Chunks holding the record (0: `state` is here).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) chunks: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A snapshot to write, borrowing the state (encodes like [`Snapshot`]).
#[derive(Serialize)]
pub(super) struct SnapshotRef<'a> {
    pub(super) state: &'a CrdtState,
    pub(super) log_from: u64,
}

pub(super) fn crdt_key(a: &Address) -> Vec<u8> {
    format!("crdt/{}/{}", a.id, a.user).into_bytes()
}

/// The address a `crdt/<uuid>/<user>` key names.
pub(super) fn address_of_key(key: &[u8]) -> Option<Address> {
    let rest = std::str::from_utf8(key.strip_prefix(CRDT_PREFIX)?).ok()?;
    let (id, user) = rest.split_once('/')?;
    Address::new(user, id.parse().ok()?).ok()
}

/// The op log of an address: `o/`, the 16 uuid bytes, the user (short, so the store compares
/// little when it orders a log's entries).
pub(super) fn log_name(a: &Address) -> Vec<u8> {
    let mut name = Vec::with_capacity(18 + a.user.len());
    name.extend_from_slice(b"o/");
    name.extend_from_slice(a.id.as_bytes());
    name.extend_from_slice(a.user.as_bytes());
    name
}

/// The store key of a content-addressed value: `v/` and the 32 id bytes.
pub(super) fn value_key(id: &ContentId) -> Vec<u8> {
    let mut key = Vec::with_capacity(34);
    key.extend_from_slice(b"v/");
    key.extend_from_slice(id.as_bytes());
    key
}

/// Keys of a snapshot's chunks: `s/`, the 16 uuid bytes, the user's length (u16 BE) and bytes,
/// then the snapshot's `log_from` (u64 BE: the generation) and the chunk number (u32 BE).
fn chunk_prefix(a: &Address) -> Vec<u8> {
    let mut k = Vec::with_capacity(20 + a.user.len() + 12);
    k.extend_from_slice(CHUNK_PREFIX);
    k.extend_from_slice(a.id.as_bytes());
    k.extend_from_slice(&(a.user.len() as u16).to_be_bytes());
    k.extend_from_slice(a.user.as_bytes());
    k
}

/// The key of chunk `i` of the snapshot of `a` that starts its log at `log_from`.
pub(super) fn chunk_key(a: &Address, log_from: u64, i: u32) -> Vec<u8> {
    let mut k = chunk_prefix(a);
    k.extend_from_slice(&log_from.to_be_bytes());
    k.extend_from_slice(&i.to_be_bytes());
    k
}
