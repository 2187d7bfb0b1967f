//! The realize crash test: a child process (this test binary re-executing itself, as in
//! `restart.rs`) commits to a CDVCS on a file store and streams it into a store-backed identity (a
//! running sum, a count and an order-sensitive digest), and is SIGKILLed at random moments, at
//! least 20 times, while the CDVCS grows to at least 2,000 commits. On every restart, before it
//! streams again, the child checks that the identity equals the fold of the prefix of the
//! linearized history its applied-log names (nothing applied twice, nothing skipped, nothing out of
//! order); at the end the parent reopens the store, streams to the head and checks the identity
//! against the fold of the whole history.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use replikativ::crdt::{Address, Transaction, Value};
use replikativ::peer::realize::{CdvcsLog, Reducers, StoreIdentity, stream_into_identity};
use replikativ::peer::stage::Stage;
use replikativ::store::{FileStore, Store};

const USER: &str = "mail:crash@example.org";
const TARGET: usize = 2_000;
const MIN_KILLS: usize = 20;
const IDENTITY: &str = "totals";
const T: Duration = Duration::from_secs(20);

/// The identity: (sum, count, an order-sensitive digest) of the applied values (a tuple: serde
/// is not a dependency of this crate's tests).
type Totals = (i64, u64, u64);

fn add(t: &mut Totals, v: i64) {
    t.0 += v;
    t.1 += 1;
    t.2 = t.2.wrapping_mul(1_000_003) ^ (v as u64);
}

fn reducers() -> Reducers<Totals> {
    Reducers::new().with("add", |t: &mut Totals, v: &Value| {
        add(t, v.as_i64().ok_or("not an integer")?);
        Ok(())
    })
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Checks the stored identity against the fold of the history prefix its log names; returns
/// (applied count, history length).
async fn verify(stage: &Stage, store: &dyn Store, address: &Address) -> (u64, usize) {
    let (state, log) = StoreIdentity::<Totals>::load(store, IDENTITY).unwrap();
    let cdvcs = bounded("read", stage.cdvcs(address)).await.unwrap();
    let head = cdvcs.head().expect("one writer: one head");
    let history = cdvcs.graph().history(&head);
    assert!(log.cdvcs.is_prefix_of(&history), "the applied-log names a prefix of the history");
    let n = log.cdvcs.count as usize;
    let mut expected = Totals::default();
    for ids in history[..n].chunks(500) {
        for c in bounded("commits", stage.commits(ids)).await.unwrap() {
            for t in c.transactions {
                add(&mut expected, t.params.as_i64().unwrap());
            }
        }
    }
    assert_eq!(state, expected, "identity == fold of the applied prefix ({n} commits)");
    (log.cdvcs.count, history.len())
}

/// The child: commits and streams until killed (run by the parent; a no-op as a normal test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realize_crash_child() {
    let (Ok(dir), Ok(id)) = (std::env::var("REALIZE_CHILD_DIR"), std::env::var("REALIZE_CHILD_ID")) else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(FileStore::open(&dir).unwrap());
    let stage = bounded("spawn", Stage::builder(store.clone()).user(USER).spawn()).await.unwrap();
    let address = Address::new(USER, id.parse().unwrap()).unwrap();
    if bounded("read", stage.cdvcs(&address)).await.is_err() {
        bounded("create", stage.create_cdvcs(Some(address.id))).await.unwrap();
    }
    let (applied, total) = verify(&stage, &*store, &address).await;
    println!("VERIFIED {applied} {total}");
    let identity = StoreIdentity::<Totals>::open(store.clone(), IDENTITY).unwrap().chunk(4);
    let stream = stream_into_identity(&stage, &address, reducers(), identity);
    let mut total = total;
    // Grows past the target (the parent kills at least MIN_KILLS times, however fast this is).
    while total < 2 * TARGET {
        let batch =
            (0..8).map(|j| stage.transact(&address, vec![Transaction::new("add", (total + j) as i64)]));
        for r in bounded("transact", futures::future::join_all(batch)).await {
            r.unwrap();
        }
        total += 16;
        println!("TOTAL {total}");
    }
    let p = stream.settle(T).await.unwrap();
    println!("CAUGHT_UP {}", p.cdvcs.count);
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A small xorshift generator seeded from a random uuid (printed, for reproduction of timings).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn realized_identity_survives_sigkill_exactly_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let seed = (uuid::Uuid::new_v4().as_u128() as u64) | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let (mut kills, mut verified, mut lagging, mut total) = (0usize, 0usize, 0usize, 0usize);
    while verified < MIN_KILLS || total < TARGET {
        assert!(kills < 200, "the CDVCS grows: {total} commits after {kills} kills");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["realize_crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("REALIZE_CHILD_DIR", dir.path())
            .env("REALIZE_CHILD_ID", id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment: mostly while it commits and streams, sometimes during startup.
        let early = rng.below(5) == 0;
        let delay = Duration::from_millis(if early { rng.below(300) } else { rng.below(400) });
        let mut clock: Option<Instant> = early.then(Instant::now);
        let deadline = Instant::now() + T;
        loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(line) => {
                    if let Some(at) = line.find("VERIFIED ") {
                        let mut n = line[at + 9..].split(' ').map(|x| x.parse::<usize>().unwrap());
                        let (applied, len) = (n.next().unwrap(), n.next().unwrap());
                        // The stream was behind when the previous child died.
                        lagging += usize::from(applied < len);
                        verified += 1;
                        clock.get_or_insert_with(Instant::now);
                    }
                    if let Some(n) = line.strip_prefix("TOTAL ") {
                        total = n.parse().unwrap();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the child died by itself (see its output)")
                }
            }
            if clock.is_some_and(|c| c.elapsed() >= delay) {
                break;
            }
            assert!(Instant::now() < deadline, "the child did not start");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if let Some(n) = line.strip_prefix("TOTAL ") {
                total = n.parse().unwrap();
            }
        }
        reader.join().unwrap();
        kills += 1;
    }
    assert!(kills >= MIN_KILLS && verified >= MIN_KILLS, "kills: {kills}, verified restarts: {verified}");

    // The last restart, in this process: verify, then stream to the head.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).unwrap());
        let stage = bounded("spawn", Stage::builder(store.clone()).user(USER).spawn()).await.unwrap();
        let address = Address::new(USER, id).unwrap();
        let (_, len) = verify(&stage, &*store, &address).await;
        assert!(len >= TARGET, "the CDVCS has {len} commits");
        let identity = StoreIdentity::<Totals>::open(store.clone(), IDENTITY).unwrap();
        let stream = stream_into_identity(&stage, &address, reducers(), identity);
        let p = stream.settle(T).await.unwrap();
        stream.stop(T).await.unwrap();
        let (applied, len) = verify(&stage, &*store, &address).await;
        assert_eq!(applied as usize, len, "everything applied");
        let history = bounded("read", stage.cdvcs(&address)).await.unwrap().linearize();
        assert_eq!(p.cdvcs, CdvcsLog::of(&history));
        println!(
            "{kills} kills, {verified} verified restarts ({lagging} with the stream behind), {len} commits, {:.1} s",
            started.elapsed().as_secs_f64()
        );
        bounded("shutdown", stage.shutdown()).await;
    });
}
