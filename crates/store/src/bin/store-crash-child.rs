//! Helper process for the crash tests (`tests/crash.rs`): opens a store, continues writing numbered
//! batches from where the store is, syncs after each, and prints each synced batch number.
//!
//! Usage: `store-crash-child <file|sled|postgres> <dir|url>`. Batch `i` puts `KEYS_PER_BATCH` keys `b/<i>/<j>` with the
//! value `i`, and sets `next` to `i + 1`, in one atomic batch; then it appends `i` to the log `log`.

use std::io::Write;
use std::process::ExitCode;

use replikativ_store::{Batch, FileStore, FileStoreOptions, SledStore, Store, StoreError};

const KEYS_PER_BATCH: u64 = 5;

fn run(backend: &str, dir: &str) -> Result<(), StoreError> {
    let store: Box<dyn Store> = match backend {
        // Small segments and an eager compaction threshold, so kills also land in rolls and compactions.
        "file" => Box::new(FileStore::open_with(
            dir,
            FileStoreOptions::default().with_segment_size(16 << 10).with_compaction_min_bytes(32 << 10),
        )?),
        "sled" => Box::new(SledStore::open(dir)?),
        // `dir` is a store URL here.
        #[cfg(feature = "postgres")]
        "postgres" => Box::new(replikativ_store::PgStore::open_url(dir)?),
        other => panic!("unknown backend {other}"),
    };
    let next = match store.get(b"next")? {
        Some(v) => u64::from_le_bytes(v.as_slice().try_into().expect("8-byte counter")),
        None => 0,
    };
    // A crash between a batch and its log append leaves the log one entry short: repair it first.
    let mut logged = store.log_bounds(b"log")?.next;
    while logged < next {
        store.log_append(b"log", &logged.to_le_bytes())?;
        logged += 1;
    }
    let mut stdout = std::io::stdout();
    for i in next.. {
        let mut batch = Batch::new();
        for j in 0..KEYS_PER_BATCH {
            batch.push_put(format!("b/{i:08}/{j}"), i.to_le_bytes().to_vec());
        }
        batch.push_put(b"next".to_vec(), (i + 1).to_le_bytes().to_vec());
        // Some filler so segments roll and compaction has work to do.
        batch.push_put(format!("filler/{}", i % 50), vec![i as u8; 300]);
        store.apply(&batch)?;
        store.log_append(b"log", &i.to_le_bytes())?;
        store.sync()?;
        writeln!(stdout, "{i}").and_then(|_| stdout.flush()).expect("stdout");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: store-crash-child <file|sled> <dir>");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-crash-child: {e}");
            ExitCode::FAILURE
        }
    }
}
