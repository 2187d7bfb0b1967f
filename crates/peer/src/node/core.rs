//! The core thread: feeds the protocol core batches of inputs, dispatches its outputs to
//! connections, timers and the barrier thread, and answers status requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use replikativ_store::Store;
use tokio::sync::mpsc;

use super::{ConnCmd, CoreMsg, NodeStatus};
use crate::middleware::{Item, Remote};
use crate::proto::{CommandId, ConnId, Input, Output, Peer, Refusals};

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs barriers: many requests queued meanwhile share one `sync`.
pub(super) fn barrier_loop(
    store: Arc<dyn Store>,
    rx: std::sync::mpsc::Receiver<u64>,
    core: mpsc::Sender<CoreMsg>,
    histogram: prometheus_client::metrics::histogram::Histogram,
) {
    while let Ok(mut epoch) = rx.recv() {
        while let Ok(later) = rx.try_recv() {
            epoch = epoch.max(later);
        }
        let started = std::time::Instant::now();
        let synced = store.sync();
        histogram.observe(started.elapsed().as_secs_f64());
        let input = match synced {
            Ok(()) => Input::BarrierDone { epoch },
            Err(e) => Input::BarrierFailed { epoch, error: e.to_string() },
        };
        if core.blocking_send(CoreMsg::Input(input)).is_err() {
            return;
        }
    }
}

/// Inputs the core handles as one batch at most: big enough to share a barrier among many ops,
/// small enough that replies flow back while the next batch is handled.
const MAX_BATCH: usize = 32;

pub(super) struct Core {
    /// The store, if its barrier costs nothing (in memory): run inline, not on the barrier thread.
    pub(super) instant: Option<Arc<dyn Store>>,
    pub(super) conns: BTreeMap<ConnId, (mpsc::Sender<ConnCmd>, Remote, Arc<AtomicUsize>)>,
    /// Connections that lost messages to a full outbox: resynchronized once it drains to half.
    pub(super) lagging: std::collections::BTreeSet<ConnId>,
    /// Which connection (stage) sent each pending command.
    pub(super) commands: HashMap<CommandId, ConnId>,
    pub(super) barrier: std::sync::mpsc::Sender<u64>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) tx: mpsc::Sender<CoreMsg>,
    pub(super) dropped: u64,
    pub(super) listening: Arc<Mutex<Vec<String>>>,
    /// The transport's refusal counters (merged into status with the core's).
    pub(super) refusals: Arc<Mutex<Refusals>>,
    pub(super) max_connections: usize,
    /// Bytes queued in all outboxes, summed once per batch (see
    /// [`NodeConfig::outbox_total_bytes`]).
    pub(super) queued_total: usize,
    pub(super) outbox_bytes: usize,
    pub(super) outbox_total_bytes: usize,
}

