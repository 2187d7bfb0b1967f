//! An application middleware in a few lines: an allow-list of users whose data a node accepts.
//!
//! Run it with `cargo run --example custom_middleware`. It starts two nodes on `127.0.0.1:0` with
//! in-memory stores and exits by itself:
//!
//! - the server (user bob) runs [`AllowList`] on every connection: a publication to an address whose
//!   user is not on the list is dropped before it reaches the protocol core, counted, and answered
//!   with a `Refused` message (the connection stays open);
//! - the client node has two stages, alice (on the list) and mallory (not on it); each creates an
//!   OR-Map and writes to it, and the server subscribes to both;
//! - alice's map replicates to the server, mallory's never does, and the client sees the refusals
//!   in its connection metrics.
//!
//! A middleware sees every item of a connection in both directions (`inbound` toward the core,
//! `outbound` toward the network) and can pass, drop, rewrite or inject items through [`Emit`]. It
//! is added with `Stage::builder(store).middleware(Arc::new(|conn, remote| Box::new(..)))`: the
//! factory builds one per connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use replikativ::crdt::{Transaction, Value};
use replikativ::peer::middleware::{Emit, Item, Middleware};
use replikativ::peer::proto::{Message, StageError};
use replikativ::peer::stage::Stage;
use replikativ::store::MemoryStore;

/// Drops publications to addresses of users not on the list, answering each with `Refused`.
#[derive(Debug)]
pub(crate) struct AllowList {
    /// Users whose addresses may be published to.
    pub(crate) users: Arc<BTreeSet<String>>,
    /// Publications dropped (shared by every connection's instance).
    pub(crate) rejected: Arc<AtomicU64>,
}

impl Middleware for AllowList {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            // `written` covers every kind of message that writes (publications and catch-up batches).
            Item::Message(m) if m.written().is_some_and(|(_, a)| !self.users.contains(&a.user)) => {
                let (id, address) = m.written().expect("checked");
                self.rejected.fetch_add(1, Ordering::Relaxed);
                let reason = format!("{} is not on this node's allow-list", address.user);
                emit.down(Item::Message(Message::Refused { id, reason }));
            }
            other => emit.up(other),
        }
    }
}

pub(crate) const ALICE: &str = "mail:alice@example.org";
pub(crate) const MALLORY: &str = "mail:mallory@example.org";

/// What the demo observed.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Alice's value as the server sees it.
    pub(crate) alice_on_server: Vec<Value>,
    /// Whether mallory's map reached the server.
    pub(crate) mallory_on_server: bool,
    /// Publications the server's allow-list dropped.
    pub(crate) rejected: u64,
    /// Refusals (and other errors) the client's connections received.
    pub(crate) client_errors: u64,
}

const STEP: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, f).await.map_err(|_| format!("timed out: {what}"))
}

/// Runs the two nodes, shows the middleware acting, and shuts them down.
pub(crate) async fn demo() -> Result<Outcome, Box<dyn std::error::Error>> {
    let rejected = Arc::new(AtomicU64::new(0));
    let users = Arc::new(BTreeSet::from([ALICE.to_owned(), "mail:bob@example.org".to_owned()]));
    let (u, r) = (users.clone(), rejected.clone());
    let server = Stage::builder(Arc::new(MemoryStore::new()))
        .user("mail:bob@example.org")
        .middleware(Arc::new(move |_conn, _remote| {
            Box::new(AllowList { users: u.clone(), rejected: r.clone() })
        }))
        .spawn()
        .await?;
    let addr = bounded("listen", server.node().listen("127.0.0.1:0")).await??;

    let alice = Stage::builder(Arc::new(MemoryStore::new())).user(ALICE).spawn().await?;
    let mallory = Stage::attach(alice.node().clone(), MALLORY).await?;
    let alice_map = bounded("create", alice.create_ormap(None)).await??;
    let mallory_map = bounded("create", mallory.create_ormap(None)).await??;
    bounded("subscribe", server.subscribe([alice_map.clone(), mallory_map.clone()])).await??;
    bounded("connect", alice.node().connect(&format!("ws://{addr}"))).await??;
    println!("server on {addr}; allow-list: {users:?}");

    bounded("assoc", mallory.assoc(&mallory_map, "spam".into(), vec![Transaction::new("set", 1)])).await??;
    bounded("assoc", alice.assoc(&alice_map, "milk".into(), vec![Transaction::new("add", 2)])).await??;
    println!("alice wrote milk=2 to {alice_map}; mallory wrote spam=1 to {mallory_map}");

    let alice_on_server = bounded("alice's value reaches the server", async {
        loop {
            if let Ok(v) = server.get(&alice_map, &"milk".into()).await
                && !v.is_empty()
                && rejected.load(Ordering::Relaxed) > 0
            {
                return v.into_iter().map(|c| c.transactions[0].params.clone()).collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let mallory_on_server = match bounded("read", server.ormap(&mallory_map)).await? {
        Ok(_) => true,
        Err(StageError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let rejected = rejected.load(Ordering::Relaxed);
    let client_errors = alice.node().metrics().values().map(|m| m.errors).sum();
    println!("server sees alice's milk = {alice_on_server:?}");
    println!("server has mallory's map: {mallory_on_server}");
    println!(
        "publications dropped by the allow-list: {rejected}; refusals the client received: {client_errors}"
    );

    bounded("shutdown", alice.shutdown()).await?;
    bounded("shutdown", server.shutdown()).await?;
    Ok(Outcome { alice_on_server, mallory_on_server, rejected, client_errors })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let outcome = demo().await?;
    assert_eq!(outcome.alice_on_server, vec![Value::from(2)]);
    assert!(!outcome.mallory_on_server && outcome.rejected > 0 && outcome.client_errors > 0);
    println!("done");
    Ok(())
}
