//! The stage's link to a node: one `WebSocket` (binary frames) at a time, reconnected with
//! exponential backoff and jitter, with an application-level heartbeat (JS cannot send ping
//! frames): when nothing arrived for [`HEARTBEAT_MS`] the client sends an empty `fetch`, which
//! every peer answers with an empty `fetch-reply`; when nothing arrived for [`DEAD_AFTER_MS`] the
//! link is taken for dead, closed and redialed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use js_sys::{ArrayBuffer, Function, Uint8Array};
use replikativ_peer::connection::decode_frame;
use replikativ_peer::proto::{ConnId, Direction, Input, Message};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::driver::{Deferred, Inner, Shared, feed, notify, schedule, schedule_with};

/// Quiet time after which the client sends a heartbeat request (ms).
pub const HEARTBEAT_MS: f64 = 10_000.0;
/// Quiet time after which the link is taken for dead and redialed (ms).
pub const DEAD_AFTER_MS: f64 = 25_000.0;
/// First reconnect delay (ms); it doubles per failed attempt up to [`MAX_BACKOFF_MS`], and each
/// delay is drawn between half and all of it (jitter, so a restarted node is not hit by every
/// client at once).
pub const MIN_BACKOFF_MS: f64 = 250.0;
/// Longest reconnect delay (ms).
pub const MAX_BACKOFF_MS: f64 = 30_000.0;
/// Largest frame accepted from a node (bytes); a larger one closes the link.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Bytes the socket may buffer before further frames wait in the client (browsers have no
/// backpressure on `send`).
pub const MAX_BUFFERED_BYTES: u32 = 1 << 20;

/// A link open this long resets the reconnect backoff (ms).
pub const STABLE_AFTER_MS: f64 = 10_000.0;

/// How long a `bufferedAmount` over the limit may stand still before it is taken as unreliable.
const STALLED_BUFFER_MS: f64 = 1_000.0;

/// Ids of heartbeat fetches: the top of the id space, never used by the core.
const HEARTBEAT_ID: u64 = u64::MAX;

/// The link's state as the application sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum LinkState {
    /// Not connected, and not trying (before `connect`, after `disconnect`).
    #[default]
    Offline,
    /// Dialing, or waiting for the node's hello.
    Connecting,
    /// Hello exchanged: edits flow.
    Open,
    /// Lost; a reconnect is scheduled.
    Reconnecting,
}

impl LinkState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LinkState::Offline => "offline",
            LinkState::Connecting => "connecting",
            LinkState::Open => "open",
            LinkState::Reconnecting => "reconnecting",
        }
    }
}

struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

/// The link (see the module docs).
#[derive(Default)]
pub(crate) struct Link {
    /// Where to (re)connect; `None` after `disconnect`.
    pub(crate) url: Option<String>,
    socket: Option<Socket>,
    /// Closed sockets whose handlers may still be running: dropped at the next heartbeat tick.
    retired: Vec<Socket>,
    /// The core's connection, once the socket opened.
    conn: Option<ConnId>,
    next_conn: ConnId,
    pub(crate) state: LinkState,
    /// Lost or failed links since the link was last stable (open for [`STABLE_AFTER_MS`]).
    pub(crate) attempts: u32,
    last_frame_ms: f64,
    /// Publications sent on this link and not acknowledged yet.
    unacked: BTreeSet<u64>,
    /// Local writes made while not open (and unacknowledged ones of a lost link): they reach the
    /// node with the catch-up after the next connect.
    offline_writes: u64,
    /// Frames waiting for the socket's buffer to drain.
    backlog: VecDeque<Vec<u8>>,
    flush_scheduled: bool,
    /// While the socket's buffer is over the limit: since when and at what amount it stood.
    stalled: Option<(f64, u32)>,
    /// The socket's `bufferedAmount` did not go down while it was over the limit for
    /// [`STALLED_BUFFER_MS`] (Node 20's WebSocket never decreases it): not waited for again.
    buffered_unreliable: bool,
    heartbeat_scheduled: bool,
    /// What the listeners were last told.
    told: Option<(LinkState, u64)>,
    /// Waiting for the link to open (`connect`'s promises).
    pub(crate) waiters: Vec<futures::channel::oneshot::Sender<()>>,
    /// Why the last link closed, if it did.
    pub(crate) last_close: Option<String>,
    /// When the current link got the node's hello.
    opened_ms: f64,
    /// When the current socket was dialed (a dial that is not open with a hello after
    /// `dead_after` is abandoned and redialed).
    dialed_ms: f64,
    /// The core closed the link (a `close` from the node, a refused frame): why.
    closed_by_core: Option<String>,
    /// The heartbeat's timing (`Stage.create({heartbeatMs, deadAfterMs})`; 0: the defaults).
    pub(crate) heartbeat_ms: f64,
    pub(crate) dead_after_ms: f64,
    /// The authentication handshake of the current socket, until it is done (or the node turns
    /// out not to authenticate), with this side's hello (sent with its proof).
    auth: Option<(replikativ_peer::auth::Handshake, Vec<u8>)>,
}

