//! The authentication handshake that opens a connection when authentication is on (sans-IO: the
//! node, the command line's client and the browser client drive it over their own sockets).
//!
//! Each side sends `auth-hello {version, node_key, nonce}` at once, and on the other's hello an
//! `auth-proof {node_sig, user}`: its node key's signature, and optionally a user key's, over the
//! *transcript* — both hellos exactly as they travelled, the dialer's first, and the connection's
//! TLS exporter (32 zero bytes on plain `ws://`). Both nonces are fresh per connection, so a proof
//! recorded on one connection fails on every other (a replayed session), and the signed statement
//! names the signer's role, so a proof reflected back at its maker fails too. The principal of
//! the connection is what the remote proved here: its node key and, if it signed with one, its user
//! key. Nothing a later message says changes it. Nothing but these two messages is accepted before
//! the remote's proof verified.
//!
//! Frames use the protocol's envelope (`{v, kind, body}`) with kinds `auth-hello` and
//! `auth-proof`, at most [`MAX_HANDSHAKE_FRAME`] bytes each.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::keys::{KeyError, PublicKey, SecretKey, Signature, statement};
use crate::proto::message::{decode_envelope, encode_envelope};
use crate::proto::{Direction, Refusal};

/// The handshake's version (in `auth-hello`).
pub const AUTH_VERSION: u16 = 1;

/// Largest handshake frame accepted, in bytes (a hello is about 100, a proof about 200).
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

/// Bytes of the TLS exporter the transcript is bound to (RFC 5705, label
/// [`EXPORTER_LABEL`]); zeros on a connection without TLS.
pub const EXPORTER_LEN: usize = 32;

/// The label of the TLS exporter value the transcript is bound to.
pub const EXPORTER_LABEL: &str = "EXPORTER-replikativ-rs-v1";

const KIND_HELLO: &str = "auth-hello";
const KIND_PROOF: &str = "auth-proof";

/// The first handshake message each way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthHello {
    /// [`AUTH_VERSION`].
    pub version: u16,
    /// The sender's node key.
    pub node_key: PublicKey,
    /// 32 fresh random bytes.
    pub nonce: ByteBuf,
    /// The sender cannot see the connection's TLS exporter (a browser's `WebSocket` does not show
    /// it): both sides then use zeros in this connection's transcript. The flag is in the
    /// transcript itself, so it cannot be set on another side's hello; such a handshake relies on
    /// the sender checking the server's certificate (see `docs/design.md` §12.2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unbound: bool,
}

/// The second handshake message each way: signatures over the transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthProof {
    /// The node key's signature.
    pub node_sig: Signature,
    /// The user the sender proves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserProof>,
}

/// A user key and its signature over the transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProof {
    /// The user's key (the user id `key:<base32>`).
    pub key: PublicKey,
    /// Its signature.
    pub sig: Signature,
}

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The remote's node key (a client's is made up per run; a node's is its identity).
    pub node: PublicKey,
    /// The user key the remote proved, if it proved one.
    pub user: Option<PublicKey>,
}

impl Principal {
    /// The user id (`key:<base32>`) the remote proved, if any.
    pub fn user_id(&self) -> Option<String> {
        self.user.map(|k| k.user_id())
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user} (node {})", self.node),
            None => write!(f, "node {}", self.node),
        }
    }
}

/// What one side proves: a node key, and optionally a user key.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The node key (every side has one).
    pub node: SecretKey,
    /// The user key, for a side that acts as a user (a command line client, a browser).
    pub user: Option<SecretKey>,
}

impl Identity {
    /// An identity of a fresh node key and no user (a client that proves nothing but gets an
    /// authenticated channel).
    pub fn anonymous() -> Result<Identity, KeyError> {
        Ok(Identity { node: SecretKey::generate()?, user: None })
    }
}

