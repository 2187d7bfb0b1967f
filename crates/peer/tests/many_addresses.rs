//! Thousands of addresses, few changed: a peer that reconnects learns which differ from
//! fingerprints (`proto/recon.rs`) and names its unchanged subscription by digest (`resubscribe`),
//! so the exchange costs a few KiB and a few round trips, not a summary (and an address) each.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, CrdtKind, Value};
use replikativ_peer::proto::{Command, Direction, Input, Message, Output, Peer, PeerConfig};
use replikativ_store::{MemoryStore, Store};

const ADDRESSES: u128 = 10_000;
const CHANGED: u128 = 10;

fn address(n: u128) -> Address {
    Address::new("mail:many@example.org", uuid::Uuid::from_u128(n)).unwrap()
}

/// Two peers driven in one thread; frames are encoded, counted and delivered in order, each with
/// its hop count (one more than the frame whose handling sent it).
struct Pair {
    peers: [Peer; 2],
    stores: [Arc<MemoryStore>; 2],
    queue: VecDeque<(usize, Input, u32)>,
    /// Per message kind: frames and bytes, since the last reset.
    bytes: usize,
    kinds: std::collections::BTreeMap<&'static str, (usize, usize)>,
    /// The highest hop of a frame carrying data (a publication or batch), since the last reset.
    last_data_hop: u32,
    connected: bool,
    /// CDVCS graph entries each side sent.
    commits_sent: [usize; 2],
}

impl Pair {
    fn new() -> Pair {
        let stores = [Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())];
        let open = |i: usize| {
            let store: Arc<dyn Store> = stores[i].clone();
            let config = PeerConfig { anti_entropy: None, ..PeerConfig::default() };
            Peer::open(store, &format!("p{i}"), i == 0, ActorId::from_u128(i as u128 + 1), config).unwrap()
        };
        Pair {
            peers: [open(0), open(1)],
            stores,
            queue: VecDeque::new(),
            bytes: 0,
            kinds: Default::default(),
            last_data_hop: 0,
            connected: false,
            commits_sent: [0, 0],
        }
    }

    fn run(&mut self, node: usize, input: Input) {
        self.queue.push_back((node, input, 0));
        while let Some((node, input, hop)) = self.queue.pop_front() {
            for output in self.peers[node].handle(input, 1) {
                match output {
                    Output::Send { conn, msg } => {
                        if !self.connected {
                            continue;
                        }
                        let frame = msg.encode();
                        self.bytes += frame.len();
                        let k = self.kinds.entry(msg.kind()).or_default();
                        k.0 += 1;
                        k.1 += frame.len();
                        if let Message::Publish(p) = &msg
                            && let replikativ_peer::proto::AnyOp::Cdvcs(o) = &p.op
                        {
                            self.commits_sent[node] += o.commits.len();
                        }
                        if matches!(msg, Message::Publish(_) | Message::Batch(_)) {
                            self.last_data_hop = self.last_data_hop.max(hop + 1);
                        }
                        self.queue.push_back((1 - node, Input::Received { conn, frame }, hop + 1));
                    }
                    Output::Barrier { epoch } => {
                        self.stores[node].sync().unwrap();
                        self.queue.push_back((node, Input::BarrierDone { epoch }, hop));
                    }
                    Output::Reply { result, .. } => {
                        result.expect("the command succeeds");
                    }
                    Output::Close { reason, .. } => panic!("closed: {reason}"),
                    Output::Schedule { .. } | Output::Event(_) => {}
                }
            }
        }
    }

    fn connect(&mut self) {
        self.connected = true;
        self.queue.push_back((0, Input::Connected { conn: 1, direction: Direction::Inbound }, 0));
        self.run(1, Input::Connected { conn: 1, direction: Direction::Outbound });
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.run(0, Input::Closed { conn: 1 });
        self.run(1, Input::Closed { conn: 1 });
    }

    fn reset(&mut self) {
        self.bytes = 0;
        self.kinds.clear();
        self.last_data_hop = 0;
    }

    fn equal(&self) -> bool {
        (0..ADDRESSES).all(|n| {
            let a = address(n);
            self.peers[0].state(&a).map(|s| s.digest()) == self.peers[1].state(&a).map(|s| s.digest())
        })
    }
}

