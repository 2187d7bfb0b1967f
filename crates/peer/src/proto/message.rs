//! The wire messages and their framing.
//!
//! A frame is one msgpack map, `{v, kind, body}`: the protocol version, the message kind's name,
//! and the message body (itself msgpack in named-field mode) as a byte string. Decoding reads the
//! envelope first, so a frame of an unknown kind is recognised as such (and refused without closing
//! the connection: a newer peer may speak kinds this one does not), while garbage, truncated frames
//! and malformed bodies are errors that close the connection.

use std::collections::BTreeSet;

use replikativ_crdt::{Address, CdvcsOp, ContentId, CrdtKind, DotSet, GSetOp, IdSet, LwwOp, OrMapOp};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol version this peer speaks. Peers refuse a different major version in `Hello`.
pub const PROTOCOL_VERSION: u16 = 2;

/// An op of any datatype, tagged with its kind.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnyOp {
    /// An OR-Map op.
    Ormap(OrMapOp),
    /// A CDVCS op.
    Cdvcs(CdvcsOp),
    /// An LWW register write.
    Lww(LwwOp),
    /// A G-Set op.
    Gset(GSetOp),
}

impl AnyOp {
    /// The datatype the op belongs to.
    pub fn kind(&self) -> CrdtKind {
        match self {
            AnyOp::Ormap(_) => CrdtKind::Ormap,
            AnyOp::Cdvcs(_) => CrdtKind::Cdvcs,
            AnyOp::Lww(_) => CrdtKind::Lww,
            AnyOp::Gset(_) => CrdtKind::Gset,
        }
    }

    /// How many entries the op carries: OR-Map adds and removals, CDVCS graph entries, G-Set
    /// elements, one LWW write.
    pub fn len(&self) -> usize {
        match self {
            AnyOp::Ormap(op) => op.adds.len() + op.removals.len(),
            AnyOp::Cdvcs(op) => op.commits.len(),
            AnyOp::Lww(_) => 1,
            AnyOp::Gset(op) => op.elements.len(),
        }
    }

    /// Roughly the bytes the op takes encoded (keys and elements by their canonical length, ids
    /// and framing estimated): what bounds folded relays and outbox budgets.
    pub fn approx_bytes(&self) -> usize {
        match self {
            AnyOp::Ormap(op) => op.adds.iter().chain(&op.removals).map(|e| e.key.encoded_len() + 64).sum(),
            AnyOp::Cdvcs(op) => {
                op.commits.iter().map(|e| 34 * (e.parents.len() + 1) + 8).sum::<usize>() + 34 * op.heads.len()
            }
            AnyOp::Lww(op) => op.value.encoded_len() + 64,
            AnyOp::Gset(op) => op.elements.iter().map(|e| e.encoded_len() + 8).sum(),
        }
    }

    /// Whether the op carries no entries (an empty state).
    pub fn is_empty(&self) -> bool {
        match self {
            AnyOp::Lww(op) => op.stamp.is_none(),
            _ => self.len() == 0,
        }
    }

    /// Folds `later` (an op made after this one on the same address) into this op, so that
    /// applying the result equals applying both in order: OR-Map adds and removals and G-Set
    /// elements are united, CDVCS graph entries concatenated (parents stay before children; the
    /// heads are the later op's) and an LWW write keeps the winner. Returns `later` back when the
    /// two cannot be folded (other kinds, or CDVCS ops of different methods).
    pub fn absorb(&mut self, later: AnyOp) -> Result<(), AnyOp> {
        match (self, later) {
            (AnyOp::Ormap(a), AnyOp::Ormap(b)) => {
                a.adds.extend(b.adds);
                a.removals.extend(b.removals);
            }
            (AnyOp::Cdvcs(a), AnyOp::Cdvcs(b)) if a.method == b.method => {
                let known: IdSet = a.commits.iter().map(|e| e.id).collect();
                a.commits.extend(b.commits.into_iter().filter(|e| !known.contains(&e.id)));
                a.heads = b.heads;
            }
            (AnyOp::Lww(a), AnyOp::Lww(b)) => {
                if (&b.stamp, &b.value) > (&a.stamp, &a.value) {
                    *a = b;
                }
            }
            (AnyOp::Gset(a), AnyOp::Gset(b)) => a.elements.extend(b.elements),
            (_, later) => return Err(later),
        }
        Ok(())
    }
}

