//! The data commands (`ormap`, `cdvcs`, `lww`, `gset`, `watch`, `status`, `value`): their
//! arguments, parsing, and running them on a backend.

use std::collections::BTreeSet;

use super::*;

/// Where a data command runs, and as whom.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// A running peer to work on (ws://HOST:PORT, or wss://HOST:PORT over TLS). Without it, the
    /// command opens --store itself.
    #[arg(long, global = true, env = "REPLIKATIV_PEER", value_name = "URL")]
    pub(crate) peer: Option<String>,
    /// A PEM file of certificate authorities to trust for a wss:// --peer, besides the public ones
    /// (e.g. a deployment's own CA, or the peer's self-signed certificate).
    #[arg(long, global = true, env = "REPLIKATIV_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// The store to open when there is no --peer (it must not be held by a running peer): file:DIR,
    /// sled:DIR, postgres://USER@HOST:PORT/DB?namespace=NAME or memory. Only the create commands
    /// make a new store.
    #[arg(long, global = true, env = "REPLIKATIV_STORE", value_name = "STORE", default_value = DEFAULT_STORE)]
    pub(crate) store: String,
    /// The user commits are made as (the owner of new addresses) [default: the --key's user
    /// (key:...), else mail:cli@localhost]. A node with authentication on accepts writes only as
    /// the --key's user.
    #[arg(long, global = true, env = "REPLIKATIV_USER")]
    pub(crate) user: Option<String>,
    /// The key file this command proves its user with when the --peer authenticates (made by
    /// `replikativ key gen`; readable by its owner only).
    #[arg(id = "key_file", long = "key", global = true, env = "REPLIKATIV_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// A read capability file (`replikativ key grant`) to present to the --peer: another user's
    /// addresses it covers become readable, until it expires; repeatable
    #[arg(long = "cap", global = true, value_name = "FILE")]
    pub(crate) caps: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// Reads a read capability file (a usage error if it is not one).
