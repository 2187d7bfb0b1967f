//! The original replikativ `replicate-test`, in our message names: a client peer and a server
//! peer connect; subscription, acknowledgement and back-subscription; then publications, with the
//! values travelling inline in one case and fetched (commit records, then their params) in the
//! other; each publication is acknowledged after the barrier. Unlike the original, the receiver
//! does not echo a publication back to the connection it came from (the origin has it).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_peer::proto::{
    AnyOp, Command, CrdtState, Direction, Input, Message, Output, Peer, PeerConfig, Subscribe, Summary,
};
use replikativ_store::{MemoryStore, Store};

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Two peers on one connection (conn 1 at the client, 2 at the server), delivering in order and
/// running every barrier as soon as it is asked for. Records every message sent.
struct Pair {
    peers: [Peer; 2],
    stores: [Arc<MemoryStore>; 2],
    queue: VecDeque<(usize, Input)>,
    log: Vec<(usize, Message)>,
    replies: Vec<Output>,
}

impl Pair {
    fn new(inline_limit: usize) -> Pair {
        let config = PeerConfig { anti_entropy: None, inline_limit, ..PeerConfig::default() };
        let stores = [Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())];
        let open = |i: usize, id: &str, extend: bool| {
            let store: Arc<dyn Store> = stores[i].clone();
            Peer::open(store, id, extend, ActorId::from_u128(i as u128 + 1), config.clone()).unwrap()
        };
        let peers = [open(CLIENT, "client", false), open(SERVER, "server", true)];
        Pair { peers, stores, queue: VecDeque::new(), log: Vec::new(), replies: Vec::new() }
    }

    fn input(&mut self, to: usize, input: Input) {
        self.queue.push_back((to, input));
        self.run();
    }

    fn run(&mut self) {
        while let Some((i, input)) = self.queue.pop_front() {
            let outputs = self.peers[i].handle(input, 1_000);
            for output in outputs {
                match output {
                    Output::Send { msg, .. } => {
                        let other = 1 - i;
                        let conn = if other == CLIENT { 1 } else { 2 };
                        self.log.push((i, msg.clone()));
                        self.queue.push_back((other, Input::Received { conn, frame: msg.encode() }));
                    }
                    Output::Barrier { epoch } => {
                        self.stores[i].sync().unwrap();
                        self.queue.push_back((i, Input::BarrierDone { epoch }));
                    }
                    other => self.replies.push(other),
                }
            }
        }
    }

    /// The messages sent since the last call, as `(sender, kind)`.
    fn take(&mut self) -> Vec<(usize, Message)> {
        std::mem::take(&mut self.log)
    }
}

fn kinds(log: &[(usize, Message)]) -> Vec<(&'static str, &'static str)> {
    log.iter().map(|(from, m)| (if *from == CLIENT { "client" } else { "server" }, m.kind())).collect()
}

/// A live batch's id, op and the number of values it carries inline (decoded as the receiver does).
fn live(m: &Message) -> (u64, AnyOp, usize) {
    let Message::Batch(b) = m else { panic!("not a batch: {m:?}") };
    assert!(b.live, "a live batch, not a catch-up part");
    let decoded = replikativ_peer::proto::batch::decode(&b.data).expect("the batch decodes");
    (b.id, decoded.op, decoded.values.len())
}

fn address() -> Address {
    Address::new("john", uuid::Uuid::from_u128(42)).unwrap()
}

