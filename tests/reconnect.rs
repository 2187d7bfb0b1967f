//! A connection dropped mid-stream re-establishes itself and the replicas converge: a TCP proxy
//! sits between a client and a server node; while both sides keep writing, the proxy cuts the link
//! (aborting its forwarding tasks) and refuses new connections for a while. The client node
//! reconnects with backoff by itself (through the proxy, whose listener stays), gets a new
//! connection id, and every acknowledged write ends up on both sides.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, bounded, eventually, peer_conns, spawn_peer};
use replikativ::crdt::{Address, ContentId, Transaction, Value};
use replikativ::peer::stage::Stage;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP forwarder to `upstream` that can cut its links and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refuse: Arc<AtomicBool>,
    /// Links forwarded (accepted while not refusing).
    forwarded: Arc<AtomicUsize>,
    /// Connections refused.
    refused: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = bounded("bind", TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (l, r, f, rf) = (links.clone(), refuse.clone(), forwarded.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    rf.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                f.fetch_add(1, Ordering::SeqCst);
                l.lock().unwrap().push(tokio::spawn(async move {
                    let Ok(Ok(mut outbound)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
                    else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Proxy { addr, links, refuse, forwarded, refused, accept }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every live link (both TCP connections of each) at once.
    fn cut(&self) -> usize {
        let links: Vec<_> = std::mem::take(&mut *self.links.lock().unwrap());
        let live = links.iter().filter(|l| !l.is_finished()).count();
        links.iter().for_each(JoinHandle::abort);
        live
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Keeps assoc'ing `{prefix}-{i}` every few milliseconds until `stop`; returns what was
/// acknowledged.
fn writer(
    stage: Stage,
    map: Address,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(Value, ContentId)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let key = Value::from(format!("{prefix}-{i}"));
            let id = bounded("assoc", stage.assoc(&map, key.clone(), vec![Transaction::new("set", i)]))
                .await
                .expect("a local write is acknowledged while disconnected, too");
            acked.push((key, id));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    })
}

async fn write_some(stage: &Stage, map: &Address, prefix: &str, n: usize) -> Vec<(Value, ContentId)> {
    let mut acked = Vec::new();
    for i in 0..n {
        let key = Value::from(format!("{prefix}-{i}"));
        let id = bounded("assoc", stage.assoc(map, key.clone(), vec![Transaction::new("set", i as i64)]))
            .await
            .unwrap();
        acked.push((key, id));
    }
    acked
}

async fn has_all(stage: &Stage, map: &Address, acked: &[(Value, ContentId)]) -> bool {
    let Ok(m) = stage.ormap(map).await else { return false };
    acked.iter().all(|(k, id)| m.get(k).contains(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_reconnects_and_converges() {
    let server = spawn_peer("server", Backend::File).await;
    let client = spawn_peer("client", Backend::File).await;
    let proxy = Proxy::start(server.addr).await;
    let map = bounded("create", server.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", client.stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", client.stage.node().connect(&proxy.url())).await.expect("connects through the proxy");
    let server_id = server.stage.node().peer_id().to_owned();

    // Before: both sides write and replicate.
    let mut acked = write_some(&server.stage, &map, "server-before", 20).await;
    acked.extend(write_some(&client.stage, &map, "client-before", 20).await);
    for p in [&server, &client] {
        eventually("both sides have the writes made before the drop", || has_all(&p.stage, &map, &acked))
            .await;
    }
    let before = peer_conns(&client).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1.as_deref(), Some(server_id.as_str()));
    let old_conn = before[0].0;
    let old_server_side = peer_conns(&server).await;
    assert_eq!(old_server_side.len(), 1, "{old_server_side:?}");

    // During: both sides keep writing while the link is cut and reconnects are refused.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(server.stage.clone(), map.clone(), "server-during", stop.clone()),
        writer(client.stage.clone(), map.clone(), "client-during", stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.refuse.store(true, Ordering::SeqCst);
    assert_eq!(proxy.cut(), 1, "one live link is cut mid-stream");
    let mut saw_disconnected = false;
    for _ in 0..50 {
        if peer_conns(&client).await.is_empty() {
            saw_disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_disconnected, "the client noticed the dropped connection");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(peer_conns(&client).await.is_empty(), "no connection while the proxy refuses");
    proxy.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        acked.extend(bounded("writer", w).await.unwrap());
    }
    assert!(proxy.refused.load(Ordering::SeqCst) >= 1, "the client retried while refused");

    // The client reconnects by itself, on a new connection.
    eventually("the client reconnects on a new connection", || async {
        let conns = peer_conns(&client).await;
        conns.len() == 1 && conns[0].0 != old_conn && conns[0].1.as_deref() == Some(server_id.as_str())
    })
    .await;
    assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 2, "exactly one reconnect went through the proxy");
    let server_side = peer_conns(&server).await;
    assert!(server_side.len() == 1 && server_side[0].0 != old_server_side[0].0, "{server_side:?}");

    // After: more writes on both sides.
    acked.extend(write_some(&server.stage, &map, "server-after", 20).await);
    acked.extend(write_some(&client.stage, &map, "client-after", 20).await);

    let keys: BTreeSet<&Value> = acked.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), acked.len(), "every write has its own key");
    for prefix in ["server-during", "client-during"] {
        let n = acked.iter().filter(|(k, _)| k.as_str().is_some_and(|s| s.starts_with(prefix))).count();
        assert!(n >= 20, "{prefix}: only {n} writes while the link was down");
    }
    for p in [&server, &client] {
        eventually("every acknowledged write is on both sides", || has_all(&p.stage, &map, &acked)).await;
    }
    eventually("both replicas are equal", || async {
        matches!((server.stage.ormap(&map).await, client.stage.ormap(&map).await), (Ok(a), Ok(b)) if a == b)
    })
    .await;
    let m = bounded("read", client.stage.ormap(&map)).await.unwrap();
    assert_eq!(m.len(), acked.len(), "nothing but the acknowledged writes");
    bounded("shutdown", client.stage.shutdown()).await;
    bounded("shutdown", server.stage.shutdown()).await;
}

/// `Node::disconnect` closes the link at once, on both sides, and it stays closed: no reconnect,
/// and nothing the link's tasks would still send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_the_link_and_does_not_reconnect() {
    let server = spawn_peer("server", Backend::Memory).await;
    let client = spawn_peer("client", Backend::Memory).await;
    bounded("connect", client.stage.node().connect(&server.url())).await.expect("connects");
    eventually("both see the link", || async {
        peer_conns(&client).await.len() == 1 && peer_conns(&server).await.len() == 1
    })
    .await;
    assert!(client.stage.node().disconnect(&server.url()), "it was connected");
    common::eventually_within("the link is gone on both sides", Duration::from_secs(3), || async {
        peer_conns(&client).await.is_empty() && peer_conns(&server).await.is_empty()
    })
    .await;
    // It stays gone (the supervisor does not dial again).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(peer_conns(&server).await.is_empty(), "the client reconnected after disconnect");
    assert!(!client.stage.node().disconnect(&server.url()), "nothing left to disconnect");
    // A link that ends without a closing handshake is a lost connection, not a bad frame.
    let refused = bounded("status", server.stage.node().status()).await.unwrap().refusals;
    assert_eq!(refused.get(replikativ::peer::proto::Refusal::BadWebsocketFrame), 0, "{refused:?}");
}
