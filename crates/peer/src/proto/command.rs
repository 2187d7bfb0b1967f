//! Stage commands: local operations enter the core like remote publications do, and share the
//! path that stores, relays and acknowledges them. Writes are replied to after their barrier.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use replikativ_crdt::{Address, Cdvcs, Commit, ContentId, CrdtKind, Staged, Transaction, Value};

use super::message::AnyOp;
use super::publish::Origin;
use super::state::CrdtState;
use super::{CommandId, Output, Peer, Replica, StageError};

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
    /// The peer's status.
    Status,
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
}

/// New values of a local op as canonical encodings, and its commit records parsed.
fn bytes_of(values: BTreeMap<ContentId, Value>) -> Known {
    let commits = values.iter().filter_map(|(id, v)| Commit::from_value(v).ok().map(|c| (*id, c))).collect();
    (values.into_iter().map(|(id, v)| (id, v.encode())).collect(), commits)
}

type Known = (HashMap<ContentId, Vec<u8>>, HashMap<ContentId, Commit>);

impl Command {
    /// Every address the command names.
    pub fn addresses(&self) -> Vec<&Address> {
        match self {
            Command::Create { address, .. }
            | Command::Assoc { address, .. }
            | Command::Dissoc { address, .. }
            | Command::Transact { address, .. }
            | Command::Merge { address, .. }
            | Command::LwwSet { address, .. }
            | Command::GsetAdd { address, .. }
            | Command::Read { address } => vec![address],
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
            Command::Read { .. } | Command::Values { .. } | Command::Commits { .. } | Command::Status
        );
        match self.run(cmd) {
            // Reads wrote nothing: they answer at once.
            Ok(reply) if read => self.outbox.push(Output::Reply { id, result: Ok(reply) }),
            Ok(reply) => self.after_barrier(Output::Reply { id, result: Ok(reply) }),
            Err(e) => self.outbox.push(Output::Reply { id, result: Err(e) }),
        }
    }

    fn stored_value(&self, id: &ContentId) -> Result<Value, StageError> {
        let bytes = self.persist.value(id)?.ok_or(StageError::MissingValue(*id))?;
        Value::decode(&bytes).map_err(|e| StageError::Store(format!("stored value {id}: {e}")))
    }

    /// Commit records with their params, from the store.
    fn resolve_commits(&self, ids: &[ContentId]) -> Result<Vec<CommitValue>, StageError> {
        ids.iter()
            .map(|id| {
                let commit = Commit::from_value(&self.stored_value(id)?)
                    .map_err(|e| StageError::Store(format!("stored commit {id}: {e}")))?;
                let transactions = commit
                    .transactions
                    .into_iter()
                    .map(|t| Ok(Transaction { function: t.function, params: self.stored_value(&t.params)? }))
                    .collect::<Result<Vec<_>, StageError>>()?;
                Ok(CommitValue {
                    id: *id,
                    parents: commit.parents,
                    transactions,
                    author: commit.author,
                    ts: commit.ts,
                })
            })
            .collect()
    }

    fn replica_mut(&mut self, address: &Address, kind: CrdtKind) -> Result<&mut CrdtState, StageError> {
        let replica = self.crdts.get_mut(address).ok_or_else(|| StageError::NotFound(address.clone()))?;
        if replica.state.kind() != kind {
            return Err(StageError::WrongKind {
                address: address.clone(),
                expected: kind,
                found: replica.state.kind(),
            });
        }
        Ok(&mut replica.state)
    }