impl Link {
    fn heartbeat(&self) -> f64 {
        if self.heartbeat_ms > 0.0 { self.heartbeat_ms } else { HEARTBEAT_MS }
    }

    fn dead_after(&self) -> f64 {
        if self.dead_after_ms > 0.0 { self.dead_after_ms } else { DEAD_AFTER_MS }
    }

    /// Local writes not yet acknowledged by the node (approximate: publications in flight on the
    /// open link, plus writes made while it was down).
    pub(crate) fn pending(&self) -> u64 {
        self.unacked.len() as u64 + self.offline_writes
    }

    pub(crate) fn local_write(&mut self) {
        if self.state != LinkState::Open {
            self.offline_writes += 1;
        }
    }

    /// A message from the core for connection `conn`.
    pub(crate) fn send(&mut self, conn: ConnId, msg: Message) {
        if self.conn != Some(conn) || self.socket.is_none() {
            return;
        }
        if let Some((id, _)) = msg.written() {
            self.unacked.insert(id);
        }
        self.backlog.push_back(msg.encode());
    }

    /// The core closes connection `conn`.
    pub(crate) fn close_conn(&mut self, conn: ConnId, reason: &str) {
        if self.conn == Some(conn) {
            self.drop_socket(reason);
            // Redialed once the state is released (see `after_core_close`).
            self.closed_by_core = Some(reason.to_owned());
        }
    }

    /// Closes the socket (the core is told by the caller).
    fn drop_socket(&mut self, reason: &str) -> Option<ConnId> {
        if let Some(s) = self.socket.take() {
            // A close reason is at most 123 bytes.
            let mut r = reason.to_owned();
            while r.len() > 120 {
                r.pop();
            }
            let _ = s.ws.close_with_code_and_reason(4000, &r);
            s.ws.set_onopen(None);
            s.ws.set_onmessage(None);
            s.ws.set_onclose(None);
            self.retired.push(s);
        }
        self.last_close = Some(reason.to_owned());
        self.auth = None;
        self.backlog.clear();
        self.offline_writes += std::mem::take(&mut self.unacked).len() as u64;
        self.conn.take()
    }

    /// Tells the state listeners when the state or the pending count changed.
    pub(crate) fn after_outputs(
        &mut self,
        deferred: &mut Vec<Deferred>,
        listeners: &BTreeMap<u64, Function>,
    ) {
        let now = (self.state, self.pending());
        if self.told == Some(now) {
            return;
        }
        self.told = Some(now);
        if listeners.is_empty() {
            return;
        }
        let js = self.to_js();
        for f in listeners.values() {
            deferred.push(Deferred::State(f.clone(), js.clone()));
        }
    }