/// What a peer knows of one address, so the other side can send only what is missing.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Summary {
    /// A CDVCS's heads: the other side sends the commits not reachable from them.
    Heads(BTreeSet<ContentId>),
    /// A digest of the whole state of another datatype: on a mismatch the state is sent.
    Digest(ContentId),
    /// Digests of the entries of a large OR-Map or G-Set in [`state::BUCKETS`](super::state::BUCKETS)
    /// buckets by key ([`state::BUCKET_DIGEST`](super::state::BUCKET_DIGEST) bytes each,
    /// concatenated): on a mismatch only the entries of the differing buckets are sent.
    Buckets(ByteBuf),
    /// The sender has nothing at the address yet.
    Empty,
    /// A CDVCS's heads with samples of their ancestry (`CommitGraph::samples`: first-parent
    /// ancestors at distances 1, 2, 4, ...): the receiver sends the commits reachable neither from
    /// the heads nor from any sample it knows, so a diverged history costs about twice the
    /// divergence, not the whole history. Wire name `g`.
    #[serde(rename = "g")]
    Graph {
        /// The heads (the complete frontier of a history with gaps).
        heads: BTreeSet<ContentId>,
        /// Ancestor samples, newest first (at most [`MAX_SAMPLES`]).
        samples: Vec<ContentId>,
    },
    /// An OR-Map's dots: the receiver sends the entries whose dots are not in it (and not already
    /// sent on this connection), as compact batches. Wire name `o`.
    #[serde(rename = "o")]
    Dots(DotSummary),
}

/// What an OR-Map replica holds, by dots (see [`Summary::Dots`]). On the wire a pair
/// `[adds, removed]` with `removed` as `{d: [dots, digest]}` or `{b: buckets}`: it is sent for every
/// OR-Map on every anti-entropy tick, so field names would be a third of it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(from = "DotSummaryWire", into = "DotSummaryWire")]
pub struct DotSummary {
    /// The dots of every add the sender holds, live or removed.
    pub adds: DotSet,
    /// What the sender holds of removals.
    pub removed: Removed,
}

#[derive(Serialize, Deserialize)]
struct DotSummaryWire(DotSet, RemovedWire);

#[derive(Serialize, Deserialize)]
enum RemovedWire {
    #[serde(rename = "d")]
    Dots(DotSet, u64),
    #[serde(rename = "b")]
    Buckets(ByteBuf),
}

impl From<DotSummaryWire> for DotSummary {
    fn from(w: DotSummaryWire) -> DotSummary {
        let removed = match w.1 {
            RemovedWire::Dots(dots, digest) => Removed::Dots { dots, digest },
            RemovedWire::Buckets(b) => Removed::Buckets(b),
        };
        DotSummary { adds: w.0, removed }
    }
}

impl From<DotSummary> for DotSummaryWire {
    fn from(s: DotSummary) -> DotSummaryWire {
        let removed = match s.removed {
            Removed::Dots { dots, digest } => RemovedWire::Dots(dots, digest),
            Removed::Buckets(b) => RemovedWire::Buckets(b),
        };
        DotSummaryWire(s.adds, removed)
    }
}

/// What an OR-Map replica holds of removals (see [`DotSummary`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Removed {
    /// The add dots whose removal it holds, when they take at most
    /// [`MAX_SUMMARY_RUNS`](super::state::MAX_SUMMARY_RUNS) runs, with the digest of its removals
    /// and their commits (`OrMap::removal_digest`): equal dots with another digest mean concurrent
    /// removals of one entry with different commits, and the receiver sends its removals.
    Dots {
        /// The removed dots.
        dots: DotSet,
        /// The removal digest.
        digest: u64,
    },
    /// Else digests of its removals in [`state::BUCKETS`](super::state::BUCKETS) buckets by key
    /// ([`state::BUCKET_DIGEST`](super::state::BUCKET_DIGEST) bytes each): the receiver sends the
    /// removals of the differing buckets.
    Buckets(ByteBuf),
}

/// A bucket of the reconciliation trie: the addresses whose 64-bit hash starts with the `depth`
/// nibbles of `prefix` (the high bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Bucket {
    /// Nibbles fixed (0 = the root, every address).
    pub depth: u8,
    /// The fixed nibbles, in the high bits (the rest zero).
    pub prefix: u64,
}

