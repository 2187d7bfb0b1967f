//! Catch-up answers are bounded: a fresh peer catches up a large OR-Map, G-Set and CDVCS through
//! publications that each stay within the inline limit (plus framing), whatever the state's size.
//! Before, an OR-Map's answer was one publication with every entry (~16 MiB at 200,000 entries),
//! which the websocket refused; the connection was re-established and the same message sent again,
//! forever.

use std::collections::VecDeque;
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_peer::proto::{
    Command, Direction, Input, MAX_PART_ENTRIES, Message, Output, Peer, PeerConfig,
};
use replikativ_store::{MemoryStore, Store};

/// Values carried inline in one publication at most, in this test.
const INLINE: usize = 32 << 10;
/// No frame may be larger than this.
const BOUND: usize = 64 << 10;

fn address(n: u128) -> Address {
    Address::new("mail:big@example.org", uuid::Uuid::from_u128(n)).unwrap()
}

fn config() -> PeerConfig {
    PeerConfig {
        anti_entropy: None,
        inline_limit: INLINE,
        fetch_reply_limit: INLINE,
        ..PeerConfig::default()
    }
}

struct Pair {
    /// Catch-up publications A may still send in this round (`None`: no limit): the rest are
    /// lost, as when a slow receiver's outbox is full.
    allowance: Option<usize>,
    peers: [Peer; 2],
    stores: [Arc<MemoryStore>; 2],
    queue: VecDeque<(usize, Input)>,
    largest: usize,
    publications: usize,
    /// The most bytes of catch-up publications A sent in answer to one input (one summary).
    round_bytes: usize,
    now: u64,
}

impl Pair {
    fn new() -> Pair {
        Pair::with(config())
    }