pub(crate) fn read_cap(path: &std::path::Path) -> Result<replikativ_peer::auth::ReadCap, Failure> {
    let meta =
        std::fs::metadata(path).map_err(|e| Failure(EXIT_USAGE, format!("--cap {}: {e}", path.display())))?;
    if meta.len() > 64 << 10 {
        return Err(Failure(
            EXIT_USAGE,
            format!("--cap {}: not a read capability (over 64 KiB)", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure(EXIT_USAGE, format!("--cap {}: {e}", path.display())))?;
    replikativ_peer::auth::ReadCap::from_text(&text)
        .map_err(|e| Failure(EXIT_USAGE, format!("--cap {}: {e}", path.display())))
}

/// The user of commands without --user or --key.
pub(crate) const DEFAULT_USER: &str = "mail:cli@localhost";

impl Target {
    /// The --key, read (a usage error if it cannot be: the file is the user's mistake).
    pub(crate) fn secret_key(&self) -> Result<Option<replikativ_peer::auth::SecretKey>, Failure> {
        self.key
            .as_deref()
            .map(|path| {
                replikativ_peer::auth::SecretKey::read_file(path)
                    .map_err(|e| Failure(EXIT_USAGE, e.to_string()))
            })
            .transpose()
    }

    /// The --cap files, read.
    pub(crate) fn read_caps(&self) -> Result<Vec<replikativ_peer::auth::ReadCap>, Failure> {
        self.caps.iter().map(|p| read_cap(p)).collect()
    }

    /// The user commits are made as: --user, else the --key's, else [`DEFAULT_USER`].
    pub(crate) fn user(&self) -> Result<String, Failure> {
        if let Some(user) = &self.user {
            return Ok(user.clone());
        }
        Ok(self.secret_key()?.map_or_else(|| DEFAULT_USER.to_owned(), |k| k.public().user_id()))
    }
}

/// Where a command that makes no commits runs (so it has no --user): the reads, `status`,
/// `subscribe`.
#[derive(Debug, Args)]
pub(crate) struct ReadTarget {
    /// A running peer to work on (ws://HOST:PORT, or wss://HOST:PORT over TLS). Without it, the
    /// command opens --store itself.
    #[arg(long, env = "REPLIKATIV_PEER", value_name = "URL")]
    pub(crate) peer: Option<String>,
    /// A PEM file of certificate authorities to trust for a wss:// --peer, besides the public ones
    /// (e.g. a deployment's own CA, or the peer's self-signed certificate).
    #[arg(long, env = "REPLIKATIV_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// The store to open when there is no --peer (it must not be held by a running peer): file:DIR,
    /// sled:DIR, postgres://USER@HOST:PORT/DB?namespace=NAME or memory. Reads write nothing.
    #[arg(long, env = "REPLIKATIV_STORE", value_name = "STORE", default_value = DEFAULT_STORE)]
    pub(crate) store: String,
    /// The key file this command proves its user with when the --peer authenticates (reads of
    /// addresses that are not public need the owner's key).
    #[arg(id = "key_file", long = "key", env = "REPLIKATIV_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// A read capability file (`replikativ key grant`) to present to the --peer; repeatable
    #[arg(long = "cap", value_name = "FILE")]
    pub(crate) caps: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl From<ReadTarget> for Target {
    fn from(r: ReadTarget) -> Target {
        Target { peer: r.peer, ca: r.ca, store: r.store, user: None, key: r.key, caps: r.caps, json: r.json }
    }
}

/// The exit codes, for every command's help.
macro_rules! exit_codes {
    () => {
        "Exit codes: 0 done, 2 bad usage (a flag, an address, JSON), 3 the --peer cannot be reached, 4 store or data error (no store, no such address, another datatype, a refused edit)."
    };
}
pub(crate) use exit_codes;

#[derive(Debug, Subcommand)]
pub(crate) enum OrmapCmd {
    /// Create an OR-Map; prints its address.
    #[command(after_help = concat!("Examples:\n  MAP=$(replikativ ormap create --peer ws://127.0.0.1:31744)\n  replikativ ormap create --id 6f1c0e6a-8d7e-4a57-9d55-0f6a1d7b3c21 --store file:./data\n\n", exit_codes!()))]
    Create(Create),
    /// Add a value under a key (a second assoc of the key keeps both values); prints the commit id.
    ///
    /// An OR-Map is multi-valued: assoc adds a value beside those the key already has (and beside
    /// concurrent assocs by other peers); `get` returns every live value. To replace what a key
    /// holds, use `ormap put`.
    #[command(after_help = concat!("Examples:\n  replikativ ormap assoc \"$MAP\" milk '[[\"add\", 2]]' --peer ws://127.0.0.1:31744\n  replikativ ormap assoc \"$MAP\" '{\"id\": 7}' '[\"set\", {\"done\": true}]' --json\n\n", exit_codes!()))]
    Assoc {
        /// The OR-Map's address, USER/UUID.
        address: String,
        /// The key: JSON if it parses as JSON (42, "x", {"id": 7}), else the text itself.
        #[arg(allow_negative_numbers = true)]
        key: String,
        /// The value: a JSON list of [function, params] transactions, e.g. '[["add", 2]]'.
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// Replace a key's values with a new one, in one op; prints the new value's commit id.
    ///
    /// What to use to set a key: removes every value this peer has seen and adds TXS, so no
    /// replica ever sees the key empty (dissoc, then assoc, would be two ops). A concurrent assoc
    /// on another peer, which this one has not seen, survives beside the new value.
    #[command(after_help = concat!("Examples:\n  replikativ ormap put \"$MAP\" milk '[[\"add\", 3]]' --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Put {
        /// The OR-Map's address, USER/UUID.
        address: String,
        /// The key: JSON if it parses as JSON, else the text itself.
        #[arg(allow_negative_numbers = true)]
        key: String,
        /// The new value: a JSON list of [function, params] transactions, e.g. '[["add", 3]]'.
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove every value of a key this peer has seen; prints the removal's commit id.
    #[command(after_help = concat!("Examples:\n  replikativ ormap dissoc \"$MAP\" milk --peer ws://127.0.0.1:31744\n  replikativ ormap dissoc \"$MAP\" milk '[[\"restore\", 2]]'   # with revert transactions\n\n", exit_codes!()))]
    Dissoc {
        /// The OR-Map's address, USER/UUID.
        address: String,
        /// The key (JSON if it parses as JSON, else the text itself).
        #[arg(allow_negative_numbers = true)]
        key: String,
        /// Revert transactions recorded with the removal (a JSON list, default []).
        revert: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The live values of a key (several when edited concurrently), with their commits.
    #[command(after_help = concat!("Examples:\n  replikativ ormap get \"$MAP\" milk --peer ws://127.0.0.1:31744\n  replikativ ormap get \"$MAP\" '{\"id\": 7}' --store file:./data --json\n\n", exit_codes!()))]
    Get {
        /// The OR-Map's address, USER/UUID.
        address: String,
        /// The key (JSON if it parses as JSON, else the text itself).
        #[arg(allow_negative_numbers = true)]
        key: String,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// The keys with live values.
    #[command(after_help = concat!("Examples:\n  replikativ ormap keys \"$MAP\" --peer ws://127.0.0.1:31744 --json\n\n", exit_codes!()))]
    Keys {
        /// The OR-Map's address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: ReadTarget,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CdvcsCmd {
    /// Create a CDVCS (with its root commit); prints its address.
    #[command(after_help = concat!("Examples:\n  LOG=$(replikativ cdvcs create --peer ws://127.0.0.1:31744)\n\n", exit_codes!()))]
    Create(Create),
    /// Commit transactions on the single head; prints the commit id.
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs commit \"$LOG\" '[[\"deposit\", 10]]' --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Commit {
        /// The CDVCS's address, USER/UUID.
        address: String,
        /// A JSON list of [function, params] transactions, e.g. '[["deposit", 10]]'.
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// The linearized history (the same order on every replica), one commit a line: a 12-digit id
    /// prefix (which commands that take ids accept), the author, the transactions.
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs log \"$LOG\" --peer ws://127.0.0.1:31744\n  replikativ cdvcs log \"$LOG\" --store file:./data --json   # full ids, parents, timestamps\n\n", exit_codes!()))]
    Log {
        /// The CDVCS's address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// The heads (several after concurrent commits).
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs heads \"$LOG\" --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Heads {
        /// The CDVCS's address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// Merge the heads into one commit; prints the merge commit's id.
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs merge \"$LOG\" --peer ws://127.0.0.1:31744        # all heads, sorted\n  replikativ cdvcs merge \"$LOG\" 3f2a9c01 b71e4d2c                  # in this order, by id prefix\n\n", exit_codes!()))]
    Merge {
        /// The CDVCS's address, USER/UUID.
        address: String,
        /// The heads to merge, in parent order: full ids or unique prefixes (at least 4 hex
        /// digits). Default: all current heads, sorted.
        heads: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pull FROM into INTO: a fast-forward unless --allow-induced-conflict; prints the tip.
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs pull mail:bob@example.org/UUID mail:alice@example.org/UUID --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Pull {
        /// The CDVCS to pull from, USER/UUID (it must have a single head).
        from: String,
        /// The CDVCS to pull into, USER/UUID (created if this peer has none).
        into: String,
        /// Pull even if it is not a fast-forward (INTO then has several heads: merge them).
        #[arg(long)]
        allow_induced_conflict: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Fork FROM to the --user (same UUID); prints the new address.
    #[command(after_help = concat!("Examples:\n  replikativ cdvcs fork mail:bob@example.org/UUID --user mail:alice@example.org --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Fork {
        /// The CDVCS to fork, USER/UUID.
        from: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LwwCmd {
    /// Create an LWW register; prints its address.
    #[command(after_help = concat!("Examples:\n  R=$(replikativ lww create --peer ws://127.0.0.1:31744)\n\n", exit_codes!()))]
    Create(Create),
    /// Write a value (the last write wins); prints it.
    #[command(after_help = concat!("Examples:\n  replikativ lww set \"$R\" '\"light\"' --peer ws://127.0.0.1:31744   # a JSON string keeps its quotes\n  replikativ lww set \"$R\" '{\"mode\": \"dark\", \"size\": 3}'\n\n", exit_codes!()))]
    Set {
        /// The register's address, USER/UUID.
        address: String,
        /// The value as JSON: a string needs its quotes ('"light"'); integers beyond 64 bits
        /// must be strings.
        #[arg(allow_negative_numbers = true)]
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The current value.
    #[command(after_help = concat!("Examples:\n  replikativ lww get \"$R\" --peer ws://127.0.0.1:31744\n\n", exit_codes!()))]
    Get {
        /// The register's address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: ReadTarget,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GsetCmd {
    /// Create a G-Set; prints its address.
    #[command(after_help = concat!("Examples:\n  S=$(replikativ gset create --peer ws://127.0.0.1:31744)\n\n", exit_codes!()))]
    Create(Create),
    /// Add a value (elements are never removed); prints it.
    #[command(after_help = concat!("Examples:\n  replikativ gset add \"$S\" '\"alice\"' --peer ws://127.0.0.1:31744\n  replikativ gset add \"$S\" '[1, 2]'\n\n", exit_codes!()))]
    Add {
        /// The G-Set's address, USER/UUID.
        address: String,
        /// The element as JSON (a string needs its quotes: '"alice"').
        #[arg(allow_negative_numbers = true)]
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The elements.
    #[command(after_help = concat!("Examples:\n  replikativ gset list \"$S\" --peer ws://127.0.0.1:31744 --json\n\n", exit_codes!()))]
    List {
        /// The G-Set's address, USER/UUID.
        address: String,
        #[command(flatten)]
        target: ReadTarget,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Create {
    /// The id (a UUID; default: a fresh one).
    #[arg(long)]
    pub(crate) id: Option<uuid::Uuid>,
    #[command(flatten)]
    pub(crate) target: Target,
}

pub(crate) fn value_cmd(json: &str) -> Result<(), Failure> {
    let value = parse_json(json, "value")?;
    let hex: String = value.encode().iter().map(|b| format!("{b:02x}")).collect();
    println!("encoding: {hex}");
    println!("id:       {}", value.content_id());
    Ok(())
}

pub(crate) fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    let parsed: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        // A bare word was most likely meant as a string: JSON strings need their quotes, and the
        // shell eats one pair of them.
        let word = text.trim();
        let hint = if !word.is_empty() && !word.starts_with(['"', '[', '{']) && word.parse::<f64>().is_err() {
            format!(" (a JSON string needs quotes: '\"{word}\"')")
        } else {
            String::new()
        };
        Failure(EXIT_USAGE, format!("the {what} is not valid JSON: {e}{hint}"))
    })?;
    if let Some(big) = big_integer(text) {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "the {what} has the integer {big}, beyond 64 bits: JSON would turn it into an inexact float; write it as a string (\"{big}\")"
            ),
        ));
    }
    to_value(&parsed).map_err(|e| Failure(EXIT_USAGE, format!("the {what} is not a value: {e}")))
}

/// The first integer literal of a (valid) JSON text outside both i64 and u64, if any: serde_json
/// would read it as a float and lose its exact value.
pub(crate) fn big_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    i += 1;
                }
                let number = &text[start..i];
                let integer = !number.contains(['.', 'e', 'E']);
                if integer && number.parse::<i64>().is_err() && number.parse::<u64>().is_err() {
                    return Some(number);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A key: JSON if it parses as JSON, else the text itself.
pub(crate) fn parse_key(text: &str) -> Value {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|j| to_value(&j).ok())
        .unwrap_or_else(|| Value::from(text))
}

/// Transactions: a JSON list of `[function, params]` pairs (or one pair).
pub(crate) fn parse_txs(text: &str) -> Result<Vec<Transaction>, Failure> {
    let value = parse_json(text, "transaction list")?;
    let bad = || {
        Failure(
            EXIT_USAGE,
            format!("transactions must be a JSON list of [function, params] pairs, got {text}"),
        )
    };
    let pair = |v: &Value| match v.as_list() {
        Some([Value::String(f), params]) => Ok(Transaction::new(f.clone(), params.clone())),
        _ => Err(bad()),
    };
    match value.as_list() {
        Some([]) => Err(Failure(
            EXIT_USAGE,
            "the transaction list is empty: give at least one [function, params] pair, e.g. '[[\"add\", 1]]'"
                .into(),
        )),
        Some([Value::String(_), _]) => Ok(vec![pair(&value)?]),
        Some(items) => items.iter().map(pair).collect(),
        None => Err(bad()),
    }
}

pub(crate) fn parse_address(text: &str) -> Result<Address, Failure> {
    text.parse().map_err(|e: replikativ_crdt::AddressError| Failure(EXIT_USAGE, e.to_string()))
}

/// A `--peer` URL, checked: `ws://HOST:PORT` or `wss://HOST:PORT`, or a usage error with the fix.
pub(crate) fn peer_url(url: &str) -> Result<&str, Failure> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Ok(url);
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    Err(Failure(EXIT_USAGE, format!("--peer {url}: not a websocket URL: use ws://{rest}")))
}

pub(crate) async fn backend(target: &Target, access: Access) -> Result<Backend, Failure> {
    match &target.peer {
        Some(url) => {
            let url = peer_url(url)?;
            let tls = crate::tls::client_tls(target.ca.as_deref())?;
            Backend::remote(url, &tls, target.secret_key()?.as_ref(), &target.read_caps()?).await
        }
        None => Backend::local(open_store(&target.store, access)?).await,
    }
}

pub(crate) async fn run(command: Top) -> Result<(), Failure> {
    match command {
        Top::Serve(_) => unreachable!("handled before the runtime starts"),
        Top::Value { .. } | Top::Key(_) => unreachable!("handled before the runtime starts"),
        Top::Ormap(cmd) => ormap(cmd).await,
        Top::Cdvcs(cmd) => cdvcs(cmd).await,
        Top::Lww(cmd) => lww(cmd).await,
        Top::Gset(cmd) => gset(cmd).await,
        Top::Watch { address, peer, ca, timeout, key, caps } => {
            let key = key
                .as_deref()
                .map(replikativ_peer::auth::SecretKey::read_file)
                .transpose()
                .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            let caps = caps.iter().map(|p| read_cap(p)).collect::<Result<Vec<_>, _>>()?;
            watch::watch(&address, &peer, ca.as_deref(), timeout, key, caps).await
        }
        Top::Subscribe { addresses, target } => {
            let addresses: BTreeSet<Address> =
                addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?;
            with_backend(target.into(), Access::Existing, move |b, t| {
                Box::pin(async move {
                    b.call(Command::Subscribe { addresses: addresses.clone() }).await?;
                    let names: Vec<String> = addresses.iter().map(Address::to_string).collect();
                    if t.json {
                        println!("{}", serde_json::json!({ "subscribed": names }));
                    } else {
                        for a in names {
                            println!("subscribed to {a}");
                        }
                    }
                    Ok(())
                })
            })
            .await
        }
        Top::Status { target } => {
            with_backend(target.into(), Access::ReadOnly, |b, t| Box::pin(async move { status(b, t).await }))
                .await
        }
        Top::Export { addresses, all, output, target } => {
            let addresses: BTreeSet<Address> = if all {
                BTreeSet::new()
            } else {
                addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?
            };
            with_backend(target.into(), Access::ReadOnly, move |b, _| {
                Box::pin(async move {
                    let Reply::Exported(exports) = b.call(Command::Export { addresses }).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply to export".into()));
                    };
                    crate::backup::write(&exports, output.as_deref())
                })
            })
            .await
        }
        Top::Import { file, target } => {
            let exports = crate::backup::read(&file)?;
            with_backend(target.into(), Access::Create, move |b, t| {
                Box::pin(async move {
                    for e in &exports {
                        b.call(Command::Import(Box::new(e.clone()))).await?;
                        if !t.json {
                            println!("imported {} ({:?}, {} values)", e.address, e.kind, e.values.len());
                        }
                    }
                    if t.json {
                        let names: Vec<String> = exports.iter().map(|e| e.address.to_string()).collect();
                        println!("{}", serde_json::json!({ "imported": names }));
                    }
                    Ok(())
                })
            })
            .await
        }
    }
}

/// A running peer's `GET path` body, by a plain HTTP GET to the port of its `ws://` URL (HTTPS
/// for `wss://`, verified with `tls`; bounded: 5 s, 4 MiB), if the answer is a 200 from the peer
/// `peer_id` (behind a load balancer another node may answer the HTTP request than the websocket:
/// its figures are not shown); else `None` (an older peer, or not this tool's node).
async fn peer_http_get(
    url: &str,
    path: &str,
    peer_id: &str,
    tls: &replikativ_peer::node::tls::ClientTls,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.split_once("://")?.1.split('/').next()?.to_owned();
    let fetch = async {
        let (mut tcp, _) = replikativ_peer::node::tls::connect_stream(url, tls).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        tcp.take(4 << 20).read_to_end(&mut reply).await.ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), fetch).await.ok()??;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let header = format!("{}: {peer_id}", replikativ_peer::node::http::PEER_ID_HEADER);
    let same_peer = head.lines().any(|l| l.eq_ignore_ascii_case(&header));
    (head.starts_with("HTTP/1.1 200") && same_peer).then(|| body.to_owned())
}

/// The node-wide counters `status` shows, from a running peer's `GET /metrics`, by name without
/// the `replikativ_` prefix and `_total` suffix.
async fn node_metrics(
    url: &str,
    peer_id: &str,
    tls: &replikativ_peer::node::tls::ClientTls,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let body = peer_http_get(url, "/metrics", peer_id, tls).await?;
    const SHOWN: &[&str] = &[
        "messages_received",
        "messages_sent",
        "publications_received",
        "publications_sent",
        "bytes_received",
        "bytes_sent",
        "fetches_received",
        "dropped_messages",
        "errors",
    ];
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some((name, value)) = line.strip_prefix("replikativ_").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let name = name.strip_suffix("_total").unwrap_or(name);
        if SHOWN.contains(&name)
            && let Ok(v) = value.parse::<u64>()
        {
            out.insert(name.to_owned(), v);
        }
    }
    Some(out)
}