fn connect_and_subscribe(pair: &mut Pair) {
    let x = address();
    pair.input(
        CLIENT,
        Input::Command { id: 43, cmd: Command::Subscribe { addresses: BTreeSet::from([x.clone()]) } },
    );
    // Both ends of the transport open before any frame travels.
    pair.queue.push_back((SERVER, Input::Connected { conn: 2, direction: Direction::Inbound }));
    pair.queue.push_back((CLIENT, Input::Connected { conn: 1, direction: Direction::Outbound }));
    pair.run();
    let log = pair.take();
    assert_eq!(
        kinds(&log),
        vec![
            ("server", "hello"),
            ("client", "hello"),
            // subscribe {john: 42} ...
            ("client", "subscribe"),
            ("client", "sync"),
            // ... the server takes it on and answers with its back-subscription, then the ack.
            ("server", "subscribe"),
            ("server", "sync"),
            ("server", "subscribe-ack"),
            ("client", "subscribe-ack"),
        ]
    );
    let Message::Subscribe(Subscribe { addresses, extend, .. }) = &log[2].1 else { panic!() };
    assert_eq!((addresses, *extend), (&BTreeSet::from([x.clone()]), false), "the client does not extend");
    let Message::Subscribe(Subscribe { addresses, extend, .. }) = &log[4].1 else { panic!() };
    assert_eq!((addresses, *extend), (&BTreeSet::from([x.clone()]), true), "the server extends");
    assert_eq!(log[3].1, Message::Summaries { summaries: vec![(x.clone(), Summary::Empty)], reply: false });
    assert!(pair.peers[SERVER].subscriptions().contains(&x), "the server took the subscription on");
}

/// Publishes on the client and returns the transcript of what followed.
fn publish(pair: &mut Pair, id: u64, cmd: Command) -> Vec<(usize, Message)> {
    pair.input(CLIENT, Input::Command { id, cmd });
    pair.take()
}

#[test]
fn replication_with_fetch() {
    // Nothing travels inline: the server fetches commit records, then their params.
    let mut pair = Pair::new(0);
    connect_and_subscribe(&mut pair);
    let x = address();

    let created = publish(
        &mut pair,
        1001,
        Command::Create { address: x.clone(), kind: CrdtKind::Cdvcs, author: "john".into() },
    );
    assert_eq!(
        kinds(&created),
        vec![
            ("client", "batch"),
            ("server", "fetch"), // the root commit
            ("client", "fetch-reply"),
            ("server", "publish-ack"),
            // (the original echoed the publication back here)
        ]
    );
    let (_, AnyOp::Cdvcs(op), values) = live(&created[0].1) else { panic!("a CDVCS op") };
    assert_eq!(values, 0, "nothing inline");
    let root = op.commits[0].id;
    assert_eq!(created[1].1, Message::Fetch { id: fetch_id(&created[1].1), ids: vec![root] });

    let committed = publish(
        &mut pair,
        1002,
        Command::Transact {
            address: x.clone(),
            txs: vec![Transaction::new("add", Value::map([("n", 1)]))],
            author: "john".into(),
        },
    );
    assert_eq!(
        kinds(&committed),
        vec![
            ("client", "batch"),
            ("server", "fetch"), // the new commit ...
            ("client", "fetch-reply"),
            ("server", "fetch"), // ... then its params
            ("client", "fetch-reply"),
            ("server", "publish-ack"),
        ]
    );
    let Message::Fetch { ids, .. } = &committed[3].1 else { panic!() };
    assert_eq!(ids, &vec![Value::map([("n", 1)]).content_id()]);
    assert_both_hold_everything(&pair, &x);
}

#[test]
fn replication_with_inline_values() {
    let mut pair = Pair::new(1 << 20);
    connect_and_subscribe(&mut pair);
    let x = address();
    let created = publish(
        &mut pair,
        1001,
        Command::Create { address: x.clone(), kind: CrdtKind::Cdvcs, author: "john".into() },
    );
    let expected = vec![("client", "batch"), ("server", "publish-ack")];
    assert_eq!(kinds(&created), expected);
    let committed = publish(
        &mut pair,
        1002,
        Command::Transact {
            address: x.clone(),
            txs: vec![Transaction::new("add", Value::map([("n", 1)]))],
            author: "john".into(),
        },
    );
    assert_eq!(kinds(&committed), expected, "commit and params travel with the publication: no fetch");
    let (_, _, values) = live(&committed[0].1);
    assert_eq!(values, 2, "the commit record and its params");
    assert_both_hold_everything(&pair, &x);
}

