//! Time-bounded fuzzing of the wire decoders and the protocol core on stable Rust (issue F): the
//! targets of `fuzz_targets/mod.rs` (shared with `cargo fuzz`, see `fuzz/README.md`) run on
//! proptest-generated inputs: random bytes, and valid encodings (the targets' seeds) mutated by bit
//! flips, byte changes, truncations, insertions, deletions, duplications, splices with other seeds
//! and changes of length fields; the core's sessions are also built step by step from mutated
//! frames.
//!
//! Each target runs until its deadline, `REPLIKATIV_FUZZ_SECS` seconds (default 2; fractions
//! allowed), and reports on stderr how many inputs it ran. A failing input is shrunk, then printed
//! as hex and written to a file; `REPLIKATIV_FUZZ_REPRO=<hex>` runs exactly that input (in the
//! test of its target), and the file is a libFuzzer input as it is. `REPLIKATIV_FUZZ_SEED=<n>`
//! fixes the random seed (printed by every run). With `REPLIKATIV_FUZZ_CORPUS=<dir>`, the test
//! `write_seed_corpora` writes every target's seeds to `<dir>/<target>/` for libFuzzer.

mod fuzz_targets;

use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime};

use fuzz_targets::{Step, Target, encode_steps, from_hex, to_hex};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use replikativ_peer::proto::Message;

