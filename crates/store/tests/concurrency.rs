//! Many threads on one store: disjoint and shared keys, batches, updates and barriers, checked against the
//! expected final state; batch visibility is atomic for concurrent readers; concurrent barriers share
//! fsync rounds.

use std::sync::{Arc, Barrier};
use std::thread;

use replikativ_store::{Batch, FileStore, MemoryStore, SledStore, Store};

const THREADS: usize = 4;
const ROUNDS: u64 = 200;

fn hammer(store: Arc<dyn Store>, check_scan_atomicity: bool) {
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for r in 0..ROUNDS {
                    // Disjoint keys.
                    store.put(format!("own/{t}/{}", r % 10).as_bytes(), &r.to_le_bytes()).expect("put");
                    // A shared counter through read-modify-write.
                    store
                        .update(b"shared/counter", &mut |old| {
                            let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().expect("u64")));
                            Some((n + 1).to_le_bytes().to_vec())
                        })
                        .expect("update");
                    // Overlapping batches: every thread writes the whole group with one version.
                    let version = (t as u64) << 32 | r;
                    let mut b = Batch::new();
                    for k in 0..4 {
                        b.push_put(format!("group/{k}"), version.to_le_bytes().to_vec());
                    }
                    b.push_delete(format!("own/{t}/gone"));
                    store.apply(&b).expect("batch");
                    store.log_append(b"shared-log", &version.to_le_bytes()).expect("append");
                    if r % 20 == 0 {
                        store.sync().expect("sync");
                    }
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        thread::spawn(move || {
            for _ in 0..300 {
                let group = store.scan_prefix(b"group/").expect("scan");
                if check_scan_atomicity && !group.is_empty() {
                    assert_eq!(group.len(), 4);
                    assert!(group.iter().all(|(_, v)| *v == group[0].1), "torn batch visible: {group:?}");
                }
            }
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    reader.join().expect("reader");
    store.sync().expect("final sync");

    let total = THREADS as u64 * ROUNDS;
    let counter = store.get(b"shared/counter").expect("get").expect("counter");
    assert_eq!(u64::from_le_bytes(counter.try_into().expect("u64")), total);
    for t in 0..THREADS {
        for k in 0..10u64 {
            let last = (0..ROUNDS).filter(|r| r % 10 == k).max().expect("round");
            assert_eq!(
                store.get(format!("own/{t}/{k}").as_bytes()).expect("get"),
                Some(last.to_le_bytes().to_vec())
            );
        }
    }
    let group = store.scan_prefix(b"group/").expect("scan");
    assert_eq!(group.len(), 4);
    assert!(group.iter().all(|(_, v)| *v == group[0].1));
    let bounds = store.log_bounds(b"shared-log").expect("bounds");
    assert_eq!(bounds.next, total);
    let entries = store.log_read(b"shared-log", 0, usize::MAX).expect("read");
    assert_eq!(entries.len() as u64, total);
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64));
}

#[test]
fn memory_under_contention() {
    hammer(Arc::new(MemoryStore::new()), true);
}

#[test]
fn file_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    hammer(Arc::new(FileStore::open(dir.path()).expect("open")), true);
}

#[test]
fn sled_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    // sled iterators are not snapshots, so a scan may interleave with a batch; only final state is checked.
    hammer(Arc::new(SledStore::open(dir.path()).expect("open")), false);
}

/// N threads that each write and then call `sync` at the same moment share fsync rounds.
#[test]
fn concurrent_barriers_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FileStore::open(dir.path()).expect("open"));
    let threads = 16;
    let rounds = 20;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                for r in 0..rounds {
                    barrier.wait();
                    store.put(format!("k/{t}/{r}").as_bytes(), b"v").expect("put");
                    store.sync().expect("sync");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let calls = (threads * rounds) as u64;
    let fsyncs = store.stats().sync_rounds;
    eprintln!("{calls} sync calls, {fsyncs} fsync rounds");
    assert!(fsyncs >= rounds as u64 / 2, "suspiciously few fsyncs: {fsyncs}");
    assert!(fsyncs * 2 <= calls, "{calls} sync calls caused {fsyncs} fsync rounds");
}