    fn local(&mut self, address: &Address, op: AnyOp, (values, commits): Known) -> Result<(), StageError> {
        self.record_applied(address, &op, values, &commits, Origin::Local)
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, StageError> {
        let now = self.now_ms;
        let actor = self.actor;
        Ok(match cmd {
            Command::Create { address, kind, author } => {
                if self.crdts.contains_key(&address) {
                    return Err(StageError::AlreadyExists(address));
                }
                let (state, op, values) = match kind {
                    CrdtKind::Cdvcs => {
                        let (cdvcs, Staged { op, values }) = Cdvcs::new(&author, now);
                        (CrdtState::Cdvcs(cdvcs), AnyOp::Cdvcs(op), bytes_of(values))
                    }
                    other => {
                        let state = CrdtState::empty(other);
                        let op = state.state_op();
                        (state, op, Known::default())
                    }
                };
                self.crdts.insert(address.clone(), Replica::new(state));
                self.extend_subscriptions(&BTreeSet::from([address.clone()]), None);
                self.local(&address, op, values)?;
                Reply::Done
            }
            Command::Subscribe { addresses } => {
                self.extend_subscriptions(&addresses, None);
                Reply::Done
            }
            Command::Unsubscribe { addresses } => {
                self.remove_subscriptions(&addresses);
                Reply::Done
            }
            Command::Assoc { address, key, txs, author } => {
                let CrdtState::Ormap(m) = self.replica_mut(&address, CrdtKind::Ormap)? else {
                    unreachable!()
                };
                let staged = m.assoc(key, txs, actor, &author, now)?;
                let commit = staged.op.adds[0].commit;
                self.local(&address, AnyOp::Ormap(staged.op), bytes_of(staged.values))?;
                Reply::Commit(commit)
            }
            Command::Dissoc { address, key, revert, author } => {
                let CrdtState::Ormap(m) = self.replica_mut(&address, CrdtKind::Ormap)? else {
                    unreachable!()
                };
                let staged = m.dissoc(&key, revert, &author, now)?;
                let commit = staged.op.removals[0].commit;
                self.local(&address, AnyOp::Ormap(staged.op), bytes_of(staged.values))?;
                Reply::Commit(commit)
            }
            Command::Transact { address, txs, author } => {
                let CrdtState::Cdvcs(c) = self.replica_mut(&address, CrdtKind::Cdvcs)? else {
                    unreachable!()
                };
                let staged = c.transact(&author, now, txs)?;
                let commit = staged.op.commits.last().expect("a commit").id;
                self.local(&address, AnyOp::Cdvcs(staged.op), bytes_of(staged.values))?;
                Reply::Commit(commit)
            }
            Command::Merge { address, heads, correcting, author } => {
                let CrdtState::Cdvcs(c) = self.replica_mut(&address, CrdtKind::Cdvcs)? else {
                    unreachable!()
                };
                let staged = c.merge(&author, now, &heads, None, correcting)?;
                let commit = staged.op.commits.last().expect("a merge commit").id;
                self.local(&address, AnyOp::Cdvcs(staged.op), bytes_of(staged.values))?;
                Reply::Commit(commit)
            }
            Command::Pull { from, into, tip, allow_induced_conflict } => {
                let CrdtState::Cdvcs(remote) = self.replica_mut(&from, CrdtKind::Cdvcs)?.clone() else {
                    unreachable!()
                };
                let tip = match tip {
                    Some(t) => t,
                    None => remote.head().ok_or_else(|| replikativ_crdt::OpError::MultipleHeads {
                        heads: remote.heads().iter().copied().collect(),
                    })?,
                };
                if !self.crdts.contains_key(&into) {
                    self.crdts.insert(into.clone(), Replica::new(CrdtState::Cdvcs(Cdvcs::default())));
                    self.extend_subscriptions(&BTreeSet::from([into.clone()]), None);
                }
                let CrdtState::Cdvcs(c) = self.replica_mut(&into, CrdtKind::Cdvcs)? else { unreachable!() };
                let staged = c.pull(&remote, tip, allow_induced_conflict)?;
                self.local(&into, AnyOp::Cdvcs(staged.op), Known::default())?;
                Reply::Commit(tip)
            }
            Command::Fork { from, into } => {
                if self.crdts.contains_key(&into) {
                    return Err(replikativ_crdt::OpError::ForkTargetExists.into());
                }
                let CrdtState::Cdvcs(c) = self.replica_mut(&from, CrdtKind::Cdvcs)? else { unreachable!() };
                let (fork, op) = c.fork();
                self.crdts.insert(into.clone(), Replica::new(CrdtState::Cdvcs(fork)));
                self.extend_subscriptions(&BTreeSet::from([into.clone()]), None);
                self.local(&into, AnyOp::Cdvcs(op), Known::default())?;
                Reply::Done
            }
            Command::LwwSet { address, value } => {
                let CrdtState::Lww(r) = self.replica_mut(&address, CrdtKind::Lww)? else { unreachable!() };
                let op = r.set(value, now, actor)?;
                self.local(&address, AnyOp::Lww(op), Known::default())?;
                Reply::Done
            }
            Command::GsetAdd { address, element } => {
                let CrdtState::Gset(s) = self.replica_mut(&address, CrdtKind::Gset)? else { unreachable!() };
                let op = s.add(element)?;
                self.local(&address, AnyOp::Gset(op), Known::default())?;
                Reply::Done
            }
            Command::Read { address } => {
                Reply::State(self.crdts.get(&address).map(|r| Box::new(r.state.clone())))
            }
            Command::Values { ids } => {
                let mut values = Vec::with_capacity(ids.len());
                for id in ids {
                    let v = self.persist.value(&id)?.and_then(|b| Value::decode(&b).ok());
                    values.push((id, v));
                }
                Reply::Values(values)
            }
            Command::Commits { ids } => Reply::Commits(self.resolve_commits(&ids)?),
            Command::Status => Reply::Status(super::PeerStatus {
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
            }),
        })
    }
}