/// Collection-level anti-entropy for connections that share many addresses (see
/// [`recon`](super::recon)): fingerprints instead of one summary per address.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recon {
    /// For each bucket, its 16 children's item count and fingerprint (16 x 12 bytes: count u32,
    /// fingerprint u64, little-endian).
    Nodes(Vec<(Bucket, ByteBuf)>),
    /// Asks for the summaries of every shared address in these buckets.
    List(Vec<Bucket>),
    /// The summaries of every shared address in these buckets (the answer to `List`): an address of
    /// the buckets missing here is one the sender does not have.
    Listed {
        /// The buckets listed.
        buckets: Vec<Bucket>,
        /// Their addresses' summaries.
        summaries: Vec<(Address, Summary)>,
    },
}

/// Ops of an OR-Map or a CDVCS with their commit records and params, columnar, without ids,
/// compressed (see [`batch`](super::batch)): a catch-up part, or (`live`) the live changes of one
/// barrier. Answered like a publication.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Batch {
    /// Publication id (per sender), echoed by the ack.
    pub id: u64,
    /// Where.
    pub address: Address,
    /// The compressed columns.
    pub data: ByteBuf,
    /// Live changes (relayed on by the receiver like a publication), not a catch-up answer to the
    /// receiver's summary. Absent on the wire when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

/// The first message each way.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's peer id.
    pub peer_id: String,
    /// Optional features the sender supports: `buckets` (it understands `Summary::Buckets`).
    pub features: Vec<String>,
}

/// Asks the receiver for the publications of these addresses (replacing the sender's previous set
/// on this connection). `extend` says whether the sender takes on what its peers subscribe to (a
/// server) or only wants the overlap with its own interest (a client).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Subscribe {
    /// Subscription id, echoed by the ack.
    pub id: u64,
    /// The addresses.
    pub addresses: BTreeSet<Address>,
    /// Whether the sender extends its subscriptions with those of its peers.
    pub extend: bool,
}

/// Subscribes to the same addresses as a `subscribe` the sender sent the receiver before (on an
/// earlier connection), named by the digest of its address set ([`set_digest`]): a reconnecting
/// peer with 10,000 subscriptions sends 50 bytes instead of the list. A receiver that does not
/// remember that set answers `refused` with the id, and the sender subscribes in full.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Resubscribe {
    /// Subscription id, echoed by the ack (or the refusal).
    pub id: u64,
    /// The digest of the address set.
    pub digest: ContentId,
    /// Whether the sender extends its subscriptions with those of its peers.
    pub extend: bool,
}

/// The digest of a set of addresses that a [`Resubscribe`] names.
pub fn set_digest(addresses: &BTreeSet<Address>) -> ContentId {
    ContentId::hash_bytes(&rmp_serde::to_vec(addresses).expect("addresses encode"))
}

/// Publishes an op on an address.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Publish {
    /// Publication id (per sender), echoed by the ack.
    pub id: u64,
    /// Where.
    pub address: Address,
    /// The op.
    pub op: AnyOp,
    /// Values the receiver cannot have yet (the op's new commit records and params), as canonical
    /// encodings; the receiver fetches whatever else it lacks.
    pub values: Vec<ByteBuf>,
    /// A catch-up answer to the receiver's `sync` (not a live change): the receiver does not echo
    /// it back. Absent on the wire when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
}

/// Every message of the protocol.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Message {
    /// Version and identity, first each way.
    Hello(Hello),
    /// Subscribe to addresses.
    Subscribe(Subscribe),
    /// Subscribe to the same addresses as before, by digest.
    Resubscribe(Resubscribe),
    /// A subscription was processed.
    SubscribeAck {
        /// The subscription id.
        id: u64,
    },
    /// Stop publications of these addresses on this connection.
    Unsubscribe {
        /// The addresses.
        addresses: BTreeSet<Address>,
    },
    /// An op on an address.
    Publish(Publish),
    /// A compact catch-up part of an OR-Map.
    Batch(Batch),
    /// A publication is applied and durable.
    PublishAck {
        /// The publication id.
        id: u64,
    },
    /// A publication was not applied (e.g. for an address the receiver does not subscribe to).
    Refused {
        /// The publication id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Asks for values by content id.
    Fetch {
        /// Fetch id, echoed by the reply.
        id: u64,
        /// The ids (at most [`MAX_FETCH_IDS`]).
        ids: Vec<ContentId>,
    },
    /// Values asked for, as canonical encodings; `missing` lists those the sender does not have.
    FetchReply {
        /// The fetch id.
        id: u64,
        /// Canonical encodings.
        values: Vec<ByteBuf>,
        /// Ids the sender does not have.
        missing: Vec<ContentId>,
    },
    /// Anti-entropy: what the sender has of addresses both sides share. The receiver sends what the
    /// sender lacks; if the receiver lacks something and `reply` is false, it answers with its own
    /// summaries (`reply: true`, which is never answered with summaries again). Wire kind `sync`.
    Summaries {
        /// Per address.
        summaries: Vec<(Address, Summary)>,
        /// Whether this answers other summaries.
        reply: bool,
    },
    /// Collection-level anti-entropy (wire kind `recon`).
    Recon(Recon),
    /// A message was refused without closing the connection (e.g. an unknown kind).
    Error {
        /// Why.
        reason: String,
    },
    /// The sender is closing the connection.
    Close {
        /// Why.
        reason: String,
    },
    /// An application extension, passed to the application untouched.
    Custom {
        /// Extension tag.
        tag: String,
        /// Payload.
        data: ByteBuf,
    },
}