/// Why a handshake failed: the refusal ([`Refusal::AuthRequired`] when the remote sent something
/// else than the handshake, [`Refusal::AuthFailed`] otherwise) and a detail for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{refusal}: {detail}")]
pub struct HandshakeError {
    /// The refusal (a close reason's name).
    pub refusal: Refusal,
    /// What went wrong.
    pub detail: String,
    /// The remote sent the protocol's plain `hello` instead: it does not authenticate (a node
    /// with authentication off). A client that may talk to such a node goes on without
    /// authentication; a node with authentication on closes the connection.
    pub plain_hello: bool,
}

fn failed(detail: impl Into<String>) -> HandshakeError {
    HandshakeError { refusal: Refusal::AuthFailed, detail: detail.into(), plain_hello: false }
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send this frame (the proof) and wait for the remote's.
    Send(Vec<u8>),
    /// The remote proved who it is: the connection is authenticated.
    Done(Principal),
}

/// One side of a handshake (see the module docs).
#[derive(Debug)]
pub struct Handshake {
    direction: Direction,
    identity: Identity,
    exporter: [u8; EXPORTER_LEN],
    own_hello: Vec<u8>,
    own_nonce: [u8; 32],
    /// The remote's hello as it travelled, and its node key.
    remote: Option<(Vec<u8>, PublicKey)>,
    finished: bool,
}

fn role(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "dialer",
        Direction::Inbound => "listener",
    }
}

impl Handshake {
    /// Starts a handshake: returns it and the hello to send at once. `direction` is this side's
    /// (the side that dialed is `Outbound`); `exporter` the TLS exporter value or zeros.
    pub fn start(
        direction: Direction,
        identity: Identity,
        exporter: [u8; EXPORTER_LEN],
    ) -> Result<(Handshake, Vec<u8>), KeyError> {
        Handshake::begin(direction, identity, exporter, false)
    }

    /// Starts a handshake for a side that cannot see the TLS exporter (a browser): its hello says
    /// so, and the transcript uses zeros ([`AuthHello::unbound`]).
    pub fn start_unbound(direction: Direction, identity: Identity) -> Result<(Handshake, Vec<u8>), KeyError> {
        Handshake::begin(direction, identity, [0; EXPORTER_LEN], true)
    }