/// Each open connection of a running peer with its counters (`GET /connections`).
async fn connection_metrics(
    url: &str,
    peer_id: &str,
    tls: &replikativ_peer::node::tls::ClientTls,
) -> Option<Vec<serde_json::Value>> {
    let body = peer_http_get(url, "/connections", peer_id, tls).await?;
    serde_json::from_str::<serde_json::Value>(&body).ok()?.as_array().cloned()
}

/// Prints the peer's status.
pub(crate) async fn status(b: &mut Backend, target: &Target) -> Result<(), Failure> {
    let Reply::Status(status) = b.call(Command::Status).await? else {
        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
    };
    let role = if status.extend { "server" } else { "client" };
    // The node-wide counters of its /metrics (a running peer only; a local store has none).
    let (traffic, per_connection) = match &target.peer {
        Some(url) => {
            let tls = crate::tls::client_tls(target.ca.as_deref())?;
            (
                node_metrics(url, &status.peer_id, &tls).await,
                connection_metrics(url, &status.peer_id, &tls).await,
            )
        }
        None => (None, None),
    };
    if target.json {
        let mut json = serde_json::to_value(&status).expect("encodes");
        if let Some(object) = json.as_object_mut() {
            // The same names as the text.
            object.remove("extend");
            object.insert("role".into(), serde_json::json!(role));
            if let Some(traffic) = &traffic {
                object.insert("traffic".into(), serde_json::json!(traffic));
            }
            if let Some(per_connection) = &per_connection {
                object.insert("connection_metrics".into(), serde_json::json!(per_connection));
            }
        }
        println!("{json}");
        return Ok(());
    }
    println!("peer id:       {}", status.peer_id);
    println!("role:          {role}");
    println!("listening on:  {}", status.listen.join(", "));
    match status.store_bytes {
        Some(bytes) => println!("store size:    {bytes} bytes"),
        None => println!("store size:    (in memory)"),
    }
    println!("connections:   {}", status.connections.join(", "));
    println!("subscriptions: {}", status.subscriptions.len());
    for a in &status.subscriptions {
        println!("  {a}");
    }
    println!("addresses:     {}", status.addresses);
    if let Some(per_connection) = &per_connection {
        println!("per connection (messages and bytes in / out, publications in / out, errors):");
        for c in per_connection {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let peer = c["peer_id"].as_str().map(|p| format!(" ({p})")).unwrap_or_default();
            println!(
                "  #{} {}{peer}: {} / {} messages, {} / {} bytes, {} / {} publications, {} errors",
                n("conn"),
                c["remote"].as_str().unwrap_or("?"),
                n("items_in"),
                n("items_out"),
                n("bytes_in"),
                n("bytes_out"),
                n("publications_in"),
                n("publications_out"),
                n("errors"),
            );
        }
    }
    if let Some(traffic) = &traffic {
        println!("traffic (all connections since the start):");
        for (name, value) in traffic {
            println!("  {name}: {value}");
        }
    } else if target.peer.is_some() {
        // No answer over HTTP, or one from another node (a load balancer in between).
        println!("traffic:       not shown (this peer's /metrics did not answer for it)");
    }
    let refused: u64 = status.refusals.values().sum();
    println!("refused:       {refused}");
    for (reason, n) in &status.refusals {
        println!("  {reason}: {n}");
    }
    if !status.recovery.is_empty() {
        println!("skipped at open (moved aside): {}", status.recovery.len());
        for q in &status.recovery {
            println!(
                "  {}: {} (now at {})",
                q.key,
                q.reason,
                q.moved_to.as_deref().unwrap_or("not moved: read-only")
            );
        }
    }
    Ok(())
}

