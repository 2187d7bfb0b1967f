//! States larger than one store value: snapshots are written in chunks and survive a reopen, on
//! sled (values of at most 64 KiB) and on the file store. An op too large for one log entry is
//! stored as a snapshot instead.

use std::collections::BTreeSet;
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_peer::proto::{Command, CrdtState, Input, Output, Peer, PeerConfig};
use replikativ_store::{FileStore, SledStore, Store};

fn address() -> Address {
    Address::new("mail:big@example.org", uuid::Uuid::from_u128(7)).unwrap()
}

/// Runs `inputs` as one batch and every barrier it asks for; returns the other outputs.
fn run_outputs(peer: &mut Peer, store: &Arc<dyn Store>, inputs: Vec<Input>) -> Vec<Output> {
    let mut pending = inputs;
    let mut outputs = Vec::new();
    while !pending.is_empty() {
        for output in peer.handle_batch(std::mem::take(&mut pending), 1_000) {
            match output {
                Output::Barrier { epoch } => {
                    store.sync().unwrap();
                    pending.push(Input::BarrierDone { epoch });
                }
                other => outputs.push(other),
            }
        }
    }
    outputs
}

/// [`run_outputs`], panicking on a failed command.
fn run(peer: &mut Peer, store: &Arc<dyn Store>, inputs: Vec<Input>) {
    for output in run_outputs(peer, store, inputs) {
        if let Output::Reply { result, .. } = output {
            result.expect("the command succeeds");
        }
    }
}

/// A peer on `store` that has created the OR-Map at [`address`].
fn peer_with_map(store: &Arc<dyn Store>) -> Peer {
    let mut peer =
        Peer::open(store.clone(), "p", true, ActorId::from_u128(1), PeerConfig::default()).unwrap();
    let create = Command::Create { address: address(), kind: CrdtKind::Ormap, author: "a".into() };
    run(&mut peer, store, vec![Input::Command { id: 1, cmd: create }]);
    peer
}

/// Assocs `keys` keys of 100 bytes in batches of 32, checks the chunks on disk, reopens.
fn fill_and_reopen(open: impl Fn() -> Arc<dyn Store>, keys: u32, chunked: bool) {
    let x = address();
    let store = open();
    let mut peer = peer_with_map(&store);
    for chunk in (0..keys).collect::<Vec<u32>>().chunks(32) {
        let inputs = chunk.iter().map(|i| Input::Command { id: 2 + *i as u64, cmd: assoc(&x, *i) }).collect();
        run(&mut peer, &store, inputs);
    }
    let before = peer.state(&x).cloned().unwrap();
    let CrdtState::Ormap(m) = &before else { panic!() };
    assert_eq!(m.len(), keys as usize);
    // Chunks (`s/`, uuid, user length and user, then the generation) of one generation only: the
    // older snapshots' chunks were deleted.
    let prefix_len = 2 + 16 + 2 + x.user.len();
    let generations: BTreeSet<Vec<u8>> = store
        .scan_prefix(b"s/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k[prefix_len..prefix_len + 8].to_vec())
        .collect();
    assert_eq!(generations.len(), usize::from(chunked), "chunk generations: {generations:?}");
    // A chunk no record names (as a crash between writing chunks and their record leaves one).
    let mut orphan = store.scan_prefix(b"s/").unwrap().first().map(|(k, _)| k.clone()).unwrap_or_else(|| {
        let mut k = b"s/".to_vec();
        k.extend_from_slice(x.id.as_bytes());
        k.extend_from_slice(&(x.user.len() as u16).to_be_bytes());
        k.extend_from_slice(x.user.as_bytes());
        k.extend_from_slice(&[0; 12]);
        k
    });
    orphan[prefix_len..prefix_len + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    store.put(&orphan, b"left by a crash").unwrap();
    drop(peer);
    store.close().unwrap();
    drop(store);

    let store = open();
    let peer = Peer::open(store.clone(), "p", true, ActorId::from_u128(2), PeerConfig::default()).unwrap();
    let after = peer.state(&x).expect("the address is back");
    let CrdtState::Ormap(n) = after else { panic!("an OR-Map") };
    assert_eq!(n.len(), keys as usize, "the reopened peer has every acknowledged op");
    assert!(after == &before, "and the same state");
    assert_eq!(store.get(&orphan).unwrap(), None, "the unreferenced chunk was removed on open");
    assert_eq!(!store.scan_prefix(b"s/").unwrap().is_empty(), chunked, "the referenced chunks stay");
    assert_eq!(peer.subscriptions(), &BTreeSet::from([x.clone()]));
    store.close().unwrap();
}

#[test]
fn a_large_ormap_survives_a_reopen_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // ~3000 entries of a ~100-byte key: snapshots of ~400 KiB, six times sled's value limit.
    fill_and_reopen(move || Arc::new(SledStore::open(&path).unwrap()) as Arc<dyn Store>, 3000, true);
}

#[test]
fn a_large_ormap_survives_a_reopen_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // The file store takes values of 16 MiB: these snapshots fit one value.
    fill_and_reopen(move || Arc::new(FileStore::open(&path).unwrap()) as Arc<dyn Store>, 3000, false);
}

/// Two peers on one connection, delivering every frame at once and running every barrier.
struct Two {
    peers: [Peer; 2],
    stores: [Arc<dyn Store>; 2],
    connected: bool,
}

