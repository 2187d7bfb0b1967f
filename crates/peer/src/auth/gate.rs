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
//! dropped), whatever the core decided. Read capabilities ([`super::cap`]) presented by the remote
//! add to what it may read, until they expire.

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
    /// What the principal may do per address (read, write) by the rules, and the address's
    /// owner, decided once: the rules are fixed while the node runs, and deciding parses the
    /// address's user as a key (a curve point decompression, ~10 µs), which every relayed batch
    /// would otherwise pay. At most [`GATE_CACHE`] addresses (then cleared).
    cache: std::collections::HashMap<Address, super::Rights>,
    /// Read capabilities the remote presented (verified, naming its key): checked against the
    /// clock on every use, so an expired one stops the flow at once.
    caps: Vec<super::cap::ReadCap>,
    /// Capabilities refused on this connection: past [`super::cap::MAX_CAPS`], further ones are
    /// refused without checking their signatures (a stream of forged caps must not make the node
    /// verify signatures without end).
    refused_caps: usize,
}

/// Addresses whose rights one connection's gate remembers at most.
pub const GATE_CACHE: usize = 4096;

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
        Command::Pull { from, into, .. } | Command::Fork { from, into } => {
            (vec![Read(from), Write(into)], None)
        }
        Command::Subscribe { addresses } => (addresses.iter().map(Read).collect(), None),
        Command::Read { address } | Command::Query { address, .. } => (vec![Read(address)], None),
        Command::Import(e) => (vec![Write(&e.address)], None),
        Command::Export { addresses } if !addresses.is_empty() => {
            (addresses.iter().map(Read).collect(), None)
        }
        Command::Export { .. } => (vec![Trusted("exporting every address")], None),
        Command::Unsubscribe { .. } => (vec![Trusted("unsubscribing the node")], None),
        Command::Values { .. } | Command::Commits { .. } => {
            (vec![Trusted("reading values by content id")], None)
        }
        Command::Status => (vec![Trusted("the node's status")], None),
    }
}

impl AuthGate {
    /// The gate of a connection whose remote proved `principal`; refusals are counted with
    /// `count`.
    pub fn new(principal: Principal, policy: Arc<AuthPolicy>, count: Option<RefusalCounter>) -> AuthGate {
        AuthGate {
            principal,
            policy,
            count,
            dialed: false,
            cache: Default::default(),
            caps: Vec::new(),
            refused_caps: 0,
        }
    }

    /// The gate of a connection this node dialed: the remote is trusted like a key in
    /// [`AuthPolicy::trusted`]. A node chooses whom it dials (by URL, and with TLS by
    /// certificate), subscribes there and relays what that node relays: without signed writes
    /// (issue J) a client cannot check what a server relays, so it trusts the server it
    /// connected to, as before authentication existed. The handshake still proves the server's
    /// node key.
    pub fn dialed(principal: Principal, policy: Arc<AuthPolicy>, count: Option<RefusalCounter>) -> AuthGate {
        AuthGate {
            principal,
            policy,
            count,
            dialed: true,
            cache: Default::default(),
            caps: Vec::new(),
            refused_caps: 0,
        }
    }

    fn refused(&self, why: Refusal) {
        if let Some(count) = &self.count {
            count(why);
        }
    }

    fn trusted(&self) -> bool {
        self.dialed || self.policy.is_trusted(&self.principal)
    }

    /// (may read, may write) `address`, a read capability included.
    fn rights(&mut self, address: &Address) -> (bool, bool) {
        if self.dialed {
            return (true, true);
        }
        let super::Rights { read, write, owner } = match self.cache.get(address) {
            Some(r) => *r,
            None => {
                let r = self.policy.rights(&self.principal, address);
                if self.cache.len() >= GATE_CACHE {
                    self.cache.clear();
                }
                self.cache.insert(address.clone(), r);
                r
            }
        };
        if (read && write) || self.caps.is_empty() {
            return (read, write);
        }
        let now = super::cap::wall_ms();
        let valid = |c: &&super::cap::ReadCap| c.not_after > now && c.covers(address, owner);
        let read = read || self.caps.iter().any(|c| valid(&c));
        let write = write || self.caps.iter().filter(valid).any(|c| c.write);
        (read, write)
    }

    fn readable(&mut self, address: &Address) -> bool {
        self.rights(address).0
    }

    fn writable(&mut self, address: &Address) -> bool {
        self.rights(address).1
    }

    /// Takes the read capabilities of a `custom` message tagged [`super::cap::CAPS_TAG`]: keeps
    /// those that verify, name this connection's key and have not expired; the reason if any
    /// was refused.
    fn present(&mut self, data: &[u8]) -> Result<(), String> {
        use super::cap::{MAX_CAPS, ReadCap, wall_ms};
        let caps: Vec<ReadCap> = crate::proto::message::from_msgpack(data)
            .map_err(|e| format!("malformed read capabilities: {e}"))?;
        if self.caps.len() + caps.len() > MAX_CAPS {
            return Err(format!("more than {MAX_CAPS} read capabilities on one connection"));
        }
        if self.refused_caps + caps.len() > MAX_CAPS {
            self.refused_caps = self.refused_caps.saturating_add(caps.len());
            return Err(format!(
                "more than {MAX_CAPS} refused capabilities on this connection: no more are checked"
            ));
        }
        let now = wall_ms();
        let (node, user) = (self.principal.node, self.principal.user);
        let mine = |k: &super::PublicKey| *k == node || Some(*k) == user;
        let mut refused = Vec::new();
        for cap in caps {
            if cap.verify().is_err() {
                refused.push("a read capability whose signature does not verify".to_owned());
            } else if !mine(&cap.grantee) {
                refused.push(format!("a read capability for {}, not for this connection's key", cap.grantee));
            } else if cap.not_after <= now {
                refused.push("an expired read capability".to_owned());
            } else if !self.caps.contains(&cap) {
                self.caps.push(cap);
            }
        }
        self.refused_caps += refused.len();
        if refused.is_empty() { Ok(()) } else { Err(refused.join("; ")) }
    }

