//! `replikativ watch`: the resolved changes of one address, one JSON object a line: first what
//! the address holds (the catch-up, in chunks), then every change as it arrives.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use replikativ_crdt::Hlc;
use replikativ_peer::proto::{AnyOp, CrdtState};
use replikativ_peer::stage::{ChangesError, Stage};

use super::*;

/// A catch-up line holds at most this many entries...
const CHUNK_ENTRIES: usize = 256;
/// ... and about this many bytes of JSON (one entry larger than this is a line of its own).
const CHUNK_BYTES: usize = 64 << 10;
/// The catch-up is taken as complete once no change arrived for this long.
const SETTLE: Duration = Duration::from_millis(300);
/// Commits resolved per request.
const RESOLVE_BATCH: usize = 256;
/// How often the connection to the peer is checked.
const LINK_CHECK: Duration = Duration::from_millis(250);

/// What has been printed, so that a change already shown in the catch-up is not shown again.
#[derive(Default)]
struct Shown {
    commits: BTreeSet<ContentId>,
    elements: BTreeSet<Value>,
    stamp: Option<Hlc>,
}

/// Collects catch-up entries into lines of bounded size.
struct Chunks<'a> {
    address: &'a str,
    entries: Vec<serde_json::Value>,
    bytes: usize,
    total: usize,
}

impl Chunks<'_> {
    fn push(&mut self, entry: serde_json::Value) {
        self.bytes += entry.to_string().len();
        self.entries.push(entry);
        self.total += 1;
        if self.entries.len() >= CHUNK_ENTRIES || self.bytes >= CHUNK_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.entries.is_empty() {
            let entries = std::mem::take(&mut self.entries);
            println!("{}", serde_json::json!({ "address": self.address, "catch_up": entries }));
            self.bytes = 0;
        }
    }
}

fn entry_json(key: &Value, c: &CommitValue) -> serde_json::Value {
    serde_json::json!({
        "key": output::json(key),
        "value": c.transactions.iter().map(|t| serde_json::json!([t.function, output::json(&t.params)])).collect::<Vec<_>>(),
        "author": c.author,
        "commit": c.id.to_string(),
    })
}

async fn resolve(stage: &Stage, ids: &[ContentId]) -> Result<Vec<CommitValue>, Failure> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(RESOLVE_BATCH) {
        out.extend(stage.commits(chunk).await.map_err(stage_failure)?);
    }
    Ok(out)
}

/// Prints what the address holds now as catch-up lines and a closing `catch_up_done` line.
async fn print_catch_up(stage: &Stage, address: &Address, shown: &mut Shown) -> Result<(), Failure> {
    let name = address.to_string();
    let mut chunks = Chunks { address: &name, entries: Vec::new(), bytes: 0, total: 0 };
    let state = stage.state(address).await.map_err(stage_failure)?;
    match state {
        Some(CrdtState::Ormap(map)) => {
            let keyed: Vec<(Value, ContentId)> =
                map.keys().flat_map(|k| map.get(k).into_iter().map(move |c| (k.clone(), c))).collect();
            for part in keyed.chunks(RESOLVE_BATCH) {
                let ids: Vec<ContentId> = part.iter().map(|(_, c)| *c).collect();
                for ((key, _), commit) in part.iter().zip(resolve(stage, &ids).await?) {
                    shown.commits.insert(commit.id);
                    chunks.push(entry_json(key, &commit));
                }
            }
        }
        Some(CrdtState::Cdvcs(_)) => {
            for commit in stage.log(address).await.map_err(stage_failure)? {
                shown.commits.insert(commit.id);
                chunks.push(output::commit_json(&commit));
            }
        }
        Some(CrdtState::Lww(register)) => {
            shown.stamp = register.stamp().copied();
            chunks.push(serde_json::json!({ "value": output::json(register.get()) }));
        }
        Some(CrdtState::Gset(set)) => {
            for element in set.elements() {
                shown.elements.insert(element.clone());
                chunks.push(serde_json::json!({ "element": output::json(element) }));
            }
        }
        _ => {}
    }
    chunks.flush();
    println!("{}", serde_json::json!({ "address": name, "catch_up_done": { "entries": chunks.total } }));
    Ok(())
}

/// Prints one live change (what of it was not shown yet).
async fn print_change(stage: &Stage, address: &Address, op: AnyOp, shown: &mut Shown) -> Result<(), Failure> {
    let name = address.to_string();
    let line = |mut j: serde_json::Value| {
        j.as_object_mut().expect("an object").insert("address".into(), serde_json::json!(name));
        println!("{j}");
    };
    match op {
        AnyOp::Ormap(op) => {
            let adds: Vec<_> = op.adds.into_iter().filter(|e| shown.commits.insert(e.commit)).collect();
            let ids: Vec<ContentId> = adds.iter().map(|e| e.commit).collect();
            for (entry, commit) in adds.iter().zip(resolve(stage, &ids).await?) {
                line(entry_json(&entry.key, &commit));
            }
            let removals: Vec<_> =
                op.removals.into_iter().filter(|e| shown.commits.insert(e.commit)).collect();
            let ids: Vec<ContentId> = removals.iter().map(|e| e.commit).collect();
            for (entry, commit) in removals.iter().zip(resolve(stage, &ids).await?) {
                line(serde_json::json!({
                    "key": output::json(&entry.key),
                    "removed": true,
                    "author": commit.author,
                    "commit": commit.id.to_string(),
                }));
            }
        }
        AnyOp::Cdvcs(op) => {
            let ids: Vec<ContentId> =
                op.commits.iter().map(|e| e.id).filter(|id| shown.commits.insert(*id)).collect();
            for commit in resolve(stage, &ids).await? {
                line(output::commit_json(&commit));
            }
        }
        AnyOp::Lww(op) => {
            if op.stamp.is_some() && op.stamp > shown.stamp {
                shown.stamp = op.stamp;
                line(serde_json::json!({ "value": output::json(&op.value) }));
            }
        }
        AnyOp::Gset(op) => {
            for element in op.elements {
                if shown.elements.insert(element.clone()) {
                    line(serde_json::json!({ "added": output::json(&element) }));
                }
            }
        }
    }
    Ok(())
}

