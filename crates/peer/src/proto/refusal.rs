//! Why something from a remote was refused: one name per reason, stable on the wire and in
//! `status`, with a counter each.
//!
//! Every limit and check that refuses input counts its refusals here (the core's in
//! [`crate::proto::Peer::refusals`], the node's own in its status), so an operator sees what a
//! hostile or broken client tried, by reason.

use std::collections::BTreeMap;

/// A reason to refuse input or close a connection.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// A frame that is not an envelope, has trailing bytes, or whose body does not decode.
    MalformedFrame,
    /// A frame of another protocol version.
    UnsupportedVersion,
    /// A frame of a kind this peer does not know (answered with `error`; the connection stays).
    UnknownKind,
    /// A message before the hello.
    ExpectedHello,
    /// A second hello.
    HelloTwice,
    /// No hello within the handshake time.
    NoHello,
    /// A hello whose peer id or features are out of bounds.
    BadHello,
    /// A publication for an address the connection did not subscribe to (or this peer does not).
    NotSubscribed,
    /// An op of another datatype than the address holds.
    WrongKind,
    /// A value that does not decode, or a commit record that does not parse.
    BadValue,
    /// More publications waiting on one connection than `max_queued_publications`.
    PublicationFlood,
    /// More bytes of values waiting on one connection than `max_queued_bytes`.
    QueuedBytes,
    /// An op that does not validate.
    InvalidOp,
    /// An LWW stamp further in the future than `max_clock_skew`.
    ClockSkew,
    /// An OR-Map dot of this peer's own writer that this peer never made.
    ForgedDot,
    /// A fetch of more ids than allowed.
    FetchTooLarge,
    /// A fetch reply that answers no fetch.
    StrayFetchReply,
    /// A fetched value that hashes to an id that was not asked for.
    WrongHash,
    /// A subscription naming more addresses than `max_subscriptions_per_connection`.
    SubscriptionsPerConnection,
    /// Addresses not taken on because the peer holds `max_subscriptions` already.
    SubscriptionsTotal,
    /// A connection over `max_connections`.
    MaxConnections,
    /// A websocket handshake not finished within `handshake_timeout`.
    HandshakeTimeout,
    /// A websocket handshake request larger than `max_handshake_bytes`.
    HandshakeTooLarge,
    /// A websocket handshake that failed (not a websocket request).
    HandshakeFailed,
    /// A websocket frame over the size limit, or a broken websocket stream.
    BadWebsocketFrame,
    /// A text frame (the protocol is binary).
    TextFrame,
    /// A connection silent for `idle_timeout`.
    IdleTimeout,
    /// `accept` failed (e.g. out of file descriptors); the listener backs off.
    AcceptFailed,
    /// A stage command with an invalid argument (e.g. an address with a bad user).
    InvalidCommand,
    /// A message this node would have sent over the frame limit (not sent; logged at WARN).
    OversizeOutput,
    /// A catch-up batch that does not decompress or decode (see `proto::batch`).
    BadBatch,
    /// A `recon` message naming too many buckets or a malformed one (see `proto::recon`).
    BadRecon,
    /// A connection to a node with authentication on that sent something else than the
    /// authentication handshake first (`crate::auth::handshake`).
    AuthRequired,
    /// An authentication handshake that failed: a bad signature, a malformed or oversized
    /// handshake message, another version, or a remote that does not authenticate.
    AuthFailed,
    /// Something the connection's principal may not do: a write to another user's address, a
    /// subscription or a command on an address it may not read (authentication on).
    Forbidden,
    /// A `fetch` naming ids this peer never named to that connection without their values (or
    /// named so long ago that they were forgotten, `MAX_OFFERED_IDS`): answered `missing`, counted
    /// once per fetch. A content id is not a read token.
    FetchNotOffered,
}

impl Refusal {
    /// Every reason, in order.
    pub const ALL: [Refusal; 36] = [
        Refusal::MalformedFrame,
        Refusal::UnsupportedVersion,
        Refusal::UnknownKind,
        Refusal::ExpectedHello,
        Refusal::HelloTwice,
        Refusal::NoHello,
        Refusal::BadHello,
        Refusal::NotSubscribed,
        Refusal::WrongKind,
        Refusal::BadValue,
        Refusal::PublicationFlood,
        Refusal::QueuedBytes,
        Refusal::InvalidOp,
        Refusal::ClockSkew,
        Refusal::ForgedDot,
        Refusal::FetchTooLarge,
        Refusal::StrayFetchReply,
        Refusal::WrongHash,
        Refusal::SubscriptionsPerConnection,
        Refusal::SubscriptionsTotal,
        Refusal::MaxConnections,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeTooLarge,
        Refusal::HandshakeFailed,
        Refusal::BadWebsocketFrame,
        Refusal::TextFrame,
        Refusal::IdleTimeout,
        Refusal::AcceptFailed,
        Refusal::InvalidCommand,
        Refusal::OversizeOutput,
        Refusal::BadBatch,
        Refusal::BadRecon,
        Refusal::AuthRequired,
        Refusal::AuthFailed,
        Refusal::Forbidden,
        Refusal::FetchNotOffered,
    ];

