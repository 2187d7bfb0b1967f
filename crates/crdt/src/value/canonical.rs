//! The canonical binary encoding of [`Value`]s.
//!
//! One byte of tag, then the payload:
//!
//! | tag  | value        | payload                                                        |
//! |------|--------------|----------------------------------------------------------------|
//! | 0x00 | nil          | none                                                           |
//! | 0x01 | false        | none                                                           |
//! | 0x02 | true         | none                                                           |
//! | 0x03 | integer      | zigzag of the `i128`, as minimal unsigned LEB128                |
//! | 0x04 | float        | the 8 bytes of the IEEE-754 bits, big-endian; NaN is 0x7ff8…0   |
//! | 0x05 | string       | byte length (LEB128), then the UTF-8 bytes                      |
//! | 0x06 | bytes        | byte length (LEB128), then the bytes                            |
//! | 0x07 | list         | element count (LEB128), then each element                       |
//! | 0x08 | map          | entry count (LEB128), then key and value of each entry, keys in  |
//! |      |              | strictly increasing [`Value`] order                             |
//!
//! Every length is a prefix, so no two different values share an encoding (the original hasher's
//! `[] ≡ [nil]` and `["a\0"] ≡ ["a", nil, nil]` collisions cannot happen), and the decoder accepts
//! only canonical input.

use std::collections::BTreeMap;

use super::{CANONICAL_NAN_BITS, Value, canonical_float_bits};

const TAG_NIL: u8 = 0x00;
const TAG_FALSE: u8 = 0x01;
const TAG_TRUE: u8 = 0x02;
pub(crate) const TAG_INT: u8 = 0x03;
const TAG_FLOAT: u8 = 0x04;
pub(crate) const TAG_STRING: u8 = 0x05;
pub(crate) const TAG_BYTES: u8 = 0x06;
pub(crate) const TAG_LIST: u8 = 0x07;
pub(crate) const TAG_MAP: u8 = 0x08;

/// Deepest nesting of lists and maps the decoder accepts (bounds its recursion on hostile input).
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not the canonical encoding of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("value encoding ends early at byte {offset}")]
    UnexpectedEnd {
        /// Where more input was needed.
        offset: usize,
    },
    /// A tag byte that names no value kind.
    #[error("unknown value tag 0x{tag:02x} at byte {offset}")]
    UnknownTag {
        /// The tag read.
        tag: u8,
        /// Where it was read.
        offset: usize,
    },
    /// A varint with redundant bytes or out of range.
    #[error("non-canonical or overlong varint at byte {offset}")]
    BadVarint {
        /// Where the varint starts.
        offset: usize,
    },
    /// A NaN with other bits than the canonical one.
    #[error("non-canonical NaN at byte {offset}")]
    NonCanonicalNan {
        /// Where the float starts.
        offset: usize,
    },
    /// A string that is not UTF-8.
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: usize,
    },
    /// Map keys out of order or repeated.
    #[error("map key at byte {offset} is not greater than the previous key")]
    UnsortedMapKeys {
        /// Where the offending key starts.
        offset: usize,
    },
    /// Lists and maps nested deeper than [`MAX_DEPTH`].
    #[error("value nested deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep {
        /// Where the limit was passed.
        offset: usize,
    },
    /// Bytes left over after a complete value.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
}

/// Where the encoder writes: a buffer, or a hasher (hashing without materializing the bytes).
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_u8(&mut self, b: u8) {
        self.put(&[b]);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_u8(&mut self, b: u8) {
        self.push(b);
    }
}

/// Feeds a hasher in blocks: blake3 is much faster on whole blocks than on the many few-byte
/// pieces an encoding is made of, and this needs no allocation.
struct BlockHasher<'a> {
    hasher: &'a mut blake3::Hasher,
    buf: [u8; 4096],
    len: usize,
}

impl BlockHasher<'_> {
    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Sink for BlockHasher<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

pub(crate) fn put_varint(out: &mut impl Sink, mut n: u128) {
    let mut buf = [0u8; 19];
    let mut i = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf[i] = byte;
            i += 1;
            break;
        }
        buf[i] = byte | 0x80;
        i += 1;
    }
    out.put(&buf[..i]);
}

pub(crate) fn zigzag(i: i128) -> u128 {
    ((i << 1) ^ (i >> 127)) as u128
}

fn unzigzag(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}

pub(crate) fn encode_into(value: &Value, out: &mut Vec<u8>) {
    encode(value, out);
}

/// Counts bytes instead of keeping them.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
}

pub(crate) fn encoded_len(value: &Value) -> usize {
    let mut counter = Counter(0);
    encode(value, &mut counter);
    counter.0
}

pub(crate) fn encode_to_hasher(value: &Value, hasher: &mut blake3::Hasher) {
    let mut sink = BlockHasher { hasher, buf: [0; 4096], len: 0 };
    encode(value, &mut sink);
    sink.flush();
}

