//! Stage commands: what they are, and how the core runs them. Local operations (`local.rs`) enter
//! the core like remote publications do and share the path that stores, relays and acknowledges
//! them; writes are replied to after their barrier. Reads (`query.rs`) are answered at once.

use std::collections::{BTreeMap, BTreeSet};

use replikativ_crdt::{Address, ContentId, CrdtKind, Transaction, Value};

use super::state::CrdtState;
use super::{CommandId, Output, Peer, StageError};

/// A stage command. Serializable, so a remote client can send it to a node (see
/// [`crate::middleware::RemoteStage`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Creates a datatype at an address (and subscribes to it). A CDVCS gets its root commit by
    /// `author`.
    Create {
        /// Where.
        address: Address,
        /// Which datatype.
        kind: CrdtKind,
        /// Who (the stage's user).
        author: String,
    },
    /// Subscribes to addresses (their data arrives from peers).
    Subscribe {
        /// The addresses.
        addresses: BTreeSet<Address>,
    },
    /// Unsubscribes from addresses: peers stop sending their publications here (the stored state
    /// stays).
    Unsubscribe {
        /// The addresses.
        addresses: BTreeSet<Address>,
    },
    /// OR-Map: adds a value under a key.
    Assoc {
        /// The OR-Map.
        address: Address,
        /// The key.
        key: Value,
        /// The value's transactions.
        txs: Vec<Transaction>,
        /// Who.
        author: String,
    },
    /// OR-Map: removes every observed value of a key.
    Dissoc {
        /// The OR-Map.
        address: Address,
        /// The key.
        key: Value,
        /// Revert transactions recorded with the removal.
        revert: Vec<Transaction>,
        /// Who.
        author: String,
    },
    /// CDVCS: commits transactions on the single head.
    Transact {
        /// The CDVCS.
        address: Address,
        /// The transactions.
        txs: Vec<Transaction>,
        /// Who.
        author: String,
    },
    /// CDVCS: merges exactly the current heads, in this order.
    Merge {
        /// The CDVCS.
        address: Address,
        /// The heads, in parent order.
        heads: Vec<ContentId>,
        /// Correcting transactions of the merge commit.
        correcting: Vec<Transaction>,
        /// Who.
        author: String,
    },
    /// CDVCS: pulls another CDVCS (held by this peer) into `into` up to `tip` (default: its single
    /// head). An empty or absent `into` takes the whole history.
    Pull {
        /// The CDVCS pulled from.
        from: Address,
        /// The CDVCS pulled into.
        into: Address,
        /// The commit to pull up to.
        tip: Option<ContentId>,
        /// Whether the pull may leave several heads.
        allow_induced_conflict: bool,
    },
    /// CDVCS: copies a CDVCS to a new address.
    Fork {
        /// The CDVCS copied.
        from: Address,
        /// The new address (must hold nothing).
        into: Address,
    },
    /// LWW register: writes a value.
    LwwSet {
        /// The register.
        address: Address,
        /// The value.
        value: Value,
    },
    /// G-Set: adds an element.
    GsetAdd {
        /// The set.
        address: Address,
        /// The element.
        element: Value,
    },
    /// Reads the state at an address.
    Read {
        /// Where.
        address: Address,
    },
    /// Reads values (commit records, params) from the store.
    Values {
        /// Their ids.
        ids: Vec<ContentId>,
    },
    /// Reads commit records with their transactions' params resolved.
    Commits {
        /// The commit ids.
        ids: Vec<ContentId>,
    },
    /// Reads part of the state at an address, in the core (nothing but the answer is copied).
    Query {
        /// Where.
        address: Address,
        /// What.
        query: Query,
    },
    /// The peer's status.
    Status,
    /// Exports addresses (every held one if empty) with every value their states name
    /// ([`Reply::Exported`]), at most `max_answer_bytes` of values in all.
    Export {
        /// The addresses.
        addresses: BTreeSet<Address>,
    },
    /// Imports an exported address: checked like a publication from the wire, then stored,
    /// relayed and reported like a local op.
    Import(Box<super::backup::Export>),
    /// OR-Map: replaces the values of a key: removes every value observed here and adds the
    /// new one, in one op (see `OrMap::put`).
    Put {
        /// The OR-Map.
        address: Address,
        /// The key.
        key: Value,
        /// The new value's transactions.
        txs: Vec<Transaction>,
        /// Who.
        author: String,
    },
}

