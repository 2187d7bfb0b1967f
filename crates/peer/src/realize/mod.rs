//! Realization: streaming a replicated datatype into an application's identity (replikativ's
//! `stream-into-identity!`), with a durable applied-log. See `docs/design.md` §9.
//!
//! A stream watches one address on a [`Stage`]. Whenever it changes (and every poll interval as a
//! safety net) the stream reads the state, plans what the identity has not applied yet
//! ([`plan`]), fetches those commits with their transactions and applies them through the
//! application's [`Reducers`] to an [`Identity`], recording each unit in the identity's
//! applied-log. It is state based, so lagging change events, restarts and catch-up all take the same
//! path.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use replikativ_crdt::Transaction;
//! use replikativ_peer::realize::{MemoryIdentity, Reducers, stream_into_identity};
//! use replikativ_peer::stage::Stage;
//!
//! let stage = Stage::builder(Arc::new(replikativ_store::MemoryStore::new())).spawn().await?;
//! let log = stage.create_cdvcs(None).await?;
//! let reducers = Reducers::<i64>::new().with("add", |sum, v| {
//!     *sum += v.as_i64().ok_or("not an integer")?;
//!     Ok(())
//! });
//! let sum = MemoryIdentity::<i64>::default();
//! let stream = stream_into_identity(&stage, &log, reducers, sum.clone());
//! stage.transact(&log, vec![Transaction::new("add", 2)]).await?;
//! let head = stage.transact(&log, vec![Transaction::new("add", 40)]).await?;
//! stream.caught_up_to(head, Duration::from_secs(10)).await?;
//! assert_eq!(sum.get(), 42);
//! stream.stop(Duration::from_secs(10)).await?;
//! # stage.shutdown().await;
//! # Ok(()) }
//! ```

mod identity;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use replikativ_crdt::{Address, ContentId, Transaction, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use identity::{
    Identity, MemoryIdentity, Reducer, Reducers, Sink, SinkIdentity, StoreIdentity, Unit, UnitCommit,
};
pub use plan::{AppliedLog, CdvcsConflict, CdvcsLog, GSET_ADD, LWW_SET, Record};

use crate::proto::{CrdtState, StageError};
use crate::stage::{ChangesError, Stage};
use plan::{CdvcsPlan, PlannedUnit};

/// Why a stream stopped (or a wait failed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RealizeError {
    /// A transaction names a function without a reducer.
    #[error("no reducer for transaction {function:?} (commit {commit})")]
    NoReducer {
        /// The transaction's function name.
        function: String,
        /// The commit it is in.
        commit: ContentId,
    },
    /// A reducer failed.
    #[error("reducer {function:?} failed on commit {commit}: {message}")]
    Reducer {
        /// The transaction's function name.
        function: String,
        /// The commit it is in.
        commit: ContentId,
        /// The reducer's message.
        message: String,
    },
    /// A sink refused a unit (or a reset, `unit` None).
    #[error("sink failed: {message}")]
    Sink {
        /// The unit.
        unit: Option<ContentId>,
        /// The sink's message.
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The stage failed (the node is gone, a value is missing...).
    #[error("stage: {0}")]
    Stage(#[from] StageError),
    /// Encoding or decoding the identity's state failed.
    #[error("encoding: {0}")]
    Codec(String),
    /// The identity panicked.
    #[error("the identity panicked")]
    Panicked,
    /// The stream was stopped.
    #[error("the stream is stopped")]
    Stopped,
    /// A wait timed out.
    #[error("timed out")]
    Timeout,
}

impl From<replikativ_store::StoreError> for RealizeError {
    fn from(e: replikativ_store::StoreError) -> Self {
        RealizeError::Store(e.to_string())
    }
}

/// A callback told about CDVCS conflicts (several heads); the stream waits for a merge.
pub type CdvcsConflictFn = Arc<dyn Fn(&CdvcsConflict) + Send + Sync>;
/// A callback told about OR-Map conflicts: keys the new entries gave several live values, with
/// their commits (replikativ's `new-conflicts`). Called before the entries are applied.
pub type OrMapConflictFn = Arc<dyn Fn(&BTreeMap<Value, BTreeSet<ContentId>>) + Send + Sync>;

/// Options of a stream.
#[derive(Clone)]
pub struct StreamOptions {
    /// Told about CDVCS conflicts (once per set of heads).
    pub on_cdvcs_conflict: Option<CdvcsConflictFn>,
    /// Told about OR-Map conflicts.
    pub on_ormap_conflict: Option<OrMapConflictFn>,
    /// The state is read again after this long without a change event (default 1 s).
    pub poll: Duration,
    /// Units fetched and applied per round (default 256).
    pub fetch_chunk: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            on_cdvcs_conflict: None,
            on_ormap_conflict: None,
            poll: Duration::from_secs(1),
            fetch_chunk: 256,
        }
    }
}