fn encode(value: &Value, out: &mut impl Sink) {
    match value {
        Value::Nil => out.put_u8(TAG_NIL),
        Value::Bool(false) => out.put_u8(TAG_FALSE),
        Value::Bool(true) => out.put_u8(TAG_TRUE),
        Value::Int(i) => {
            out.put_u8(TAG_INT);
            put_varint(out, zigzag(*i));
        }
        Value::Float(f) => {
            out.put_u8(TAG_FLOAT);
            out.put(&canonical_float_bits(*f).to_be_bytes());
        }
        Value::String(s) => {
            out.put_u8(TAG_STRING);
            put_varint(out, s.len() as u128);
            out.put(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.put_u8(TAG_BYTES);
            put_varint(out, b.len() as u128);
            out.put(b);
        }
        Value::List(items) => {
            out.put_u8(TAG_LIST);
            put_varint(out, items.len() as u128);
            for item in items {
                encode(item, out);
            }
        }
        Value::Map(entries) => {
            out.put_u8(TAG_MAP);
            put_varint(out, entries.len() as u128);
            for (k, v) in entries {
                encode(k, out);
                encode(v, out);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::UnexpectedEnd { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::UnexpectedEnd { offset: self.bytes.len() })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A minimal LEB128 varint of at most 128 bits.
    fn varint(&mut self) -> Result<u128, DecodeError> {
        let start = self.pos;
        let mut n: u128 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let bits = u128::from(b & 0x7f);
            // Bits shifted past the 128th would be lost: the number does not fit.
            if shift >= 128 || (shift > 121 && bits >> (128 - shift) != 0) {
                return Err(DecodeError::BadVarint { offset: start });
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                // A last byte of zero (other than a lone zero) is a redundant, non-minimal form.
                if b == 0 && shift > 0 {
                    return Err(DecodeError::BadVarint { offset: start });
                }
                return Ok(n);
            }
            shift += 7;
        }
    }

    /// A length or count: bounded by the remaining input, since every element takes a byte or more.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(DecodeError::UnexpectedEnd { offset: start }),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let offset = self.pos;
        let tag = self.byte()?;
        Ok(match tag {
            TAG_NIL => Value::Nil,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT => Value::Int(unzigzag(self.varint()?)),
            TAG_FLOAT => {
                let raw: [u8; 8] = self.take(8)?.try_into().expect("took 8 bytes");
                let bits = u64::from_be_bytes(raw);
                let f = f64::from_bits(bits);
                if f.is_nan() && bits != CANONICAL_NAN_BITS {
                    return Err(DecodeError::NonCanonicalNan { offset });
                }
                Value::Float(f)
            }
            TAG_STRING => {
                let len = self.length()?;
                let at = self.pos;
                let raw = self.take(len)?;
                let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { offset: at })?;
                Value::String(s.to_owned())
            }
            TAG_BYTES => {
                let len = self.length()?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            TAG_LIST => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep { offset });
                }
                let count = self.length()?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            TAG_MAP => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep { offset });
                }
                let count = self.length()?;
                let mut map = BTreeMap::new();
                let mut last: Option<Value> = None;
                for _ in 0..count {
                    let key_at = self.pos;
                    let key = self.value(depth + 1)?;
                    if last.as_ref().is_some_and(|prev| *prev >= key) {
                        return Err(DecodeError::UnsortedMapKeys { offset: key_at });
                    }
                    let value = self.value(depth + 1)?;
                    last = Some(key.clone());
                    map.insert(key, value);
                }
                Value::Map(map)
            }
            tag => return Err(DecodeError::UnknownTag { tag, offset }),
        })
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    match reader.remaining() {
        0 => Ok(value),
        count => Err(DecodeError::TrailingBytes { count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_at_the_edges() {
        for i in [0i128, 1, -1, 63, -64, 64, i64::MAX as i128, i64::MIN as i128, i128::MAX, i128::MIN] {
            let v = Value::Int(i);
            assert_eq!(decode(&v.encode()).unwrap(), v, "{i}");
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        // 0 encoded with a redundant continuation byte.
        assert_eq!(decode(&[TAG_INT, 0x80, 0x00]), Err(DecodeError::BadVarint { offset: 1 }));
        // 2^128 does not fit.
        let mut too_big = vec![TAG_INT];
        too_big.extend([0xff; 18]);
        too_big.push(0x7f);
        assert!(matches!(decode(&too_big), Err(DecodeError::BadVarint { .. })));
    }

    #[test]
    fn huge_declared_length_is_an_error_not_an_allocation() {
        let mut bytes = vec![TAG_LIST];
        put_varint(&mut bytes, u64::MAX as u128);
        assert!(matches!(decode(&bytes), Err(DecodeError::UnexpectedEnd { .. })));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let bytes: Vec<u8> =
            std::iter::repeat_n([TAG_LIST, 1], MAX_DEPTH + 1).flatten().chain([TAG_NIL]).collect();
        assert!(matches!(decode(&bytes), Err(DecodeError::TooDeep { .. })));
    }

    #[test]
    fn nan_payloads_fold_into_one() {
        let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        assert_eq!(Value::Float(odd_nan), Value::Float(f64::NAN));
        assert_eq!(Value::Float(odd_nan).encode(), Value::Float(f64::NAN).encode());
        let mut bytes = vec![TAG_FLOAT];
        bytes.extend(0x7ff8_0000_0000_0001u64.to_be_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::NonCanonicalNan { .. })));
    }
}