    /// Keeps the items whose address is readable.
    fn keep_readable<T>(&mut self, items: &mut Vec<T>, address: impl Fn(&T) -> &Address) {
        let keep: Vec<bool> = items.iter().map(|i| self.readable(address(i))).collect();
        let mut k = keep.into_iter();
        items.retain(|_| k.next().unwrap_or(false));
    }

    fn keep_readable_set(&mut self, set: &mut std::collections::BTreeSet<Address>) {
        let denied: Vec<Address> = set.iter().filter(|a| !self.rights(a).0).cloned().collect();
        for a in denied {
            set.remove(&a);
        }
    }

    /// Why the command may not run, if it may not.
    fn command_denied(&mut self, cmd: &Command) -> Option<String> {
        let (needs, author) = needs(cmd);
        for need in needs {
            match need {
                Need::Read(a) if !self.readable(a) => {
                    return Some(format!("no datatype at {a} readable here"));
                }
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
                let reason =
                    "resubscribe is not accepted with authentication on; subscribe in full".to_owned();
                emit.down(Item::Message(Message::Refused { id: r.id, reason }));
            }
            Item::Message(Message::Subscribe(mut s)) => {
                let before = s.addresses.len();
                self.keep_readable_set(&mut s.addresses);
                if s.addresses.len() != before {
                    self.refused(Refusal::Forbidden);
                }
                emit.up(Item::Message(Message::Subscribe(s)));
            }
            Item::Message(Message::Summaries { mut summaries, reply }) => {
                self.keep_readable(&mut summaries, |(a, _)| a);
                emit.up(Item::Message(Message::Summaries { summaries, reply }));
            }
            Item::Message(Message::Custom { tag, data }) if tag == super::cap::CAPS_TAG => {
                if let Err(reason) = self.present(&data) {
                    self.refused(Refusal::Forbidden);
                    emit.down(Item::Message(Message::Error { reason: format!("forbidden: {reason}") }));
                }
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
                self.keep_readable(&mut summaries, |(a, _)| a);
                if !summaries.is_empty() || reply {
                    emit.down(Item::Message(Message::Summaries { summaries, reply }));
                }
            }
            Item::Message(Message::Recon(Recon::Listed { buckets, mut summaries })) => {
                self.keep_readable(&mut summaries, |(a, _)| a);
                emit.down(Item::Message(Message::Recon(Recon::Listed { buckets, summaries })));
            }
            // A remote that may not read an address does not learn that this node holds it.
            Item::Message(Message::Subscribe(mut s)) => {
                self.keep_readable_set(&mut s.addresses);
                emit.down(Item::Message(Message::Subscribe(s)));
            }
            Item::Message(Message::Unsubscribe { mut addresses }) => {
                self.keep_readable_set(&mut addresses);
                if !addresses.is_empty() {
                    emit.down(Item::Message(Message::Unsubscribe { addresses }));
                }
            }
            other => emit.down(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cap::{ReadCap, caps_message, wall_ms};
    use crate::auth::{PublicKey, SecretKey};
    use crate::middleware::Chain;

    fn errors(chain: &mut Chain, msg: Message) -> Vec<String> {
        chain
            .inbound(Item::Message(msg))
            .down
            .into_iter()
            .filter_map(|i| match i {
                Item::Message(Message::Error { reason }) => Some(reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn forged_capabilities_stop_being_checked_past_the_bound() {
        let alice = SecretKey::from_seed(&[1; 32]);
        let eve = SecretKey::from_seed(&[9; 32]).public();
        let principal = Principal { node: SecretKey::from_seed(&[3; 32]).public(), user: Some(eve) };
        let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = counted.clone();
        let count: RefusalCounter = Arc::new(move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let mut chain = Chain::new(vec![Box::new(AuthGate::new(principal, Arc::default(), Some(count)))]);
        let other: PublicKey = SecretKey::from_seed(&[7; 32]).public();
        let forged = ReadCap::issue(&alice, other, Default::default(), wall_ms() + 60_000);
        let forged = ReadCap { grantee: eve, ..forged };
        for _ in 0..2 {
            let e = errors(&mut chain, caps_message(&vec![forged.clone(); 32]));
            assert!(e[0].contains("does not verify"), "{e:?}");
        }
        // 64 refused: a valid cap is not even looked at now.
        let valid = ReadCap::issue(&alice, eve, Default::default(), wall_ms() + 60_000);
        let e = errors(&mut chain, caps_message(&[valid]));
        assert!(e[0].contains("no more are checked"), "{e:?}");
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 3);
        let e = errors(
            &mut chain,
            Message::Custom { tag: crate::auth::cap::CAPS_TAG.into(), data: vec![1, 2].into() },
        );
        assert!(e[0].contains("malformed"), "{e:?}");
    }
}
