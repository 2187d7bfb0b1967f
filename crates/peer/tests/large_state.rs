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

/// Runs `inputs` as one batch and every barrier it asks for; panics on a failed command.
fn run(peer: &mut Peer, store: &Arc<dyn Store>, inputs: Vec<Input>) {
    let mut pending = inputs;
    while !pending.is_empty() {
        let batch = std::mem::take(&mut pending);
        for output in peer.handle_batch(batch, 1_000) {
            match output {
                Output::Sync { epoch } => {
                    store.sync().unwrap();
                    pending.push(Input::Synced { epoch });
                }
                Output::Reply { result, .. } => {
                    result.expect("the command succeeds");
                }
                _ => {}
            }
        }
    }
}

fn fill_and_reopen(open: impl Fn() -> Arc<dyn Store>, keys: u32, value_len: usize) {
    let x = address();
    let store = open();
    let mut peer =
        Peer::open(store.clone(), "p", true, ActorId::from_u128(1), PeerConfig::default()).unwrap();
    run(
        &mut peer,
        &store,
        vec![Input::Command {
            id: 1,
            cmd: Command::Create { address: x.clone(), kind: CrdtKind::Ormap, author: "a".into() },
        }],
    );
    let mut id = 2;
    let keys_: Vec<u32> = (0..keys).collect();
    for chunk in keys_.chunks(32) {
        let inputs = chunk
            .iter()
            .map(|i| {
                id += 1;
                Input::Command {
                    id,
                    cmd: Command::Assoc {
                        address: x.clone(),
                        key: Value::from(format!("{i:0width$}", width = value_len)),
                        txs: vec![Transaction::new("set", *i as i64)],
                        author: "a".into(),
                    },
                }
            })
            .collect();
        run(&mut peer, &store, inputs);
    }
    let before = peer.state(&x).cloned().unwrap();
    let CrdtState::Ormap(m) = &before else { panic!() };
    assert_eq!(m.len(), keys as usize);
    drop(peer);
    store.close().unwrap();
    drop(store);

    let store = open();
    let peer = Peer::open(store.clone(), "p", true, ActorId::from_u128(2), PeerConfig::default()).unwrap();
    let after = peer.state(&x).expect("the address is back");
    let CrdtState::Ormap(n) = after else { panic!("an OR-Map") };
    assert_eq!(n.len(), keys as usize, "the reopened peer has every acknowledged op");
    assert!(after == &before, "and the same state");
    assert_eq!(peer.subscriptions(), &BTreeSet::from([x.clone()]));
    store.close().unwrap();
}

#[test]
fn a_large_ormap_survives_a_reopen_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // ~3000 entries of a ~100-byte key: snapshots of ~400 KiB, six times sled's value limit.
    fill_and_reopen(move || Arc::new(SledStore::open(&path).unwrap()) as Arc<dyn Store>, 3000, 100);
}

#[test]
fn a_large_ormap_survives_a_reopen_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    fill_and_reopen(move || Arc::new(FileStore::open(&path).unwrap()) as Arc<dyn Store>, 3000, 100);
}