/// Whether the stage's node has a live (hello-exchanged) connection to a remote peer.
async fn linked(stage: &Stage) -> bool {
    stage.node().status().await.is_ok_and(|s| {
        s.connections.iter().any(|(_, remote, id)| {
            matches!(remote, replikativ_peer::middleware::Remote::Peer(_)) && id.is_some()
        })
    })
}

pub(crate) async fn watch(
    address: &str,
    url: &str,
    ca: Option<&std::path::Path>,
    wait: Duration,
    key: Option<replikativ_peer::auth::SecretKey>,
    caps: Vec<replikativ_peer::auth::ReadCap>,
) -> Result<(), Failure> {
    let address = parse_address(address)?;
    let url = peer_url(url)?;
    let client_tls = crate::tls::client_tls(ca)?;
    let mut signals = Signals::install()?;
    // The watching node authenticates (proving --key, or only a fresh node key) to a peer with
    // authentication on, and links without it to one with it off.
    let node_key = replikativ_peer::auth::SecretKey::generate().map_err(|e| Failure(1, e.to_string()))?;
    let mut auth = replikativ_peer::node::NodeAuth::new(node_key);
    auth.user = key;
    auth.caps = caps;
    let config =
        NodeConfig { auth: Some(auth), extend: false, client_tls: Some(client_tls), ..NodeConfig::default() };
    let stage = Stage::builder(Arc::new(MemoryStore::new()))
        .config(config)
        .user("replikativ-watch")
        .spawn()
        .await
        .map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
    let result = run_watch(&stage, &address, url, wait, &mut signals).await;
    stage.shutdown().await;
    result
}

async fn run_watch(
    stage: &Stage,
    address: &Address,
    url: &str,
    wait: Duration,
    signals: &mut Signals,
) -> Result<(), Failure> {
    let mut changes = stage.changes(address);
    stage.subscribe([address.clone()]).await.map_err(stage_failure)?;
    stage.node().connect(url).await.map_err(|e| Failure(EXIT_UNREACHABLE, e.to_string()))?;
    // A count while the address catches up, only when a person is watching stderr.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("catching up {address}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    // The catch-up: changes arrive until the state is complete; it is taken as complete once
    // the address exists and nothing arrived for SETTLE (or after `wait` of steady changes).
    let started = Instant::now();
    let mut received = 0u64;
    loop {
        tokio::select! {
            event = tokio::time::timeout(SETTLE, changes.recv()) => match event {
                Ok(Ok(_)) | Ok(Err(ChangesError::Lagged(_))) => {
                    received += 1;
                    if let Some(bar) = &progress {
                        bar.set_message(format!("catching up {address}: {received} changes"));
                    }
                    if started.elapsed() > wait && stage.state(address).await.is_ok_and(|s| s.is_some()) {
                        break;
                    }
                }
                Ok(Err(e)) => return Err(Failure(EXIT_UNREACHABLE, e.to_string())),
                Err(_) => {
                    if stage.state(address).await.is_ok_and(|s| s.is_some()) {
                        break;
                    }
                    if started.elapsed() > wait {
                        if let Some(bar) = progress { bar.finish_and_clear(); }
                        return Err(Failure(EXIT_DATA, format!(
                            "no replicated datatype at {address} on {url} after {} s: it does not exist there (check the address), or that peer does not replicate it",
                            wait.as_secs()
                        )));
                    }
                }
            },
            _ = signals.recv() => {
                if let Some(bar) = progress { bar.finish_and_clear(); }
                return Ok(());
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut shown = Shown::default();
    print_catch_up(stage, address, &mut shown).await?;
    // Live: every change not shown yet; losing and regaining the peer is said on stderr.
    let mut link_check = tokio::time::interval(LINK_CHECK);
    let mut up = true;
    loop {
        tokio::select! {
            event = changes.recv() => match event {
                Ok(event) => print_change(stage, address, event.op, &mut shown).await?,
                Err(ChangesError::Lagged(n)) => {
                    eprintln!("warning: {n} changes were skipped (this terminal read too slowly); showing the state again");
                    print_catch_up(stage, address, &mut shown).await?;
                }
                Err(e) => return Err(Failure(EXIT_UNREACHABLE, e.to_string())),
            },
            _ = link_check.tick() => {
                let now = linked(stage).await;
                if up && !now {
                    eprintln!("disconnected from {url}: reconnecting");
                } else if !up && now {
                    eprintln!("reconnected to {url}");
                }
                up = now;
            }
            _ = signals.recv() => return Ok(()),
        }
    }
}
