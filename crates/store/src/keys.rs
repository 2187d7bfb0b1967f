//! Internal key layout shared by all backends.
//!
//! | first byte | rest                                        | value                          |
//! |------------|---------------------------------------------|--------------------------------|
//! | `0x00`     | user key                                    | user value                     |
//! | `0x01`     | log name length (u16 BE), name, seq (u64 BE)| log entry                      |
//! | `0x02`     | log name                                    | `first` u64 LE, `next` u64 LE  |
//!
//! Big-endian sequence numbers make a log's entries sort in sequence order.

pub(crate) const TAG_KV: u8 = 0x00;
pub(crate) const TAG_LOG_ENTRY: u8 = 0x01;
pub(crate) const TAG_LOG_META: u8 = 0x02;

/// Internal key of a user key.
pub(crate) fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(TAG_KV);
    k.extend_from_slice(key);
    k
}

/// Prefix shared by all entries of one log.
pub(crate) fn log_prefix(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 11);
    k.push(TAG_LOG_ENTRY);
    // Names are at most MAX_KEY_LEN (1 KiB) long, checked by the callers.
    k.extend_from_slice(&(name.len() as u16).to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Internal key of log entry `seq`.
pub(crate) fn log_entry_key(name: &[u8], seq: u64) -> Vec<u8> {
    let mut k = log_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Internal key of a log's bounds record.
pub(crate) fn log_meta_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(TAG_LOG_META);
    k.extend_from_slice(name);
    k
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Human-readable rendering of a key for error messages: UTF-8 if printable, hex otherwise.
pub(crate) fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!("0x{}", hex(key)),
    }
}

/// Lower-case hex encoding.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn log_keys_sort_by_sequence() {
        assert!(log_entry_key(b"l", 255) < log_entry_key(b"l", 256));
        assert!(log_entry_key(b"l", 0).starts_with(&log_prefix(b"l")));
    }
}

/// Bytes a key holds inline (without a heap allocation of its own).
const INLINE: usize = 62;

/// A key of an in-memory index (the memory store's map, the file store's index). Keys up to
/// [`INLINE`] bytes, which covers the peer's value and log keys, are stored inside the B-tree node
/// instead of behind a pointer, so a lookup compares keys without a cache miss per comparison.
/// Orders like the byte string it holds.
#[derive(Clone)]
pub(crate) enum IndexKey {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl IndexKey {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline(len, bytes) => &bytes[..*len as usize],
            IndexKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for IndexKey {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline(key.len() as u8, bytes)
        } else {
            IndexKey::Heap(key.into())
        }
    }
}

impl From<Vec<u8>> for IndexKey {
    fn from(key: Vec<u8>) -> Self {
        if key.len() <= INLINE { IndexKey::from(key.as_slice()) } else { IndexKey::Heap(key.into()) }
    }
}

impl std::borrow::Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::Deref for IndexKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

#[cfg(test)]
mod index_key_tests {
    use super::IndexKey;

    #[test]
    fn orders_like_its_bytes_inline_or_not() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1; 62],
            vec![1; 63],
            vec![1; 100],
            vec![2],
            b"v/abc".to_vec(),
        ];
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (IndexKey::from(a.clone()), IndexKey::from(b.as_slice()));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
                assert_eq!(ka.as_slice(), a.as_slice());
            }
        }
        assert!(matches!(IndexKey::from(vec![1; 62]), IndexKey::Inline(62, _)));
        assert!(matches!(IndexKey::from(vec![1; 63]), IndexKey::Heap(_)));
    }
}