    /// The reason's stable name (kebab-case), as `status` shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::MalformedFrame => "malformed-frame",
            Refusal::UnsupportedVersion => "unsupported-version",
            Refusal::UnknownKind => "unknown-kind",
            Refusal::ExpectedHello => "expected-hello",
            Refusal::HelloTwice => "hello-twice",
            Refusal::NoHello => "no-hello",
            Refusal::BadHello => "bad-hello",
            Refusal::NotSubscribed => "not-subscribed",
            Refusal::WrongKind => "wrong-kind",
            Refusal::BadValue => "bad-value",
            Refusal::PublicationFlood => "publication-flood",
            Refusal::QueuedBytes => "queued-bytes",
            Refusal::InvalidOp => "invalid-op",
            Refusal::ClockSkew => "clock-skew",
            Refusal::ForgedDot => "forged-dot",
            Refusal::FetchTooLarge => "fetch-too-large",
            Refusal::StrayFetchReply => "stray-fetch-reply",
            Refusal::WrongHash => "wrong-hash",
            Refusal::SubscriptionsPerConnection => "subscriptions-per-connection",
            Refusal::SubscriptionsTotal => "subscriptions-total",
            Refusal::MaxConnections => "max-connections",
            Refusal::HandshakeTimeout => "handshake-timeout",
            Refusal::HandshakeTooLarge => "handshake-too-large",
            Refusal::HandshakeFailed => "handshake-failed",
            Refusal::BadWebsocketFrame => "bad-websocket-frame",
            Refusal::TextFrame => "text-frame",
            Refusal::IdleTimeout => "idle-timeout",
            Refusal::BadBatch => "bad-batch",
            Refusal::BadRecon => "bad-recon",
            Refusal::AcceptFailed => "accept-failed",
            Refusal::InvalidCommand => "invalid-command",
            Refusal::OversizeOutput => "oversize-output",
            Refusal::AuthRequired => "auth-required",
            Refusal::AuthFailed => "auth-failed",
            Refusal::Forbidden => "forbidden",
            Refusal::FetchNotOffered => "fetch-not-offered",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusals counted by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals(BTreeMap<Refusal, u64>);

impl Refusals {
    /// Counts one refusal.
    pub fn count(&mut self, reason: Refusal) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Counts `n` refusals.
    pub fn add(&mut self, reason: Refusal, n: u64) {
        if n > 0 {
            *self.0.entry(reason).or_default() += n;
        }
    }

    /// How many refusals of one reason.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// Every reason counted at least once, with its count.
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        self.0.iter().map(|(r, n)| (*r, *n))
    }

    /// Adds another set of counters to this one.
    pub fn merge(&mut self, other: &Refusals) {
        for (r, n) in other.iter() {
            self.add(r, n);
        }
    }

    /// By stable name (what `status` shows).
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        self.0.iter().map(|(r, n)| (r.as_str().to_owned(), *n)).collect()
    }
}

impl Refusal {
    /// The reason with this stable name ([`Refusal::as_str`]), if any.
    pub fn from_name(name: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Why a connection is closed, as it travels in a `close` message and a websocket close frame:
/// the refusal's stable name, `": "`, and a detail for people (`malformed-frame: malformed frame:
/// 3 trailing bytes after the msgpack value`). Tests and tools match on the refusal, not the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The refusal, if the text starts with a known one.
    pub refusal: Option<Refusal>,
    /// The rest.
    pub detail: String,
}

impl CloseReason {
    /// A close reason.
    pub fn new(refusal: Refusal, detail: impl Into<String>) -> CloseReason {
        CloseReason { refusal: Some(refusal), detail: detail.into() }
    }

    /// Reads a close reason back from its text (one of another peer may have no refusal).
    pub fn parse(text: &str) -> CloseReason {
        match text.split_once(": ") {
            Some((name, detail)) if Refusal::from_name(name).is_some() => {
                CloseReason { refusal: Refusal::from_name(name), detail: detail.to_owned() }
            }
            _ => CloseReason { refusal: None, detail: text.to_owned() },
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.refusal {
            Some(r) => write!(f, "{r}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_distinct_name_and_close_reasons_round_trip() {
        let names: std::collections::BTreeSet<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_name(r.as_str()), Some(r));
            let reason = CloseReason::new(r, "some: detail");
            assert_eq!(CloseReason::parse(&reason.to_string()), reason);
        }
        assert_eq!(CloseReason::parse("remote said: bye").refusal, None);
    }
}
