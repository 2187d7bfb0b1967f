//! The backup file of `export` and `import`: JSON lines. Line 1 names the format and version; then
//! one line per address with its state as an op (hex of its msgpack encoding, the protocol's own)
//! and every value the state names, keyed by its content id (hex of the canonical encoding). The
//! ids are checked when the file is read (a value under another id is refused); the peer checks
//! everything else, as for data from the network (`replikativ_peer::proto::backup`).

use std::io::{BufRead, Write};
use std::path::Path;

use replikativ_crdt::{Address, ContentId, CrdtKind};
use replikativ_peer::proto::AnyOp;
use replikativ_peer::proto::backup::Export;
use serde_bytes::ByteBuf;

use crate::{EXIT_DATA, EXIT_USAGE, Failure};

/// The format's name, on line 1.
pub(crate) const FORMAT: &str = "replikativ-export";
/// The format version written and read.
pub(crate) const VERSION: u64 = 1;
/// Bytes of a backup file read at most: what one export can hold (`MAX_EXPORT_BYTES`), hex-encoded,
/// with room for the JSON around it. A larger (or endless) input is refused, not buffered.
pub(crate) const MAX_BACKUP_BYTES: u64 =
    2 * replikativ_peer::proto::backup::MAX_EXPORT_BYTES as u64 + (4 << 20);

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    version: u64,
    addresses: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    address: Address,
    kind: CrdtKind,
    /// Hex of the op's msgpack encoding.
    op: String,
    /// Content id (hex) -> hex of the value's canonical encoding.
    values: std::collections::BTreeMap<ContentId, String>,
}

/// Writes `exports` to `output` (stdout if none).
pub(crate) fn write(exports: &[Export], output: Option<&Path>) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure(EXIT_DATA, format!("cannot write the export: {e}"));
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure(EXIT_DATA, format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let header = Header { format: FORMAT.into(), version: VERSION, addresses: exports.len() };
    writeln!(out, "{}", serde_json::to_string(&header).expect("encodes")).map_err(io)?;
    for e in exports {
        let line = Line {
            address: e.address.clone(),
            kind: e.kind,
            op: hex::encode(rmp_serde::to_vec_named(&e.op).expect("ops encode")),
            values: e.values.iter().map(|v| (ContentId::hash_bytes(v), hex::encode(v))).collect(),
        };
        writeln!(out, "{}", serde_json::to_string(&line).expect("encodes")).map_err(io)?;
    }
    out.flush().map_err(io)?;
    if let Some(path) = output {
        // Durable before we say it is written: a backup that vanishes with a crash is none.
        std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io)?;
        eprintln!("exported {} address(es) to {}", exports.len(), path.display());
    }
    Ok(())
}

/// Reads a backup file ("-": stdin): the header, then every line, each value checked against the
/// id it is filed under. A file that is not a backup of this version is a usage error.
pub(crate) fn read(file: &str) -> Result<Vec<Export>, Failure> {
    let source: Box<dyn std::io::Read> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(file).map_err(|e| Failure(EXIT_USAGE, format!("cannot open {file}: {e}")))?,
        )
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(source, MAX_BACKUP_BYTES + 1), &mut text)
        .map_err(|e| Failure(EXIT_DATA, format!("cannot read {file}: {e}")))?;
    if text.len() as u64 > MAX_BACKUP_BYTES {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "{file} is larger than {MAX_BACKUP_BYTES} bytes, more than one export holds: not a backup"
            ),
        ));
    }
    let mut lines = text.lines().enumerate();
    let bad = |n: usize, why: String| Failure(EXIT_DATA, format!("{file}, line {}: {why}", n + 1));
    let (n, first) =
        lines.next().ok_or_else(|| Failure(EXIT_USAGE, format!("{file} is empty: not a backup")))?;
    let first = first.map_err(|e| bad(n, e.to_string()))?;
    let header: Header = serde_json::from_str(&first).map_err(|_| {
        Failure(EXIT_USAGE, format!("{file} is not a replikativ backup (no {FORMAT} header)"))
    })?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "{file} is {} version {}; this replikativ reads {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        ));
    }
    let mut exports = Vec::with_capacity(header.addresses);
    for (n, line) in lines {
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        let op_bytes = hex::decode(&l.op).map_err(|e| bad(n, format!("op: {e}")))?;
        let op: AnyOp = rmp_serde::from_slice(&op_bytes).map_err(|e| bad(n, format!("op: {e}")))?;
        let mut values = Vec::with_capacity(l.values.len());
        for (id, v) in l.values {
            let bytes = hex::decode(&v).map_err(|e| bad(n, format!("value {id}: {e}")))?;
            let actual = ContentId::hash_bytes(&bytes);
            if actual != id {
                return Err(bad(n, format!("the value filed under {id} hashes to {actual}")));
            }
            values.push(ByteBuf::from(bytes));
        }
        exports.push(Export { address: l.address, kind: l.kind, op, values });
    }
    if exports.len() != header.addresses {
        return Err(Failure(
            EXIT_DATA,
            format!(
                "{file} holds {} addresses, its header says {} (truncated?)",
                exports.len(),
                header.addresses
            ),
        ));
    }
    Ok(exports)
}