thread_local! {
    /// Panics on this thread are expected (a failing input being shrunk): do not print them.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent while this thread's `QUIET` is set.
fn quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs one input; whether it got past decoding, or `Err` with the panic message if a property
/// failed.
fn attempt(target: Target, input: &[u8]) -> Result<bool, String> {
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    QUIET.with(|q| q.set(false));
    result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

fn budget() -> Duration {
    let secs = std::env::var("REPLIKATIV_FUZZ_SECS").ok().map_or(2.0, |s| {
        s.trim().parse::<f64>().unwrap_or_else(|_| panic!("REPLIKATIV_FUZZ_SECS={s:?} is not a number"))
    });
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    match std::env::var("REPLIKATIV_FUZZ_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("REPLIKATIV_FUZZ_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Reports a failing input (shrunk as far as `tree` goes) and fails the test.
fn fail<T: ValueTree<Value = Vec<u8>>>(target: Target, mut tree: T, first: String, seed: u64) -> ! {
    let original = tree.current();
    let mut input = original.clone();
    let mut message = first;
    let started = Instant::now();
    let mut steps = 0;
    if tree.simplify() {
        while steps < 4096 && started.elapsed() < Duration::from_secs(60) {
            steps += 1;
            let candidate = tree.current();
            match attempt(target, &candidate) {
                Err(m) => {
                    (input, message) = (candidate, m);
                    if !tree.simplify() {
                        break;
                    }
                }
                Ok(_) => {
                    if !tree.complicate() {
                        break;
                    }
                }
            }
        }
    }
    let hex = to_hex(&input);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let file = dir.join(format!(
        "{}-{}",
        target.name,
        &replikativ_peer::crdt::ContentId::hash_bytes(&input).to_hex()[..16]
    ));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
    eprintln!(
        "\nfuzz {name}: FAILED: {message}\n  \
         input ({len} bytes, shrunk from {orig} in {steps} steps; seed {seed}):\n  {hex}\n  \
         file: {file} {written}\n  \
         reproduce: REPLIKATIV_FUZZ_REPRO={hex} cargo test -p replikativ-peer --test fuzz_decoders {name}\n  \
         or with libFuzzer: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a {name} {file}\n",
        name = target.name,
        len = input.len(),
        orig = original.len(),
        file = file.display(),
        written = if written.is_ok() { "" } else { "(could not be written)" },
    );
    panic!("fuzz target {} failed: {message}; input {hex}", target.name);
}

/// Runs `target` on inputs from `strategy` until the deadline (after every seed as it is).
fn fuzz(target: Target, strategy: BoxedStrategy<Vec<u8>>) {
    quiet_hook();
    if let Ok(hex) = std::env::var("REPLIKATIV_FUZZ_REPRO") {
        let input = from_hex(&hex).expect("REPLIKATIV_FUZZ_REPRO is hex");
        eprintln!("fuzz {}: running the given input ({} bytes)", target.name, input.len());
        (target.run)(&input);
        return;
    }
    let started = Instant::now();
    let deadline = started + budget();
    let seed = seed();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let mut runs: u64 = 0;
    let mut accepted: u64 = 0;
    let mut slowest = (Duration::ZERO, 0);
    let mut timed = |input: &[u8]| {
        let t = Instant::now();
        let r = attempt(target, input);
        let took = t.elapsed();
        if took > slowest.0 {
            slowest = (took, input.len());
        }
        accepted += u64::from(r == Ok(true));
        r
    };
    for s in (target.seeds)() {
        runs += 1;
        if let Err(m) = timed(&s) {
            panic!("fuzz target {}: a seed fails: {m}; input {}", target.name, to_hex(&s));
        }
    }
    loop {
        let tree = strategy.new_tree(&mut runner).expect("inputs generate");
        let input = tree.current();
        runs += 1;
        if let Err(m) = timed(&input) {
            fail(target, tree, m, seed);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Straight to stderr, past the test harness's capture, so every run reports its count.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {}: {runs} inputs in {secs:.1} s ({:.0}/s), {:.0}% past decoding, seed {seed}, \
         slowest {:.1} ms ({} bytes)",
        target.name,
        runs as f64 / secs,
        accepted as f64 * 100.0 / runs as f64,
        slowest.0.as_secs_f64() * 1e3,
        slowest.1
    );
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// One change to an input; positions are relative, so a mutation fits any input.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    Duplicate(Index, u8),
    /// This input up to a point, then another seed from a point.
    Splice(Index, Index, Index),
    /// Changes a length or count: of a msgpack fix-length marker, the length after a msgpack
    /// `bin`/`str`/`array`/`map` marker, or the varint after a canonical string/bytes/list/map tag.
    Length(Index, i8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting =
        prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), Just(0xc0), Just(0xc1), any::<u8>()];
    let delta = prop_oneof![Just(1i8), Just(-1), Just(2), Just(-2), Just(16), any::<i8>()];
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1..16u8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1..32u8).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(i, s, j)| Mutation::Splice(i, s, j)),
        3 => (any::<Index>(), delta).prop_map(|(i, d)| Mutation::Length(i, d)),
    ]
}

/// Where a length or count can be changed: `(position of the first length byte, its width)`.
fn length_fields(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        let width = match b {
            0x80..=0xbf => {
                out.push((i, 0));
                continue;
            }
            0x05..=0x08 | 0xc4 | 0xd9 | 0xdc | 0xde => 1,
            0xc5 | 0xda => 2,
            0xc6 | 0xdb | 0xdd | 0xdf => 4,
            _ => continue,
        };
        if i + width < data.len() {
            out.push((i + 1, width));
        }
    }
    out
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    for m in mutations {
        let len = data.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::FlipBit(i, bit) if len > 0 => data[at(i)] ^= 1 << bit,
            Mutation::SetByte(i, b) if len > 0 => data[at(i)] = *b,
            Mutation::Truncate(i) => data.truncate(at(i)),
            Mutation::Insert(i, bytes) => {
                let p = if len == 0 { 0 } else { i.index(len + 1) };
                data.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let p = at(i);
                data.drain(p..(p + *n as usize).min(len));
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let p = at(i);
                let chunk = data[p..(p + *n as usize).min(len)].to_vec();
                data.splice(p..p, chunk);
            }
            Mutation::Splice(i, s, j) => {
                let other = s.get(seeds);
                data.truncate(at(i));
                if !other.is_empty() {
                    data.extend_from_slice(&other[j.index(other.len())..]);
                }
            }
            Mutation::Length(i, delta) => {
                let fields = length_fields(&data);
                if fields.is_empty() {
                    continue;
                }
                let (p, width) = *i.get(&fields);
                if width == 0 {
                    // A fix-length marker: keep its type bits, change the length bits.
                    let b = data[p];
                    let mask = if b >= 0xa0 { 0x1f } else { 0x0f };
                    data[p] = (b & !mask) | (b.wrapping_add(*delta as u8) & mask);
                } else {
                    let field = &mut data[p..p + width];
                    let mut n = field.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
                    n = n.wrapping_add(*delta as i64 as u64);
                    for (k, b) in field.iter_mut().rev().enumerate() {
                        *b = (n >> (8 * k)) as u8;
                    }
                }
            }
            _ => {}
        }
    }
    data
}

