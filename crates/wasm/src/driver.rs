//! The event loop around the sans-IO core: one [`Inner`] per stage, shared by the JS-facing
//! handles, fed with inputs (commands, frames, timer ticks, barrier completions) and carrying out
//! the core's outputs. Single-threaded: JS calls, websocket events, timers and IndexedDB callbacks
//! each run to completion, so nothing needs a lock; JS callbacks are called only after the state
//! is released, so a callback may call the stage again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use js_sys::Function;
use replikativ_crdt::Address;
use replikativ_peer::proto::{Command, CommandId, Event, Input, Output, Peer, Reply, StageError};
use replikativ_store::MemoryStore;
use wasm_bindgen::prelude::*;

use crate::link::Link;
use crate::persist::Journal;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &JsValue, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// Wall time from the JS clock, in ms since the epoch (`SystemTime::now` panics in wasm).
pub(crate) fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// A JS callback to run once the state is released.
pub(crate) enum Deferred {
    /// A change listener and the change.
    Change(Function, JsValue),
    /// A connection-state listener and the state.
    State(Function, JsValue),
}

impl Deferred {
    fn run(self) {
        // A listener that throws does not stop the others (nor the stage).
        match self {
            Deferred::Change(f, v) | Deferred::State(f, v) => {
                let _ = f.call1(&JsValue::NULL, &v);
            }
        }
    }
}

/// What the driver holds of one stage.
pub(crate) struct Inner {
    pub(crate) peer: Peer,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) user: String,
    /// The IndexedDB journal (`store: "indexeddb"`), if any.
    pub(crate) journal: Option<Journal>,
    next_command: CommandId,
    replies: HashMap<CommandId, oneshot::Sender<Result<Reply, StageError>>>,
    pub(crate) link: Link,
    next_listener: u64,
    changes: BTreeMap<u64, (Address, Function)>,
    pub(crate) state_listeners: BTreeMap<u64, Function>,
    next_timer: u64,
    timers: HashMap<u64, JsValue>,
    pub(crate) closed: bool,
    /// Barriers handed to IndexedDB and not completed yet.
    pub(crate) barriers_in_flight: usize,
    /// What the link proves to a node with authentication on: a node key made for this stage,
    /// and the user key of `Stage.create({key})`, if given.
    pub(crate) identity: replikativ_peer::auth::Identity,
    /// Capabilities presented to the node after each handshake (`Stage.create({caps})`).
    pub(crate) caps: Vec<replikativ_peer::auth::ReadCap>,
}

/// The stage's state, shared by its handles and callbacks.
pub(crate) type Shared = Rc<RefCell<Inner>>;

impl Inner {
    pub(crate) fn new(
        peer: Peer,
        store: Arc<MemoryStore>,
        user: String,
        journal: Option<Journal>,
        identity: replikativ_peer::auth::Identity,
    ) -> Inner {
        Inner {
            identity,
            caps: Vec::new(),
            peer,
            store,
            user,
            journal,
            next_command: 1,
            replies: HashMap::new(),
            link: Link::default(),
            next_listener: 1,
            changes: BTreeMap::new(),
            state_listeners: BTreeMap::new(),
            next_timer: 1,
            timers: HashMap::new(),
            closed: false,
            barriers_in_flight: 0,
        }
    }

    pub(crate) fn add_change_listener(&mut self, address: Address, f: Function) -> u64 {
        let id = self.next_listener;
        self.next_listener += 1;
        self.changes.insert(id, (address, f));
        id
    }

    pub(crate) fn remove_listener(&mut self, id: u64) -> bool {
        self.changes.remove(&id).is_some() || self.state_listeners.remove(&id).is_some()
    }

    pub(crate) fn add_state_listener(&mut self, f: Function) -> u64 {
        let id = self.next_listener;
        self.next_listener += 1;
        self.state_listeners.insert(id, f);
        id
    }

    /// Stops everything: timers cleared, replies dropped (their promises reject), listeners gone.
    pub(crate) fn shut(&mut self) {
        self.closed = true;
        for (_, t) in self.timers.drain() {
            clear_timeout(&t);
        }
        self.replies.clear();
        self.changes.clear();
        self.state_listeners.clear();
        if let Some(j) = &self.journal {
            j.close();
        }
    }
}

/// Runs `f` after `ms` on the JS clock, unless the stage closed meanwhile.
pub(crate) fn schedule(shared: &Shared, ms: f64, f: impl FnOnce(&Shared) + 'static) {
    let mut inner = shared.borrow_mut();
    schedule_with(&mut inner, shared, ms, f);
}

/// [`schedule`] with the state already borrowed.
pub(crate) fn schedule_with(inner: &mut Inner, shared: &Shared, ms: f64, f: impl FnOnce(&Shared) + 'static) {
    if inner.closed {
        return;
    }
    let key = inner.next_timer;
    inner.next_timer += 1;
    let weak = Rc::downgrade(shared);
    let callback = Closure::once_into_js(move || {
        let Some(shared) = weak.upgrade() else { return };
        let live = {
            let mut inner = shared.borrow_mut();
            inner.timers.remove(&key);
            !inner.closed
        };
        if live {
            f(&shared);
        }
    });
    let handle = set_timeout(&callback, ms);
    inner.timers.insert(key, handle);
}

