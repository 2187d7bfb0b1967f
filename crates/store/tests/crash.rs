//! Crash tests: a child process writes and syncs numbered batches and is SIGKILLed at random moments; after
//! each kill the store must open without repair, hold every batch the child reported as synced, and hold
//! no batch partially.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use replikativ_store::{FileStore, SledStore, Store};

const KEYS_PER_BATCH: usize = 5;
const KILLS: usize = 20;

/// xorshift64*, seeded from the clock (printed, so a failure can be reproduced by hand).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v.try_into().expect("8-byte value"))
}

/// Checks the invariants; returns the number of complete batches.
fn verify(store: &dyn Store, max_synced: Option<u64>) -> u64 {
    let next = store.get(b"next").expect("get next").map_or(0, |v| u64_of(&v));
    if let Some(synced) = max_synced {
        assert!(next > synced, "batch {synced} was synced but next = {next}");
    }
    let keys = store.scan_prefix(b"b/").expect("scan");
    let mut counts = vec![0usize; next as usize];
    for (k, v) in &keys {
        let batch: u64 = std::str::from_utf8(&k[2..10]).expect("utf8").parse().expect("batch number");
        assert!(batch < next, "key of batch {batch} present but next = {next}: partial batch");
        assert_eq!(u64_of(v), batch, "value of {}", String::from_utf8_lossy(k));
        counts[batch as usize] += 1;
    }
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(*c, KEYS_PER_BATCH, "batch {i} has {c} of {KEYS_PER_BATCH} keys");
    }
    // The log holds 0..n for n in {next - 1, next} (the append follows the batch), densely.
    let bounds = store.log_bounds(b"log").expect("bounds");
    assert_eq!(bounds.first, 0);
    assert!(bounds.next == next || bounds.next + 1 == next, "log next {} vs next {next}", bounds.next);
    if let Some(synced) = max_synced {
        assert!(bounds.next > synced, "log entry {synced} was synced but log next = {}", bounds.next);
    }
    let entries = store.log_read(b"log", 0, usize::MAX).expect("log read");
    assert_eq!(entries.len() as u64, bounds.next);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!((e.seq, u64_of(&e.data)), (i as u64, i as u64));
    }
    next
}

/// The tests of this file run one at a time: a child spawned by one test would otherwise inherit (between
/// fork and exec) the directory-lock descriptor of a store the other test has open, and briefly hold it.
static SERIAL: Mutex<()> = Mutex::new(());

fn crash_loop(backend: &str, open: &dyn Fn(&Path) -> Box<dyn Store>) {
    crash_loop_at(backend, None, open)
}

/// [`crash_loop`] with the child's store location given (`None`: the temporary directory).
fn crash_loop_at(backend: &str, target: Option<&str>, open: &dyn Fn(&Path) -> Box<dyn Store>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_nanos() as u64 | 1;
    eprintln!("{backend}: seed {seed}");
    let mut rng = Rng(seed);
    let mut total_synced = 0usize;
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
            .args([backend, target.unwrap_or(dir.path().to_str().expect("utf8 path"))])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let delay = Duration::from_millis(20 + rng.next() % 131);
        let start = Instant::now();
        while start.elapsed() < delay {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
                panic!("{backend} round {round}: child exited early with {status}: {err}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
        let synced: Vec<u64> = out.lines().map(|l| l.trim().parse().expect("batch number")).collect();
        total_synced += synced.len();
        let store = open(dir.path());
        verify(&*store, synced.last().copied());
        drop(store);
    }
    eprintln!("{backend}: {KILLS} kills, {total_synced} synced batches verified");
    assert!(total_synced > 0, "the child never synced a batch");
    if backend == "file" {
        // The child uses 16 KiB segments and compacts from 32 KiB on: segment 1 must be gone, i.e. kills
        // also hit a store that rolled and compacted.
        let mut ids: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        ids.sort();
        eprintln!("file: segments after the kills: {ids:?}");
        // (Only asserted when the children got far enough; a heavily loaded machine may write too little.)
        if total_synced >= 300 {
            assert_ne!(ids.first().map(String::as_str), Some("0000000001.seg"), "no compaction happened");
        }
    }
}

#[test]
fn file_store_survives_sigkill() {
    crash_loop("file", &|p| Box::new(FileStore::open(p).expect("open after kill")));
}

#[test]
fn sled_store_survives_sigkill() {
    crash_loop("sled", &|p| Box::new(SledStore::open(p).expect("open after kill")));
}

#[cfg(feature = "postgres")]
#[path = "support/pg.rs"]
mod pg;

/// The node process is killed mid-batches; its lease dies with its session, and the reopened namespace
/// holds every synced batch and no partial one.
#[cfg(feature = "postgres")]
#[test]
fn postgres_store_survives_sigkill() {
    let Some(base) = pg::base_url() else { return };
    let url = pg::url(&base, &pg::unique_ns("crash"));
    crash_loop_at("postgres", Some(&url), &|_| {
        // The killed child's session ends when the server notices its closed socket: wait for that.
        let start = Instant::now();
        loop {
            match replikativ_store::PgStore::open_url(&url) {
                Ok(s) => return Box::new(s),
                Err(replikativ_store::StoreError::NamespaceLocked { .. })
                    if start.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("open after kill: {e}"),
            }
        }
    });
}