impl std::fmt::Debug for StreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOptions")
            .field("on_cdvcs_conflict", &self.on_cdvcs_conflict.is_some())
            .field("on_ormap_conflict", &self.on_ormap_conflict.is_some())
            .field("poll", &self.poll)
            .field("fetch_chunk", &self.fetch_chunk)
            .finish()
    }
}

impl StreamOptions {
    /// Sets the CDVCS conflict callback.
    pub fn on_cdvcs_conflict(mut self, f: impl Fn(&CdvcsConflict) + Send + Sync + 'static) -> Self {
        self.on_cdvcs_conflict = Some(Arc::new(f));
        self
    }

    /// Sets the OR-Map conflict callback.
    pub fn on_ormap_conflict(
        mut self,
        f: impl Fn(&BTreeMap<Value, BTreeSet<ContentId>>) + Send + Sync + 'static,
    ) -> Self {
        self.on_ormap_conflict = Some(Arc::new(f));
        self
    }
}

/// Where a stream is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// States realized (rounds that read the state and applied what was new).
    pub rounds: u64,
    /// Units applied by this stream.
    pub applied: u64,
    /// CDVCS rebuilds done by this stream.
    pub rebuilds: u64,
    /// The applied-log's CDVCS part (its `last` is the head the identity reflects).
    pub cdvcs: CdvcsLog,
    /// The CDVCS conflict the stream waits on, if any.
    pub conflict: Option<CdvcsConflict>,
    /// Set when the stream ended: `Ok` when stopped, the error otherwise.
    pub finished: Option<Result<(), RealizeError>>,
}

enum Ctl {
    Stop,
    Settle(oneshot::Sender<Progress>),
}

/// A running stream (see [`stream_into_identity`]). Dropping it stops the stream.
#[derive(Debug)]
pub struct StreamHandle {
    ctl: mpsc::UnboundedSender<Ctl>,
    progress: watch::Receiver<Progress>,
    task: Option<JoinHandle<Result<(), RealizeError>>>,
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let _ = self.ctl.send(Ctl::Stop);
    }
}

async fn bounded<T>(timeout: Duration, f: impl Future<Output = T>) -> Result<T, RealizeError> {
    tokio::time::timeout(timeout, f).await.map_err(|_| RealizeError::Timeout)
}

impl StreamHandle {
    /// The latest progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until `done` holds for the progress; fails if the stream ends first (with its error)
    /// or after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<Progress, RealizeError> {
        let mut rx = self.progress.clone();
        bounded(timeout, async move {
            loop {
                {
                    let p = rx.borrow_and_update();
                    if done(&p) {
                        return Ok(p.clone());
                    }
                    if let Some(end) = &p.finished {
                        return Err(end.clone().err().unwrap_or(RealizeError::Stopped));
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(RealizeError::Stopped);
                }
            }
        })
        .await?
    }

    /// Waits until the identity reflects the CDVCS head `head` (all of its linearized history).
    pub async fn caught_up_to(&self, head: ContentId, timeout: Duration) -> Result<Progress, RealizeError> {
        self.wait_for(timeout, |p| p.cdvcs.last == Some(head)).await
    }

    /// Waits until the stream has realized the address's state as it is now (or found a CDVCS
    /// conflict in it: see [`Progress::conflict`]).
    pub async fn settle(&self, timeout: Duration) -> Result<Progress, RealizeError> {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Settle(tx)).is_err() {
            return Err(self.ended());
        }
        match bounded(timeout, rx).await? {
            Ok(p) => Ok(p),
            Err(_) => Err(self.ended()),
        }
    }

    fn ended(&self) -> RealizeError {
        match &self.progress.borrow().finished {
            Some(Err(e)) => e.clone(),
            _ => RealizeError::Stopped,
        }
    }

    /// Stops the stream and waits for it: its result (the error it stopped with, if any).
    pub async fn stop(mut self, timeout: Duration) -> Result<(), RealizeError> {
        let _ = self.ctl.send(Ctl::Stop);
        self.join(timeout).await
    }

    /// Waits for the stream to end by itself (an error, the node stopping).
    pub async fn finished(mut self, timeout: Duration) -> Result<(), RealizeError> {
        self.join(timeout).await
    }

    async fn join(&mut self, timeout: Duration) -> Result<(), RealizeError> {
        let Some(task) = self.task.take() else { return Err(RealizeError::Stopped) };
        match bounded(timeout, task).await? {
            Ok(r) => r,
            Err(_) => Err(RealizeError::Panicked),
        }
    }
}

