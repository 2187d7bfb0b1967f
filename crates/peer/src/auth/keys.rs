//! Ed25519 keys: public keys written `key:<base32>`, secret keys that never print and are zeroized
//! when dropped, key files readable by their owner only, and domain-separated signatures.
//!
//! Every signature signs a 32-byte digest `blake3::derive_key`-style hashed under a fixed context
//! string ([`statement`]), never a re-serialization of a structure, and is checked with
//! `verify_strict` (which refuses small-order keys and non-canonical signatures).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// The prefix of a key written as text: `key:` followed by 52 lowercase base32 characters.
pub const KEY_PREFIX: &str = "key:";

/// Bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key, a signature or a key file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not `key:` and 52 base32 characters of a valid ed25519 point.
    #[error("not a public key (expected key: and 52 base32 characters): {0}")]
    BadPublicKey(String),
    /// A signature that does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The system's random source failed.
    #[error("no randomness: {0}")]
    Random(String),
    /// A key file could not be read or written, or is malformed.
    #[error("key file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// An ed25519 public key: a node's, a user's or a device's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

fn base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("valid base32 spec")
}

impl PublicKey {
    /// The key from its 32 bytes, if they are a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey(hex32(&bytes)))?;
        Ok(PublicKey(bytes))
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The user id this key is as a self-certifying user (`key:<base32>`).
    pub fn user_id(&self) -> String {
        self.to_string()
    }

    /// The key a self-certifying user id names (`key:<base32>`), or `None` for another id.
    pub fn of_user(user: &str) -> Option<PublicKey> {
        if user.starts_with(KEY_PREFIX) { user.parse().ok() } else { None }
    }

    /// Checks `sig` over the statement `digest` (see [`statement`]) with `verify_strict`.
    pub fn verify(&self, digest: &[u8; 32], sig: &[u8; SIGNATURE_LEN]) -> Result<(), KeyError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        key.verify_strict(digest, &sig).map_err(|_| KeyError::BadSignature)
    }
}

fn hex32(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", base32().encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        let bad = || KeyError::BadPublicKey(crate::proto::message::clip(s));
        let body = s.strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        if body.len() != 52 {
            return Err(bad());
        }
        let bytes = base32().decode(body.as_bytes()).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        // Only the canonical spelling (the decoder would accept other trailing bits).
        let key = PublicKey::from_bytes(bytes).map_err(|_| bad())?;
        if key.to_string() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let bytes: [u8; 32] = bytes
            .into_vec()
            .try_into()
            .map_err(|_| serde::de::Error::custom("a public key has 32 bytes"))?;
        PublicKey::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// A signature as it travels: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let bytes: [u8; SIGNATURE_LEN] = bytes
            .into_vec()
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature has 64 bytes"))?;
        Ok(Signature(bytes))
    }
}

/// The digest a signature signs: `blake3` in key-derivation mode under `context` (a fixed string
/// naming the statement and the format version, e.g. `"replikativ-rs v1 node-auth"`) over
/// `parts`, each prefixed with its length as 8 bytes big-endian (so no two sequences of parts
/// hash alike).
pub fn statement(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for part in parts {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// An ed25519 secret key. It never prints (its `Debug` shows the public key) and its bytes are
/// zeroized when it is dropped.
#[derive(Clone)]
pub struct SecretKey {
    signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("public", &self.public()).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The key of a 32-byte seed (tests and key files).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey { signing: SigningKey::from_bytes(seed) }
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs a statement digest (see [`statement`]).
    pub fn sign(&self, digest: &[u8; 32]) -> Signature {
        Signature(self.signing.sign(digest).to_bytes())
    }

    /// The seed, for writing a key file.
    fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The key file's text: a header line, the public key, and the secret seed in base32.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\npublic {}\nsecret {}\n",
            self.public(),
            base32().encode(&self.seed()[..])
        ))
    }

    /// Reads a key from key-file text (see [`SecretKey::to_file_text`]): the public key must be
    /// the secret's.
    pub fn from_file_text(text: &str) -> Result<SecretKey, String> {
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format!("not a replikativ key file (its first line is not `{KEY_FILE_HEADER}`)"));
        }
        let public = lines
            .next()
            .and_then(|l| l.strip_prefix("public "))
            .ok_or("the second line must be `public key:...`")?;
        let public: PublicKey = public.parse().map_err(|e: KeyError| e.to_string())?;
        let secret = lines
            .next()
            .and_then(|l| l.strip_prefix("secret "))
            .ok_or("the third line must be `secret ...`")?;
        let seed = Zeroizing::new(base32().decode(secret.as_bytes()).map_err(|_| "the secret is not base32")?);
        let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| "the secret is not 32 bytes")?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err("unexpected lines after the secret".into());
        }
        let key = SecretKey::from_seed(seed);
        if key.public() != public {
            return Err("the public key does not belong to the secret".into());
        }
        Ok(key)
    }

    /// Writes the key to a new file readable and writable by its owner only (mode 0600 on
    /// Unix). An existing file is never overwritten.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write as _;
        let err = |reason: String| KeyError::File { path: path.display().to_string(), reason };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
        file.write_all(self.to_file_text().as_bytes()).map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))
    }

    /// Reads a key file. On Unix a file that others may read (or write) is refused: a secret key
    /// readable by every user of the machine is not secret.
    pub fn read_file(path: &Path) -> Result<SecretKey, KeyError> {
        let err = |reason: String| KeyError::File { path: path.display().to_string(), reason };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a file".into()));
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(err(format!("{} bytes; a key file has at most {MAX_KEY_FILE_BYTES}", meta.len())));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {mode:o} lets other users read it; make it private (chmod 600)"
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        SecretKey::from_file_text(&text).map_err(err)
    }
}

