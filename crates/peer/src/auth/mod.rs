//! Authentication and authorization: keys, the connection handshake, and the built-in gate that
//! decides who may read and write which address.
//!
//! - [`keys`]: ed25519 keys (`key:<base32>`), key files, domain-separated signatures.
//! - [`handshake`]: the `auth-hello` / `auth-proof` exchange that opens a connection when
//!   authentication is on; it gives the connection its [`Principal`].
//! - [`AuthPolicy`]: the built-in rules. An address `[user, uuid]` belongs to the key its user id
//!   names: a self-certifying user `key:<base32>` is that key, a named user (`mail:alice@...`)
//!   is bound to a key by the operator ([`AuthPolicy::names`]). Only the owner writes an address;
//!   the owner and, for addresses the operator made public, every authenticated connection read
//!   it; keys the operator trusts ([`AuthPolicy::trusted`]: the nodes of a mirror, which relay
//!   for their own clients, and the operator's own key) read and write everything.
//!
//! ```
//! use replikativ_peer::auth::{AuthPolicy, Principal, SecretKey};
//! use replikativ_crdt::Address;
//!
//! let alice = SecretKey::from_seed(&[1; 32]);
//! let node = SecretKey::from_seed(&[2; 32]).public();
//! let todos = Address::new(alice.public().user_id(), uuid::Uuid::from_u128(1)).unwrap();
//! let policy = AuthPolicy::default();
//! let as_alice = Principal { node, user: Some(alice.public()) };
//! let anonymous = Principal { node, user: None };
//! assert!(policy.may_write(&as_alice, &todos) && policy.may_read(&as_alice, &todos));
//! assert!(!policy.may_write(&anonymous, &todos) && !policy.may_read(&anonymous, &todos));
//! ```

pub mod cap;
pub mod gate;
pub mod handshake;
pub mod keys;

use std::collections::{BTreeMap, BTreeSet};

use replikativ_crdt::Address;

pub use cap::ReadCap;
pub use gate::AuthGate;
pub use handshake::{Handshake, HandshakeError, Identity, Principal, Progress};
pub use keys::{KeyError, PublicKey, SecretKey, Signature};

/// What a connection may do with one address ([`AuthPolicy::rights`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// It may read it.
    pub read: bool,
    /// It may write it.
    pub write: bool,
    /// The address's owner, if it has one.
    pub owner: Option<PublicKey>,
}

/// Who may read and write what when authentication is on (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Named users bound to their keys by the operator (`mail:alice@example.org` → key). A named
    /// user without a binding can be neither written nor read by anyone but trusted keys.
    pub names: BTreeMap<String, PublicKey>,
    /// Keys trusted to read and write every address and to run every command: node keys of the
    /// operator's other nodes (relays between them) and the operator's own user key. A
    /// connection is trusted if its node key or its user key is listed.
    pub trusted: BTreeSet<PublicKey>,
    /// Addresses every authenticated connection may read.
    pub public: BTreeSet<Address>,
    /// Users all of whose addresses every authenticated connection may read.
    pub public_users: BTreeSet<String>,
}

impl AuthPolicy {
    /// The key that owns the addresses of `user`: the key a `key:` user id names, or the
    /// operator's binding of a named user.
    pub fn owner(&self, user: &str) -> Option<PublicKey> {
        PublicKey::of_user(user).or_else(|| self.names.get(user).copied())
    }

    /// Whether the connection's node key or user key is trusted.
    pub fn is_trusted(&self, principal: &Principal) -> bool {
        self.trusted.contains(&principal.node) || principal.user.is_some_and(|u| self.trusted.contains(&u))
    }

    /// Whether the connection may write `address` (publish to it, or run a stage command that
    /// changes it).
    pub fn may_write(&self, principal: &Principal, address: &Address) -> bool {
        self.rights(principal, address).write
    }

    /// Whether the connection may read `address` (subscribe, receive its publications, sync it,
    /// read it by a stage command).
    pub fn may_read(&self, principal: &Principal, address: &Address) -> bool {
        self.rights(principal, address).read
    }

    /// What the connection may do with `address`, and the address's owner, decided at once
    /// (finding the owner of a `key:` user parses a curve point, ~10 µs: done once here).
    pub fn rights(&self, principal: &Principal, address: &Address) -> Rights {
        let owner = self.owner(&address.user);
        let write = self.is_trusted(principal) || (principal.user.is_some() && principal.user == owner);
        let read = write || self.public.contains(address) || self.public_users.contains(&address.user);
        Rights { read, write, owner }
    }

    /// Reads a trust file: one binding per line, `NAME KEY` (`mail:alice@example.org
    /// key:...`); blank lines and lines starting with `#` are skipped.
    pub fn parse_names(text: &str) -> Result<BTreeMap<String, PublicKey>, String> {
        let mut names = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {}: expected `NAME KEY`", n + 1))?;
            Address::validate_user(name).map_err(|e| format!("line {}: {e}", n + 1))?;
            if name.starts_with(keys::KEY_PREFIX) {
                return Err(format!("line {}: {name} names its own key; it needs no binding", n + 1));
            }
            let key: PublicKey = key.trim().parse().map_err(|e: KeyError| format!("line {}: {e}", n + 1))?;
            if names.insert(name.to_owned(), key).is_some() {
                return Err(format!("line {}: {name} is bound twice", n + 1));
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        SecretKey::from_seed(&[seed; 32]).public()
    }

    #[test]
    fn owners_write_trusted_keys_relay_public_addresses_are_read_by_all() {
        let alice = key(1);
        let node = key(2);
        let mirror = key(3);
        let mine = Address::new(alice.user_id(), uuid::Uuid::from_u128(1)).unwrap();
        let named = Address::new("mail:bob@example.org", uuid::Uuid::from_u128(2)).unwrap();
        let shared = Address::new(alice.user_id(), uuid::Uuid::from_u128(3)).unwrap();
        let mut policy = AuthPolicy::default();
        policy.trusted.insert(mirror);
        policy.public.insert(shared.clone());
        let as_alice = Principal { node, user: Some(alice) };
        let as_bob = Principal { node, user: Some(key(4)) };
        let as_mirror = Principal { node: mirror, user: None };
        assert!(policy.may_write(&as_alice, &mine));
        assert!(!policy.may_write(&as_bob, &mine) && !policy.may_read(&as_bob, &mine));
        assert!(policy.may_read(&as_bob, &shared) && !policy.may_write(&as_bob, &shared));
        assert!(policy.may_write(&as_mirror, &mine) && policy.may_read(&as_mirror, &named));
        // A named user without a binding: only trusted keys.
        assert!(!policy.may_write(&as_bob, &named));
        policy.names.insert("mail:bob@example.org".into(), key(4));
        assert!(policy.may_write(&as_bob, &named) && !policy.may_write(&as_alice, &named));
        policy.public_users.insert("mail:bob@example.org".into());
        assert!(policy.may_read(&as_alice, &named));
    }

    #[test]
    fn trust_files_parse_and_refuse_mistakes() {
        let text = format!("# operators\n\nmail:bob@example.org {}\n", key(4));
        let names = AuthPolicy::parse_names(&text).unwrap();
        assert_eq!(names.get("mail:bob@example.org"), Some(&key(4)));
        for (bad, why) in [
            ("bob".to_owned(), "expected `NAME KEY`"),
            ("bob key:nope".to_owned(), "not a public key"),
            (format!("{} {}", key(1), key(1)), "needs no binding"),
            (format!("bob {}\nbob {}", key(1), key(2)), "bound twice"),
        ] {
            let e = AuthPolicy::parse_names(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
