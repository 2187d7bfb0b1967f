//! Group commit: many writers share one durability barrier.
//!
//! Every completed write bumps a counter ([`GroupCommit::note_write`]). A [`GroupCommit::sync`] caller
//! records the counter value `target` at entry. If a completed round already covered `target` it returns at
//! once; if a round is in flight it waits for it and re-checks; otherwise it becomes the leader: it reads the
//! counter again (`upto`, which is `>= target`), runs the backend's flush without holding the lock, and
//! publishes `upto` as durable. Writes that complete while a round is in flight are picked up by the next
//! leader, so N concurrent callers cause at most about two flushes per "generation" instead of N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::engine::lock;
use crate::error::{Result, StoreError};

/// Shared leader/follower barrier state.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Number of writes that completed (are in the OS page cache or the engine's buffers).
    written: AtomicU64,
    /// Number of flushes actually performed (diagnostics and tests).
    flushes: AtomicU64,
    state: Mutex<RoundState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct RoundState {
    /// Every write numbered `<= durable` is durable.
    durable: u64,
    /// A leader is flushing right now.
    in_flight: bool,
    /// Set when a flush failed; the store refuses further barriers.
    poisoned: Option<String>,
}

impl GroupCommit {
    /// Records that one more write has completed. Call after the write is visible to readers.
    pub(crate) fn note_write(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Number of flushes run so far.
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Fails with `Poisoned` if an earlier flush failed.
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        match &lock(&self.state).poisoned {
            Some(reason) => Err(StoreError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// The barrier: returns when every write noted before the call is durable, running `flush` at most once
    /// (only if no other round covers this caller).
    pub(crate) fn sync(&self, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        let target = self.written.load(Ordering::SeqCst);
        let mut flush = Some(flush);
        let mut st = lock(&self.state);
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(StoreError::Poisoned { reason: reason.clone() });
            }
            if st.durable >= target {
                return Ok(());
            }
            if !st.in_flight {
                st.in_flight = true;
                drop(st);
                let upto = self.written.load(Ordering::SeqCst);
                let result = match flush.take() {
                    Some(f) => f(),
                    None => Ok(()),
                };
                self.flushes.fetch_add(1, Ordering::SeqCst);
                let mut st = lock(&self.state);
                st.in_flight = false;
                match &result {
                    Ok(()) => st.durable = st.durable.max(upto),
                    Err(e) => st.poisoned = Some(e.to_string()),
                }
                self.done.notify_all();
                return result;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_flushes() {
        let gc = Arc::new(GroupCommit::default());
        let n = 32;
        let start = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let gc = gc.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    gc.note_write();
                    gc.sync(|| {
                        thread::sleep(Duration::from_millis(20));
                        Ok(())
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("sync");
        }
        let flushes = gc.flush_count();
        assert!(flushes <= 4, "{n} callers caused {flushes} flushes");
        assert!(flushes >= 1);
    }

    #[test]
    fn sync_without_writes_does_not_flush() {
        let gc = GroupCommit::default();
        gc.sync(|| panic!("must not flush")).expect("sync");
        gc.note_write();
        gc.sync(|| Ok(())).expect("sync");
        gc.sync(|| panic!("already durable")).expect("sync");
        assert_eq!(gc.flush_count(), 1);
    }

    #[test]
    fn failed_flush_poisons() {
        let gc = GroupCommit::default();
        gc.note_write();
        let err = gc.sync(|| Err(StoreError::Closed)).expect_err("flush fails");
        assert!(matches!(err, StoreError::Closed));
        gc.note_write();
        assert!(matches!(gc.sync(|| Ok(())), Err(StoreError::Poisoned { .. })));
        assert!(gc.check_poisoned().is_err());
    }
}
