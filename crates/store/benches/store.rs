//! Store benchmarks: `cargo bench -p replikativ-store` (release). Prints a table of medians over several
//! runs per backend (File, Sled, Memory).
//!
//! Set `STORE_BENCH_QUICK=1` for a smoke run with small sizes. Temporary stores live under the system temp
//! directory (`/tmp`).
//!
//! Measured per backend: put and get ops/s (16-byte keys, 100-byte values, no barrier); a durable single
//! write (`put` + `sync`) next to a bare `pwrite` + `fdatasync` loop on the same disk, interleaved in
//! chunks of 100 so both see the same load;
//! batches of 1000 puts + `sync` (entries/s); open time and resident-memory growth for a store of
//! 1,000,000 entries; bytes on disk per logical byte.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use replikativ_store::{Batch, FileStore, MemoryStore, SledStore, Store};

struct Sizes {
    runs: usize,
    ops: u64,
    durable: u64,
    batches: u64,
    big: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    File,
    Sled,
    Memory,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::File => "File",
            Backend::Sled => "Sled",
            Backend::Memory => "Memory",
        }
    }

    fn open(self, dir: &Path) -> Box<dyn Store> {
        match self {
            Backend::File => Box::new(FileStore::open(dir).expect("open file store")),
            Backend::Sled => Box::new(SledStore::open(dir).expect("open sled store")),
            Backend::Memory => Box::new(MemoryStore::new()),
        }
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:013}").into_bytes()
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() { disk_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

/// A bare append + fdatasync loop of 150-byte records: the floor for one durable write.
struct Baseline {
    file: std::fs::File,
    pos: u64,
}

impl Baseline {
    fn new(dir: &Path) -> Baseline {
        let path = dir.join("baseline.bin");
        let file =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).expect("open");
        Baseline { file, pos: 0 }
    }

    /// Runs `n` write + fdatasync rounds; returns the elapsed time.
    fn run(&mut self, n: u64) -> Duration {
        let rec = [7u8; 150];
        let start = Instant::now();
        for _ in 0..n {
            self.file.write_all_at(&rec, self.pos).expect("write");
            self.file.sync_data().expect("fdatasync");
            self.pos += rec.len() as u64;
        }
        start.elapsed()
    }
}

#[derive(Default)]
struct Row {
    put: Vec<f64>,
    get: Vec<f64>,
    durable_us: Vec<f64>,
    baseline_us: Vec<f64>,
    batch: Vec<f64>,
    open_s: Vec<f64>,
    rss_mib: f64,
    amplification: f64,
}

fn run_once(b: Backend, s: &Sizes, row: &mut Row) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = b.open(dir.path());
    let value = [0xABu8; 100];
    let start = Instant::now();
    for i in 0..s.ops {
        store.put(&key(i), &value).expect("put");
    }
    row.put.push(rate(s.ops, start.elapsed()));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let start = Instant::now();
    for _ in 0..s.ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = store.get(&key(x % s.ops)).expect("get");
        assert!(v.is_some());
    }
    row.get.push(rate(s.ops, start.elapsed()));
    if b != Backend::Memory {
        store.sync().expect("sync");
        // Interleave chunks of store writes and baseline writes, so both see the same disk and load.
        let mut baseline = Baseline::new(dir.path());
        let (mut in_store, mut in_baseline) = (Duration::ZERO, Duration::ZERO);
        for chunk in 0..s.durable / 100 {
            let start = Instant::now();
            for i in chunk * 100..(chunk + 1) * 100 {
                store.put(&key(i), &value).expect("put");
                store.sync().expect("sync");
            }
            in_store += start.elapsed();
            in_baseline += baseline.run(100);
        }
        row.durable_us.push(in_store.as_secs_f64() * 1e6 / s.durable as f64);
        row.baseline_us.push(in_baseline.as_secs_f64() * 1e6 / s.durable as f64);
    }
    let start = Instant::now();
    for n in 0..s.batches {
        let mut batch = Batch::new();
        for i in 0..1000 {
            batch.push_put(key(s.ops + n * 1000 + i), value.to_vec());
        }
        store.apply(&batch).expect("batch");
        store.sync().expect("sync");
    }
    row.batch.push(rate(s.batches * 1000, start.elapsed()));
    store.close().expect("close");
}

/// Builds a store of `s.big` entries, then measures opening it.
fn open_big(b: Backend, s: &Sizes, row: &mut Row) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = b.open(dir.path());
        let value = [0xCDu8; 100];
        for n in 0..s.big.div_ceil(1000) {
            let mut batch = Batch::new();
            for i in n * 1000..((n + 1) * 1000).min(s.big) {
                batch.push_put(key(i), value.to_vec());
            }
            store.apply(&batch).expect("batch");
        }
        store.sync().expect("sync");
        store.close().expect("close");
    }
    let logical = s.big * (key(0).len() as u64 + 100);
    row.amplification = disk_bytes(dir.path()) as f64 / logical as f64;
    for run in 0..s.runs.min(3) {
        let before = rss_bytes();
        let start = Instant::now();
        let store = b.open(dir.path());
        let opened = start.elapsed();
        // Touch one key so lazy engines have really opened.
        assert!(store.get(&key(s.big / 2)).expect("get").is_some());
        if run == 0 {
            row.rss_mib = (rss_bytes().saturating_sub(before)) as f64 / (1 << 20) as f64;
        }
        row.open_s.push(opened.as_secs_f64());
        drop(store);
    }
}

fn main() {
    let quick = std::env::var_os("STORE_BENCH_QUICK").is_some();
    let s = if quick {
        Sizes { runs: 2, ops: 20_000, durable: 200, batches: 10, big: 100_000 }
    } else {
        Sizes { runs: 5, ops: 200_000, durable: 2_000, batches: 100, big: 1_000_000 }
    };
    // `cargo bench` passes `--bench`; accept and ignore arguments.
    println!(
        "store bench: {} runs, {} puts/gets, {} durable single writes, {} batches of 1000, open of {} entries{}",
        s.runs,
        s.ops,
        s.durable,
        s.batches,
        s.big,
        if quick { " (STORE_BENCH_QUICK)" } else { "" }
    );
    println!(
        "| backend | put ops/s | get ops/s | put+sync ops/s | put+sync µs | bare write+fdatasync µs | ratio | batch 1000+sync entries/s | open {}k s | open RSS MiB | disk/logical |",
        s.big / 1000
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for b in [Backend::File, Backend::Sled, Backend::Memory] {
        let mut row = Row::default();
        for _ in 0..s.runs {
            run_once(b, &s, &mut row);
        }
        if b != Backend::Memory {
            open_big(b, &s, &mut row);
        }
        let durable = median(row.durable_us.clone());
        let base = median(row.baseline_us.clone());
        let na = |v: f64, f: &dyn Fn(f64) -> String| if v.is_nan() { "n/a".to_string() } else { f(v) };
        println!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            b.name(),
            median(row.put),
            median(row.get),
            na(durable, &|d| format!("{:.0}", 1e6 / d)),
            na(durable, &|d| format!("{d:.1}")),
            na(base, &|d| format!("{d:.1}")),
            na(durable / base, &|r| format!("{r:.2}")),
            median(row.batch),
            na(median(row.open_s), &|t| format!("{t:.3}")),
            if b == Backend::Memory { "n/a".into() } else { format!("{:.1}", row.rss_mib) },
            if b == Backend::Memory { "n/a".into() } else { format!("{:.2}", row.amplification) },
        );
    }
}