/// Ancestor samples a CDVCS summary carries at most (`Summary::Graph`).
pub const MAX_SAMPLES: usize = 64;

/// Most ids one `Fetch` may ask for.
pub const MAX_FETCH_IDS: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u16,
    kind: String,
    body: ByteBuf,
}

/// A frame of `kind` with a msgpack `body` (named fields), in the protocol's envelope: for
/// messages outside [`Message`] (the authentication handshake, `crate::auth::handshake`).
pub(crate) fn encode_envelope<T: Serialize>(kind: &str, body: &T) -> Vec<u8> {
    let body = ByteBuf::from(rmp_serde::to_vec_named(body).expect("bodies encode"));
    rmp_serde::to_vec_named(&Envelope { v: PROTOCOL_VERSION, kind: kind.to_owned(), body })
        .expect("envelopes always encode")
}

/// The version, kind and body of a frame (see [`encode_envelope`]).
pub(crate) fn decode_envelope(frame: &[u8]) -> Result<(u16, String, Vec<u8>), String> {
    let e: Envelope = from_msgpack(frame)?;
    Ok((e.v, e.kind, e.body.into_vec()))
}

#[derive(Serialize, Deserialize)]
struct IdBody {
    id: u64,
}

#[derive(Serialize, Deserialize)]
struct AddressesBody {
    addresses: BTreeSet<Address>,
}

#[derive(Serialize, Deserialize)]
struct RefusedBody {
    id: u64,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct FetchBody {
    id: u64,
    ids: Vec<ContentId>,
}

#[derive(Serialize, Deserialize)]
struct FetchReplyBody {
    id: u64,
    values: Vec<ByteBuf>,
    missing: Vec<ContentId>,
}

#[derive(Serialize, Deserialize)]
struct SummariesBody {
    summaries: Vec<(Address, Summary)>,
    reply: bool,
}

#[derive(Serialize, Deserialize)]
struct ReasonBody {
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct CustomBody {
    tag: String,
    data: ByteBuf,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a frame at all (garbage or truncated).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A kind this peer does not know (the connection may go on).
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
    /// A frame of another protocol version than [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// A known kind whose body does not decode.
    #[error("malformed {kind} message: {reason}")]
    BadBody {
        /// The kind.
        kind: String,
        /// The decoder's complaint.
        reason: String,
    },
}

fn body<T: Serialize>(t: &T) -> ByteBuf {
    ByteBuf::from(rmp_serde::to_vec_named(t).expect("messages always encode"))
}

impl Message {
    /// For a message that writes to an address (a `publish` or a catch-up `batch`): its
    /// publication id and the address. Middleware that filters writes by address must look at
    /// both kinds: this is the one place that knows which kinds write.
    pub fn written(&self) -> Option<(u64, &Address)> {
        match self {
            Message::Publish(p) => Some((p.id, &p.address)),
            Message::Batch(b) => Some((b.id, &b.address)),
            _ => None,
        }
    }