/// The first line of a key file.
pub const KEY_FILE_HEADER: &str = "replikativ-key v1";

/// Largest key file read (a key file is about 150 bytes).
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_print_and_parse_canonically() {
        let key = SecretKey::from_seed(&[7; 32]).public();
        let text = key.to_string();
        assert!(text.starts_with("key:") && text.len() == 4 + 52, "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert_eq!(PublicKey::of_user(&text), Some(key));
        assert_eq!(PublicKey::of_user("mail:alice@example.org"), None);
        for bad in [
            "",
            "key:",
            "alice",
            &text[..text.len() - 1],
            &format!("{text}a"),
            &text.to_uppercase(),
            &format!("KEY:{}", &text[4..]),
            // Same bytes, other trailing bits: not the canonical spelling.
            &format!("{}b", &text[..text.len() - 1]),
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_statement() {
        let alice = SecretKey::from_seed(&[1; 32]);
        let bob = SecretKey::from_seed(&[2; 32]);
        let digest = statement("replikativ-rs v1 test", &[b"hello", b"world"]);
        let sig = alice.sign(&digest);
        assert_eq!(alice.public().verify(&digest, &sig.0), Ok(()));
        assert_eq!(bob.public().verify(&digest, &sig.0), Err(KeyError::BadSignature));
        let other = statement("replikativ-rs v1 test", &[b"hellow", b"orld"]);
        assert_ne!(digest, other, "parts are length-prefixed");
        assert_eq!(alice.public().verify(&other, &sig.0), Err(KeyError::BadSignature));
        let other_context = statement("replikativ-rs v1 other", &[b"hello", b"world"]);
        assert_eq!(alice.public().verify(&other_context, &sig.0), Err(KeyError::BadSignature));
        let mut flipped = sig.0;
        flipped[10] ^= 1;
        assert_eq!(alice.public().verify(&digest, &flipped), Err(KeyError::BadSignature));
    }

    #[test]
    fn key_files_round_trip_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = SecretKey::generate().unwrap();
        key.write_file(&path).unwrap();
        assert_eq!(SecretKey::read_file(&path).unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            let other = SecretKey::generate().unwrap();
            assert!(other.write_file(&path).is_err(), "overwrote a key file");
            assert_eq!(SecretKey::read_file(&path).unwrap().public(), key.public());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = SecretKey::read_file(&path).unwrap_err().to_string();
            assert!(refused.contains("chmod 600"), "{refused}");
        }
        assert!(!format!("{key:?}").contains(&key.to_file_text()[40..]), "Debug shows the secret");
    }

    #[test]
    fn malformed_key_files_are_refused_with_a_reason() {
        let good = SecretKey::from_seed(&[3; 32]).to_file_text();
        let other = SecretKey::from_seed(&[4; 32]).to_file_text();
        let swapped = format!(
            "{}\n{}\n{}\n",
            KEY_FILE_HEADER,
            good.lines().nth(1).unwrap(),
            other.lines().nth(2).unwrap()
        );
        for (text, why) in [
            ("", "not a replikativ key file"),
            ("replikativ-key v2\n", "not a replikativ key file"),
            (&format!("{KEY_FILE_HEADER}\n"), "second line"),
            (&swapped, "does not belong"),
            (&format!("{}junk\n", &*good), "unexpected lines"),
            (&good.replace("secret ", "secret !"), "not base32"),
        ] {
            let e = SecretKey::from_file_text(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
