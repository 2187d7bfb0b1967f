//! On-disk format of [`FileStore`](super::FileStore) segments.
//!
//! ```text
//! segment  = header record*
//! header   = "RPKSEG01" (8 bytes) segment-id (u64 LE)                         16 bytes
//! record   = magic "RPKR" body_len (u32 LE) body_crc (u32 LE) head_crc (u32 LE)  16 bytes
//!            body (body_len bytes: entry*)
//!            head_crc = CRC-32 of the first 12 header bytes; body_crc = CRC-32 of the body
//! entry    = kind (u8: 1 put, 2 delete, 3 delete-range) key_len (u16 LE) val_len (u32 LE)
//!            key_crc (u32 LE: CRC-32 of kind, key_len, val_len and key)
//!            key (key_len bytes) value (val_len bytes)
//!            val_crc (u32 LE: CRC-32 of key then value)
//! ```
//!
//! One record is one atomic write (a single put, a batch, a log append with its bounds update): the body
//! CRC makes it all-or-nothing on replay. The per-entry CRCs make each value verifiable on its own, so a
//! damaged value in the middle of a file is reported for its key while other keys still read.

use crate::engine::RawOp;

pub(crate) const SEG_MAGIC: &[u8; 8] = b"RPKSEG01";
pub(crate) const SEG_HEADER_LEN: u64 = 16;
pub(crate) const REC_MAGIC: &[u8; 4] = b"RPKR";
pub(crate) const REC_HEADER_LEN: usize = 16;
pub(crate) const ENTRY_HEAD_LEN: usize = 11;
/// Bytes an entry takes besides its key and value.
pub(crate) const ENTRY_OVERHEAD: u64 = (ENTRY_HEAD_LEN + 4) as u64;

pub(crate) const KIND_PUT: u8 = 1;
pub(crate) const KIND_DELETE: u8 = 2;
pub(crate) const KIND_DELETE_RANGE: u8 = 3;

/// The segment file header for segment `id`.
pub(crate) fn segment_header(id: u32) -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..].copy_from_slice(&u64::from(id).to_le_bytes());
    h
}

/// Starts a record in `buf` (which must be empty); finish it with [`finish_record`].
pub(crate) fn begin_record(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0u8; REC_HEADER_LEN]);
}

/// Appends one entry; returns the offset of its value inside `buf`.
pub(crate) fn push_entry(buf: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8]) -> usize {
    let start = buf.len();
    buf.push(kind);
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[start..]);
    h.update(key);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(key);
    let value_off = buf.len();
    buf.extend_from_slice(value);
    buf.extend_from_slice(&value_crc(key, value).to_le_bytes());
    value_off
}

/// Appends the entry for `op`; returns the value offset for puts.
pub(crate) fn push_op(buf: &mut Vec<u8>, op: &RawOp) -> Option<usize> {
    match op {
        RawOp::Put(k, v) => Some(push_entry(buf, KIND_PUT, k, v)),
        RawOp::Delete(k) => {
            push_entry(buf, KIND_DELETE, k, &[]);
            None
        }
        RawOp::DeleteRange(s, e) => {
            push_entry(buf, KIND_DELETE_RANGE, s, e);
            None
        }
    }
}

/// Fills in the record header of `buf`.
pub(crate) fn finish_record(buf: &mut [u8]) {
    let body_len = (buf.len() - REC_HEADER_LEN) as u32;
    let body_crc = crc32fast::hash(&buf[REC_HEADER_LEN..]);
    buf[..4].copy_from_slice(REC_MAGIC);
    buf[4..8].copy_from_slice(&body_len.to_le_bytes());
    buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32fast::hash(&buf[..12]);
    buf[12..16].copy_from_slice(&head_crc.to_le_bytes());
}