/// Random bytes, or a seed with a few mutations.
fn bytes_strategy(seeds: Arc<Vec<Vec<u8>>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..512),
        6 => (any::<Index>(), prop_oneof![3 => vec(mutation(), 1..3), 1 => vec(mutation(), 3..10)])
            .prop_map(move |(i, ms)| mutate(i.get(&seeds).clone(), &ms, &seeds)),
    ]
    .boxed()
}

/// Sessions of the core: a session seed mutated as bytes, or steps built from (mostly
/// subscribed, possibly mutated) frames of every message kind.
fn peer_strategy() -> BoxedStrategy<Vec<u8>> {
    let sessions = Arc::new((fuzz_targets::target("peer").seeds)());
    let frames = Arc::new(fuzz_targets::message_seeds());
    let splice_with = Arc::new(frames.clone());
    let frame = (any::<Index>(), vec(mutation(), 0..3))
        .prop_map(move |(i, ms)| mutate(i.get(&frames).clone(), &ms, &splice_with));
    let step = prop_oneof![
        8 => (prop::bool::weighted(0.2), frame).prop_map(|(b, f)| Step::Frame(b, f)),
        1 => Just(Step::Tick),
        1 => Just(Step::Resync),
        1 => Just(Step::ReconnectB),
        2 => Just(Step::AnswerFetch),
    ];
    let subscribed = fuzz_targets::message_seeds()
        .into_iter()
        .find(|m| matches!(Message::decode(m), Ok(Message::Subscribe(s)) if s.addresses.len() == 8));
    let subscribed = subscribed.expect("a seed subscribes to every address");
    prop_oneof![
        1 => bytes_strategy(sessions),
        3 => (any::<u8>(), prop::bool::weighted(0.8), prop::bool::weighted(0.3), vec(step, 1..24)).prop_map(
            move |(flags, sub_a, sub_b, mut steps)| {
                let mut prefix = Vec::new();
                if sub_a {
                    prefix.push(Step::Frame(false, subscribed.clone()));
                }
                if sub_b {
                    prefix.push(Step::Frame(true, subscribed.clone()));
                }
                prefix.append(&mut steps);
                encode_steps(flags, &prefix)
            }
        ),
    ]
    .boxed()
}

fn run(name: &str) {
    let target = fuzz_targets::target(name);
    let strategy = if name == "peer" { peer_strategy() } else { bytes_strategy(Arc::new((target.seeds)())) };
    fuzz(target, strategy);
}

#[test]
fn message() {
    run("message");
}

#[test]
fn value() {
    run("value");
}

#[test]
fn commit() {
    run("commit");
}

#[test]
fn op() {
    run("op");
}

#[test]
fn batch() {
    run("batch");
}

#[test]
fn peer() {
    run("peer");
}

#[test]
fn handshake() {
    run("handshake");
}

#[test]
fn every_target_has_a_test_and_seeds() {
    let names: Vec<&str> = fuzz_targets::TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        ["message", "value", "commit", "op", "batch", "peer", "handshake"],
        "a target without a test here"
    );
    for t in fuzz_targets::TARGETS {
        assert!((t.seeds)().len() >= 5, "target {} has few seeds", t.name);
    }
}

/// Writes every target's seeds to `$REPLIKATIV_FUZZ_CORPUS/<target>/` (libFuzzer's seed corpora);
/// does nothing without the variable.
#[test]
fn write_seed_corpora() {
    let Ok(dir) = std::env::var("REPLIKATIV_FUZZ_CORPUS") else { return };
    for t in fuzz_targets::TARGETS {
        let d = std::path::Path::new(&dir).join(t.name);
        std::fs::create_dir_all(&d).expect("creates the corpus directory");
        for s in (t.seeds)() {
            let name = replikativ_peer::crdt::ContentId::hash_bytes(&s).to_hex();
            std::fs::write(d.join(&name[..16]), &s).expect("writes a seed");
        }
    }
}