impl Two {
    fn pump(&mut self, first: Vec<(usize, Input)>) -> Vec<Output> {
        let mut queue: std::collections::VecDeque<(usize, Input)> = first.into();
        let mut other = Vec::new();
        while let Some((i, input)) = queue.pop_front() {
            for output in self.peers[i].handle(input, 1_000) {
                match output {
                    Output::Send { msg, .. } if self.connected => {
                        queue.push_back((1 - i, Input::Received { conn: 1, frame: msg.encode() }))
                    }
                    Output::Barrier { epoch } => {
                        self.stores[i].sync().unwrap();
                        queue.push_back((i, Input::BarrierDone { epoch }));
                    }
                    Output::Send { .. } => {}
                    o => other.push(o),
                }
            }
        }
        other
    }

    fn connect(&mut self) {
        self.connected = true;
        self.pump(vec![
            (0, Input::Connected { conn: 1, direction: replikativ_peer::proto::Direction::Inbound }),
            (1, Input::Connected { conn: 1, direction: replikativ_peer::proto::Direction::Outbound }),
        ]);
    }

    fn disconnect(&mut self) {
        self.pump(vec![(0, Input::Closed { conn: 1 }), (1, Input::Closed { conn: 1 })]);
        self.connected = false;
    }
}

fn assoc(x: &Address, i: u32) -> Command {
    Command::Assoc {
        address: x.clone(),
        key: Value::from(format!("{i:0100}")),
        txs: vec![Transaction::new("set", i as i64)],
        author: "a".into(),
    }
}

#[test]
fn an_op_too_large_for_a_log_entry_is_stored_as_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let sled = move || Arc::new(SledStore::open(&path).unwrap()) as Arc<dyn Store>;
    let x = address();
    let a_store: Arc<dyn Store> = Arc::new(replikativ_store::MemoryStore::new());
    let b_store = sled();
    let open = |s: &Arc<dyn Store>, n: u128| {
        Peer::open(s.clone(), &format!("p{n}"), n == 1, ActorId::from_u128(n), PeerConfig::default()).unwrap()
    };
    let mut two =
        Two { peers: [open(&a_store, 1), open(&b_store, 2)], stores: [a_store, b_store], connected: false };
    two.pump(vec![
        (
            0,
            Input::Command {
                id: 1,
                cmd: Command::Create { address: x.clone(), kind: CrdtKind::Ormap, author: "a".into() },
            },
        ),
        (1, Input::Command { id: 1, cmd: Command::Subscribe { addresses: BTreeSet::from([x.clone()]) } }),
    ]);
    two.pump((0..5).map(|i| (0, Input::Command { id: 10 + i as u64, cmd: assoc(&x, i) })).collect());
    two.connect();
    assert_eq!(two.peers[1].state(&x), two.peers[0].state(&x), "B has the first entries");

    // While B is away, A makes 3000 more: B's catch-up is one op of ~450 KiB, over sled's 64 KiB.
    two.disconnect();
    for chunk in (5..3005).collect::<Vec<u32>>().chunks(32) {
        two.pump(
            chunk.iter().map(|i| (0, Input::Command { id: 100 + *i as u64, cmd: assoc(&x, *i) })).collect(),
        );
    }
    two.connect();
    let expected = two.peers[0].state(&x).cloned().unwrap();
    assert!(two.peers[1].state(&x) == Some(&expected), "B caught up");

    let [_, b] = two.peers;
    drop(b);
    two.stores[1].close().unwrap();
    let [_, b_store] = two.stores;
    drop(b_store);
    let b_store = sled();
    let b = open(&b_store, 2);
    assert!(b.state(&x) == Some(&expected), "the catch-up survived a reopen");
    b_store.close().unwrap();
}

#[test]
fn writes_the_store_refuses_are_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let x = address();
    let mut peer = peer_with_map(&store);
    // A params value over sled's 64 KiB value limit: the store refuses the batch.
    let big = Value::Bytes(vec![7; 100 << 10]);
    let cmd = Command::Assoc {
        address: x.clone(),
        key: "big".into(),
        txs: vec![Transaction::new("set", big)],
        author: "a".into(),
    };
    let outputs = run_outputs(&mut peer, &store, vec![Input::Command { id: 2, cmd }]);
    let replies: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { id, result } => Some((*id, result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1);
    let (id, result) = &replies[0];
    assert_eq!(*id, 2);
    let err = result.clone().expect_err("the write was refused, so the command fails");
    assert!(err.to_string().contains("cannot store"), "{err}");
    assert!(!outputs.iter().any(|o| matches!(o, Output::Event(_))), "no change event for an unstored op");
    // The peer goes on: a small write succeeds and is durable.
    run(&mut peer, &store, vec![Input::Command { id: 3, cmd: assoc(&x, 1) }]);
    drop(peer);
    store.close().unwrap();
    drop(store);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let peer = Peer::open(store.clone(), "p", true, ActorId::from_u128(2), PeerConfig::default()).unwrap();
    let Some(CrdtState::Ormap(m)) = peer.state(&x) else { panic!("an OR-Map") };
    assert_eq!(m.get(&Value::from(format!("{:0100}", 1))).len(), 1, "the later write is stored");
    store.close().unwrap();
}