/// Anti-entropy while nothing changes costs under 100 bytes per address and tick, with a summary
/// per address (40 OR-Maps of 100 entries, below `recon_above`) and with fingerprints (2,000
/// G-Sets).
#[test]
fn idle_anti_entropy_costs_under_100_bytes_per_address_per_tick() {
    for (count, kind) in [(40u128, CrdtKind::Ormap), (2_000, CrdtKind::Gset)] {
        let mut pair = Pair::new();
        let mut id = 0;
        for n in 0..count {
            id += 1;
            pair.run(
                0,
                Input::Command { id, cmd: Command::Create { address: address(n), kind, author: "a".into() } },
            );
            for i in 0..if kind == CrdtKind::Ormap { 100 } else { 1 } {
                id += 1;
                let cmd = match kind {
                    CrdtKind::Ormap => Command::Assoc {
                        address: address(n),
                        key: Value::from(format!("k{i}")),
                        txs: vec![replikativ_crdt::Transaction::new("set", i as i64)],
                        author: "a".into(),
                    },
                    _ => Command::GsetAdd { address: address(n), element: Value::from(i as i64) },
                };
                pair.run(0, Input::Command { id, cmd });
            }
        }
        let all: BTreeSet<Address> = (0..count).map(address).collect();
        pair.run(1, Input::Command { id: 1, cmd: Command::Subscribe { addresses: all } });
        pair.connect();
        pair.reset();
        let ticks = 3;
        for _ in 0..ticks {
            pair.run(0, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
            pair.run(1, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
        }
        // Both sides tick: per address and per side's tick.
        let per = pair.bytes as f64 / (count as f64 * ticks as f64 * 2.0);
        eprintln!(
            "{count} {kind:?}: idle anti-entropy {per:.1} bytes per address per tick, {:?}",
            pair.kinds
        );
        assert!(per <= 100.0, "{per} bytes per address per tick");
        assert_eq!(pair.last_data_hop, 0, "idle anti-entropy sent data: {:?}", pair.kinds);
    }
}

#[test]
fn ten_changed_of_ten_thousand_addresses_cost_a_few_kib_after_a_reconnect() {
    let mut pair = Pair::new();
    let mut id = 0;
    for n in 0..ADDRESSES {
        id += 2;
        pair.run(
            0,
            Input::Command {
                id,
                cmd: Command::Create { address: address(n), kind: CrdtKind::Gset, author: "a".into() },
            },
        );
        let cmd = Command::GsetAdd { address: address(n), element: Value::from(n as i64) };
        pair.run(0, Input::Command { id: id + 1, cmd });
    }
    let all: BTreeSet<Address> = (0..ADDRESSES).map(address).collect();
    pair.run(1, Input::Command { id: 1, cmd: Command::Subscribe { addresses: all } });
    pair.connect();
    assert!(pair.equal(), "the first catch-up brought every address");
    let first = pair.bytes;
    eprintln!("first connection: {first} bytes, {:?}", pair.kinds);

    pair.disconnect();
    for n in 0..CHANGED {
        id += 1;
        let cmd = Command::GsetAdd { address: address(n * 997 % ADDRESSES), element: Value::from("changed") };
        pair.run(0, Input::Command { id, cmd });
    }
    assert!(!pair.equal());
    pair.reset();
    pair.connect();
    assert!(pair.equal(), "the reconnect brought the changes");
    // Hops: hello (1), subscription and fingerprints (2), then descents, lists and data; a round
    // trip is two hops.
    let round_trips = f64::from(pair.last_data_hop) / 2.0;
    eprintln!(
        "after the reconnect: {} bytes, data by hop {} ({round_trips} round trips), {:?}",
        pair.bytes, pair.last_data_hop, pair.kinds
    );
    assert!(pair.bytes <= 16 << 10, "{} bytes after the reconnect (at most 16 KiB)", pair.bytes);
    assert!(!pair.kinds.contains_key("subscribe"), "the subscription went by digest: {:?}", pair.kinds);
    assert!(!pair.kinds.contains_key("sync") || pair.kinds["sync"].1 < 4096, "{:?}", pair.kinds);
    // Learning which addresses differ takes at most three round trips (after the hello); the data
    // follows half a round trip later.
    assert!(pair.last_data_hop <= 1 + 6 + 1, "data arrived only at hop {}", pair.last_data_hop);
}

/// Two replicas of one CDVCS share 2,000 commits, then each adds 500 while disconnected: on the
/// reconnect each sends about what the other lacks (ancestor samples in the summary find a recent
/// common ancestor), not its whole history.
#[test]
fn diverged_histories_exchange_about_the_divergence_not_the_history() {
    let mut pair = Pair::new();
    let log = address(1);
    pair.run(
        0,
        Input::Command {
            id: 1,
            cmd: Command::Create { address: log.clone(), kind: CrdtKind::Cdvcs, author: "a".into() },
        },
    );
    pair.run(
        1,
        Input::Command { id: 1, cmd: Command::Subscribe { addresses: BTreeSet::from([log.clone()]) } },
    );
    pair.connect();
    let transact = |pair: &mut Pair, side: usize, id: u64, i: i64| {
        let txs = vec![replikativ_crdt::Transaction::new("add", i)];
        pair.run(
            side,
            Input::Command { id, cmd: Command::Transact { address: log.clone(), txs, author: "a".into() } },
        );
    };
    for i in 0..2_000 {
        transact(&mut pair, 0, 10 + i as u64, i);
    }
    let graph_len = |pair: &Pair, side: usize| match pair.peers[side].state(&log) {
        Some(replikativ_peer::proto::CrdtState::Cdvcs(c)) => c.graph().len(),
        _ => 0,
    };
    assert_eq!(graph_len(&pair, 1), graph_len(&pair, 0), "B follows A");
    pair.disconnect();
    for i in 0..500 {
        transact(&mut pair, 0, 5_000 + i as u64, 10_000 + i);
        transact(&mut pair, 1, 5_000 + i as u64, 20_000 + i);
    }
    pair.reset();
    pair.commits_sent = [0, 0];
    pair.connect();
    assert_eq!(graph_len(&pair, 0), graph_len(&pair, 1), "both hold both branches");
    assert_eq!(graph_len(&pair, 0), 2_001 + 1_000);
    eprintln!("diverged by 500 each: commits sent {:?}, {} bytes", pair.commits_sent, pair.bytes);
    for side in 0..2 {
        assert!(pair.commits_sent[side] <= 2 * 500, "side {side} sent {} commits", pair.commits_sent[side]);
    }
}

/// A `recon` message that names one bucket many times (a hostile or broken peer) is answered once
/// per bucket, not once per repeat: 1,000 copies of the root whose 16 children all differ get 16
/// child nodes back, not 16,000 (3.3 MB).
#[test]
fn a_recon_naming_a_bucket_many_times_is_answered_once() {
    use replikativ_peer::proto::{Bucket, Recon};
    let mut pair = Pair::new();
    let count = 400u128;
    for n in 0..count {
        pair.run(
            0,
            Input::Command {
                id: 2 * n as u64 + 1,
                cmd: Command::Create { address: address(n), kind: CrdtKind::Gset, author: "a".into() },
            },
        );
        let cmd = Command::GsetAdd { address: address(n), element: Value::from(n as i64) };
        pair.run(0, Input::Command { id: 2 * n as u64 + 2, cmd });
    }
    let all: BTreeSet<Address> = (0..count).map(address).collect();
    pair.run(1, Input::Command { id: 1, cmd: Command::Subscribe { addresses: all } });
    pair.connect();
    assert!(pair.equal());
    // Every child "holds" 100 items with a fingerprint nobody has: A (about 25 items per child)
    // descends into each.
    let root = Bucket { depth: 0, prefix: 0 };
    let children: Vec<u8> =
        (0..16).flat_map(|_| 100u32.to_le_bytes().into_iter().chain(1u64.to_le_bytes())).collect();
    let frame =
        Message::Recon(Recon::Nodes(vec![(root, serde_bytes::ByteBuf::from(children)); 1000])).encode();
    let mut nodes = 0;
    for output in pair.peers[0].handle(Input::Received { conn: 1, frame }, 1) {
        if let Output::Send { msg: Message::Recon(Recon::Nodes(n)), .. } = output {
            nodes += n.len();
        }
    }
    assert_eq!(nodes, 16, "child nodes sent back for 1,000 copies of the root");
}