/// A data command's work on an open backend.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + 'a>>;

/// Runs one data command: opens the backend, runs `f`, closes the backend whatever `f` returned.
pub(crate) async fn with_backend(
    target: Target,
    access: Access,
    f: impl for<'a> FnOnce(&'a mut Backend, &'a Target) -> Step<'a>,
) -> Result<(), Failure> {
    let mut b = backend(&target, access).await?;
    let result = f(&mut b, &target).await;
    let closed = b.close().await;
    // Neither --peer nor --store (nor REPLIKATIV_STORE): say which store was used (on stderr,
    // so that stdout stays the result). A failure to open it says so in its error instead.
    if target.peer.is_none()
        && target.store == DEFAULT_STORE
        && std::env::var_os("REPLIKATIV_STORE").is_none()
    {
        let dir = std::env::current_dir().map(|d| d.join("replikativ-data").display().to_string());
        eprintln!(
            "note: no --peer or --store given: used the store {DEFAULT_STORE} ({})",
            dir.unwrap_or_default()
        );
    }
    result.and(closed)
}

/// Runs a command that makes a commit on an existing address and prints its id.
pub(crate) async fn commit(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, Access::Existing, move |b, t| {
        Box::pin(async move {
            if let Reply::Commit(id) = b.call(cmd).await? {
                print_value(t, serde_json::json!({ "commit": id.to_string() }), &id.to_string());
            }
            Ok(())
        })
    })
    .await
}