    /// `{state, pending, url, attempts, lastClose}`.
    pub(crate) fn to_js(&self) -> JsValue {
        let o = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = js_sys::Reflect::set(&o, &k.into(), &v);
        };
        set("state", self.state.name().into());
        set("pending", (self.pending() as f64).into());
        set("url", self.url.clone().map(JsValue::from).unwrap_or(JsValue::NULL));
        set("attempts", self.attempts.into());
        set("lastClose", self.last_close.clone().map(JsValue::from).unwrap_or(JsValue::NULL));
        // Frames waiting in the client for the socket's buffer to drain, and what it buffers.
        set("queued", (self.backlog.len() as f64).into());
        set("buffered", self.socket.as_ref().map_or(0.0, |s| f64::from(s.ws.buffered_amount())).into());
        o.into()
    }
}

/// Sends what the socket's buffer takes; the rest waits for a timer.
pub(crate) fn flush(shared: &Shared, inner: &mut Inner) {
    let link = &mut inner.link;
    let Some(s) = &link.socket else {
        link.backlog.clear();
        return;
    };
    while let Some(frame) = link.backlog.front() {
        let buffered = s.ws.buffered_amount();
        if buffered > MAX_BUFFERED_BYTES && !link.buffered_unreliable {
            let now = js_sys::Date::now();
            match link.stalled {
                Some((since, amount)) if buffered >= amount && now - since > STALLED_BUFFER_MS => {
                    link.buffered_unreliable = true;
                }
                Some((_, amount)) if buffered >= amount => break,
                _ => {
                    link.stalled = Some((now, buffered));
                    break;
                }
            }
        }
        link.stalled = None;
        if s.ws.send_with_u8_array(frame).is_err() {
            break;
        }
        link.backlog.pop_front();
    }
    if !link.backlog.is_empty() && !link.flush_scheduled {
        link.flush_scheduled = true;
        schedule_with(inner, shared, 20.0, |shared| {
            let mut inner = shared.borrow_mut();
            inner.link.flush_scheduled = false;
            flush(shared, &mut inner);
        });
    }
}

/// Starts (or restarts) the link to `url`.
pub(crate) fn connect(shared: &Shared, url: String) {
    let old = {
        let mut inner = shared.borrow_mut();
        let old = inner.link.drop_socket("reconnecting elsewhere");
        inner.link.url = Some(url);
        inner.link.attempts = 0;
        old
    };
    if let Some(conn) = old {
        feed(shared, vec![Input::Closed { conn }]);
    }
    dial(shared);
    start_heartbeat(shared);
}

/// Stops the link (no reconnect).
pub(crate) fn disconnect(shared: &Shared) {
    let old = {
        let mut inner = shared.borrow_mut();
        inner.link.url = None;
        inner.link.state = LinkState::Offline;
        inner.link.drop_socket("disconnected by the application")
    };
    if let Some(conn) = old {
        feed(shared, vec![Input::Closed { conn }]);
    }
    notify(shared);
}

fn dial(shared: &Shared) {
    let url = {
        let inner = shared.borrow();
        match (&inner.link.url, inner.closed) {
            (Some(url), false) => url.clone(),
            _ => return,
        }
    };
    let ws = match WebSocket::new(&url) {
        Ok(ws) => ws,
        Err(e) => {
            lost(shared, &format!("cannot open a websocket to {url}: {e:?}"));
            return;
        }
    };
    ws.set_binary_type(BinaryType::Arraybuffer);
    let weak = Rc::downgrade(shared);
    let on_open = Closure::<dyn FnMut()>::new(move || {
        let Some(shared) = weak.upgrade() else { return };
        let failed = {
            let mut inner = shared.borrow_mut();
            inner.link.next_conn += 1;
            let conn = inner.link.next_conn;
            inner.link.conn = Some(conn);
            inner.link.last_frame_ms = js_sys::Date::now();
            inner.link.stalled = None;
            inner.link.buffered_unreliable = false;
            // The node speaks first: `auth-hello` (authentication on: the handshake runs before
            // the core hears of the connection) or its plain `hello` (see `received`).
            let identity = inner.identity.clone();
            match replikativ_peer::auth::Handshake::start_unbound(Direction::Outbound, identity) {
                Ok(hs) => {
                    inner.link.auth = Some(hs);
                    None
                }
                Err(e) => Some(format!("cannot authenticate: {e}")),
            }
        };
        if let Some(why) = failed {
            lost(&shared, &why);
        }
    });
    let weak = Rc::downgrade(shared);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let Some(shared) = weak.upgrade() else { return };
        received(&shared, e.data());
    });
    let weak = Rc::downgrade(shared);
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
        let Some(shared) = weak.upgrade() else { return };
        let why = if e.reason().is_empty() { format!("closed ({})", e.code()) } else { e.reason() };
        lost(&shared, &why);
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    {
        let mut inner = shared.borrow_mut();
        inner.link.socket =
            Some(Socket { ws, _on_open: on_open, _on_message: on_message, _on_close: on_close });
        inner.link.state = LinkState::Connecting;
    }
    notify(shared);
}

