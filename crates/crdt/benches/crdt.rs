//! Benchmarks of the datatypes: `cargo bench -p replikativ-crdt`.
//!
//! - OR-Map assoc on one replica plus apply on another (ops/s);
//! - CDVCS commit (transact) on a growing history;
//! - join of two 100k-entry OR-Maps;
//! - pull of 10 new commits into histories of 10^3 and 10^6 commits, and the merge base of two
//!   10-commit branches on such histories (the cost must not grow with the history);
//! - canonical hashing of ~1 KiB values against raw blake3 over the same bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use replikativ_crdt::cdvcs::{CdvcsMethod, GraphEntry};
use replikativ_crdt::{ActorId, Cdvcs, CdvcsOp, ContentId, Crdt, OrMap, Transaction, Value};

fn ormap(c: &mut Criterion) {
    let mut group = c.benchmark_group("ormap");
    group.throughput(Throughput::Elements(1));
    let actor = ActorId::from_u128(1);
    let mut a = OrMap::default();
    let mut b = OrMap::default();
    let mut n: u64 = 0;
    group.bench_function("assoc+apply", |bench| {
        bench.iter(|| {
            n += 1;
            let staged = a
                .assoc(Value::from(n % 10_000), vec![Transaction::new("set", n)], actor, "alice", n)
                .unwrap();
            b.apply(black_box(&staged.op)).unwrap();
        })
    });

    let build = |actor: u128| {
        let mut m = OrMap::default();
        for i in 0..100_000u64 {
            m.assoc(Value::from(i), vec![Transaction::new("set", i)], ActorId::from_u128(actor), "u", i)
                .unwrap();
        }
        m
    };
    let (x, y) = (build(1), build(2));
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("join 100k + 100k", |bench| {
        bench.iter_batched(
            || x.clone(),
            |mut m| {
                m.merge(&y).unwrap();
                m
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn cdvcs_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("cdvcs");
    group.throughput(Throughput::Elements(1));
    let (mut cdvcs, _) = Cdvcs::new("alice", 0);
    let mut n: u64 = 0;
    group.bench_function("commit", |bench| {
        bench.iter(|| {
            n += 1;
            black_box(cdvcs.transact("alice", n, vec![Transaction::new("add", n)]).unwrap());
        })
    });
    group.finish();
}

fn fake_id(n: u64) -> ContentId {
    ContentId::hash_bytes(&n.to_le_bytes())
}

/// A linear history of `len` commits with synthetic ids.
fn linear_history(len: u64) -> Cdvcs {
    let mut cdvcs = Cdvcs::default();
    let commits = (0..len)
        .map(|i| GraphEntry { id: fake_id(i), parents: if i == 0 { vec![] } else { vec![fake_id(i - 1)] } });
    let op =
        CdvcsOp { method: CdvcsMethod::Handshake, commits: commits.collect(), heads: Default::default() };
    cdvcs.apply(&op).unwrap();
    cdvcs
}

/// A remote holding only `count` commits on top of `base` (its parent is not in the remote: the
/// pull walk stops at the local history).
fn branch(base: ContentId, first: u64, count: u64) -> (Cdvcs, ContentId) {
    let mut remote = Cdvcs::default();
    let mut parent = base;
    let mut commits = Vec::new();
    for i in first..first + count {
        commits.push(GraphEntry { id: fake_id(i), parents: vec![parent] });
        parent = fake_id(i);
    }
    let op = CdvcsOp { method: CdvcsMethod::Commit, commits, heads: Default::default() };
    remote.apply(&op).unwrap();
    (remote, parent)
}

fn history_scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("history");
    for len in [1_000u64, 1_000_000] {
        let mut local = linear_history(len);
        let mut next = len;
        group.bench_function(format!("pull 10 commits into {len}"), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (remote, tip) = branch(local.head().unwrap(), next, 10);
                    next += 10;
                    let start = Instant::now();
                    black_box(local.pull(&remote, tip, false).unwrap());
                    total += start.elapsed();
                }
                total
            })
        });
        // Two 10-commit branches off the tip; their merge base is the tip.
        let tip = local.head().unwrap();
        let (b1, t1) = branch(tip, next, 10);
        let (b2, t2) = branch(tip, next + 10, 10);
        Crdt::merge(&mut local, &b1).unwrap();
        Crdt::merge(&mut local, &b2).unwrap();
        group.bench_function(format!("merge base of two 10-commit branches on {len}"), |bench| {
            bench.iter(|| {
                let bases = local.graph().merge_bases(&[t1], &[t2]).unwrap();
                assert_eq!(bases, vec![tip]);
                black_box(bases)
            })
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash 1KiB");
    // About 1 KiB encoded: a map of 16 strings of 56 bytes.
    let value = Value::Map(
        (0..16).map(|i| (Value::from(format!("key{i:02}")), Value::from("x".repeat(56)))).collect(),
    );
    let bytes = value.encode();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("canonical content id", |bench| bench.iter(|| black_box(&value).content_id()));
    group.bench_function("encode then hash", |bench| {
        bench.iter(|| ContentId::hash_bytes(&black_box(&value).encode()))
    });
    group.bench_function("raw blake3 (baseline)", |bench| bench.iter(|| blake3::hash(black_box(&bytes))));
    group.finish();
}

criterion_group!(benches, ormap, cdvcs_commit, history_scaling, hashing);
criterion_main!(benches);