/// Runs a command that creates `address` and prints it.
pub(crate) async fn made(
    target: Target,
    access: Access,
    address: Address,
    cmd: Command,
) -> Result<(), Failure> {
    with_backend(target, access, move |b, t| {
        Box::pin(async move {
            b.call(cmd).await?;
            print_value(t, serde_json::json!({ "address": address.to_string() }), &address.to_string());
            Ok(())
        })
    })
    .await
}

pub(crate) async fn create(kind: CrdtKind, c: Create) -> Result<(), Failure> {
    let address = Address::new(c.target.user()?, c.id.unwrap_or_else(uuid::Uuid::new_v4))
        .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
    let cmd = Command::Create { address: address.clone(), kind, author: c.target.user()? };
    made(c.target, Access::Create, address, cmd).await
}

pub(crate) fn print_value(target: &Target, json: serde_json::Value, text: &str) {
    if target.json { println!("{json}") } else { println!("{text}") }
}

/// Prints items as one JSON array, or one per line.
pub(crate) fn print_list(target: &Target, items: Vec<serde_json::Value>) {
    if target.json {
        println!("{}", serde_json::Value::Array(items));
    } else {
        for item in items {
            println!("{item}");
        }
    }
}

/// Prints commits as one JSON array, or one per line.
pub(crate) fn print_commits(target: &Target, commits: &[CommitValue]) {
    if target.json {
        println!("{}", serde_json::Value::Array(commits.iter().map(output::commit_json).collect()));
    } else {
        for c in commits {
            println!("{}", output::commit_line(c));
        }
    }
}

