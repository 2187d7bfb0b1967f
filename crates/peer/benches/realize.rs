//! Realization throughput: CDVCS commits per second applied into an in-memory identity and into a
//! store-backed identity on a durable `FileStore` (one atomic batch per 64 commits, or per commit;
//! a durability barrier at the end of each realized state).
//!
//! A stage on a file store holds a CDVCS of N commits (one `add` transaction each, created before
//! the clock starts); the clock runs from starting the stream until it has caught up with the head.
//! Each case runs 3 times on a fresh identity; the median is reported.
//!
//! `cargo bench -p replikativ-peer --bench realize` (environment: `REALIZE_BENCH_N=5000`,
//! `REALIZE_BENCH_REPS=3`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use replikativ_peer::crdt::{Transaction, Value};
use replikativ_peer::realize::{Identity, MemoryIdentity, Reducers, StoreIdentity, stream_into_identity};
use replikativ_peer::stage::Stage;
use replikativ_peer::store::{FileStore, Store};

const T: Duration = Duration::from_secs(600);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn reducers() -> Reducers<(i64, u64)> {
    Reducers::new().with("add", |s: &mut (i64, u64), v: &Value| {
        s.0 += v.as_i64().ok_or("not an integer")?;
        s.1 += 1;
        Ok(())
    })
}

async fn run<I: Identity<State = (i64, u64)>>(
    stage: &Stage,
    log: &replikativ_peer::crdt::Address,
    identity: I,
) -> Duration {
    let head = stage.heads(log).await.unwrap().into_iter().next().unwrap();
    let start = Instant::now();
    let stream = stream_into_identity(stage, log, reducers(), identity);
    stream.caught_up_to(head, T).await.unwrap();
    stream.settle(T).await.unwrap();
    let took = start.elapsed();
    stream.stop(T).await.unwrap();
    took
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let n = env("REALIZE_BENCH_N", 5000);
    let reps = env("REALIZE_BENCH_REPS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).unwrap());
        let stage = Stage::builder(store.clone()).user("mail:bench@example.org").spawn().await.unwrap();
        let log = stage.create_cdvcs(None).await.unwrap();
        for chunk in 0..n.div_ceil(64) {
            let batch = (0..64)
                .map(|j| chunk * 64 + j)
                .filter(|i| *i < n)
                .map(|i| stage.transact(&log, vec![Transaction::new("add", i as i64)]));
            for r in futures::future::join_all(batch).await {
                r.unwrap();
            }
        }
        let mut memory = Vec::new();
        let mut stored = Vec::new();
        let mut per_commit = Vec::new();
        for rep in 0..reps {
            memory.push(run(&stage, &log, MemoryIdentity::<(i64, u64)>::default()).await);
            let ident = StoreIdentity::<(i64, u64)>::open(store.clone(), &format!("bench-{rep}")).unwrap();
            stored.push(run(&stage, &log, ident).await);
            let ident =
                StoreIdentity::<(i64, u64)>::open(store.clone(), &format!("bench1-{rep}")).unwrap().chunk(1);
            per_commit.push(run(&stage, &log, ident).await);
        }
        let commits = (n + 1) as f64;
        for (name, times) in [
            ("memory identity", memory),
            ("store identity (FileStore, durable, 64 commits per batch)", stored),
            ("store identity (FileStore, durable, 1 commit per batch)", per_commit),
        ] {
            let m = median(times.clone());
            println!(
                "realize {name}: {commits} commits, median {:.1} ms, {:.0} commits/s (runs: {:?})",
                m.as_secs_f64() * 1e3,
                commits / m.as_secs_f64(),
                times.iter().map(|t| format!("{:.1} ms", t.as_secs_f64() * 1e3)).collect::<Vec<_>>()
            );
        }
        stage.shutdown().await;
    });
}