/// After a dispatch: if the core closed the link, treat it as lost (schedule a redial).
pub(crate) fn after_core_close(shared: &Shared) {
    let why = shared.borrow_mut().link.closed_by_core.take();
    if let Some(why) = why {
        lost(shared, &why);
    }
}

/// The link was lost (or is taken for dead): tell the core, schedule a redial.
fn lost(shared: &Shared, why: &str) {
    let (old, delay) = {
        let mut inner = shared.borrow_mut();
        let old = inner.link.drop_socket(why);
        let delay = if inner.link.url.is_some() && !inner.closed {
            inner.link.state = LinkState::Reconnecting;
            let base = (MIN_BACKOFF_MS * 2f64.powi(inner.link.attempts.min(16) as i32)).min(MAX_BACKOFF_MS);
            inner.link.attempts += 1;
            Some(base * (0.5 + 0.5 * js_sys::Math::random()))
        } else {
            inner.link.state = LinkState::Offline;
            None
        };
        (old, delay)
    };
    if let Some(conn) = old {
        feed(shared, vec![Input::Closed { conn }]);
    }
    if let Some(ms) = delay {
        schedule(shared, ms, dial);
    }
    notify(shared);
}

/// What the authentication handshake makes of a frame.
enum Authenticating {
    /// Not authenticating (done, or the node does not): the frame is the core's.
    No,
    /// The frame was the handshake's.
    Consumed,
    /// The handshake is done (or the node sent its plain hello, which the core gets next): the
    /// core hears of the connection now.
    Connected(ConnId, bool),
    /// It failed.
    Failed(String),
}

fn authenticate(shared: &Shared, frame: &[u8]) -> Authenticating {
    use replikativ_peer::auth::Progress;
    let mut inner = shared.borrow_mut();
    let Some(conn) = inner.link.conn else { return Authenticating::Consumed };
    let Some((mut hs, hello)) = inner.link.auth.take() else { return Authenticating::No };
    inner.link.last_frame_ms = js_sys::Date::now();
    match hs.receive(frame) {
        Ok(Progress::Send(proof)) => {
            inner.link.backlog.push_back(hello.clone());
            inner.link.backlog.push_back(proof);
            inner.link.auth = Some((hs, hello));
            flush(shared, &mut inner);
            Authenticating::Consumed
        }
        Ok(Progress::Done(_)) => {
            if !inner.caps.is_empty() {
                let frame = replikativ_peer::auth::cap::caps_message(&inner.caps).encode();
                inner.link.backlog.push_back(frame);
                flush(shared, &mut inner);
            }
            Authenticating::Connected(conn, false)
        }
        Err(e) if e.plain_hello => Authenticating::Connected(conn, true),
        Err(e) => Authenticating::Failed(format!("authentication failed: {e}")),
    }
}