    /// The kind's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Subscribe(_) => "subscribe",
            Message::Resubscribe(_) => "resubscribe",
            Message::SubscribeAck { .. } => "subscribe-ack",
            Message::Unsubscribe { .. } => "unsubscribe",
            Message::Publish(_) => "publish",
            Message::Batch(_) => "batch",
            Message::PublishAck { .. } => "publish-ack",
            Message::Refused { .. } => "refused",
            Message::Fetch { .. } => "fetch",
            Message::FetchReply { .. } => "fetch-reply",
            Message::Summaries { .. } => "sync",
            Message::Recon(_) => "recon",
            Message::Error { .. } => "error",
            Message::Close { .. } => "close",
            Message::Custom { .. } => "custom",
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let body = match self {
            Message::Hello(h) => body(h),
            Message::Subscribe(s) => body(s),
            Message::SubscribeAck { id } | Message::PublishAck { id } => body(&IdBody { id: *id }),
            Message::Unsubscribe { addresses } => body(&AddressesBody { addresses: addresses.clone() }),
            Message::Publish(p) => body(p),
            Message::Batch(b) => body(b),
            Message::Resubscribe(r) => body(r),
            Message::Refused { id, reason } => body(&RefusedBody { id: *id, reason: reason.clone() }),
            Message::Fetch { id, ids } => body(&FetchBody { id: *id, ids: ids.clone() }),
            Message::FetchReply { id, values, missing } => {
                body(&FetchReplyBody { id: *id, values: values.clone(), missing: missing.clone() })
            }
            Message::Recon(r) => body(r),
            Message::Summaries { summaries, reply } => {
                body(&SummariesBody { summaries: summaries.clone(), reply: *reply })
            }
            Message::Error { reason } | Message::Close { reason } => {
                body(&ReasonBody { reason: reason.clone() })
            }
            Message::Custom { tag, data } => body(&CustomBody { tag: tag.clone(), data: data.clone() }),
        };
        let envelope = Envelope { v: PROTOCOL_VERSION, kind: self.kind().to_owned(), body };
        rmp_serde::to_vec_named(&envelope).expect("envelopes always encode")
    }

    /// Decodes one frame. The envelope and the body must each be exactly one msgpack value:
    /// trailing bytes after either are [`FrameError::Malformed`] / [`FrameError::BadBody`].
    pub fn decode(frame: &[u8]) -> Result<Message, FrameError> {
        let envelope: Envelope = from_msgpack(frame).map_err(FrameError::Malformed)?;
        // A hello of any version decodes, so the peer can say which version it refuses.
        if envelope.v != PROTOCOL_VERSION && envelope.kind != "hello" {
            return Err(FrameError::UnsupportedVersion(envelope.v));
        }
        let kind = envelope.kind;
        let bytes = envelope.body.as_slice();
        fn parse<T: serde::de::DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<T, FrameError> {
            from_msgpack(bytes).map_err(|reason| FrameError::BadBody { kind: kind.to_owned(), reason })
        }
        Ok(match kind.as_str() {
            "hello" => Message::Hello(parse(&kind, bytes)?),
            "subscribe" => Message::Subscribe(parse(&kind, bytes)?),
            "subscribe-ack" => Message::SubscribeAck { id: parse::<IdBody>(&kind, bytes)?.id },
            "unsubscribe" => {
                Message::Unsubscribe { addresses: parse::<AddressesBody>(&kind, bytes)?.addresses }
            }
            "publish" => Message::Publish(parse(&kind, bytes)?),
            "batch" => Message::Batch(parse(&kind, bytes)?),
            "resubscribe" => Message::Resubscribe(parse(&kind, bytes)?),
            "publish-ack" => Message::PublishAck { id: parse::<IdBody>(&kind, bytes)?.id },
            "refused" => {
                let b: RefusedBody = parse(&kind, bytes)?;
                Message::Refused { id: b.id, reason: b.reason }
            }
            "fetch" => {
                let b: FetchBody = parse(&kind, bytes)?;
                Message::Fetch { id: b.id, ids: b.ids }
            }
            "fetch-reply" => {
                let b: FetchReplyBody = parse(&kind, bytes)?;
                Message::FetchReply { id: b.id, values: b.values, missing: b.missing }
            }
            "sync" => {
                let b: SummariesBody = parse(&kind, bytes)?;
                Message::Summaries { summaries: b.summaries, reply: b.reply }
            }
            "recon" => Message::Recon(parse(&kind, bytes)?),
            "error" => Message::Error { reason: parse::<ReasonBody>(&kind, bytes)?.reason },
            "close" => Message::Close { reason: parse::<ReasonBody>(&kind, bytes)?.reason },
            "custom" => {
                let b: CustomBody = parse(&kind, bytes)?;
                Message::Custom { tag: b.tag, data: b.data }
            }
            _ => return Err(FrameError::UnknownKind(kind.chars().take(64).collect())),
        })
    }