/// CRC-32 of a key followed by its value.
pub(crate) fn value_crc(key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    h.finalize()
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Outcome of checking the record that starts at `pos`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecordCheck {
    /// Header and body are intact; the record ends at `end`.
    Ok { end: usize },
    /// The header is intact but the body fails its CRC; the record ends at `end`.
    BadBody { end: usize },
    /// The header is incomplete, damaged, or announces a body beyond the end of the file.
    BadHeader { reason: &'static str },
}

/// Checks the record at `pos` of `buf`.
pub(crate) fn check_record(buf: &[u8], pos: usize) -> RecordCheck {
    if buf.len() - pos < REC_HEADER_LEN {
        return RecordCheck::BadHeader { reason: "incomplete record header" };
    }
    let h = &buf[pos..pos + REC_HEADER_LEN];
    if &h[..4] != REC_MAGIC {
        return RecordCheck::BadHeader { reason: "bad record magic" };
    }
    if crc32fast::hash(&h[..12]) != le_u32(&h[12..16]) {
        return RecordCheck::BadHeader { reason: "record header checksum mismatch" };
    }
    let body_len = le_u32(&h[4..8]) as usize;
    let end = pos + REC_HEADER_LEN + body_len;
    if end > buf.len() {
        return RecordCheck::BadHeader { reason: "record extends beyond the end of the file" };
    }
    if crc32fast::hash(&buf[pos + REC_HEADER_LEN..end]) != le_u32(&h[8..12]) {
        return RecordCheck::BadBody { end };
    }
    RecordCheck::Ok { end }
}

/// True if a fully intact record starts anywhere at or after `from`.
pub(crate) fn intact_record_after(buf: &[u8], from: usize) -> bool {
    let mut p = from;
    while p + REC_HEADER_LEN <= buf.len() {
        match buf[p..].windows(4).position(|w| w == REC_MAGIC) {
            None => return false,
            Some(i) => {
                p += i;
                if matches!(check_record(buf, p), RecordCheck::Ok { .. }) {
                    return true;
                }
                p += 1;
            }
        }
    }
    false
}

/// One decoded entry, borrowing from the segment buffer.
#[derive(Debug)]
pub(crate) struct EntryRef<'a> {
    pub(crate) kind: u8,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    /// Absolute offset of the value in the buffer.
    pub(crate) value_off: usize,
}

/// Decodes the entries of the body `buf[start..end]`. With `verify`, each entry's head CRC is checked
/// (used when the body CRC failed); on a structural error it returns `Err((offset, reason))`.
pub(crate) fn for_each_entry<'a>(
    buf: &'a [u8],
    start: usize,
    end: usize,
    verify: bool,
    mut f: impl FnMut(EntryRef<'a>) -> Result<(), (usize, String)>,
) -> Result<(), (usize, String)> {
    let mut p = start;
    while p < end {
        if end - p < ENTRY_HEAD_LEN {
            return Err((p, "truncated entry header".into()));
        }
        let kind = buf[p];
        let key_len = u16::from_le_bytes([buf[p + 1], buf[p + 2]]) as usize;
        let val_len = le_u32(&buf[p + 3..p + 7]) as usize;
        let key_start = p + ENTRY_HEAD_LEN;
        let value_off = key_start + key_len;
        let entry_end = value_off.checked_add(val_len).and_then(|e| e.checked_add(4));
        let Some(entry_end) = entry_end.filter(|&e| e <= end) else {
            return Err((p, "entry extends beyond its record".into()));
        };
        if verify {
            let mut h = crc32fast::Hasher::new();
            h.update(&buf[p..p + 7]);
            h.update(&buf[key_start..value_off]);
            if h.finalize() != le_u32(&buf[p + 7..p + 11]) {
                return Err((p, "entry header checksum mismatch".into()));
            }
        }
        if !matches!(kind, KIND_PUT | KIND_DELETE | KIND_DELETE_RANGE) {
            return Err((p, format!("unknown entry kind {kind}")));
        }
        f(EntryRef {
            kind,
            key: &buf[key_start..value_off],
            value: &buf[value_off..value_off + val_len],
            value_off,
        })?;
        p = entry_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ops: &[RawOp]) -> Vec<u8> {
        let mut buf = Vec::new();
        begin_record(&mut buf);
        for op in ops {
            push_op(&mut buf, op);
        }
        finish_record(&mut buf);
        buf
    }

    #[test]
    fn record_round_trip() {
        let buf = record(&[RawOp::Put(b"k".to_vec(), b"value".to_vec()), RawOp::Delete(b"x".to_vec())]);
        let RecordCheck::Ok { end } = check_record(&buf, 0) else { panic!("bad record") };
        assert_eq!(end, buf.len());
        let mut seen = Vec::new();
        for_each_entry(&buf, REC_HEADER_LEN, end, true, |e| {
            seen.push((e.kind, e.key.to_vec(), e.value.to_vec()));
            Ok(())
        })
        .expect("entries");
        assert_eq!(
            seen,
            vec![(KIND_PUT, b"k".to_vec(), b"value".to_vec()), (KIND_DELETE, b"x".to_vec(), vec![])]
        );
    }

    #[test]
    fn damage_is_classified() {
        let mut buf = record(&[RawOp::Put(b"k".to_vec(), b"value".to_vec())]);
        let n = buf.len();
        buf[n - 6] ^= 1; // inside the value
        assert!(matches!(check_record(&buf, 0), RecordCheck::BadBody { .. }));
        buf[5] ^= 1; // body_len
        assert!(matches!(check_record(&buf, 0), RecordCheck::BadHeader { .. }));
        assert!(matches!(check_record(&buf[..10], 0), RecordCheck::BadHeader { .. }));
    }

    #[test]
    fn finds_intact_record_after_garbage() {
        let mut buf = vec![0u8; 7];
        buf.extend(record(&[RawOp::Put(b"k".to_vec(), b"v".to_vec())]));
        assert!(intact_record_after(&buf, 0));
        assert!(!intact_record_after(&buf, 8));
    }
}
