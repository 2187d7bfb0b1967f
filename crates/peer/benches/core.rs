//! Throughput of the protocol core: ops per second from one peer's stage into another peer's state.
//!
//! Two connected peers, no faults, no IO: peer A executes N stage commands (OR-Map `Assoc`, or
//! CDVCS `Transact`), frames are encoded, handed to the other peer and decoded in a loop, every
//! `Output::Barrier` is answered at once (in-memory stores), and the clock stops when B has applied
//! every op. Each case runs several times; the median is reported.
//!
//! Commands reach A in batches of 64 and each peer handles what queued up for it as one batch, as
//! the node does. Runs on mimalloc, the allocator of the `replikativ` binary.
//!
//! `ormap-catch-up`: A makes N assocs while not connected, then B connects: the time until B applied
//! all of them (the catch-up stream of compact batches, `proto/catch_up.rs`).
//!
//! `cargo bench -p replikativ-peer --bench core` (environment: `CORE_BENCH_N=10000,100000`,
//! `CORE_BENCH_CASES=ormap-catch-up` (a comma-separated list of the cases above),
//! `CORE_BENCH_REPS=5`, `CORE_BENCH_SNAPSHOT_EVERY=1024`, the peers' `snapshot_every`);
//! `--features bench-system-allocator` runs it on the system allocator.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replikativ_peer::crdt::{ActorId, Address, CrdtKind, Transaction, Value};
use replikativ_peer::proto::{Command, Direction, Input, Output, Peer, PeerConfig};
use replikativ_peer::store::{MemoryStore, Store};
use uuid::Uuid;

const CONN: u64 = 1;

struct Side {
    peer: Peer,
    store: Arc<MemoryStore>,
    inbox: VecDeque<Input>,
}

struct Pair {
    sides: [Side; 2],
    now: u64,
    /// Ops from the network that changed B's state.
    b_applied: u64,
    /// Stage commands of A answered (successfully).
    a_replies: u64,
}

impl Pair {
    fn new() -> Pair {
        let open = |id: &str, extend: bool, actor: u128| {
            let store = Arc::new(MemoryStore::new());
            let mut config = PeerConfig { anti_entropy: None, ..PeerConfig::default() };
            if let Some(every) = std::env::var("CORE_BENCH_SNAPSHOT_EVERY").ok().and_then(|s| s.parse().ok())
            {
                config.snapshot_every = every;
            }
            let peer =
                Peer::open(store.clone(), id, extend, ActorId::from_u128(actor), config).expect("opens");
            Side { peer, store, inbox: VecDeque::new() }
        };
        Pair { sides: [open("a", true, 1), open("b", false, 2)], now: 1_000, b_applied: 0, a_replies: 0 }
    }

    /// Handles a batch of inputs at `side` (as the node does with what queued up meanwhile) and
    /// routes what it produces.
    fn step(&mut self, side: usize, inputs: Vec<Input>) {
        self.now += 1;
        let mut pending = inputs;
        while !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            for output in self.sides[side].peer.handle_batch(batch, self.now) {
                match output {
                    Output::Send { msg, .. } => self.sides[1 - side]
                        .inbox
                        .push_back(Input::Received { conn: CONN, frame: msg.encode() }),
                    // The barrier is answered at once, before the next input.
                    Output::Barrier { epoch } => {
                        self.sides[side].store.sync().expect("sync");
                        pending.push(Input::BarrierDone { epoch });
                    }
                    Output::Event(e) if side == 1 && !e.local => self.b_applied += e.op.len() as u64,
                    Output::Reply { result, .. } if side == 0 => {
                        result.expect("the command succeeds");
                        self.a_replies += 1;
                    }
                    Output::Close { reason, .. } => panic!("peer {side} closed the connection: {reason}"),
                    _ => {}
                }
            }
        }
    }

    /// Delivers each peer's whole inbox as one batch, in turn, until both inboxes are empty.
    fn pump(&mut self) {
        loop {
            let mut idle = true;
            for side in 0..2 {
                let inputs: Vec<Input> = self.sides[side].inbox.drain(..).collect();
                if !inputs.is_empty() {
                    idle = false;
                    self.step(side, inputs);
                }
            }
            if idle {
                return;
            }
        }
    }
}