/// Runs a query on the node or store: only the answer is read (not the whole state).
pub(crate) async fn query(b: &mut Backend, address: &Address, query: Query) -> Result<Reply, Failure> {
    b.call_checked(Command::Query { address: address.clone(), query }).await.map_err(|e| match e {
        Ok(replikativ_peer::proto::StageError::WrongKind { address, expected, .. }) => {
            Failure(EXIT_DATA, format!("{address} does not hold {}", with_article(expected)))
        }
        Ok(other) => stage_failure(other),
        Err(failure) => failure,
    })
}

/// A datatype's name with its article ("an OR-Map", "a CDVCS").
pub(crate) fn with_article(kind: CrdtKind) -> &'static str {
    match kind {
        CrdtKind::Ormap => "an OR-Map",
        CrdtKind::Cdvcs => "a CDVCS",
        CrdtKind::Lww => "an LWW register",
        CrdtKind::Gset => "a G-Set",
    }
}

/// A command's error as one sentence, with a hint where one helps.
pub(crate) fn stage_failure(e: replikativ_peer::proto::StageError) -> Failure {
    use replikativ_peer::proto::StageError;
    let message = match &e {
        StageError::WrongKind { address, expected, found } => {
            format!("{address} holds {}, not {}", with_article(*found), with_article(*expected))
        }
        StageError::Op(replikativ_crdt::OpError::NotSuperset { .. }) => format!(
            "{e}: pass --allow-induced-conflict to pull anyway (the result then has several heads: merge them with 'replikativ cdvcs merge')"
        ),
        StageError::Op(replikativ_crdt::OpError::MultipleHeads { .. }) => {
            format!("{e} (merge them first: 'replikativ cdvcs merge ADDRESS')")
        }
        _ => e.to_string(),
    };
    Failure(EXIT_DATA, message)
}