/// Runs the connection-state listeners if the state changed.
pub(crate) fn notify(shared: &Shared) {
    let mut deferred = Vec::new();
    {
        let mut inner = shared.borrow_mut();
        let inner = &mut *inner;
        inner.link.after_outputs(&mut deferred, &inner.state_listeners);
    }
    for d in deferred {
        d.run();
    }
}

/// Carries out the core's first outputs (its timers).
pub(crate) fn start(shared: &Shared) {
    let mut deferred = Vec::new();
    {
        let mut inner = shared.borrow_mut();
        let outputs = inner.peer.start();
        dispatch(shared, &mut inner, outputs, &mut deferred);
    }
    for d in deferred {
        d.run();
    }
}

/// Feeds inputs to the core and carries out what it asks.
pub(crate) fn feed(shared: &Shared, inputs: Vec<Input>) {
    let mut deferred = Vec::new();
    {
        let mut inner = shared.borrow_mut();
        if inner.closed {
            return;
        }
        let outputs = inner.peer.handle_batch(inputs, now_ms());
        dispatch(shared, &mut inner, outputs, &mut deferred);
    }
    crate::link::after_core_close(shared);
    for d in deferred {
        d.run();
    }
}

fn dispatch(shared: &Shared, inner: &mut Inner, outputs: Vec<Output>, deferred: &mut Vec<Deferred>) {
    let mut outputs = outputs;
    loop {
        let mut synced = None;
        for output in outputs {
            match output {
                Output::Send { conn, msg } => inner.link.send(conn, msg),
                Output::Close { conn, reason } => inner.link.close_conn(conn, &reason),
                Output::Barrier { epoch } => match &inner.journal {
                    // In memory only: nothing to wait for.
                    None => synced = Some(Input::BarrierDone { epoch }),
                    Some(journal) => {
                        let ops = inner.store.take_journal();
                        let weak = Rc::downgrade(shared);
                        let started = journal.write(ops, move |result| {
                            let Some(shared) = weak.upgrade() else { return };
                            shared.borrow_mut().barriers_in_flight -= 1;
                            let input = match result {
                                Ok(()) => Input::BarrierDone { epoch },
                                Err(error) => Input::BarrierFailed { epoch, error },
                            };
                            feed(&shared, vec![input]);
                        });
                        match started {
                            Ok(()) => inner.barriers_in_flight += 1,
                            Err(error) => synced = Some(Input::BarrierFailed { epoch, error }),
                        }
                    }
                },
                Output::Schedule { after, timer } => {
                    schedule_with(inner, shared, after.as_millis() as f64, move |s| {
                        feed(s, vec![Input::Timer(timer)])
                    });
                }
                Output::Reply { id, result } => {
                    if let Some(tx) = inner.replies.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Output::Event(event) => change_events(inner, &event, deferred),
            }
        }
        crate::link::flush(shared, inner);
        inner.link.after_outputs(deferred, &inner.state_listeners);
        match synced {
            Some(input) => outputs = inner.peer.handle(input, now_ms()),
            None => return,
        }
    }
}

fn change_events(inner: &mut Inner, event: &Event, deferred: &mut Vec<Deferred>) {
    let mut js = None;
    for (address, f) in inner.changes.values() {
        if *address == event.address {
            let value = js.get_or_insert_with(|| {
                let o = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&o, &"address".into(), &event.address.to_string().into());
                let _ = js_sys::Reflect::set(&o, &"local".into(), &event.local.into());
                let _ = js_sys::Reflect::set(&o, &"kind".into(), &event.op.kind().name().into());
                JsValue::from(o)
            });
            deferred.push(Deferred::Change(f.clone(), value.clone()));
        }
    }
}

/// Runs a stage command; writes resolve once durable (after their barrier).
pub(crate) async fn command(shared: &Shared, cmd: Command) -> Result<Reply, StageError> {
    let rx = start_command(shared, cmd)?;
    rx.await.unwrap_or(Err(StageError::NodeGone))
}

/// Runs a read, which the core answers at once.
pub(crate) fn read(shared: &Shared, cmd: Command) -> Result<Reply, StageError> {
    let mut rx = start_command(shared, cmd)?;
    match rx.try_recv() {
        Ok(Some(result)) => result,
        _ => Err(StageError::UnexpectedReply("a read was not answered at once".into())),
    }
}

fn start_command(
    shared: &Shared,
    cmd: Command,
) -> Result<oneshot::Receiver<Result<Reply, StageError>>, StageError> {
    let (tx, rx) = oneshot::channel();
    // What publishes a local op (counted as pending until the node acknowledges it).
    let publishes = matches!(
        cmd,
        Command::Assoc { .. }
            | Command::Put { .. }
            | Command::Dissoc { .. }
            | Command::Transact { .. }
            | Command::Merge { .. }
            | Command::LwwSet { .. }
            | Command::GsetAdd { .. }
            | Command::Create { .. }
    );
    let id = {
        let mut inner = shared.borrow_mut();
        if inner.closed {
            return Err(StageError::NodeGone);
        }
        let id = inner.next_command;
        inner.next_command += 1;
        inner.replies.insert(id, tx);
        if publishes {
            inner.link.local_write();
        }
        id
    };
    feed(shared, vec![Input::Command { id, cmd }]);
    Ok(rx)
}