/// One run: returns the time from the first command to B having all `n` ops.
fn run(kind: CrdtKind, n: u64) -> Duration {
    let mut pair = Pair::new();
    let address = Address::new("mail:bench@example.org", Uuid::from_u128(1)).expect("valid");
    pair.sides[0].inbox.push_back(Input::Command {
        id: 1,
        cmd: Command::Create { address: address.clone(), kind, author: "bench".into() },
    });
    pair.sides[1].inbox.push_back(Input::Command {
        id: 1,
        cmd: Command::Subscribe { addresses: BTreeSet::from([address.clone()]) },
    });
    pair.pump();
    pair.sides[0].inbox.push_back(Input::Connected { conn: CONN, direction: Direction::Inbound });
    pair.sides[1].inbox.push_back(Input::Connected { conn: CONN, direction: Direction::Outbound });
    pair.pump();
    assert!(pair.sides[1].peer.state(&address).is_some(), "B has the initial state");
    pair.b_applied = 0;
    pair.a_replies = 0;

    let start = Instant::now();
    let mut commands = Vec::new();
    for i in 0..n {
        let cmd = match kind {
            CrdtKind::Ormap => Command::Assoc {
                address: address.clone(),
                key: Value::Int(i.into()),
                txs: vec![Transaction::new("set", Value::Int(i.into()))],
                author: "bench".into(),
            },
            CrdtKind::Cdvcs => Command::Transact {
                address: address.clone(),
                txs: vec![Transaction::new("add", Value::Int(i.into()))],
                author: "bench".into(),
            },
            other => unimplemented!("{other:?}"),
        };
        commands.push(Input::Command { id: i + 2, cmd });
        // Commands arrive in batches of 64 (as a stage's concurrent commands queue up at the
        // node's core), and the network catches up between batches.
        if commands.len() == 64 {
            pair.step(0, std::mem::take(&mut commands));
            pair.pump();
        }
    }
    pair.step(0, commands);
    pair.pump();
    let elapsed = start.elapsed();
    assert_eq!(pair.a_replies, n, "every command was answered");
    assert_eq!(pair.b_applied, n, "B applied every op");
    assert_eq!(pair.sides[0].peer.state(&address), pair.sides[1].peer.state(&address), "A and B agree");
    elapsed
}

/// One catch-up run: A makes `n` OR-Map assocs with no connection (untimed), then the peers
/// connect; returns the time until B applied all of them.
fn catch_up(n: u64) -> Duration {
    let mut pair = Pair::new();
    let address = Address::new("mail:bench@example.org", Uuid::from_u128(1)).expect("valid");
    pair.sides[0].inbox.push_back(Input::Command {
        id: 1,
        cmd: Command::Create { address: address.clone(), kind: CrdtKind::Ormap, author: "bench".into() },
    });
    pair.sides[1].inbox.push_back(Input::Command {
        id: 1,
        cmd: Command::Subscribe { addresses: BTreeSet::from([address.clone()]) },
    });
    pair.pump();
    let mut commands = Vec::new();
    for i in 0..n {
        let cmd = Command::Assoc {
            address: address.clone(),
            key: Value::from(format!("k{i}")),
            txs: vec![Transaction::new("assoc", Value::Int(i.into()))],
            author: "bench".into(),
        };
        commands.push(Input::Command { id: i + 2, cmd });
        if commands.len() == 64 {
            pair.step(0, std::mem::take(&mut commands));
        }
    }
    pair.step(0, commands);
    pair.pump();
    pair.b_applied = 0;
    let start = Instant::now();
    pair.sides[0].inbox.push_back(Input::Connected { conn: CONN, direction: Direction::Inbound });
    pair.sides[1].inbox.push_back(Input::Connected { conn: CONN, direction: Direction::Outbound });
    pair.pump();
    let elapsed = start.elapsed();
    assert_eq!(pair.b_applied, n, "B applied every entry");
    assert_eq!(pair.sides[0].peer.state(&address), pair.sides[1].peer.state(&address), "A and B agree");
    elapsed
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 { xs[m] } else { (xs[m - 1] + xs[m]) / 2.0 }
}

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let ns: Vec<u64> = env("CORE_BENCH_N")
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("CORE_BENCH_N: numbers")).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let reps: Option<usize> = env("CORE_BENCH_REPS").map(|s| s.parse().expect("CORE_BENCH_REPS: a number"));
    println!(
        "{:<16} {:>8} {:>5} {:>14} {:>12} {:>14} {:>14}",
        "case", "ops", "reps", "median ops/s", "median", "min ops/s", "max ops/s"
    );
    let cases = env("CORE_BENCH_CASES").unwrap_or_else(|| "ormap-assoc,cdvcs-transact,ormap-catch-up".into());
    for (name, kind) in [
        ("ormap-assoc", Some(CrdtKind::Ormap)),
        ("cdvcs-transact", Some(CrdtKind::Cdvcs)),
        ("ormap-catch-up", None),
    ] {
        if !cases.split(',').any(|c| c.trim() == name) {
            continue;
        }
        for &n in &ns {
            let reps = reps.unwrap_or(if n >= 100_000 { 3 } else { 7 });
            let times: Vec<f64> = (0..reps)
                .map(|_| match kind {
                    Some(kind) => run(kind, n),
                    None => catch_up(n),
                })
                .map(|d| d.as_secs_f64())
                .collect();
            let rates: Vec<f64> = times.iter().map(|t| n as f64 / t).collect();
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            println!(
                "{name:<16} {n:>8} {reps:>5} {:>14.0} {:>10.1}ms {lo:>14.0} {hi:>14.0}",
                median(rates),
                median(times) * 1e3
            );
        }
    }
}

/// The allocator the `replikativ` binary runs with (see docs/design.md);
/// `--features bench-system-allocator` measures with the system allocator instead.
#[cfg(not(feature = "bench-system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