    /// Roughly the bytes the message takes encoded (within a small factor, without encoding it):
    /// what an outbox counts against its byte budget.
    pub fn approx_size(&self) -> usize {
        let addresses = |a: &BTreeSet<Address>| a.iter().map(|a| a.user.len() + 24).sum::<usize>();
        64 + match self {
            Message::Hello(h) => h.peer_id.len() + h.features.iter().map(|f| f.len() + 2).sum::<usize>(),
            Message::Subscribe(s) => addresses(&s.addresses),
            Message::Unsubscribe { addresses: a } => addresses(a),
            Message::Publish(p) => {
                p.values.iter().map(|v| v.len() + 5).sum::<usize>()
                    + p.op.approx_bytes()
                    + p.address.user.len()
            }
            Message::Batch(b) => b.data.len() + b.address.user.len(),
            Message::Fetch { ids, .. } => ids.len() * 34,
            Message::FetchReply { values, missing, .. } => {
                values.iter().map(|v| v.len() + 5).sum::<usize>() + missing.len() * 34
            }
            Message::Summaries { summaries, .. } => {
                summaries.iter().map(|(a, s)| a.user.len() + 24 + summary_size(s)).sum()
            }
            Message::Recon(Recon::Nodes(n)) => n.iter().map(|(_, c)| c.len() + 12).sum(),
            Message::Recon(Recon::List(b)) => b.len() * 12,
            Message::Recon(Recon::Listed { buckets, summaries }) => {
                buckets.len() * 12
                    + summaries.iter().map(|(a, s)| a.user.len() + 24 + summary_size(s)).sum::<usize>()
            }
            Message::Refused { reason, .. } | Message::Error { reason } | Message::Close { reason } => {
                reason.len()
            }
            Message::Custom { tag, data } => tag.len() + data.len(),
            Message::SubscribeAck { .. } | Message::PublishAck { .. } => 0,
            Message::Resubscribe(_) => 42,
        }
    }

    /// The version field of a frame, if the frame has an envelope at all.
    pub fn frame_version(frame: &[u8]) -> Option<u16> {
        from_msgpack::<Envelope>(frame).ok().map(|e| e.v)
    }
}

/// Roughly the bytes a summary takes encoded.
fn summary_size(s: &Summary) -> usize {
    match s {
        Summary::Heads(h) => h.len() * 34,
        Summary::Graph { heads, samples } => (heads.len() + samples.len()) * 34,
        Summary::Buckets(b) => b.len(),
        Summary::Digest(_) | Summary::Empty => 34,
        Summary::Dots(d) => {
            20 * d.adds.range_count()
                + match &d.removed {
                    Removed::Dots { dots, .. } => 20 * dots.range_count() + 9,
                    Removed::Buckets(b) => b.len(),
                }
        }
    }
}

/// Longest peer id a hello may carry, in bytes.
pub const MAX_PEER_ID_LEN: usize = 256;
/// Most features a hello may announce (each at most 64 bytes).
pub const MAX_FEATURES: usize = 32;

/// Checks a hello's fields like every other input from the wire is checked: a peer id of at most
/// [`MAX_PEER_ID_LEN`] bytes without control characters (it is shown in status and logs), and at
/// most [`MAX_FEATURES`] features of at most 64 bytes.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    if hello.peer_id.len() > MAX_PEER_ID_LEN {
        return Err(format!(
            "hello with a peer id of {} bytes (at most {MAX_PEER_ID_LEN})",
            hello.peer_id.len()
        ));
    }
    if hello.peer_id.chars().any(char::is_control) {
        return Err("hello with a control character in its peer id".into());
    }
    if hello.features.len() > MAX_FEATURES || hello.features.iter().any(|f| f.len() > 64) {
        return Err(format!(
            "hello with {} features (at most {MAX_FEATURES} of 64 bytes)",
            hello.features.len()
        ));
    }
    Ok(())
}

/// A remote's text cut to 200 bytes (on a character boundary) with control characters escaped,
/// for logs: what a remote says must not flood or forge log lines.
pub fn clip(text: &str) -> String {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].escape_debug().collect();
    if end < text.len() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
}

/// Decodes exactly one msgpack value from `bytes`: bytes after it are an error, not ignored (a
/// frame or record with a valid prefix and junk after it is refused as a whole). Every decoder of
/// wire messages and stored records in this crate goes through it.
pub fn from_msgpack<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let value = T::deserialize(&mut de).map_err(|e| e.to_string())?;
    let used = de.position() as usize;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes after the msgpack value", bytes.len() - used));
    }
    Ok(value)
}
