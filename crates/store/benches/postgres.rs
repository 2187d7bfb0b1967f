//! PgStore against `pgbench` on the same PostgreSQL server, in the same run:
//! `cargo bench -p replikativ-store --features postgres --bench postgres`.
//!
//! The server is the one at `REPLIKATIV_PG_URL` if set, else a private one started for the run (initdb in a
//! temporary directory, `fsync=on`, `synchronous_commit=on`; binaries from `REPLIKATIV_PG_BIN`, default
//! `/usr/lib/postgresql/15/bin`). `STORE_BENCH_QUICK=1` for a smoke run.
//!
//! Measured (medians of 3 runs; 16-byte keys, 100-byte values, durable = acknowledged after a commit
//! with `synchronous_commit=on`): batches of 1000 puts + `sync` (rows/s) on PgStore, on FileStore in
//! /tmp, and a `pgbench` script that upserts 1000 rows of the same shape per transaction (1 client);
//! single `put` + `sync` (ops/s) on PgStore next to a `pgbench` single-row upsert (1 client).

#[path = "../tests/support/pg.rs"]
mod pg;

use std::process::Command;
use std::time::{Duration, Instant};

use replikativ_store::{Batch, FileStore, PgStore, Store};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn batches(store: &dyn Store, first: u64, n: u64) -> Duration {
    let start = Instant::now();
    for b in 0..n {
        let mut batch = Batch::new();
        for i in 0..1000u64 {
            batch.push_put(format!("key{:013}", (first + b) * 1000 + i), vec![b as u8; 100]);
        }
        store.apply(&batch).expect("apply");
        store.sync().expect("sync");
    }
    start.elapsed()
}

fn singles(store: &dyn Store, first: u64, n: u64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        store.put(format!("one{:013}", first + i).as_bytes(), &[7u8; 100]).expect("put");
        store.sync().expect("sync");
    }
    start.elapsed()
}

/// Runs pgbench with `script` for `secs` seconds, 1 client; returns transactions per second.
fn pgbench(bin: &std::path::Path, base: &str, script: &str, secs: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("write script");
    let out = Command::new(bin.join("pgbench"))
        .args(["-n", "-c", "1", "-T", &secs.to_string(), "-f", file.to_str().expect("utf8"), base])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

fn main() {
    let quick = std::env::var("STORE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (n_batches, n_single, secs) = if quick { (5, 50, 1) } else { (60, 600, 5) };
    let bin = std::path::PathBuf::from(
        std::env::var("REPLIKATIV_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
    );
    let private;
    let base = match std::env::var("REPLIKATIV_PG_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            private = pg::PrivateServer::start();
            private.url()
        }
    };
    println!(
        "PgStore vs pgbench on {base} ({n_batches} batches of 1000, {n_single} single puts, pgbench {secs} s; median of 3)"
    );
    let store = PgStore::open_url(&pg::url(&base, &pg::unique_ns("bench"))).expect("open");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = FileStore::open(dir.path()).expect("open file store");

    let (mut pg_b, mut file_b, mut pgb_b, mut pg_s, mut pgb_s) = (vec![], vec![], vec![], vec![], vec![]);
    let table = format!("bench_{}", std::process::id());
    let setup = format!("CREATE TABLE IF NOT EXISTS {table} (k bytea PRIMARY KEY, v bytea NOT NULL);");
    let setup_file = dir.path().join("setup.sql");
    std::fs::write(&setup_file, &setup).expect("write");
    let psql = Command::new("psql").args(["-q", &base, "-f", setup_file.to_str().expect("utf8")]).status();
    if !psql.is_ok_and(|s| s.success()) {
        // Fall back to pgbench itself for the setup (psql may be missing).
        pgbench(&bin, &base, &setup, 1);
    }
    let many = format!(
        "\\set r random(1, 1000000000)\n\
         INSERT INTO {table} (k, v) SELECT convert_to(lpad((:r::bigint * 1000 + g)::text, 16, '0'), 'UTF8'), \
         convert_to(repeat('x', 100), 'UTF8') FROM generate_series(1, 1000) g \
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n"
    );
    let one = format!(
        "\\set r random(1, 1000000000)\n\
         INSERT INTO {table} (k, v) VALUES (convert_to(lpad(:r::text, 16, '0'), 'UTF8'), convert_to(repeat('x', 100), 'UTF8')) \
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n"
    );
    for run in 0..3u64 {
        pg_b.push(1000.0 * n_batches as f64 / batches(&store, run * n_batches, n_batches).as_secs_f64());
        file_b.push(1000.0 * n_batches as f64 / batches(&file, run * n_batches, n_batches).as_secs_f64());
        pgb_b.push(1000.0 * pgbench(&bin, &base, &many, secs));
        pg_s.push(n_single as f64 / singles(&store, run * n_single, n_single).as_secs_f64());
        pgb_s.push(pgbench(&bin, &base, &one, secs));
    }
    let (a, b, c, d, e) = (median(pg_b), median(file_b), median(pgb_b), median(pg_s), median(pgb_s));
    println!("{:<58} {:>12}", "case", "median");
    println!("{:<58} {:>12.0}", "PgStore: batches of 1000 puts + sync (rows/s)", a);
    println!("{:<58} {:>12.0}", "FileStore (/tmp): batches of 1000 puts + sync (rows/s)", b);
    println!("{:<58} {:>12.0}", "pgbench: 1000-row upsert per transaction (rows/s)", c);
    println!("{:<58} {:>12.2}", "PgStore / pgbench, batches", a / c);
    println!("{:<58} {:>12.0}", "PgStore: put + sync (ops/s)", d);
    println!("{:<58} {:>12.0}", "pgbench: single-row upsert (transactions/s)", e);
    println!("{:<58} {:>12.2}", "PgStore / pgbench, single writes", d / e);
}
