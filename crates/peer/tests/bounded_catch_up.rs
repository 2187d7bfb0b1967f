//! Catch-up answers are bounded: a fresh peer catches up a large OR-Map, G-Set and CDVCS through
//! publications that each stay within the inline limit (plus framing), whatever the state's size.
//! Before, an OR-Map's answer was one publication with every entry (~16 MiB at 200,000 entries),
//! which the websocket refused; the connection was re-established and the same message sent again,
//! forever.

use std::collections::VecDeque;
use std::sync::Arc;

use replikativ_crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_peer::proto::{
    Command, Direction, Input, MAX_PART_ENTRIES, Message, Output, Peer, PeerConfig, STREAM_WINDOW,
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
    /// Catch-up batches A sent (not live ones).
    batches: usize,
    /// Catch-up messages (batches and catch-up publications) A sent.
    catch_ups: usize,
    /// Whether B's publication acks to A are held back (in `held`).
    hold_acks: bool,
    held: Vec<Input>,
    /// Whether A's frames to B are held back (in `in_flight`).
    hold_to_b: bool,
    in_flight: VecDeque<Input>,
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
            batches: 0,
            catch_ups: 0,
            hold_acks: false,
            held: Vec::new(),
            hold_to_b: false,
            in_flight: VecDeque::new(),
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
                        let catch_up = matches!(&msg, Message::Publish(p) if p.catch_up)
                            || matches!(&msg, Message::Batch(b) if !b.live);
                        if let (true, Some(left)) = (catch_up, self.allowance.as_mut())
                            && node == 0
                        {
                            if *left == 0 {
                                continue;
                            }
                            *left -= 1;
                        }
                        if matches!(&msg, Message::Batch(b) if !b.live) && node == 0 {
                            self.batches += 1;
                        }
                        if catch_up && node == 0 {
                            self.catch_ups += 1;
                        }
                        let frame = msg.encode();
                        if catch_up && node == 0 {
                            answer += frame.len();
                            self.round_bytes = self.round_bytes.max(answer);
                        }
                        self.largest = self.largest.max(frame.len());
                        assert!(frame.len() <= BOUND, "a {} of {} bytes", msg.kind(), frame.len());
                        let input = Input::Received { conn, frame };
                        if node == 1 && self.hold_acks && matches!(msg, Message::PublishAck { .. }) {
                            self.held.push(input);
                        } else if node == 0 && self.hold_to_b {
                            self.in_flight.push_back(input);
                        } else {
                            self.queue.push_back((1 - node, input));
                        }
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

    /// A assocs key `k{i}` of `map` to `value` (command id 10 + i).
    fn assoc(&mut self, map: &Address, i: u64, value: Value) {
        let txs = vec![Transaction::new("set", value)];
        let cmd = Command::Assoc {
            address: map.clone(),
            key: Value::from(format!("k{i}")),
            txs,
            author: "a".into(),
        };
        self.command(0, 10 + i, cmd);
    }

    /// Connects A (in) and B (out): both ends open before either greeting arrives.
    fn connect(&mut self) {
        self.queue.push_back((0, Input::Connected { conn: 1, direction: Direction::Inbound }));
        self.pump(1, Input::Connected { conn: 1, direction: Direction::Outbound });
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
    // Many bounded parts (OR-Map and CDVCS batches, G-Set publications), not one huge message;
    // every frame stayed within BOUND (asserted as they were sent).
    let size = pair.peers[0].state(&map).unwrap().size() as usize;
    assert!(
        pair.publications + pair.batches > 3 * size / MAX_PART_ENTRIES,
        "{} publications and {} batches for {size} map entries, a G-Set and a CDVCS",
        pair.publications,
        pair.batches
    );
    eprintln!("{} publications, the largest frame {} bytes (bound {BOUND})", pair.publications, pair.largest);
}

/// A peer A holding an OR-Map (or, with `gset`, a G-Set) of `entries` entries, and a fresh B
/// subscribed to it and connected; then anti-entropy rounds (a tick on both sides, `allowance`
/// catch-up messages from A each, after which A is told to resynchronize as the node does once a
/// full outbox drained) until B equals A. Returns the rounds and the most catch-up bytes A sent in
/// one answer.
fn converge(mut pair: Pair, entries: u64, allowance: Option<usize>, gset: bool) -> (usize, usize) {
    let map = address(1);
    let kind = if gset { CrdtKind::Gset } else { CrdtKind::Ormap };
    pair.command(0, 1, Command::Create { address: map.clone(), kind, author: "a".into() });
    for i in 0..entries {
        let value = Value::from(format!("value-{i}-{}", "y".repeat(40)));
        if gset {
            pair.command(0, 10 + i, Command::GsetAdd { address: map.clone(), element: value });
        } else {
            pair.assoc(&map, i, value);
        }
    }
    pair.command(1, 1, Command::Subscribe { addresses: [map.clone()].into_iter().collect() });
    pair.allowance = allowance;
    pair.round_bytes = 0;
    pair.connect();
    let mut most = pair.round_bytes;
    let digest = |pair: &Pair, i: usize| pair.peers[i].state(&map).map(|s| s.digest());
    let mut rounds = 0;
    while digest(&pair, 1) != digest(&pair, 0) {
        rounds += 1;
        assert!(rounds <= 60, "no convergence after {rounds} anti-entropy rounds");
        pair.allowance = allowance;
        pair.round_bytes = 0;
        if allowance.is_some() {
            // What a node does once the outbox that dropped messages drained.
            pair.pump(0, Input::Resync { conn: 1 });
        }
        // An anti-entropy tick on both sides (A forgets what it answered; B sends its summaries).
        pair.pump(0, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
        pair.pump(1, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
        most = most.max(pair.round_bytes);
    }
    (rounds, most)
}

/// A receiver that gets only the first few catch-up messages of every round (its outbox keeps
/// overflowing, and the node resynchronizes it once it drained) still converges: what arrived is
/// named by its next summary and not sent again.
#[test]
fn a_receiver_that_loses_the_later_parts_of_every_answer_still_converges() {
    for gset in [false, true] {
        let (rounds, _) = converge(Pair::new(), 8_000, Some(3), gset);
        eprintln!("gset {gset}: converged after {rounds} rounds of 3 parts");
        assert!(rounds >= 2, "the allowance did cut answers short");
    }
}

/// An answer of summaries without dots (a G-Set's buckets) sends at most `max_answer_bytes` (plus
/// the part that crossed it); the rest follows in later rounds, so answering a peer that lacks a
/// huge state costs one budget per round.
#[test]
fn an_answer_is_bounded_by_the_answer_budget_and_the_rest_follows() {
    let budget = 96 << 10;
    let (rounds, most) =
        converge(Pair::with(PeerConfig { max_answer_bytes: budget, ..config() }), 8_000, None, true);
    eprintln!("converged after {rounds} rounds, at most {most} catch-up bytes in one answer");
    assert!(rounds >= 2, "the budget did cut answers short");
    // The budget counts entries and values; frames add their msgpack framing, and the part that
    // crossed the budget goes whole.
    assert!(most <= budget * 5 / 4 + 2 * INLINE, "an answer sent {most} bytes (budget {budget})");
}

/// OR-Map catch-up is paced by the receiver: with its acknowledgements held back, A sends
/// `STREAM_WINDOW` batches and stops; each acknowledgement lets one more go, and the whole map
/// arrives once they flow.
#[test]
fn a_receiver_that_does_not_acknowledge_stops_its_sender_after_the_window() {
    let mut pair = Pair::new();
    let map = address(1);
    pair.command(0, 1, Command::Create { address: map.clone(), kind: CrdtKind::Ormap, author: "a".into() });
    for i in 0..20_000u64 {
        pair.assoc(&map, i, Value::from(format!("value-{i}-{}", "z".repeat(40))));
    }
    pair.command(1, 1, Command::Subscribe { addresses: [map.clone()].into_iter().collect() });
    pair.hold_acks = true;
    pair.connect();
    assert_eq!(pair.batches, STREAM_WINDOW, "batches sent without an acknowledgement");
    assert_eq!(pair.held.len(), STREAM_WINDOW, "B acknowledged each batch it applied");
    // One acknowledgement: one more batch.
    let ack = pair.held.remove(0);
    pair.pump(0, ack);
    assert_eq!(pair.batches, STREAM_WINDOW + 1);
    // Acknowledgements flow: the rest arrives.
    pair.hold_acks = false;
    let held = std::mem::take(&mut pair.held);
    for input in held {
        pair.pump(0, input);
    }
    let digest = |pair: &Pair, i: usize| pair.peers[i].state(&map).map(|s| s.digest());
    assert_eq!(digest(&pair, 1), digest(&pair, 0), "B caught up once acknowledgements flowed");
    assert!(pair.batches > 2 * STREAM_WINDOW, "{} batches", pair.batches);
}

/// A live stream with anti-entropy ticks in the middle: the ticks send no catch-up batch, because
/// every op the other side lacks is already on its way to it.
#[test]
fn anti_entropy_during_a_live_stream_resends_nothing_in_flight() {
    let mut pair = Pair::new();
    let map = address(1);
    pair.command(0, 1, Command::Create { address: map.clone(), kind: CrdtKind::Ormap, author: "a".into() });
    pair.command(1, 1, Command::Subscribe { addresses: [map.clone()].into_iter().collect() });
    pair.connect();
    // (The empty map reached B as one catch-up publication, which created it there.)
    assert!(pair.peers[1].state(&map).is_some());
    pair.catch_ups = 0;
    // Frames from A to B are held (in flight) while A makes ops and both sides tick.
    pair.hold_to_b = true;
    for i in 0..3_000u64 {
        pair.assoc(&map, i, Value::from(i as i64));
        if i % 1000 == 999 {
            pair.pump(0, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
            pair.pump(1, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
            // Half of the stream arrives, the rest stays in flight across the next ticks (the
            // dots are on their way until B acknowledges them, however many ticks that takes).
            let arrived: Vec<Input> = pair.in_flight.drain(..pair.in_flight.len() / 2).collect();
            for input in arrived {
                pair.pump(1, input);
            }
        }
    }
    pair.hold_to_b = false;
    let rest = std::mem::take(&mut pair.in_flight);
    for input in rest {
        pair.pump(1, input);
    }
    pair.pump(0, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
    pair.pump(1, Input::Timer(replikativ_peer::proto::Timer::AntiEntropy));
    let digest = |pair: &Pair, i: usize| pair.peers[i].state(&map).map(|s| s.digest());
    assert_eq!(digest(&pair, 1), digest(&pair, 0));
    assert_eq!(pair.catch_ups, 0, "anti-entropy sent catch-up for ops already in flight");
}