/// What a [`Command::Query`] asks.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Query {
    /// OR-Map: the live values of a key with their transactions ([`Reply::Commits`]).
    Get {
        /// The key.
        key: Value,
    },
    /// OR-Map: the keys with live values ([`Reply::Keys`]).
    Keys,
    /// OR-Map: the keys with several live values ([`Reply::Conflicts`]).
    Conflicts,
    /// CDVCS: the heads ([`Reply::Heads`]).
    Heads,
    /// CDVCS: the linearized history with transactions ([`Reply::Commits`]).
    History,
    /// LWW register: the value ([`Reply::Value`]).
    Register,
    /// G-Set: the elements ([`Reply::Elements`]).
    Elements,
}

/// A commit record with its transactions' params resolved.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommitValue {
    /// The commit id.
    pub id: ContentId,
    /// Parents (CDVCS).
    pub parents: Vec<ContentId>,
    /// The transactions.
    pub transactions: Vec<Transaction>,
    /// Who.
    pub author: String,
    /// When (ms since the epoch).
    pub ts: u64,
}

/// A successful command's result.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Done (durably, for writes).
    Done,
    /// A commit was made (its id).
    Commit(ContentId),
    /// The state at an address, if any.
    State(Option<Box<CrdtState>>),
    /// Values by id (`None`: not in the store).
    Values(Vec<(ContentId, Option<Value>)>),
    /// Resolved commits, in the order asked for.
    Commits(Vec<CommitValue>),
    /// The peer's status.
    Status(super::PeerStatus),
    /// OR-Map keys.
    Keys(Vec<Value>),
    /// OR-Map keys with several live values, and those values' commits.
    Conflicts(BTreeMap<Value, Vec<ContentId>>),
    /// CDVCS heads.
    Heads(BTreeSet<ContentId>),
    /// An LWW register's value.
    Value(Value),
    /// A G-Set's elements.
    Elements(BTreeSet<Value>),
    /// Exported addresses.
    Exported(Vec<super::backup::Export>),
}

impl Command {
    /// Every address the command names.
    pub fn addresses(&self) -> Vec<&Address> {
        match self {
            Command::Create { address, .. }
            | Command::Assoc { address, .. }
            | Command::Put { address, .. }
            | Command::Dissoc { address, .. }
            | Command::Transact { address, .. }
            | Command::Merge { address, .. }
            | Command::LwwSet { address, .. }
            | Command::GsetAdd { address, .. }
            | Command::Read { address }
            | Command::Query { address, .. } => vec![address],
            Command::Import(e) => vec![&e.address],
            Command::Export { addresses } => addresses.iter().collect(),
            Command::Subscribe { addresses } | Command::Unsubscribe { addresses } => {
                addresses.iter().collect()
            }
            Command::Pull { from, into, .. } | Command::Fork { from, into } => vec![from, into],
            Command::Values { .. } | Command::Commits { .. } | Command::Status => Vec::new(),
        }
    }
}