impl Core {
    pub(super) fn run(&mut self, peer: &mut Peer, mut rx: mpsc::Receiver<CoreMsg>) {
        let mut pending: Option<CoreMsg> = None;
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => match rx.blocking_recv() {
                    Some(msg) => msg,
                    None => return,
                },
            };
            self.resync_drained(peer);
            match msg {
                CoreMsg::Input(_) | CoreMsg::Command { .. } => {
                    // Take the inputs queued meanwhile too: they share one barrier request.
                    let mut batch = Vec::new();
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        match msg {
                            CoreMsg::Input(input) => {
                                if let Input::Closed { conn } = &input {
                                    self.conns.remove(conn);
                                }
                                batch.push(input);
                            }
                            CoreMsg::Command { conn, id, cmd } => {
                                self.commands.insert(id, conn);
                                batch.push(Input::Command { id, cmd });
                            }
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.queued_total = self.conns.values().map(|(_, _, q)| q.load(Ordering::Relaxed)).sum();
                    let out = peer.handle_batch(batch, now_ms());
                    self.dispatch(peer, out);
                }
                CoreMsg::Attach { conn, tx, remote, queued } => {
                    self.conns.insert(conn, (tx, remote, queued));
                }
                CoreMsg::Status(reply) => {
                    let connections = self
                        .conns
                        .iter()
                        .map(|(c, (_, remote, _))| {
                            let id = peer.connections().find(|(pc, _)| pc == c).map(|(_, id)| id.to_owned());
                            (*c, remote.clone(), id)
                        })
                        .collect();
                    let mut refusals = self.refusals.lock().expect("poisoned").clone();
                    refusals.merge(peer.refusals());
                    let _ = reply.send(NodeStatus {
                        peer_id: peer.id().to_owned(),
                        connections,
                        subscriptions: peer.subscriptions().iter().cloned().collect(),
                        addresses: peer.addresses().count(),
                        dropped: self.dropped,
                        refusals,
                        recovery: peer.recovery().to_vec(),
                        max_connections: self.max_connections,
                        catch_up_batches: peer.batches_sent(),
                        catch_up_publications: peer.catch_up_publications(),
                    });
                }
                CoreMsg::Shutdown(done) => {
                    for (tx, _, _) in self.conns.values() {
                        let _ = tx.try_send(ConnCmd::Close("the node is shutting down".into()));
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Resynchronizes lagging connections whose outbox drained to half its capacity.
    fn resync_drained(&mut self, peer: &mut Peer) {
        if self.lagging.is_empty() {
            return;
        }
        let drained: Vec<ConnId> = self
            .lagging
            .iter()
            .copied()
            .filter(|c| {
                self.conns.get(c).is_none_or(|(tx, _, queued)| {
                    tx.capacity() * 2 >= tx.max_capacity()
                        && queued.load(Ordering::Relaxed) * 2 <= self.outbox_bytes
                })
            })
            .collect();
        for conn in drained {
            self.lagging.remove(&conn);
            if self.conns.contains_key(&conn) {
                let out = peer.handle(Input::Resync { conn }, now_ms());
                self.dispatch(peer, out);
            }
        }
    }

    /// Queues `item` to `conn`; a message counts its size against the outbox budgets.
    fn send_item(&mut self, conn: ConnId, item: Item) {
        let size = match &item {
            Item::Message(m) => m.approx_size(),
            _ => 0,
        };
        self.send(conn, ConnCmd::Item(item, size));
    }

    fn send(&mut self, conn: ConnId, cmd: ConnCmd) {
        let Some((tx, _, queued)) = self.conns.get(&conn) else { return };
        // Messages count against the outbox's byte budget and the node's (see `NodeConfig`).
        let size = match &cmd {
            ConnCmd::Item(_, size) => *size,
            ConnCmd::Close(_) => 0,
        };
        let held = queued.load(Ordering::Relaxed);
        let over = size > 0
            && held > 0
            && (held + size > self.outbox_bytes
                || (self.queued_total + size > self.outbox_total_bytes && held > 1 << 20));
        let sent = if over {
            false
        } else {
            // Counted before it is queued: the writer takes it off once it has it.
            queued.fetch_add(size, Ordering::Relaxed);
            match tx.try_send(cmd) {
                Ok(()) => {
                    self.queued_total += size;
                    true
                }
                Err(e) => {
                    queued.fetch_sub(size, Ordering::Relaxed);
                    // Closed: the connection is going away; nothing to count.
                    matches!(e, mpsc::error::TrySendError::Closed(_))
                }
            }
        };
        if !sent {
            self.dropped += 1;
            if self.lagging.insert(conn) {
                tracing::warn!(
                    conn,
                    "outbox full: messages dropped until it drains (then the peer is resynchronized)"
                );
            }
        }
    }

    pub(super) fn dispatch(&mut self, peer: &mut Peer, outputs: Vec<Output>) {
        let mut outputs = outputs;
        loop {
            let mut synced = None;
            for output in outputs {
                if let (Output::Barrier { epoch }, Some(store)) = (&output, &self.instant) {
                    synced = Some(match store.sync() {
                        Ok(()) => Input::BarrierDone { epoch: *epoch },
                        Err(e) => Input::BarrierFailed { epoch: *epoch, error: e.to_string() },
                    });
                    continue;
                }
                self.output(output);
            }
            match synced {
                Some(input) => outputs = peer.handle(input, now_ms()),
                None => return,
            }
        }
    }

    fn output(&mut self, output: Output) {
        match output {
            Output::Send { conn, msg } => self.send_item(conn, Item::Message(msg)),
            Output::Close { conn, reason } => self.send(conn, ConnCmd::Close(reason)),
            Output::Barrier { epoch } => {
                let _ = self.barrier.send(epoch);
            }
            Output::Schedule { after, timer } => {
                let tx = self.tx.clone();
                self.runtime.spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(CoreMsg::Input(Input::Timer(timer))).await;
                });
            }
            Output::Reply { id, mut result } => {
                if let Ok(crate::proto::Reply::Status(status)) = &mut result {
                    status.listen = self.listening.lock().expect("poisoned").clone();
                    for (why, n) in self.refusals.lock().expect("poisoned").iter() {
                        *status.refusals.entry(why.as_str().to_owned()).or_default() += n;
                    }
                }
                if let Some(conn) = self.commands.remove(&id)
                    && let Some((tx, _, _)) = self.conns.get(&conn)
                {
                    // Replies must not be lost, and the core must not wait for the stage (which
                    // may be waiting for the core): deliver from a task when the outbox is full.
                    if let Err(mpsc::error::TrySendError::Full(cmd)) =
                        tx.try_send(ConnCmd::Item(Item::Reply { id, result }, 0))
                    {
                        let tx = tx.clone();
                        self.runtime.spawn(async move {
                            let _ = tx.send(cmd).await;
                        });
                    }
                }
            }
            Output::Event(event) => {
                let stages: Vec<ConnId> =
                    self.conns.iter().filter(|(_, (_, r, _))| *r == Remote::Stage).map(|(c, _)| *c).collect();
                for conn in stages {
                    self.send_item(conn, Item::Event(event.clone()));
                }
            }
        }
    }
}