/// Streams the datatype at `address` into `identity` with default options (see
/// [`stream_into_identity_with`]).
pub fn stream_into_identity<I: Identity>(
    stage: &Stage,
    address: &Address,
    reducers: Reducers<I::State>,
    identity: I,
) -> StreamHandle {
    stream_into_identity_with(stage, address, reducers, identity, StreamOptions::default())
}

/// Streams the datatype at `address` (CDVCS, OR-Map, LWW register or G-Set) into `identity`
/// through `reducers`, in a task on the current tokio runtime, until stopped or an error (a
/// missing or failing reducer, a store error, the node stopping). What is applied:
///
/// - CDVCS: the linearized history of the single head, commit by commit; several heads are a
///   conflict (reported, the stream waits for a merge);
/// - OR-Map: adds and removals in the original's commit-history order ([`plan::plan_ormap`]);
/// - LWW register: the value, as one transaction [`LWW_SET`] with the value as params;
/// - G-Set: each new element, as one transaction [`GSET_ADD`] with the element as params.
pub fn stream_into_identity_with<I: Identity>(
    stage: &Stage,
    address: &Address,
    reducers: Reducers<I::State>,
    identity: I,
    options: StreamOptions,
) -> StreamHandle {
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let (progress_tx, progress) = watch::channel(Progress::default());
    let run = Runner {
        stage: stage.clone(),
        address: address.clone(),
        reducers: Arc::new(reducers),
        identity: None,
        options,
        progress: Progress::default(),
        progress_tx,
        log: AppliedLog::default(),
        reported_heads: None,
    };
    let task = tokio::spawn(run.run(identity, ctl_rx));
    StreamHandle { ctl, progress, task: Some(task) }
}

struct Runner<I: Identity> {
    stage: Stage,
    address: Address,
    reducers: Arc<Reducers<I::State>>,
    identity: Option<I>,
    options: StreamOptions,
    progress: Progress,
    progress_tx: watch::Sender<Progress>,
    log: AppliedLog,
    reported_heads: Option<Vec<ContentId>>,
}

impl<I: Identity> Runner<I> {
    async fn run(mut self, identity: I, mut ctl: mpsc::UnboundedReceiver<Ctl>) -> Result<(), RealizeError> {
        let result = self.main(identity, &mut ctl).await;
        self.progress.finished = Some(result.clone());
        self.progress_tx.send_replace(self.progress.clone());
        result
    }