impl Peer {
    pub(crate) fn command(&mut self, id: CommandId, cmd: Command) {
        // The same check as an address from the wire gets when it is decoded (an address built
        // with a struct literal skipped it).
        if let Some(Err(e)) = cmd.addresses().into_iter().map(Address::validate).find(Result::is_err) {
            self.refusals.count(super::Refusal::InvalidCommand);
            let result = Err(StageError::InvalidAddress(e.to_string()));
            return self.outbox.push(Output::Reply { id, result });
        }
        let read = matches!(
            cmd,
            Command::Read { .. }
                | Command::Query { .. }
                | Command::Values { .. }
                | Command::Commits { .. }
                | Command::Status
                | Command::Export { .. }
        );
        let result = self.run(cmd);
        if matches!(result, Err(StageError::InvalidImport(_))) {
            // An import that fails the checks of wire input is counted like bad wire input.
            self.refusals.count(super::Refusal::InvalidCommand);
        }
        match result {
            // Reads wrote nothing: they answer at once.
            Ok(reply) if read => self.outbox.push(Output::Reply { id, result: Ok(reply) }),
            Ok(reply) => self.after_barrier(Output::Reply { id, result: Ok(reply) }),
            Err(e) => self.outbox.push(Output::Reply { id, result: Err(e) }),
        }
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, StageError> {
        match cmd {
            Command::Create { address, kind, author } => self.create(address, kind, &author),
            Command::Subscribe { addresses } => {
                self.extend_subscriptions(&addresses, None);
                Ok(Reply::Done)
            }
            Command::Unsubscribe { addresses } => {
                self.remove_subscriptions(&addresses);
                Ok(Reply::Done)
            }
            Command::Assoc { address, key, txs, author } => self.assoc(&address, key, txs, &author),
            Command::Put { address, key, txs, author } => self.put(&address, key, txs, &author),
            Command::Dissoc { address, key, revert, author } => self.dissoc(&address, &key, revert, &author),
            Command::Transact { address, txs, author } => self.transact(&address, txs, &author),
            Command::Merge { address, heads, correcting, author } => {
                self.merge(&address, &heads, correcting, &author)
            }
            Command::Pull { from, into, tip, allow_induced_conflict } => {
                self.pull(&from, &into, tip, allow_induced_conflict)
            }
            Command::Fork { from, into } => self.fork(&from, &into),
            Command::LwwSet { address, value } => self.lww_set(&address, value),
            Command::GsetAdd { address, element } => self.gset_add(&address, element),
            Command::Read { address } => {
                Ok(Reply::State(self.crdts.get(&address).map(|r| Box::new(r.state.clone()))))
            }
            Command::Query { address, query } => self.query(&address, query),
            Command::Values { ids } => self.read_values(ids),
            Command::Commits { ids } => Ok(Reply::Commits(self.resolve_commits(&ids)?)),
            Command::Status => Ok(Reply::Status(self.status())),
            Command::Export { addresses } => self.export(addresses),
            Command::Import(export) => self.import(*export),
        }
    }

    /// The state at `address`, if it is of `kind`.
    pub(super) fn replica_of(&self, address: &Address, kind: CrdtKind) -> Result<&CrdtState, StageError> {
        let replica = self.crdts.get(address).ok_or_else(|| StageError::NotFound(address.clone()))?;
        if replica.state.kind() != kind {
            return Err(StageError::WrongKind {
                address: address.clone(),
                expected: kind,
                found: replica.state.kind(),
            });
        }
        Ok(&replica.state)
    }

    /// The state at `address` to change, if it is of `kind`.
    pub(super) fn replica_mut(
        &mut self,
        address: &Address,
        kind: CrdtKind,
    ) -> Result<&mut CrdtState, StageError> {
        self.replica_of(address, kind)?;
        Ok(&mut self.crdts.get_mut(address).expect("checked").state)
    }

    fn status(&self) -> super::PeerStatus {
        super::PeerStatus {
            peer_id: self.record.id.clone(),
            extend: self.record.extend,
            connections: self.connections().map(|(_, id)| id.to_owned()).collect(),
            subscriptions: self.record.subscriptions.iter().cloned().collect(),
            addresses: self.crdts.len(),
            listen: Vec::new(),
            store_bytes: self.persist.size_on_disk(),
            // The node adds its own counters.
            refusals: self.refusals.by_name(),
            recovery: self.recovery.clone(),
        }
    }
}