fn fetch_id(m: &Message) -> u64 {
    match m {
        Message::Fetch { id, .. } => *id,
        _ => panic!("not a fetch"),
    }
}

/// Both peers have the same CDVCS, and every commit record and params value it names.
fn assert_both_hold_everything(pair: &Pair, x: &Address) {
    let client = pair.peers[CLIENT].state(x).cloned();
    let server = pair.peers[SERVER].state(x).cloned();
    assert_eq!(client, server);
    let Some(CrdtState::Cdvcs(c)) = client else { panic!("a CDVCS") };
    assert_eq!(c.graph().len(), 2);
    for store in &pair.stores {
        for id in c.linearize() {
            let bytes = replikativ_peer::proto::persist::stored_value(store.as_ref(), &id)
                .unwrap()
                .expect("commit stored");
            let commit = replikativ_crdt::Commit::from_value(&Value::decode(&bytes).unwrap()).unwrap();
            for tx in commit.transactions {
                assert!(
                    replikativ_peer::proto::persist::stored_value(store.as_ref(), &tx.params)
                        .unwrap()
                        .is_some(),
                    "params stored"
                );
            }
        }
        assert!(store.get(b"peer/config").unwrap().is_some());
    }
    // Replies to the client's commands came after their barriers.
    assert!(pair.replies.iter().any(|o| matches!(o, Output::Reply { id: 1002, result: Ok(_) })));
}

impl Pair {
    /// Hands `inputs` to one peer as one batch (as the node does with what queued up meanwhile),
    /// then runs everything that follows one input at a time.
    fn batch(&mut self, to: usize, inputs: Vec<Input>) {
        let outputs = self.peers[to].handle_batch(inputs, 1_000);
        let mut synced = Vec::new();
        for output in outputs {
            match output {
                Output::Barrier { epoch } => {
                    self.stores[to].sync().unwrap();
                    synced.push((to, Input::BarrierDone { epoch }));
                }
                Output::Send { msg, .. } => {
                    let conn = if to == CLIENT { 2 } else { 1 };
                    self.log.push((to, msg.clone()));
                    self.queue.push_back((1 - to, Input::Received { conn, frame: msg.encode() }));
                }
                other => self.replies.push(other),
            }
        }
        self.queue.extend(synced);
        self.run();
    }
}

fn assoc(x: &Address, i: i64) -> Command {
    Command::Assoc {
        address: x.clone(),
        key: Value::from(format!("k{i}")),
        txs: vec![Transaction::new("set", i)],
        author: "john".into(),
    }
}

/// Connected and subscribed peers (values inline) and an OR-Map the client created, with the
/// transcript so far taken.
fn pair_with_ormap() -> (Pair, Address) {
    let mut pair = Pair::new(1 << 20);
    connect_and_subscribe(&mut pair);
    let x = address();
    let create = Command::Create { address: x.clone(), kind: CrdtKind::Ormap, author: "john".into() };
    publish(&mut pair, 1001, create);
    pair.take();
    (pair, x)
}