fn received(shared: &Shared, data: JsValue) {
    let Some(buffer) = data.dyn_ref::<ArrayBuffer>() else {
        lost(shared, "a text frame from the node (the protocol sends binary frames)");
        return;
    };
    if buffer.byte_length() as usize > MAX_FRAME_BYTES {
        lost(shared, &format!("a frame of {} bytes (at most {MAX_FRAME_BYTES})", buffer.byte_length()));
        return;
    }
    let frame = Uint8Array::new(buffer).to_vec();
    match authenticate(shared, &frame) {
        Authenticating::No => {}
        Authenticating::Consumed => return,
        Authenticating::Failed(why) => {
            lost(shared, &why);
            return;
        }
        Authenticating::Connected(conn, plain) => {
            feed(shared, vec![Input::Connected { conn, direction: Direction::Outbound }]);
            if !plain {
                return;
            }
        }
    }
    let input = {
        let mut inner = shared.borrow_mut();
        let Some(conn) = inner.link.conn else { return };
        inner.link.last_frame_ms = js_sys::Date::now();
        match decode_frame(&frame) {
            Ok(msg) => {
                match &msg {
                    // The answer to a heartbeat: not the core's.
                    Message::FetchReply { id: HEARTBEAT_ID, .. } => return,
                    Message::Hello(_) => {
                        inner.link.state = LinkState::Open;
                        // The backoff restarts once the link proved stable (see `heartbeat`), so a
                        // node that accepts and then closes at once is not redialed in a tight loop.
                        inner.link.opened_ms = js_sys::Date::now();
                        inner.link.last_close = None;
                        for w in inner.link.waiters.drain(..) {
                            let _ = w.send(());
                        }
                    }
                    // An acknowledgement covers every earlier publication of the link (the node
                    // folds them); a refusal settles one.
                    Message::PublishAck { id } => {
                        inner.link.unacked = inner.link.unacked.split_off(&(id + 1));
                    }
                    Message::Refused { id, .. } => {
                        inner.link.unacked.remove(id);
                    }
                    // The catch-up exchange started: what was written offline is sent now (and
                    // counted as unacknowledged publications).
                    Message::Summaries { .. } => inner.link.offline_writes = 0,
                    _ => {}
                }
                Input::Message { conn, msg }
            }
            // The core answers or closes (and counts the refusal).
            Err(_) => Input::Received { conn, frame },
        }
    };
    feed(shared, vec![input]);
}

fn start_heartbeat(shared: &Shared) {
    {
        let mut inner = shared.borrow_mut();
        if inner.link.heartbeat_scheduled {
            return;
        }
        inner.link.heartbeat_scheduled = true;
    }
    let every = shared.borrow().link.heartbeat() / 2.0;
    schedule(shared, every, heartbeat);
}

fn heartbeat(shared: &Shared) {
    let dead = {
        let mut inner = shared.borrow_mut();
        inner.link.heartbeat_scheduled = false;
        // Runs from a timer: no socket handler is on the stack.
        inner.link.retired.clear();
        if inner.link.url.is_none() {
            return;
        }
        let quiet = js_sys::Date::now() - inner.link.last_frame_ms;
        let open = inner.link.state == LinkState::Open;
        let (every, dead_after) = (inner.link.heartbeat(), inner.link.dead_after());
        if open && js_sys::Date::now() - inner.link.opened_ms > STABLE_AFTER_MS {
            inner.link.attempts = 0;
        }
        let stuck = inner.link.state == LinkState::Connecting
            && inner.link.socket.is_some()
            && js_sys::Date::now() - inner.link.dialed_ms > dead_after;
        if stuck {
            Some(format!("no hello from the node within {} s of dialing", dead_after / 1000.0))
        } else if open && quiet > dead_after {
            Some(format!("nothing from the node for {} s", dead_after / 1000.0))
        } else {
            if open
                && quiet > every
                && let Some(s) = &inner.link.socket
            {
                let ping = Message::Fetch { id: HEARTBEAT_ID, ids: Vec::new() };
                let _ = s.ws.send_with_u8_array(&ping.encode());
            }
            None
        }
    };
    if let Some(why) = dead {
        lost(shared, &why);
    }
    start_heartbeat(shared);
}

/// Waits until the link is open.
pub(crate) fn opened(shared: &Shared) -> futures::channel::oneshot::Receiver<()> {
    let (tx, rx) = futures::channel::oneshot::channel();
    let mut inner = shared.borrow_mut();
    if inner.link.state == LinkState::Open {
        let _ = tx.send(());
    } else {
        inner.link.waiters.push(tx);
    }
    rx
}
