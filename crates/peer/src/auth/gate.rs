//! The authorization gate: the middleware that enforces [`AuthPolicy`] on one authenticated
//! connection, nearest the core.
//!
//! Inbound: a publication or batch to an address the principal may not write is refused (the
//! connection stays); a subscription keeps only the addresses it may read, without saying which
//! were dropped ("not found" and "forbidden" look the same); `resubscribe` is refused (the gate
//! cannot see its addresses; the remote subscribes in full); anti-entropy summaries of addresses
//! it may not read are dropped, so the core answers nothing about them; stage commands pass only
//! if every address they read or write is allowed, and a command that names an author must name
//! the principal's own user (the principal belongs to the connection and is never read from a
//! message). Commands that read by content id (`values`, `commits`), `status`, `unsubscribe`
//! and exports of everything are for trusted keys only: a content id is not a read token.
//! Outbound: nothing about an unreadable address leaves (publications, batches and summaries are
//! dropped), whatever the core decided.

use std::sync::Arc;

use replikativ_crdt::Address;

use super::{AuthPolicy, Principal};
use crate::middleware::{Emit, Item, Middleware};
use crate::proto::{Command, Message, Recon, Refusal, StageError};

/// Counts a refusal somewhere (the node's status).
pub type RefusalCounter = Arc<dyn Fn(Refusal) + Send + Sync>;

/// Enforces [`AuthPolicy`] for one connection (see the module docs).
pub struct AuthGate {
    principal: Principal,
    policy: Arc<AuthPolicy>,
    count: Option<RefusalCounter>,
    /// This node dialed the remote: it is trusted (see [`AuthGate::dialed`]).
    dialed: bool,
}

impl std::fmt::Debug for AuthGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGate").field("principal", &self.principal).finish_non_exhaustive()
    }
}

