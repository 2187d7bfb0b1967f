//! Capabilities: an address's owner lets another key read it (and, with `write`, write it) until
//! a time.
//!
//! A [`ReadCap`] is signed by the owner's key and names the grantee's key, the addresses (none:
//! every address of the owner) and `not_after` (ms since the epoch). A connection presents caps
//! with a `custom` message tagged [`CAPS_TAG`] (msgpack list of caps) any time after the
//! handshake; the gate keeps those that verify, name the connection's own key (its user key or
//! node key: a cap lifted from a log is useless to anyone else) and are not expired, and lets the
//! connection read what they cover until `not_after`: from then on nothing more of those
//! addresses reaches it, without a reconnect. A cap with `write` also lets the connection write
//! them (a shared list several users edit); caps are not delegable (design note `auth.md` §7:
//! attenuated delegation is not built).

use std::collections::BTreeSet;

use replikativ_crdt::Address;
use serde::{Deserialize, Serialize};

use super::keys::{KeyError, PublicKey, SecretKey, Signature, statement};

/// The tag of the `custom` message that presents read capabilities.
pub const CAPS_TAG: &str = "replikativ/read-caps";

/// Caps one connection holds at most (more in one message are refused).
pub const MAX_CAPS: usize = 64;

/// Addresses one cap names at most.
pub const MAX_CAP_ADDRESSES: usize = 1024;

/// Lets `grantee` read `addresses` of `owner` (every address of the owner if empty) until
/// `not_after` (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCap {
    /// The owner's key (who signs).
    pub owner: PublicKey,
    /// The key that may read (a user key or a node key).
    pub grantee: PublicKey,
    /// The addresses; empty: every address of the owner.
    pub addresses: BTreeSet<Address>,
    /// Until when, in ms since the epoch.
    pub not_after: u64,
    /// Whether it also grants writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write: bool,
    /// The owner's signature.
    pub sig: Signature,
}

impl ReadCap {
    fn digest(
        owner: &PublicKey,
        grantee: &PublicKey,
        addresses: &BTreeSet<Address>,
        not_after: u64,
        write: bool,
    ) -> [u8; 32] {
        let mut listed = Vec::new();
        for a in addresses {
            listed.extend_from_slice(&(a.user.len() as u64).to_be_bytes());
            listed.extend_from_slice(a.user.as_bytes());
            listed.extend_from_slice(a.id.as_bytes());
        }
        statement(
            "replikativ-rs v1 read-cap",
            &[owner.as_bytes(), grantee.as_bytes(), &listed, &not_after.to_be_bytes(), &[u8::from(write)]],
        )
    }

    /// A read cap signed by `owner`.
    pub fn issue(
        owner: &SecretKey,
        grantee: PublicKey,
        addresses: BTreeSet<Address>,
        not_after: u64,
    ) -> ReadCap {
        ReadCap::issue_with(owner, grantee, addresses, not_after, false)
    }

    /// A cap signed by `owner`, granting writes too if `write`.
    pub fn issue_with(
        owner: &SecretKey,
        grantee: PublicKey,
        addresses: BTreeSet<Address>,
        not_after: u64,
        write: bool,
    ) -> ReadCap {
        let pk = owner.public();
        let sig = owner.sign(&ReadCap::digest(&pk, &grantee, &addresses, not_after, write));
        ReadCap { owner: pk, grantee, addresses, not_after, write, sig }
    }

    /// Whether the owner signed it (and it names few enough addresses).
    pub fn verify(&self) -> Result<(), KeyError> {
        if self.addresses.len() > MAX_CAP_ADDRESSES {
            return Err(KeyError::BadSignature);
        }
        self.owner.verify(
            &ReadCap::digest(&self.owner, &self.grantee, &self.addresses, self.not_after, self.write),
            &self.sig.0,
        )
    }

    /// Whether it covers `address`, whose owner is `owner` (see `AuthPolicy::owner`).
    pub fn covers(&self, address: &Address, owner: Option<PublicKey>) -> bool {
        owner == Some(self.owner) && (self.addresses.is_empty() || self.addresses.contains(address))
    }

    /// The cap as one line of text (base32 of its msgpack encoding), for files and flags.
    pub fn to_text(&self) -> String {
        let bytes = rmp_serde::to_vec_named(self).expect("caps encode");
        format!("replikativ-cap:{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase())
    }

    /// Reads [`ReadCap::to_text`] back (not verified: see [`ReadCap::verify`]).
    pub fn from_text(text: &str) -> Result<ReadCap, String> {
        let body = text
            .trim()
            .strip_prefix("replikativ-cap:")
            .ok_or("not a read capability (replikativ-cap:...)")?;
        if body.len() > 64 << 10 {
            return Err("a read capability of more than 64 KiB".into());
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_uppercase().as_bytes())
            .map_err(|_| "a read capability that is not base32")?;
        crate::proto::message::from_msgpack(&bytes).map_err(|e| format!("a malformed read capability: {e}"))
    }
}

/// The message that presents `caps` (see the module docs).
pub fn caps_message(caps: &[ReadCap]) -> crate::proto::Message {
    let data = rmp_serde::to_vec_named(caps).expect("caps encode");
    crate::proto::Message::Custom { tag: CAPS_TAG.into(), data: data.into() }
}

/// The time now in ms since the epoch (the gate's clock for cap expiry).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_verify_cover_their_owners_addresses_and_round_trip_as_text() {
        let alice = SecretKey::from_seed(&[1; 32]);
        let eve = SecretKey::from_seed(&[9; 32]).public();
        let todo = Address::new(alice.public().user_id(), uuid::Uuid::from_u128(1)).unwrap();
        let other = Address::new(alice.public().user_id(), uuid::Uuid::from_u128(2)).unwrap();
        let cap = ReadCap::issue(&alice, eve, BTreeSet::from([todo.clone()]), 1_000);
        assert_eq!(cap.verify(), Ok(()));
        assert!(cap.covers(&todo, Some(alice.public())) && !cap.covers(&other, Some(alice.public())));
        assert!(!cap.covers(&todo, Some(eve)), "another owner's address");
        let all = ReadCap::issue(&alice, eve, BTreeSet::new(), 1_000);
        assert!(all.covers(&other, Some(alice.public())));
        assert_eq!(ReadCap::from_text(&cap.to_text()), Ok(cap.clone()));
        for forged in [
            ReadCap { not_after: 2_000, ..cap.clone() },
            ReadCap { grantee: alice.public(), ..cap.clone() },
            ReadCap { addresses: BTreeSet::from([other.clone()]), ..cap.clone() },
            ReadCap { owner: eve, ..cap.clone() },
            ReadCap { write: true, ..cap.clone() },
        ] {
            assert_eq!(forged.verify(), Err(KeyError::BadSignature), "{forged:?}");
        }
        for bad in ["", "cap:abc", "replikativ-cap:!!", "replikativ-cap:aaaa"] {
            assert!(ReadCap::from_text(bad).is_err(), "{bad}");
        }
    }
}