    fn begin(
        direction: Direction,
        identity: Identity,
        exporter: [u8; EXPORTER_LEN],
        unbound: bool,
    ) -> Result<(Handshake, Vec<u8>), KeyError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
        let hello = AuthHello {
            version: AUTH_VERSION,
            node_key: identity.node.public(),
            nonce: ByteBuf::from(nonce.to_vec()),
            unbound,
        };
        let own_hello = encode_envelope(KIND_HELLO, &hello);
        let hs = Handshake {
            direction,
            identity,
            exporter,
            own_hello: own_hello.clone(),
            own_nonce: nonce,
            remote: None,
            finished: false,
        };
        Ok((hs, own_hello))
    }

    fn transcript(&self, remote_hello: &[u8]) -> [u8; 32] {
        let (dialer, listener) = match self.direction {
            Direction::Outbound => (&self.own_hello[..], remote_hello),
            Direction::Inbound => (remote_hello, &self.own_hello[..]),
        };
        statement("replikativ-rs v1 handshake", &[dialer, listener, &self.exporter])
    }

    fn node_statement(transcript: &[u8; 32], signer: Direction) -> [u8; 32] {
        statement(&format!("replikativ-rs v1 node-auth {}", role(signer)), &[transcript])
    }

    fn user_statement(transcript: &[u8; 32], signer: Direction) -> [u8; 32] {
        statement(&format!("replikativ-rs v1 user-auth {}", role(signer)), &[transcript])
    }

    /// Handles a frame from the remote.
    pub fn receive(&mut self, frame: &[u8]) -> Result<Progress, HandshakeError> {
        if self.finished {
            return Err(failed("the handshake is over"));
        }
        if frame.len() > MAX_HANDSHAKE_FRAME {
            return Err(failed(format!(
                "handshake frame of {} bytes (at most {MAX_HANDSHAKE_FRAME})",
                frame.len()
            )));
        }
        let (_, kind, body) =
            decode_envelope(frame).map_err(|e| failed(format!("malformed handshake frame: {e}")))?;
        match (kind.as_str(), &self.remote) {
            (KIND_HELLO, None) => {
                let hello: AuthHello = crate::proto::message::from_msgpack(&body)
                    .map_err(|e| failed(format!("malformed auth-hello: {e}")))?;
                if hello.version != AUTH_VERSION {
                    return Err(failed(format!(
                        "authentication version {} (this peer speaks version {AUTH_VERSION})",
                        hello.version
                    )));
                }
                if hello.nonce.len() != 32 {
                    return Err(failed("an auth-hello nonce has 32 bytes"));
                }
                if hello.nonce[..] == self.own_nonce {
                    return Err(failed("the remote sent this side's own hello back"));
                }
                if hello.unbound {
                    // The remote cannot bind: the transcript of this connection uses zeros.
                    self.exporter = [0; EXPORTER_LEN];
                }
                let transcript = self.transcript(frame);
                let node_sig = self.identity.node.sign(&Self::node_statement(&transcript, self.direction));
                let user = self.identity.user.as_ref().map(|u| UserProof {
                    key: u.public(),
                    sig: u.sign(&Self::user_statement(&transcript, self.direction)),
                });
                self.remote = Some((frame.to_vec(), hello.node_key));
                Ok(Progress::Send(encode_envelope(KIND_PROOF, &AuthProof { node_sig, user })))
            }
            (KIND_PROOF, Some((remote_hello, node_key))) => {
                let proof: AuthProof = crate::proto::message::from_msgpack(&body)
                    .map_err(|e| failed(format!("malformed auth-proof: {e}")))?;
                let transcript = self.transcript(remote_hello);
                let remote_role = match self.direction {
                    Direction::Outbound => Direction::Inbound,
                    Direction::Inbound => Direction::Outbound,
                };
                node_key.verify(&Self::node_statement(&transcript, remote_role), &proof.node_sig.0).map_err(
                    |_| failed("the node key's signature over this connection's handshake does not verify"),
                )?;
                if let Some(user) = &proof.user {
                    user.key.verify(&Self::user_statement(&transcript, remote_role), &user.sig.0).map_err(
                        |_| {
                            failed(
                                "the user key's signature over this connection's handshake does not verify",
                            )
                        },
                    )?;
                }
                self.finished = true;
                Ok(Progress::Done(Principal { node: *node_key, user: proof.user.map(|u| u.key) }))
            }
            ("hello", None) => Err(HandshakeError {
                refusal: Refusal::AuthRequired,
                detail: "the remote sent hello without authenticating".into(),
                plain_hello: true,
            }),
            (KIND_PROOF, None) => Err(failed("auth-proof before auth-hello")),
            (KIND_HELLO, Some(_)) => Err(failed("auth-hello sent twice")),
            (other, _) => Err(HandshakeError {
                refusal: Refusal::AuthRequired,
                detail: format!(
                    "expected the authentication handshake first, got {}",
                    crate::proto::message::clip(other)
                ),
                plain_hello: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(node: u8, user: Option<u8>) -> Identity {
        Identity {
            node: SecretKey::from_seed(&[node; 32]),
            user: user.map(|u| SecretKey::from_seed(&[u; 32])),
        }
    }

    /// Runs a handshake between two sides, optionally rewriting frames in transit.
    fn run(
        a: Identity,
        b: Identity,
        exporters: ([u8; 32], [u8; 32]),
    ) -> (Result<Principal, HandshakeError>, Result<Principal, HandshakeError>) {
        let (mut ha, hello_a) = Handshake::start(Direction::Outbound, a, exporters.0).unwrap();
        let (mut hb, hello_b) = Handshake::start(Direction::Inbound, b, exporters.1).unwrap();
        let Progress::Send(proof_a) = ha.receive(&hello_b).unwrap() else { panic!("expected a proof") };
        let Progress::Send(proof_b) = hb.receive(&hello_a).unwrap() else { panic!("expected a proof") };
        let done = |p: Result<Progress, HandshakeError>| {
            p.map(|p| match p {
                Progress::Done(principal) => principal,
                Progress::Send(_) => panic!("expected done"),
            })
        };
        (done(ha.receive(&proof_b)), done(hb.receive(&proof_a)))
    }

    #[test]
    fn both_sides_learn_each_others_keys() {
        let (a, b) = run(identity(1, Some(9)), identity(2, None), ([0; 32], [0; 32]));
        let node = |s| SecretKey::from_seed(&[s; 32]).public();
        assert_eq!(a.unwrap(), Principal { node: node(2), user: None });
        assert_eq!(b.unwrap(), Principal { node: node(1), user: Some(node(9)) });
    }

    #[test]
    fn a_proof_from_another_connection_fails() {
        // Record a session, then replay the client's frames on a new connection to the server.
        let (mut client, hello_c) =
            Handshake::start(Direction::Outbound, identity(1, Some(9)), [0; 32]).unwrap();
        let (mut server, hello_s) = Handshake::start(Direction::Inbound, identity(2, None), [0; 32]).unwrap();
        let Progress::Send(proof_c) = client.receive(&hello_s).unwrap() else { panic!() };
        server.receive(&hello_c).unwrap();
        assert!(matches!(server.receive(&proof_c), Ok(Progress::Done(_))));
        let (mut fresh, _) = Handshake::start(Direction::Inbound, identity(2, None), [0; 32]).unwrap();
        fresh.receive(&hello_c).unwrap();
        let e = fresh.receive(&proof_c).unwrap_err();
        assert_eq!(e.refusal, Refusal::AuthFailed);
        assert!(e.detail.contains("does not verify"), "{e}");
    }

    #[test]
    fn different_tls_exporters_fail_the_handshake() {
        let (a, b) = run(identity(1, Some(9)), identity(2, None), ([1; 32], [2; 32]));
        assert_eq!(a.unwrap_err().refusal, Refusal::AuthFailed);
        assert_eq!(b.unwrap_err().refusal, Refusal::AuthFailed);
    }

    #[test]
    fn an_unbound_side_handshakes_with_a_side_that_has_an_exporter_and_the_flag_cannot_be_forged() {
        // A browser (no exporter) and a TLS node: zeros on both sides for this connection.
        let (mut browser, hello_b) =
            Handshake::start_unbound(Direction::Outbound, identity(1, Some(9))).unwrap();
        let (mut node, hello_n) = Handshake::start(Direction::Inbound, identity(2, None), [7; 32]).unwrap();
        let Progress::Send(proof_b) = browser.receive(&hello_n).unwrap() else { panic!() };
        let Progress::Send(proof_n) = node.receive(&hello_b).unwrap() else { panic!() };
        assert!(matches!(node.receive(&proof_b), Ok(Progress::Done(_))));
        assert!(matches!(browser.receive(&proof_n), Ok(Progress::Done(_))));
        // A bound client's hello rewritten in transit to claim `unbound`: its proof covers the
        // original bytes, so it fails.
        let (mut client, hello_c) =
            Handshake::start(Direction::Outbound, identity(1, None), [7; 32]).unwrap();
        let (mut node, hello_n) = Handshake::start(Direction::Inbound, identity(2, None), [7; 32]).unwrap();
        let (_, _, body) = decode_envelope(&hello_c).unwrap();
        let mut h: AuthHello = crate::proto::message::from_msgpack(&body).unwrap();
        h.unbound = true;
        let rewritten = encode_envelope(KIND_HELLO, &h);
        let Progress::Send(proof_c) = client.receive(&hello_n).unwrap() else { panic!() };
        node.receive(&rewritten).unwrap();
        assert_eq!(node.receive(&proof_c).unwrap_err().refusal, Refusal::AuthFailed);
    }

    #[test]
    fn reflected_hellos_and_proofs_fail() {
        let (mut side, hello) = Handshake::start(Direction::Inbound, identity(2, Some(3)), [0; 32]).unwrap();
        assert!(side.receive(&hello).unwrap_err().detail.contains("own hello"));
        // A proof signed as the listener does not pass as the dialer's.
        let (mut dialer, hello_d) =
            Handshake::start(Direction::Outbound, identity(1, None), [0; 32]).unwrap();
        let (mut listener, hello_l) =
            Handshake::start(Direction::Inbound, identity(1, None), [0; 32]).unwrap();
        dialer.receive(&hello_l).unwrap();
        let Progress::Send(proof_l) = listener.receive(&hello_d).unwrap() else { panic!() };
        // The listener's own proof sent back to it, as if the dialer (same node key) had made it.
        assert_eq!(listener.receive(&proof_l).unwrap_err().refusal, Refusal::AuthFailed);
    }

    #[test]
    fn a_forged_user_signature_fails() {
        let (mut client, hello_c) =
            Handshake::start(Direction::Outbound, identity(1, Some(9)), [0; 32]).unwrap();
        let (mut server, hello_s) = Handshake::start(Direction::Inbound, identity(2, None), [0; 32]).unwrap();
        let Progress::Send(proof) = client.receive(&hello_s).unwrap() else { panic!() };
        server.receive(&hello_c).unwrap();
        let (_, _, body) = decode_envelope(&proof).unwrap();
        let mut proof: AuthProof = crate::proto::message::from_msgpack(&body).unwrap();
        // Claim another user with the original signature.
        proof.user.as_mut().unwrap().key = SecretKey::from_seed(&[8; 32]).public();
        let forged = encode_envelope(KIND_PROOF, &proof);
        assert!(server.receive(&forged).unwrap_err().detail.contains("user key"));
    }

    #[test]
    fn anything_but_the_handshake_is_refused_with_a_reason() {
        let (mut hs, _) = Handshake::start(Direction::Inbound, identity(2, None), [0; 32]).unwrap();
        let plain = crate::proto::Message::Hello(crate::proto::Hello {
            version: crate::proto::PROTOCOL_VERSION,
            peer_id: "p".into(),
            features: vec![],
        })
        .encode();
        let e = hs.receive(&plain).unwrap_err();
        assert!(e.plain_hello && e.refusal == Refusal::AuthRequired, "{e:?}");
        let sub = crate::proto::Message::SubscribeAck { id: 1 }.encode();
        let e = hs.receive(&sub).unwrap_err();
        assert!(!e.plain_hello && e.refusal == Refusal::AuthRequired, "{e:?}");
        assert_eq!(hs.receive(b"garbage").unwrap_err().refusal, Refusal::AuthFailed);
        assert_eq!(hs.receive(&vec![0; MAX_HANDSHAKE_FRAME + 1]).unwrap_err().refusal, Refusal::AuthFailed);
        let proof = encode_envelope(KIND_PROOF, &AuthProof { node_sig: Signature([0; 64]), user: None });
        assert!(hs.receive(&proof).unwrap_err().detail.contains("before auth-hello"));
        let bad_version = encode_envelope(
            KIND_HELLO,
            &AuthHello {
                version: 7,
                node_key: SecretKey::from_seed(&[5; 32]).public(),
                nonce: vec![1; 32].into(),
                unbound: false,
            },
        );
        assert!(hs.receive(&bad_version).unwrap_err().detail.contains("version 7"));
    }

    #[test]
    fn random_frames_never_panic() {
        let mut seed = 1u64;
        for len in 0..400 {
            let (mut hs, _) = Handshake::start(Direction::Inbound, identity(2, None), [0; 32]).unwrap();
            let frame: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = hs.receive(&frame);
        }
    }
}
