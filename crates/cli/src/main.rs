//! The `replikativ` command line: run peers, connect them, read and edit replicated data.

mod backend;
mod backup;
mod config;
mod data;
mod output;
mod serve;
mod stores;
mod tls;
mod usage;
mod watch;

use data::*;
use serve::*;
use stores::*;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use replikativ_crdt::{ActorId, Address, ContentId, CrdtKind, Transaction, Value, to_value};
use replikativ_peer::node::{Node, NodeConfig};
use replikativ_peer::proto::{Command, CommitValue, Query, Reply};
use replikativ_store::{FileStore, MemoryStore, SledStore, Store};

use backend::Backend;

/// The node allocates many small buffers per op; mimalloc runs the core about a quarter faster than
/// the system allocator on this workload (see docs/design.md, § Measured performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The port `serve` listens on unless told otherwise.
const DEFAULT_PORT: u16 = 31744;
/// Exit codes: 2 bad usage (also clap's), 3 a peer cannot be reached, 4 a store or data error.
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
pub(crate) const EXIT_DATA: u8 = 4;

/// A failure: exit code and one sentence.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

/// replikativ: CRDT peer-to-peer replication of OR-Maps, CDVCS, LWW registers and G-Sets.
///
/// Run a peer with `serve`; read and edit data with `ormap`, `cdvcs`, `lww` and `gset`, either on a
/// running peer (--peer ws://HOST:PORT, or wss://HOST:PORT with TLS) or directly on a local store no
/// peer holds (--store). Addresses are USER/UUID; values and transactions are JSON.
#[derive(Debug, Parser)]
#[command(name = "replikativ", version, about, long_about, after_help = concat!(
    "Examples:\n",
    "  replikativ serve --store file:./node-a                      # a peer on 127.0.0.1:31744\n",
    "  MAP=$(replikativ ormap create --peer ws://127.0.0.1:31744)\n",
    "  replikativ ormap assoc \"$MAP\" milk '[[\"add\", 2]]' --peer ws://127.0.0.1:31744\n",
    "  replikativ watch \"$MAP\" --peer ws://127.0.0.1:31744\n",
    "  replikativ status --peer wss://node.example.org:31744 --ca ca.pem      # over TLS\n",
    "\n",
    "`replikativ COMMAND --help` explains each command, with examples.\n",
    exit_codes!()
))]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Run a peer: listen for websocket connections, connect to other peers, replicate.
    ///
    /// The peer keeps its state in the store (an embedded file store in ./replikativ-data by
    /// default) and replicates every address it or its peers subscribe to. It accepts the data
    /// commands of this tool from its connections. Authentication is on by default: every
    /// connection proves a key, an address USER/UUID is written and read only by connections
    /// proving USER's key (see `replikativ key --help`); --auth off lets anyone read and write
    /// everything and is allowed only on a loopback address. With --tls-cert and --tls-key it
    /// speaks wss:// (and https://) instead of ws://; beyond loopback it refuses to listen without
    /// TLS unless --insecure-no-tls is given. Peers given with --connect may be down: the peer
    /// keeps trying with backoff. Logs go to stderr; --log-level or RUST_LOG sets the level. SIGINT (Ctrl-C) and
    /// SIGTERM shut down gracefully.
    Serve(Box<ServeArgs>),
    /// OR-Map: an observed-remove, multi-value map.
    #[command(subcommand)]
    Ormap(OrmapCmd),
    /// CDVCS: a git-like commit graph with heads, commit, merge, pull and fork.
    #[command(subcommand)]
    Cdvcs(CdvcsCmd),
    /// LWW register: the last write wins.
    #[command(subcommand)]
    Lww(LwwCmd),
    /// G-Set: a grow-only set.
    #[command(subcommand)]
    Gset(GsetCmd),
    /// Print an address's values, then each change, as JSON lines, live, until interrupted.
    ///
    /// First the catch-up: what the address holds, as lines {"address", "catch_up": [entries]}
    /// of at most 256 entries (about 64 KiB) each, closed by {"address", "catch_up_done":
    /// {"entries": N}}. Then one line per change as it arrives. Entries are resolved: an OR-Map
    /// entry is {"key", "value" (its transactions), "author", "commit"} (a removal has
    /// "removed": true), a CDVCS commit {"id", "author", "ts", "parents", "transactions"}, an LWW
    /// write {"value"}, a G-Set element {"element"} in the catch-up and {"added"} live. On a
    /// terminal, stderr counts the catch-up's changes; losing and regaining the peer is said on
    /// stderr (the connection is re-established by itself).
    #[command(after_help = concat!("Examples:\n  replikativ watch \"$MAP\" --peer ws://127.0.0.1:31745\n  replikativ watch \"$MAP\" --peer ws://127.0.0.1:31745 | jq -c 'select(.key)'\n\nStops on SIGINT or SIGTERM (exit 0). An address that has not arrived after --timeout is an error (4). ", exit_codes!()))]
    Watch {
        /// The address, USER/UUID.
        address: String,
        /// The running peer to watch through (ws://HOST:PORT or wss://HOST:PORT).
        #[arg(long, env = "REPLIKATIV_PEER", value_name = "URL")]
        peer: String,
        /// A PEM file of certificate authorities to trust for a wss:// peer, besides the public
        /// ones (e.g. a deployment's own CA, or the peer's self-signed certificate)
        #[arg(long, env = "REPLIKATIV_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// How long to wait for the address to arrive before saying it does not exist there.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// The key file to prove to a peer with authentication on (an address that is not
        /// public is readable only with its owner's key, or a read capability).
        #[arg(long, env = "REPLIKATIV_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// A read capability file (`replikativ key grant`) to present; repeatable.
        #[arg(long = "cap", value_name = "FILE")]
        caps: Vec<PathBuf>,
    },
    /// Subscribe a peer to addresses: their data then arrives from its connected peers.
    ///
    /// On a running peer (--peer), for as long as it runs and after restarts (subscriptions are
    /// stored); on a local store (--store), for the next `serve` of that store. What a --client
    /// peer needs before it replicates anything; `serve --subscribe` does the same at start.
    #[command(
        after_long_help = "Examples:\n  replikativ subscribe mail:alice@example.org/0b5c...-uuid --peer ws://127.0.0.1:31745\n  replikativ subscribe A B --store file:./node-b   # before `serve --store file:./node-b`\n\nExit codes: 0 subscribed, 2 bad usage or address, 3 the peer cannot be reached, 4 store error."
    )]
    Subscribe {
        /// The addresses, USER/UUID (one or more).
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// Write addresses (or --all) with their whole histories to a backup file, JSON lines.
    ///
    /// Line 1 names the format ({"format": "replikativ-export", "version": 1, "addresses": N}); then
    /// one line per address: {"address", "kind", "op" (hex of the state as a msgpack op), "values"
    /// {content id: hex of the canonical encoding}}: every commit record and params value the state
    /// names, under the id it hashes to, so the file can be checked by anyone and an import keeps
    /// every id, author and timestamp. At most 12 MiB per export (export fewer addresses at a time
    /// beyond that).
    #[command(after_help = concat!("Examples:
  replikativ export --all --peer ws://127.0.0.1:31744 -o backup.jsonl
  replikativ export \"$MAP\" --store file:./node-a > map.jsonl

", exit_codes!()))]
    Export {
        /// The addresses, USER/UUID.
        #[arg(value_name = "ADDRESS", required_unless_present = "all", conflicts_with = "all")]
        addresses: Vec<String>,
        /// Every address the peer holds.
        #[arg(long)]
        all: bool,
        /// Write to this file instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// Restore a backup written by `export` into a peer (running, or a store).
    ///
    /// Each address is checked like data from the network (values decode and hash to their ids,
    /// every record the state names is present, the datatype accepts the state), then merged into
    /// what the peer holds (a CRDT join: importing twice, or into a peer that has part of it, is
    /// harmless) and replicated to its peers. A file that fails a check imports nothing of that
    /// address and stops with exit 4. The store is created if there is none.
    #[command(after_help = concat!("Examples:
  replikativ import backup.jsonl --store file:./restored
  replikativ import - --peer ws://127.0.0.1:31744 < backup.jsonl

", exit_codes!()))]
    Import {
        /// The backup file ("-": stdin).
        file: String,
        #[command(flatten)]
        target: ReadTarget,
    },
    /// A peer's id, role, connections, subscriptions, store size, traffic and refusals.
    #[command(after_help = concat!("Examples:\n  replikativ status --peer ws://127.0.0.1:31744\n  replikativ status --store file:./node-a --json   # a store no peer holds\n\n", exit_codes!()))]
    Status {
        #[command(flatten)]
        target: ReadTarget,
    },
    /// Make and show user keys (ed25519): who this tool is to a node with authentication on.
    ///
    /// A user key is a self-certifying user id, `key:` and 52 base32 characters: the addresses of
    /// that user (key:.../UUID) may be written only by connections that prove the key. Data
    /// commands prove it with --key FILE (or REPLIKATIV_KEY), and make commits as its user unless
    /// --user says otherwise.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Show a JSON value's canonical encoding (hex) and its content id (blake3 of the encoding).
    ///
    /// JSON objects become maps, arrays lists, integers ints, other numbers floats.
    #[command(after_help = concat!("Examples:\n  replikativ value '{\"name\": \"Hal\"}'\n  replikativ value '\"a string\"'\n\n", exit_codes!()))]
    Value {
        /// The value as JSON, e.g. '{"name": "Hal"}'.
        #[arg(allow_negative_numbers = true)]
        json: String,
    },
}

fn main() -> ExitCode {
    // One rustls provider for the process (ring), before anything touches TLS.
    replikativ_peer::node::tls::install_default_provider();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed =
        Cli::command().try_get_matches_from(&args).and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // --help and --version: clap's own output, on stdout.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let (line, hint) = usage::render(&err, &Cli::command(), &args);
            eprintln!("{line}");
            eprintln!("{hint}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Top::Value { json } = &cli.command {
        return report(value_cmd(json));
    }
    if let Top::Key(cmd) = &cli.command {
        return report(key_cmd(cmd));
    }
    if let Top::Serve(args) = cli.command {
        let serve_matches = matches.subcommand_matches("serve").expect("the serve command was parsed");
        return report(serve_main(*args, serve_matches));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return report(Err(Failure(1, format!("cannot start the runtime: {e}")))),
    };
    report(runtime.block_on(run(cli.command)))
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Make a new key and write it to FILE (mode 0600; an existing file is never overwritten);
    /// prints its user id.
    #[command(after_help = concat!("Examples:\n  replikativ key gen ~/.alice.key\n  export REPLIKATIV_KEY=~/.alice.key\n  replikativ ormap create --peer ws://127.0.0.1:31744   # an address of key:...\n\n", exit_codes!()))]
    Gen {
        /// The key file to create.
        file: PathBuf,
    },
    /// Print the user id (key:...) of a key file.
    #[command(after_help = concat!("Examples:\n  replikativ key show ~/.alice.key\n\n", exit_codes!()))]
    Show {
        /// The key file.
        file: PathBuf,
    },
    /// Let another key read (with --write: also write) your addresses until a time: prints a
    /// capability (one line, `replikativ-cap:...`) signed by --key, for its holder's --cap FILE.
    ///
    /// Only the grantee's connections can use it (a node checks that the connection proved that
    /// key), so it is safe to send in the clear. It covers the --address given (repeatable; they
    /// must be addresses of the --key's user), or every address of that user without one.
    #[command(after_help = concat!("Examples:\n  replikativ key grant --key ~/.alice.key --to key:... --address \"$MAP\" --for 168h > bob.cap\n  replikativ ormap get \"$MAP\" milk --peer ws://127.0.0.1:31744 --key ~/.bob.key --cap bob.cap\n\n", exit_codes!()))]
    Grant {
        /// Your key file (the owner of the addresses).
        #[arg(long, env = "REPLIKATIV_KEY", value_name = "FILE")]
        key: PathBuf,
        /// The key that may read (key:...).
        #[arg(long, value_name = "KEY")]
        to: String,
        /// An address (USER/UUID) of yours it covers; repeatable [default: all of yours].
        #[arg(long = "address", value_name = "ADDRESS")]
        addresses: Vec<String>,
        /// For how long (e.g. 30m, 24h, 168h).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        valid_for: std::time::Duration,
        /// Let the key write the addresses too (several users editing one list).
        #[arg(long)]
        write: bool,
    },
}

fn key_cmd(cmd: &KeyCmd) -> Result<(), Failure> {
    use replikativ_peer::auth::SecretKey;
    match cmd {
        KeyCmd::Gen { file } => {
            let key = SecretKey::generate().map_err(|e| Failure(1, e.to_string()))?;
            key.write_file(file).map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
            println!("{}", key.public());
        }
        KeyCmd::Show { file } => {
            let key = SecretKey::read_file(file).map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
            println!("{}", key.public());
        }
        KeyCmd::Grant { key, to, addresses, valid_for, write } => {
            let owner = SecretKey::read_file(key).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            let grantee: replikativ_peer::auth::PublicKey = to
                .parse()
                .map_err(|e: replikativ_peer::auth::KeyError| Failure(EXIT_USAGE, format!("--to: {e}")))?;
            let mut set = std::collections::BTreeSet::new();
            for a in addresses {
                let a = parse_address(a)?;
                if a.user != owner.public().user_id() {
                    return Err(Failure(
                        EXIT_USAGE,
                        format!("--address {a}: not an address of the key's user {}", owner.public()),
                    ));
                }
                set.insert(a);
            }
            let now = replikativ_peer::auth::cap::wall_ms();
            let until = now.saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
            println!(
                "{}",
                replikativ_peer::auth::ReadCap::issue_with(&owner, grantee, set, until, *write).to_text()
            );
        }
    }
    Ok(())
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(std::time::Duration::from_secs(10)));
        assert_eq!(parse_duration("10m"), Ok(std::time::Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(std::time::Duration::from_secs(7200)));
        for bad in ["10", "s", "", "1.5s", "-1s", "10 s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_sled_store_that_may_not_be_written_is_refused_with_the_reason() {
        let denied = replikativ_store::StoreError::Io {
            op: "open lock file",
            path: "/data/LOCK".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let Failure(code, message) = open_failure("sled:/data", Access::ReadOnly, denied);
        assert_eq!(code, EXIT_DATA);
        assert!(
            message.starts_with("cannot read the sled store /data: sled 0.34 has no read-only mode"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1);
        // A write command gets the plain error.
        let denied = replikativ_store::StoreError::Io {
            op: "open lock file",
            path: "/data/LOCK".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let Failure(_, message) = open_failure("sled:/data", Access::Existing, denied);
        assert!(message.starts_with("cannot open the store sled:/data: I/O error"), "{message}");
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn id(first: u8, second: u8) -> ContentId {
        let mut bytes = [0u8; 32];
        bytes[0] = first;
        bytes[1] = second;
        ContentId::from_bytes(bytes)
    }

    #[test]
    fn a_unique_prefix_names_its_id_and_a_shared_one_is_ambiguous() {
        let ids = [id(0xab, 0xcd), id(0xab, 0xce), id(0x12, 0x34)];
        assert_eq!(resolve_prefix("1234", &ids, "head").unwrap(), ids[2]);
        assert_eq!(resolve_prefix("ABCD", &ids, "head").unwrap(), ids[0]);
        assert_eq!(resolve_prefix(&ids[1].to_string(), &ids, "head").unwrap(), ids[1]);
        let Failure(code, message) = resolve_prefix("abc", &ids, "head").unwrap_err();
        assert_eq!(code, EXIT_USAGE);
        assert!(message.contains("ambiguous") && message.contains("2 heads"), "{message}");
        let Failure(code, message) = resolve_prefix("ffff", &ids, "head").unwrap_err();
        assert_eq!(code, EXIT_DATA);
        assert!(message.contains("no head starts with ffff"), "{message}");
        assert!(check_id_prefix("abc").is_err(), "at least 4 digits");
        assert!(check_id_prefix("abcg").is_err(), "hex only");
        assert!(check_id_prefix("abcd").is_ok());
    }

    #[test]
    fn integers_beyond_64_bits_are_found_outside_strings_only() {
        assert_eq!(big_integer("18446744073709551616"), Some("18446744073709551616"));
        assert_eq!(big_integer("[1, {\"a\": -9223372036854775809}]"), Some("-9223372036854775809"));
        assert_eq!(big_integer("18446744073709551615"), None, "u64::MAX is exact");
        assert_eq!(big_integer("-9223372036854775808"), None, "i64::MIN is exact");
        assert_eq!(big_integer("\"18446744073709551616\""), None, "inside a string");
        assert_eq!(
            big_integer("\"a\\\"18446744073709551616\""),
            None,
            "an escaped quote does not end the string"
        );
        assert_eq!(big_integer("1e30"), None, "a float literal is a float");
        assert_eq!(big_integer("184467440737095516160.5"), None);
    }
}