    /// Runs `f` on the identity on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut I, &Reducers<I::State>) -> T + Send + 'static,
    ) -> Result<T, RealizeError> {
        let mut identity = self.identity.take().ok_or(RealizeError::Panicked)?;
        let reducers = self.reducers.clone();
        let (identity, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut identity, &reducers);
            (identity, out)
        })
        .await
        .map_err(|_| RealizeError::Panicked)?;
        self.identity = Some(identity);
        Ok(out)
    }

    async fn main(
        &mut self,
        identity: I,
        ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    ) -> Result<(), RealizeError> {
        // Subscribe to changes before the first read, so no change falls between the two.
        let mut changes = self.stage.changes(&self.address);
        self.identity = Some(identity);
        self.log = self.blocking(|i, _| i.applied()).await??;
        self.progress.cdvcs = self.log.cdvcs;
        let mut settling: Vec<oneshot::Sender<Progress>> = Vec::new();
        loop {
            let answering = std::mem::take(&mut settling);
            // Control messages that arrived meanwhile.
            while let Ok(c) = ctl.try_recv() {
                match c {
                    Ctl::Stop => return Ok(()),
                    Ctl::Settle(tx) => settling.push(tx),
                }
            }
            let answering: Vec<_> = answering.into_iter().chain(std::mem::take(&mut settling)).collect();
            if let Some(state) = self.stage.state(&self.address).await? {
                self.round(state).await?;
            }
            self.progress.rounds += 1;
            self.progress_tx.send_replace(self.progress.clone());
            for tx in answering {
                let _ = tx.send(self.progress.clone());
            }
            tokio::select! {
                c = ctl.recv() => match c {
                    None | Some(Ctl::Stop) => return Ok(()),
                    Some(Ctl::Settle(tx)) => settling.push(tx),
                },
                e = changes.recv() => if e == Err(ChangesError::Closed) {
                    return Err(RealizeError::Stage(StageError::NodeGone));
                },
                _ = tokio::time::sleep(self.options.poll) => {}
            }
            // Coalesce the changes already queued: one read covers them all.
            while let Some(e) = changes.recv().now_or_never() {
                if e == Err(ChangesError::Closed) {
                    return Err(RealizeError::Stage(StageError::NodeGone));
                }
            }
        }
    }

    async fn round(&mut self, state: CrdtState) -> Result<(), RealizeError> {
        match state {
            CrdtState::Cdvcs(c) => match plan::plan_cdvcs(&c, &self.log.cdvcs) {
                CdvcsPlan::Wait | CdvcsPlan::UpToDate => {
                    self.clear_conflict();
                    Ok(())
                }
                CdvcsPlan::Conflict(conflict) => {
                    if self.reported_heads.as_ref() != Some(&conflict.heads) {
                        self.reported_heads = Some(conflict.heads.clone());
                        if let Some(f) = &self.options.on_cdvcs_conflict {
                            f(&conflict);
                        }
                    }
                    self.progress.conflict = Some(conflict);
                    Ok(())
                }
                CdvcsPlan::Apply { reset, order, from } => {
                    self.clear_conflict();
                    let units = plan::cdvcs_units(reset, &order, from, self.log.cdvcs);
                    if reset {
                        self.progress.rebuilds += 1;
                    }
                    self.apply(reset, units, &BTreeMap::new()).await
                }
            },
            CrdtState::Ormap(m) => {
                let plan = plan::plan_ormap(&m, &self.log.entries);
                let conflicts = m.new_conflicts(&plan.diff);
                if !conflicts.is_empty()
                    && let Some(f) = &self.options.on_ormap_conflict
                {
                    f(&conflicts);
                }
                self.apply(false, plan.units, &BTreeMap::new()).await
            }
            CrdtState::Lww(r) => {
                let Some((unit, synthetic)) = plan::plan_lww(&r, self.log.lww) else { return Ok(()) };
                self.apply(false, vec![unit], &synthetic).await
            }
            CrdtState::Gset(s) => {
                let (units, synthetic) = plan::plan_gset(&s, &self.log.entries);
                self.apply(false, units, &synthetic).await
            }
        }
    }

    fn clear_conflict(&mut self) {
        self.progress.conflict = None;
        self.reported_heads = None;
    }

    /// Fetches the units' commits (unless `synthetic` has their transactions) and applies them,
    /// a chunk at a time; then flushes the identity.
    async fn apply(
        &mut self,
        reset: bool,
        units: Vec<PlannedUnit>,
        synthetic: &BTreeMap<ContentId, Vec<Transaction>>,
    ) -> Result<(), RealizeError> {
        if units.is_empty() {
            return Ok(());
        }
        let mut first = true;
        for chunk in units.chunks(self.options.fetch_chunk.max(1)) {
            let wanted: BTreeSet<ContentId> = chunk
                .iter()
                .flat_map(|u| u.commits.iter().copied())
                .filter(|id| !synthetic.contains_key(id))
                .collect();
            let wanted: Vec<ContentId> = wanted.into_iter().collect();
            let mut fetched: BTreeMap<ContentId, Vec<Transaction>> = BTreeMap::new();
            for ids in wanted.chunks(512) {
                for c in self.stage.commits(ids).await? {
                    fetched.insert(c.id, c.transactions);
                }
            }
            let mut ready = Vec::with_capacity(chunk.len());
            for u in chunk {
                let mut commits = Vec::with_capacity(u.commits.len());
                for id in &u.commits {
                    let transactions = synthetic
                        .get(id)
                        .or_else(|| fetched.get(id))
                        .cloned()
                        .ok_or(RealizeError::Stage(StageError::MissingValue(*id)))?;
                    commits.push(UnitCommit { id: *id, transactions });
                }
                ready.push(Unit { id: u.id, commits, record: u.record.clone() });
            }
            let this_reset = reset && first;
            first = false;
            let n = ready.len() as u64;
            let records: Vec<Record> = ready.iter().map(|u| u.record.clone()).collect();
            let result = self.blocking(move |i, r| i.apply(r, this_reset, &ready)).await?;
            if let Err(e) = result {
                // Read back what the identity recorded before the failing unit.
                self.log = self.blocking(|i, _| i.applied()).await??;
                self.progress.cdvcs = self.log.cdvcs;
                return Err(e);
            }
            if this_reset {
                self.log.cdvcs = CdvcsLog::default();
            }
            for r in &records {
                self.log.record(r);
            }
            self.progress.applied += n;
            self.progress.cdvcs = self.log.cdvcs;
            self.progress_tx.send_replace(self.progress.clone());
        }
        self.blocking(|i, _| i.flush()).await?
    }
}
