//! The data commands (`ormap`, `cdvcs`, `lww`, `gset`, `watch`, `status`, `value`): their
//! arguments, parsing, and running them on a backend.

use std::collections::BTreeSet;

use super::*;

/// Where a data command runs.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// A running peer to work on (ws://HOST:PORT). Without it, the command opens --store itself.
    #[arg(long, global = true)]
    pub(crate) peer: Option<String>,
    /// The store to open when there is no --peer (it must not be held by a running peer). Only the
    /// create commands make a new store; reads open it read-only.
    #[arg(long, global = true, default_value = "file:./replikativ-data")]
    pub(crate) store: String,
    /// The user commits are made as (the owner of new addresses).
    #[arg(long, global = true, env = "REPLIKATIV_USER", default_value = "mail:cli@localhost")]
    pub(crate) user: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OrmapCmd {
    /// Create an OR-Map; prints its address.
    Create(Create),
    /// Add a value under a key: TXS is a JSON list of [function, params] pairs.
    Assoc {
        address: String,
        key: String,
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove every value of a key, recording revert transactions (JSON, default []).
    Dissoc {
        address: String,
        key: String,
        revert: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The live values of a key (several when edited concurrently).
    Get {
        address: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// The keys with live values.
    Keys {
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CdvcsCmd {
    /// Create a CDVCS; prints its address.
    Create(Create),
    /// Commit transactions (JSON list of [function, params] pairs) on the single head.
    Commit {
        address: String,
        txs: String,
        #[command(flatten)]
        target: Target,
    },
    /// The linearized history (the same order on every replica).
    Log {
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// The heads (several after concurrent commits).
    Heads {
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// Merge the heads (in the given order, default: all heads sorted).
    Merge {
        address: String,
        heads: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pull FROM into INTO (a fast-forward unless --allow-induced-conflict).
    Pull {
        from: String,
        into: String,
        #[arg(long)]
        allow_induced_conflict: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Fork FROM to the --user (same id); prints the new address.
    Fork {
        from: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LwwCmd {
    /// Create an LWW register; prints its address.
    Create(Create),
    /// Write a JSON value.
    Set {
        address: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The current value.
    Get {
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GsetCmd {
    /// Create a G-Set; prints its address.
    Create(Create),
    /// Add a JSON value.
    Add {
        address: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// The elements.
    List {
        address: String,
        #[command(flatten)]
        target: Target,
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
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Failure(EXIT_USAGE, format!("the {what} is not valid JSON: {e}")))?;
    to_value(&parsed).map_err(|e| Failure(EXIT_USAGE, format!("the {what} is not a value: {e}")))
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
        Some([Value::String(_), _]) => Ok(vec![pair(&value)?]),
        Some(items) => items.iter().map(pair).collect(),
        None => Err(bad()),
    }
}

pub(crate) fn parse_address(text: &str) -> Result<Address, Failure> {
    text.parse().map_err(|e: replikativ_crdt::AddressError| Failure(EXIT_USAGE, e.to_string()))
}

pub(crate) async fn backend(target: &Target, access: Access) -> Result<Backend, Failure> {
    match &target.peer {
        Some(url) => Backend::remote(url).await,
        None => Backend::local(open_store(&target.store, access)?).await,
    }
}

pub(crate) async fn run(command: Top) -> Result<(), Failure> {
    match command {
        Top::Serve(_) => unreachable!("handled before the runtime starts"),
        Top::Value { .. } => unreachable!("handled before the runtime starts"),
        Top::Ormap(cmd) => ormap(cmd).await,
        Top::Cdvcs(cmd) => cdvcs(cmd).await,
        Top::Lww(cmd) => lww(cmd).await,
        Top::Gset(cmd) => gset(cmd).await,
        Top::Watch { address, target } => watch(&address, &target).await,
        Top::Subscribe { addresses, target } => {
            let addresses: BTreeSet<Address> =
                addresses.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?;
            with_backend(target, Access::Existing, move |b, t| {
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
            with_backend(target, Access::ReadOnly, |b, t| Box::pin(async move { status(b, t).await })).await
        }
    }
}

/// Prints the peer's status.
pub(crate) async fn status(b: &mut Backend, target: &Target) -> Result<(), Failure> {
    let Reply::Status(status) = b.call(Command::Status).await? else {
        return Err(Failure(EXIT_DATA, "unexpected reply".into()));
    };
    if target.json {
        println!("{}", serde_json::to_string(&status).expect("encodes"));
        return Ok(());
    }
    println!("peer id:       {}", status.peer_id);
    println!("role:          {}", if status.extend { "server" } else { "client" });
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
    result.and(closed)
}

/// Runs a command that needs no output but success (an edit of an existing address).
pub(crate) async fn call(target: Target, cmd: Command) -> Result<(), Failure> {
    with_backend(target, Access::Existing, move |b, _| Box::pin(async move { b.call(cmd).await.map(|_| ()) }))
        .await
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
    let address = Address::new(c.target.user.clone(), c.id.unwrap_or_else(uuid::Uuid::new_v4))
        .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
    let cmd = Command::Create { address: address.clone(), kind, author: c.target.user.clone() };
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
            Failure(EXIT_DATA, format!("{address} does not hold a {expected}"))
        }
        Ok(other) => Failure(EXIT_DATA, other.to_string()),
        Err(failure) => failure,
    })
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
            let author = target.user.clone();
            commit(target, Command::Assoc { address, key, txs, author }).await
        }
        OrmapCmd::Dissoc { address, key, revert, target } => {
            let address = parse_address(&address)?;
            let revert = match revert {
                Some(r) => parse_txs(&r)?,
                None => vec![],
            };
            let author = target.user.clone();
            call(target, Command::Dissoc { address, key: parse_key(&key), revert, author }).await
        }
        OrmapCmd::Get { address, key, target } => {
            let (address, key) = (parse_address(&address)?, parse_key(&key));
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::Get { key }).await?);
                    Ok(())
                })
            })
            .await
        }
        OrmapCmd::Keys { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
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

pub(crate) fn parse_id(text: &str) -> Result<ContentId, Failure> {
    text.parse().map_err(|e: replikativ_crdt::hash::ParseContentIdError| Failure(EXIT_USAGE, e.to_string()))
}

pub(crate) async fn cdvcs(cmd: CdvcsCmd) -> Result<(), Failure> {
    match cmd {
        CdvcsCmd::Create(c) => create(CrdtKind::Cdvcs, c).await,
        CdvcsCmd::Commit { address, txs, target } => {
            let (address, txs) = (parse_address(&address)?, parse_txs(&txs)?);
            let author = target.user.clone();
            commit(target, Command::Transact { address, txs, author }).await
        }
        CdvcsCmd::Log { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
                Box::pin(async move {
                    print_commits(t, &commits_of(b, &address, Query::History).await?);
                    Ok(())
                })
            })
            .await
        }
        CdvcsCmd::Heads { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
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
            let given = heads.iter().map(|h| parse_id(h)).collect::<Result<Vec<_>, _>>()?;
            with_backend(target, Access::Existing, move |b, t| {
                Box::pin(async move {
                    let heads = if given.is_empty() { read_heads(b, &address).await? } else { given };
                    let cmd = Command::Merge { address, heads, correcting: vec![], author: t.user.clone() };
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
            call(target, Command::Pull { from, into, tip: None, allow_induced_conflict }).await
        }
        CdvcsCmd::Fork { from, target } => {
            let from = parse_address(&from)?;
            let into =
                Address::new(target.user.clone(), from.id).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            made(target, Access::Existing, into.clone(), Command::Fork { from, into }).await
        }
    }
}

pub(crate) async fn lww(cmd: LwwCmd) -> Result<(), Failure> {
    match cmd {
        LwwCmd::Create(c) => create(CrdtKind::Lww, c).await,
        LwwCmd::Set { address, value, target } => {
            let (address, value) = (parse_address(&address)?, parse_json(&value, "value")?);
            call(target, Command::LwwSet { address, value }).await
        }
        LwwCmd::Get { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
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
            call(target, Command::GsetAdd { address, element }).await
        }
        GsetCmd::List { address, target } => {
            let address = parse_address(&address)?;
            with_backend(target, Access::ReadOnly, move |b, t| {
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

/// Watches through a client peer of its own (memory store) connected to `--peer`: every change of
/// the address that reaches it is printed as one JSON line.
pub(crate) async fn watch(address: &str, target: &Target) -> Result<(), Failure> {
    let address = parse_address(address)?;
    let url =
        target.peer.clone().ok_or_else(|| Failure(EXIT_USAGE, "watch needs --peer ws://HOST:PORT".into()))?;
    let mut signals = Signals::install()?;
    let stage = replikativ_peer::stage::Stage::builder(Arc::new(MemoryStore::new()))
        .user(target.user.clone())
        .extend(false)
        .spawn()
        .await
        .map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
    let mut changes = stage.changes(&address);
    stage.subscribe([address.clone()]).await.map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
    stage.node().connect(&url).await.map_err(|e| Failure(EXIT_UNREACHABLE, e.to_string()))?;
    // A spinner while the address catches up, only when a person is watching stderr.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("catching up {address}"));
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    let mut progress = progress;
    loop {
        tokio::select! {
            event = changes.recv() => match event {
                Ok(event) => {
                    if let Some(bar) = progress.take() {
                        bar.finish_and_clear();
                    }
                    let op = serde_json::to_value(&event.op).unwrap_or_else(|_| serde_json::json!(format!("{:?}", event.op)));
                    println!("{}", serde_json::json!({ "address": event.address.to_string(), "op": op }));
                }
                Err(replikativ_peer::stage::ChangesError::Lagged(n)) => {
                    eprintln!("warning: {n} changes were skipped");
                }
                Err(e) => return Err(Failure(EXIT_UNREACHABLE, e.to_string())),
            },
            _ = signals.recv() => break,
        }
    }
    stage.shutdown().await;
    Ok(())
}