#[test]
fn ops_made_in_one_batch_travel_in_one_publication() {
    let (mut pair, x) = pair_with_ormap();

    let commands = (0..10).map(|i| Input::Command { id: 2000 + i as u64, cmd: assoc(&x, i) }).collect();
    pair.batch(CLIENT, commands);
    let log = pair.take();
    assert_eq!(kinds(&log), vec![("client", "batch"), ("server", "publish-ack")]);
    let (id, AnyOp::Ormap(op), values) = live(&log[0].1) else { panic!("an OR-Map op") };
    assert_eq!(op.adds.len(), 10, "the ten assocs in one op");
    assert_eq!(values, 20, "each commit record and its params inline");
    assert_eq!(log[1].1, Message::PublishAck { id });
    assert_eq!(pair.peers[CLIENT].state(&x), pair.peers[SERVER].state(&x));
    let Some(CrdtState::Ormap(m)) = pair.peers[SERVER].state(&x) else { panic!("an OR-Map") };
    assert_eq!(m.len(), 10);

    // CDVCS commits made in one batch travel as one op too, parents before children.
    let y = Address::new("john", uuid::Uuid::from_u128(43)).unwrap();
    pair.input(
        CLIENT,
        Input::Command {
            id: 3000,
            cmd: Command::Create { address: y.clone(), kind: CrdtKind::Cdvcs, author: "john".into() },
        },
    );
    pair.take();
    let commits = (0..5)
        .map(|i| Input::Command {
            id: 3001 + i as u64,
            cmd: Command::Transact {
                address: y.clone(),
                txs: vec![Transaction::new("add", i)],
                author: "john".into(),
            },
        })
        .collect();
    pair.batch(CLIENT, commits);
    let log = pair.take();
    assert_eq!(kinds(&log), vec![("client", "batch"), ("server", "publish-ack")]);
    let (_, AnyOp::Cdvcs(op), _) = live(&log[0].1) else { panic!("a CDVCS op") };
    assert_eq!(op.commits.len(), 5);
    assert_eq!(pair.peers[CLIENT].state(&y), pair.peers[SERVER].state(&y));
}

/// Live ops travel without ids: a thousand assocs made in one batch take a few bytes each on the
/// wire (the named publication of the same op took ~240), and the receiver rebuilds and verifies
/// every commit record from the columns.
#[test]
fn live_batches_carry_no_ids() {
    let (mut pair, x) = pair_with_ormap();
    let n = 1000;
    let commands = (0..n).map(|i| Input::Command { id: 5000 + i as u64, cmd: assoc(&x, i) }).collect();
    pair.batch(CLIENT, commands);
    let log = pair.take();
    assert_eq!(kinds(&log), vec![("client", "batch"), ("server", "publish-ack")]);
    let frame = log[0].1.encode();
    let per_op = frame.len() as f64 / n as f64;
    assert!(per_op < 16.0, "{per_op:.1} bytes per op in a live batch of {n}");
    let (_, AnyOp::Ormap(op), values) = live(&log[0].1) else { panic!("an OR-Map op") };
    assert_eq!((op.adds.len(), values), (n as usize, 2 * n as usize));
    // The server holds what the client made, ids and all.
    assert_eq!(pair.peers[CLIENT].state(&x), pair.peers[SERVER].state(&x));
    for e in &op.adds {
        let stored = replikativ_peer::proto::persist::stored_value(pair.stores[SERVER].as_ref(), &e.commit);
        let bytes = stored.unwrap().expect("the commit record is stored under its id");
        assert_eq!(replikativ_crdt::ContentId::hash_bytes(&bytes), e.commit);
    }
}

#[test]
fn publications_handled_in_one_batch_get_one_acknowledgement() {
    let (mut pair, x) = pair_with_ormap();

    // Three publications from the client, made one at a time, reach the server together.
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut out =
            pair.peers[CLIENT].handle(Input::Command { id: 4000 + i, cmd: assoc(&x, i as i64) }, 1_000);
        let Some(Output::Barrier { epoch }) =
            out.iter().find(|o| matches!(o, Output::Barrier { .. })).cloned()
        else {
            panic!("a barrier")
        };
        pair.stores[CLIENT].sync().unwrap();
        out = pair.peers[CLIENT].handle(Input::BarrierDone { epoch }, 1_000);
        for o in out {
            if let Output::Send { msg: msg @ Message::Batch(_), .. } = o {
                ids.push(live(&msg).0);
                frames.push(Input::Received { conn: 2, frame: msg.encode() });
            }
        }
    }
    assert_eq!(ids.len(), 3, "one publication per batch");
    pair.batch(SERVER, frames);
    let log = pair.take();
    assert_eq!(
        log.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        vec![Message::PublishAck { id: ids[2] }],
        "one acknowledgement, of the last publication (it covers the earlier ones)"
    );
    assert_eq!(pair.peers[CLIENT].state(&x), pair.peers[SERVER].state(&x));
}