pub(crate) fn unexpected(reply: &Reply) -> Failure {
    Failure(EXIT_DATA, format!("unexpected reply: {reply:?}").chars().take(200).collect())
}

pub(crate) async fn read_heads(b: &mut Backend, address: &Address) -> Result<Vec<ContentId>, Failure> {
    match query(b, address, Query::Heads).await? {
        Reply::Heads(h) => Ok(h.into_iter().collect()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn commits_of(
    b: &mut Backend,
    address: &Address,
    q: Query,
) -> Result<Vec<CommitValue>, Failure> {
    match query(b, address, q).await? {
        Reply::Commits(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn ormap(cmd: OrmapCmd) -> Result<(), Failure> {
    match cmd {
        OrmapCmd::Create(c) => create(CrdtKind::Ormap, c).await,
        OrmapCmd::Assoc { address, key, txs, target } => {
            let (address, key, txs) = (parse_address(&address)?, parse_key(&key), parse_txs(&txs)?);
            let author = target.user()?;
            commit(target, Command::Assoc { address, key, txs, author }).await
        }
        OrmapCmd::Put { address, key, txs, target } => {
            let (address, key, txs) = (parse_address(&address)?, parse_key(&key), parse_txs(&txs)?);
            let author = target.user()?;
            commit(target, Command::Put { address, key, txs, author }).await
        }
        OrmapCmd::Dissoc { address, key, revert, target } => {
            let address = parse_address(&address)?;
            let revert = match revert {
                Some(r) => parse_txs(&r)?,
                None => vec![],
            };
            let author = target.user()?;
            commit(target, Command::Dissoc { address, key: parse_key(&key), revert, author }).await
        }
        OrmapCmd::Get { address, key, target } => {
            let (address, key) = (parse_address(&address)?, parse_key(&key));
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::Get { key }).await?);
                    Ok(())
                })
            })
            .await
        }
        OrmapCmd::Keys { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Keys(keys) = query(b, &address, Query::Keys).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    print_list(t, keys.iter().map(output::json).collect());
                    Ok(())
                })
            })
            .await
        }
    }
}

/// An id or a prefix of one: 4 to 64 hex digits.
pub(crate) fn check_id_prefix(text: &str) -> Result<(), Failure> {
    if (4..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Failure(
            EXIT_USAGE,
            format!("{text:?} is not a commit id or a prefix of one (4 to 64 hex digits)"),
        ))
    }
}