    fn with(config: PeerConfig) -> Pair {
        let stores = [Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())];
        let open = |i: usize| {
            let store: Arc<dyn Store> = stores[i].clone();
            Peer::open(store, &format!("p{i}"), true, ActorId::from_u128(i as u128 + 1), config.clone())
                .unwrap()
        };
        Pair {
            allowance: None,
            peers: [open(0), open(1)],
            stores,
            queue: VecDeque::new(),
            largest: 0,
            publications: 0,
            round_bytes: 0,
            now: 1,
        }
    }

    /// Runs inputs and everything they cause; frames between the peers are encoded and measured.
    fn pump(&mut self, node: usize, input: Input) {
        self.queue.push_back((node, input));
        while let Some((node, input)) = self.queue.pop_front() {
            self.now += 1;
            let mut answer = 0;
            for output in self.peers[node].handle(input, self.now) {
                match output {
                    Output::Send { conn, msg } => {
                        if matches!(msg, Message::Publish(_)) && node == 0 {
                            self.publications += 1;
                        }
                        if let (Message::Publish(p), Some(left)) = (&msg, self.allowance.as_mut())
                            && p.catch_up
                            && node == 0
                        {
                            if *left == 0 {
                                continue;
                            }
                            *left -= 1;
                        }
                        let frame = msg.encode();
                        if matches!(&msg, Message::Publish(p) if p.catch_up) && node == 0 {
                            answer += frame.len();
                            self.round_bytes = self.round_bytes.max(answer);
                        }
                        self.largest = self.largest.max(frame.len());
                        assert!(frame.len() <= BOUND, "a {} of {} bytes", msg.kind(), frame.len());
                        self.queue.push_back((1 - node, Input::Received { conn, frame }));
                    }
                    Output::Barrier { epoch } => {
                        self.stores[node].sync().unwrap();
                        self.queue.push_back((node, Input::BarrierDone { epoch }));
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

    fn command(&mut self, node: usize, id: u64, cmd: Command) {
        self.pump(node, Input::Command { id, cmd });
    }
}

#[test]
fn a_fresh_peer_catches_up_large_states_through_bounded_publications() {
    let mut pair = Pair::new();
    let (map, set, log) = (address(1), address(2), address(3));
    pair.command(0, 1, Command::Create { address: map.clone(), kind: CrdtKind::Ormap, author: "a".into() });
    pair.command(0, 2, Command::Create { address: set.clone(), kind: CrdtKind::Gset, author: "a".into() });
    pair.command(0, 3, Command::Create { address: log.clone(), kind: CrdtKind::Cdvcs, author: "a".into() });
    let entries = 12_000u64;
    let mut id = 10;
    for i in 0..entries {
        id += 1;
        let txs = vec![Transaction::new("set", Value::from(format!("value-{i}-{}", "x".repeat(40))))];
        let assoc = Command::Assoc {
            address: map.clone(),
            key: Value::from(format!("k{i}")),
            txs,
            author: "a".into(),
        };
        pair.command(0, id, assoc);
        if i % 4 == 0 {
            pair.command(
                0,
                id + entries,
                Command::GsetAdd { address: set.clone(), element: Value::from(i as i64) },
            );
        }
        if i % 6 == 0 {
            let txs = vec![Transaction::new("add", Value::from(i as i64))];
            pair.command(
                0,
                id + 2 * entries,
                Command::Transact { address: log.clone(), txs, author: "a".into() },
            );
        }
        if i % 10 == 0 {
            let dissoc = Command::Dissoc {
                address: map.clone(),
                key: Value::from(format!("k{}", i / 2)),
                revert: vec![],
                author: "a".into(),
            };
            // Some keys are gone already: that refusal is fine.
            let _ = pair.peers[0].handle(Input::Command { id: id + 3 * entries, cmd: dissoc }, 1);
        }
    }
    // B subscribes to all three and connects: the whole of each state comes as catch-up.
    let all = [map.clone(), set.clone(), log.clone()].into_iter().collect();
    pair.command(1, 1, Command::Subscribe { addresses: all });
    // Both ends open before either greeting arrives.
    pair.queue.push_back((0, Input::Connected { conn: 1, direction: Direction::Inbound }));
    pair.pump(1, Input::Connected { conn: 1, direction: Direction::Outbound });
    for a in [&map, &set, &log] {
        let digest = |i: usize| pair.peers[i].state(a).map(|s| s.digest());
        assert!(digest(1).is_some() && digest(1) == digest(0), "B caught up {a}");
    }
    // Many bounded parts, not one huge publication.
    let size = pair.peers[0].state(&map).unwrap().size() as usize;
    assert!(
        pair.publications > size / MAX_PART_ENTRIES,
        "{} publications for {size} entries",
        pair.publications
    );
    eprintln!("{} publications, the largest frame {} bytes (bound {BOUND})", pair.publications, pair.largest);
}

/// A peer A holding an OR-Map of `entries` entries, and a fresh B subscribed to it and connected;
/// then anti-entropy rounds (a tick on both sides, `allowance` catch-up publications from A each)
/// until B equals A. Returns the rounds and the most catch-up bytes A sent in one answer.
fn converge(mut pair: Pair, entries: u64, allowance: Option<usize>) -> (usize, usize) {
    let map = address(1);
    pair.command(0, 1, Command::Create { address: map.clone(), kind: CrdtKind::Ormap, author: "a".into() });
    for i in 0..entries {
        let txs = vec![Transaction::new("set", Value::from(format!("value-{i}-{}", "y".repeat(40))))];
        let assoc = Command::Assoc {
            address: map.clone(),
            key: Value::from(format!("k{i}")),
            txs,
            author: "a".into(),
        };
        pair.command(0, 10 + i, assoc);
    }
    pair.command(1, 1, Command::Subscribe { addresses: [map.clone()].into_iter().collect() });
    pair.allowance = allowance;
    pair.round_bytes = 0;
    pair.queue.push_back((0, Input::Connected { conn: 1, direction: Direction::Inbound }));
    pair.pump(1, Input::Connected { conn: 1, direction: Direction::Outbound });
    let mut most = pair.round_bytes;
    let digest = |pair: &Pair, i: usize| pair.peers[i].state(&map).map(|s| s.digest());
    let mut rounds = 0;
    while digest(&pair, 1) != digest(&pair, 0) {
        rounds += 1;
        assert!(rounds <= 40, "no convergence after {rounds} anti-entropy rounds");
        pair.allowance = allowance;
        pair.round_bytes = 0;
        // An anti-entropy tick on both sides (A forgets what it answered; B sends its summaries).
        pair.pump(0, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
        pair.pump(1, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
        most = most.max(pair.round_bytes);
    }
    (rounds, most)
}

/// A receiver that gets only the first few parts of every answer (its outbox keeps overflowing)
/// still converges: parts go bucket by bucket, so each round completes buckets that the next
/// summary then leaves out.
#[test]
fn a_receiver_that_loses_the_later_parts_of_every_answer_still_converges() {
    let (rounds, _) = converge(Pair::new(), 8_000, Some(3));
    eprintln!("converged after {rounds} rounds of 3 parts");
    assert!(rounds >= 2, "the allowance did cut answers short");
}

/// An answer sends at most `max_answer_bytes` (plus the part that crossed it); the rest follows in
/// later rounds, so answering a peer that lacks a huge state costs one budget per round.
#[test]
fn an_answer_is_bounded_by_the_answer_budget_and_the_rest_follows() {
    let budget = 96 << 10;
    let (rounds, most) =
        converge(Pair::with(PeerConfig { max_answer_bytes: budget, ..config() }), 8_000, None);
    eprintln!("converged after {rounds} rounds, at most {most} catch-up bytes in one answer");
    assert!(rounds >= 2, "the budget did cut answers short");
    // The budget counts entries and values; frames add their msgpack framing, and the part that
    // crossed the budget goes whole.
    assert!(most <= budget * 5 / 4 + 2 * INLINE, "an answer sent {most} bytes (budget {budget})");
}