/// What a command needs.
enum Need<'a> {
    Read(&'a Address),
    Write(&'a Address),
    /// Only keys the policy trusts.
    Trusted(&'static str),
}

fn needs(cmd: &Command) -> (Vec<Need<'_>>, Option<&str>) {
    use Need::*;
    match cmd {
        Command::Create { address, author, .. } => (vec![Write(address)], Some(author)),
        Command::Assoc { address, author, .. }
        | Command::Put { address, author, .. }
        | Command::Dissoc { address, author, .. }
        | Command::Transact { address, author, .. }
        | Command::Merge { address, author, .. } => (vec![Write(address)], Some(author)),
        Command::LwwSet { address, .. } | Command::GsetAdd { address, .. } => (vec![Write(address)], None),
        Command::Pull { from, into, .. } | Command::Fork { from, into } => (vec![Read(from), Write(into)], None),
        Command::Subscribe { addresses } => (addresses.iter().map(Read).collect(), None),
        Command::Read { address } | Command::Query { address, .. } => (vec![Read(address)], None),
        Command::Import(e) => (vec![Write(&e.address)], None),
        Command::Export { addresses } if !addresses.is_empty() => (addresses.iter().map(Read).collect(), None),
        Command::Export { .. } => (vec![Trusted("exporting every address")], None),
        Command::Unsubscribe { .. } => (vec![Trusted("unsubscribing the node")], None),
        Command::Values { .. } | Command::Commits { .. } => (vec![Trusted("reading values by content id")], None),
        Command::Status => (vec![Trusted("the node's status")], None),
    }
}

impl AuthGate {
    /// The gate of a connection whose remote proved `principal`; refusals are counted with
    /// `count`.
    pub fn new(principal: Principal, policy: Arc<AuthPolicy>, count: Option<RefusalCounter>) -> AuthGate {
        AuthGate { principal, policy, count, dialed: false }
    }

    /// The gate of a connection this node dialed: the remote is trusted like a key in
    /// [`AuthPolicy::trusted`]. A node chooses whom it dials (by URL, and with TLS by
    /// certificate), subscribes there and relays what that node relays: without signed writes
    /// (issue J) a client cannot check what a server relays, so it trusts the server it
    /// connected to, as before authentication existed. The handshake still proves the server's
    /// node key.
    pub fn dialed(principal: Principal, policy: Arc<AuthPolicy>, count: Option<RefusalCounter>) -> AuthGate {
        AuthGate { principal, policy, count, dialed: true }
    }

    fn refused(&self, why: Refusal) {
        if let Some(count) = &self.count {
            count(why);
        }
    }

    fn trusted(&self) -> bool {
        self.dialed || self.policy.is_trusted(&self.principal)
    }

    fn readable(&self, address: &Address) -> bool {
        self.dialed || self.policy.may_read(&self.principal, address)
    }

    fn writable(&self, address: &Address) -> bool {
        self.dialed || self.policy.may_write(&self.principal, address)
    }

    /// Why the command may not run, if it may not.
    fn command_denied(&self, cmd: &Command) -> Option<String> {
        let (needs, author) = needs(cmd);
        for need in needs {
            match need {
                Need::Read(a) if !self.readable(a) => return Some(format!("no datatype at {a} readable here")),
                Need::Write(a) if !self.writable(a) => {
                    return Some(format!("{} may not write {a}", self.who()));
                }
                Need::Trusted(what) if !self.trusted() => {
                    return Some(format!("{what} is for the node's trusted keys only"));
                }
                _ => {}
            }
        }
        match author {
            Some(author) if !self.trusted() && Some(author.to_owned()) != self.principal.user_id() => {
                Some(format!("this connection writes as {}, not as {author}", self.who()))
            }
            _ => None,
        }
    }

    fn who(&self) -> String {
        self.principal.user_id().unwrap_or_else(|| "an anonymous client".into())
    }
}

impl Middleware for AuthGate {
    fn inbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            Item::Message(m) if m.written().is_some_and(|(_, a)| !self.writable(a)) => {
                let (id, address) = m.written().expect("checked");
                self.refused(Refusal::Forbidden);
                let reason = format!("forbidden: {} may not write {address}", self.who());
                emit.down(Item::Message(Message::Refused { id, reason }));
            }
            Item::Message(Message::Resubscribe(r)) => {
                let reason = "resubscribe is not accepted with authentication on; subscribe in full".to_owned();
                emit.down(Item::Message(Message::Refused { id: r.id, reason }));
            }
            Item::Message(Message::Subscribe(mut s)) => {
                let before = s.addresses.len();
                s.addresses.retain(|a| self.readable(a));
                if s.addresses.len() != before {
                    self.refused(Refusal::Forbidden);
                }
                emit.up(Item::Message(Message::Subscribe(s)));
            }
            Item::Message(Message::Summaries { mut summaries, reply }) => {
                summaries.retain(|(a, _)| self.readable(a));
                emit.up(Item::Message(Message::Summaries { summaries, reply }));
            }
            Item::Command { id, cmd } => match self.command_denied(&cmd) {
                Some(reason) => {
                    self.refused(Refusal::Forbidden);
                    emit.down(Item::Reply { id, result: Err(StageError::Unauthorized(reason)) });
                }
                None => emit.up(Item::Command { id, cmd }),
            },
            other => emit.up(other),
        }
    }

    fn outbound(&mut self, item: Item, emit: &mut Emit) {
        match item {
            Item::Message(m) if m.written().is_some_and(|(_, a)| !self.readable(a)) => {}
            Item::Message(Message::Summaries { mut summaries, reply }) => {
                summaries.retain(|(a, _)| self.readable(a));
                if !summaries.is_empty() || reply {
                    emit.down(Item::Message(Message::Summaries { summaries, reply }));
                }
            }
            Item::Message(Message::Recon(Recon::Listed { buckets, mut summaries })) => {
                summaries.retain(|(a, _)| self.readable(a));
                emit.down(Item::Message(Message::Recon(Recon::Listed { buckets, summaries })));
            }
            // A remote that may not read an address does not learn that this node holds it.
            Item::Message(Message::Subscribe(mut s)) => {
                s.addresses.retain(|a| self.readable(a));
                emit.down(Item::Message(Message::Subscribe(s)));
            }
            Item::Message(Message::Unsubscribe { mut addresses }) => {
                addresses.retain(|a| self.readable(a));
                if !addresses.is_empty() {
                    emit.down(Item::Message(Message::Unsubscribe { addresses }));
                }
            }
            other => emit.down(other),
        }
    }
}
