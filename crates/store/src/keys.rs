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
