//! Addresses of replicated datatypes: `[user, crdt_id]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a replicated datatype lives: its owner's user name and its id.
///
/// `user` is a non-empty UTF-8 string of at most [`MAX_USER_LEN`] bytes without control
/// characters (by convention `mail:alice@example.org`); `id` is a UUID (random v4 by default,
/// chosen by the caller). Written `user/uuid` in text, e.g.
/// `mail:alice@example.org/7d274663-9396-4247-910b-409ae35fe98d`.
///
/// Every way in checks the user with [`Address::validate_user`]: [`Address::new`], parsing, and
/// deserializing (msgpack from the wire or a store, JSON), so an address read from anywhere is
/// valid. (The fields are public for reading; code that builds one with a struct literal must
/// call [`Address::validate`] before trusting it, as the peer does for every stage command.)
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawAddress")]
pub struct Address {
    /// The owner.
    pub user: String,
    /// The datatype's id.
    pub id: Uuid,
}

/// Why text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `/` between user and id.
    #[error("address {0:?} is not of the form USER/UUID")]
    Form(String),
    /// The user part is empty.
    #[error("address {0:?} has an empty user")]
    EmptyUser(String),
    /// The id part is not a UUID.
    #[error("address {0:?} does not end in a UUID: {1}")]
    BadUuid(String, String),
    /// The user part is longer than [`MAX_USER_LEN`] bytes.
    #[error("the user of an address has {0} bytes (at most {MAX_USER_LEN})")]
    UserTooLong(usize),
    /// The user part contains a control character.
    #[error("the user of an address contains the control character {0:?}")]
    ControlCharacter(char),
}

/// Longest user name of an address, in bytes (store keys embed it; see `docs/design.md` §5).
pub const MAX_USER_LEN: usize = 256;

/// An address as it arrives, before its user is checked.
#[derive(Deserialize)]
struct RawAddress {
    user: String,
    id: Uuid,
}

impl TryFrom<RawAddress> for Address {
    type Error = AddressError;

    fn try_from(raw: RawAddress) -> Result<Address, AddressError> {
        Address::new(raw.user, raw.id)
    }
}

impl Address {
    /// The address `[user, id]`. Fails on a user that [`Address::validate_user`] refuses.
    pub fn new(user: impl Into<String>, id: Uuid) -> Result<Address, AddressError> {
        let user = user.into();
        Address::validate_user(&user).map_err(|e| match e {
            AddressError::EmptyUser(_) => AddressError::EmptyUser(format!("/{id}")),
            other => other,
        })?;
        Ok(Address { user, id })
    }

    /// The one check of a user name, wherever an address comes from: non-empty, at most
    /// [`MAX_USER_LEN`] bytes, no control characters.
    pub fn validate_user(user: &str) -> Result<(), AddressError> {
        if user.is_empty() {
            return Err(AddressError::EmptyUser(String::new()));
        }
        if user.len() > MAX_USER_LEN {
            return Err(AddressError::UserTooLong(user.len()));
        }
        if let Some(c) = user.chars().find(|c| c.is_control()) {
            return Err(AddressError::ControlCharacter(c));
        }
        Ok(())
    }

    /// Checks an address built by hand (a struct literal) like every other way in does.
    pub fn validate(&self) -> Result<(), AddressError> {
        Address::validate_user(&self.user)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.id)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The UUID has no '/', so the last one separates (user names may contain '/').
        let (user, id) = s.rsplit_once('/').ok_or_else(|| AddressError::Form(s.to_owned()))?;
        if user.is_empty() {
            return Err(AddressError::EmptyUser(s.to_owned()));
        }
        let id = Uuid::parse_str(id).map_err(|e| AddressError::BadUuid(s.to_owned(), e.to_string()))?;
        Address::validate_user(user)?;
        Ok(Address { user: user.to_owned(), id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_display_and_rejects_bad_text() {
        let a: Address = "mail:alice@example.org/7d274663-9396-4247-910b-409ae35fe98d".parse().unwrap();
        assert_eq!(a.user, "mail:alice@example.org");
        assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        let slashy: Address = "team/a/7d274663-9396-4247-910b-409ae35fe98d".parse().unwrap();
        assert_eq!(slashy.user, "team/a");
        assert!(matches!("no-slash".parse::<Address>(), Err(AddressError::Form(_))));
        assert!(matches!(
            "/7d274663-9396-4247-910b-409ae35fe98d".parse::<Address>(),
            Err(AddressError::EmptyUser(_))
        ));
        assert!(matches!("alice/not-a-uuid".parse::<Address>(), Err(AddressError::BadUuid(..))));
        assert!(Address::new("", Uuid::nil()).is_err());
        assert!(matches!(
            Address::new("x".repeat(MAX_USER_LEN + 1), Uuid::nil()),
            Err(AddressError::UserTooLong(_))
        ));
        assert!(Address::new("x".repeat(MAX_USER_LEN), Uuid::nil()).is_ok());
        assert!(matches!(Address::new("a\nb", Uuid::nil()), Err(AddressError::ControlCharacter('\n'))));
    }

    /// The wire and the stores deserialize addresses: an invalid one never comes into existence.
    #[test]
    fn deserializing_checks_the_user() {
        #[derive(serde::Serialize)]
        struct Raw<'a> {
            user: &'a str,
            id: Uuid,
        }
        for bad in ["", "a\u{0}b", &"x".repeat(MAX_USER_LEN + 1)] {
            let mp = rmp_serde::to_vec_named(&Raw { user: bad, id: Uuid::nil() }).unwrap();
            assert!(rmp_serde::from_slice::<Address>(&mp).is_err(), "{bad:?} decodes from msgpack");
            let json = serde_json::to_string(&Raw { user: bad, id: Uuid::nil() }).unwrap();
            assert!(serde_json::from_str::<Address>(&json).is_err(), "{bad:?} decodes from JSON");
        }
        let good = Address::new("mail:a@b", Uuid::nil()).unwrap();
        let mp = rmp_serde::to_vec_named(&good).unwrap();
        assert_eq!(rmp_serde::from_slice::<Address>(&mp).unwrap(), good);
    }
}
