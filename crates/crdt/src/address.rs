//! Addresses of replicated datatypes: `[user, crdt_id]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a replicated datatype lives: its owner's user name and its id.
///
/// `user` is a non-empty UTF-8 string (by convention `mail:alice@example.org`); `id` is a UUID
/// (random v4 by default, chosen by the caller). Written `user/uuid` in text, e.g.
/// `mail:alice@example.org/7d274663-9396-4247-910b-409ae35fe98d`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
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
}

impl Address {
    /// The address `[user, id]`. Fails on an empty user.
    pub fn new(user: impl Into<String>, id: Uuid) -> Result<Address, AddressError> {
        let user = user.into();
        if user.is_empty() {
            return Err(AddressError::EmptyUser(format!("/{id}")));
        }
        Ok(Address { user, id })
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
    }
}