/// The one id among `candidates` that starts with `prefix` (a full id or a unique prefix, as
/// `cdvcs log` prints them); an error naming the matches if there are several, or none.
pub(crate) fn resolve_prefix(
    prefix: &str,
    candidates: &[ContentId],
    what: &str,
) -> Result<ContentId, Failure> {
    let prefix = prefix.to_ascii_lowercase();
    let matches: Vec<&ContentId> = candidates.iter().filter(|c| c.to_string().starts_with(&prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(**one),
        [] => Err(Failure(EXIT_DATA, format!("no {what} starts with {prefix}"))),
        many => Err(Failure(
            EXIT_USAGE,
            format!(
                "{prefix} is ambiguous: {} {what}s start with it ({}); give more digits",
                many.len(),
                many.iter().map(|c| c.to_string()[..16].to_owned()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

pub(crate) async fn cdvcs(cmd: CdvcsCmd) -> Result<(), Failure> {
    match cmd {
        CdvcsCmd::Create(c) => create(CrdtKind::Cdvcs, c).await,
        CdvcsCmd::Commit { address, txs, target } => {
            let (address, txs) = (parse_address(&address)?, parse_txs(&txs)?);
            let author = target.user()?;
            commit(target, Command::Transact { address, txs, author }).await
        }
        CdvcsCmd::Log { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::History).await?);
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Heads { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let heads: Vec<String> =
                        read_heads(b, &address).await?.iter().map(ContentId::to_string).collect();
                    print_value(t, serde_json::json!(heads), &heads.join("\n"));
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Merge { address, heads, target } => {
            let address = parse_address(&address)?;
            for h in &heads {
                check_id_prefix(h)?;
            }
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    let current = read_heads(b, &address).await?;
                    let heads = if heads.is_empty() {
                        current
                    } else {
                        heads
                            .iter()
                            .map(|h| resolve_prefix(h, &current, "head"))
                            .collect::<Result<Vec<_>, _>>()?
                    };
                    let cmd = Command::Merge { address, heads, correcting: vec![], author: t.user()? };
                    if let Reply::Commit(id) = b.call(cmd).await? {
                        print_value(t, serde_json::json!({ "commit": id.to_string() }), &id.to_string());
                    }
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Pull { from, into, allow_induced_conflict, target } => {
            let (from, into) = (parse_address(&from)?, parse_address(&into)?);
            let cmd =
                Command::Pull { from: from.clone(), into: into.clone(), tip: None, allow_induced_conflict };
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    if let Reply::Commit(tip) = b.call(cmd).await? {
                        let json = serde_json::json!({ "from": from.to_string(), "into": into.to_string(), "tip": tip.to_string() });
                        print_value(t, json, &format!("pulled {from} into {into} up to {}", &tip.to_string()[..12]));
                    }
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Fork { from, target } => {
            let from = parse_address(&from)?;
            let into =
                Address::new(target.user()?, from.id).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            made(target, Access::Existing, into.clone(), Command::Fork { from, into }).await
        }
    }
}

pub(crate) async fn lww(cmd: LwwCmd) -> Result<(), Failure> {
    match cmd {
        LwwCmd::Create(c) => create(CrdtKind::Lww, c).await,
        LwwCmd::Set { address, value, target } => {
            let (address, value) = (parse_address(&address)?, parse_json(&value, "value")?);
            let shown = output::json(&value);
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    b.call(Command::LwwSet { address: address.clone(), value }).await?;
                    let json = serde_json::json!({ "address": address.to_string(), "value": shown });
                    print_value(t, json, &format!("{address} = {shown}"));
                    Ok(())
                })
            })
            .await
        }
        LwwCmd::Get { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Value(v) = query(b, &address, Query::Register).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    let j = output::json(&v);
                    print_value(t, j.clone(), &j.to_string());
                    Ok(())
                })
            })
            .await
        }
    }
}

pub(crate) async fn gset(cmd: GsetCmd) -> Result<(), Failure> {
    match cmd {
        GsetCmd::Create(c) => create(CrdtKind::Gset, c).await,
        GsetCmd::Add { address, value, target } => {
            let (address, element) = (parse_address(&address)?, parse_json(&value, "value")?);
            let shown = output::json(&element);
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    b.call(Command::GsetAdd { address: address.clone(), element }).await?;
                    let json = serde_json::json!({ "address": address.to_string(), "added": shown });
                    print_value(t, json, &format!("added {shown} to {address}"));
                    Ok(())
                })
            })
            .await
        }
        GsetCmd::List { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target.into(), Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    let Reply::Elements(elements) = query(b, &address, Query::Elements).await? else {
                        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
                    };
                    print_list(t, elements.iter().map(output::json).collect());
                    Ok(())
                })
            })
            .await
        }
    }
}
