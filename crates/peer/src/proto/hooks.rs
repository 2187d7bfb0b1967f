//! Pull hooks (replikativ's `p2p.hooks`): a peer pulls users' CDVCS into a central CDVCS whenever
//! that is a fast-forward (unless induced conflicts are allowed) and an integrity callback accepts
//! the new commits. Pulls happen on the peer that runs the hook, atomically with respect to its
//! own state, and replicate like any local commit.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use replikativ_crdt::{Address, Cdvcs, ContentId};
use uuid::Uuid;

use super::Peer;
use super::message::AnyOp;
use super::persist::{Replica, StoredValues};
use super::publish::Origin;
use super::state::CrdtState;

/// Which users' CDVCS a hook pulls from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMatch {
    /// Every user (replikativ's `#".*"`).
    Any,
    /// One user.
    Exact(String),
    /// Users whose name starts with this.
    Prefix(String),
}

impl UserMatch {
    fn matches(&self, user: &str) -> bool {
        match self {
            UserMatch::Any => true,
            UserMatch::Exact(u) => u == user,
            UserMatch::Prefix(p) => user.starts_with(p.as_str()),
        }
    }
}

/// Decides whether the new commits may enter the central CDVCS: `(central address, new commit
/// ids, read access to the peer's values)`. The commits' records and params are there.
pub type Integrity = Arc<dyn Fn(&Address, &[ContentId], &StoredValues<'_>) -> bool + Send + Sync>;

/// A pull hook: `[from, crdt_id] -> into`.
#[derive(Clone)]
pub struct PullHook {
    /// Whose CDVCS.
    pub from: UserMatch,
    /// Which CDVCS id.
    pub crdt_id: Uuid,
    /// The central CDVCS pulled into.
    pub into: Address,
    /// Whether a pull may leave several heads in the central CDVCS.
    pub allow_induced_conflict: bool,
    /// The integrity check (`None` accepts everything).
    pub integrity: Option<Integrity>,
}

impl fmt::Debug for PullHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullHook")
            .field("from", &self.from)
            .field("crdt_id", &self.crdt_id)
            .field("into", &self.into)
            .field("allow_induced_conflict", &self.allow_induced_conflict)
            .field("integrity", &self.integrity.is_some())
            .finish()
    }
}

impl Peer {
    /// Runs the hooks that match a CDVCS that just changed.
    pub(crate) fn run_hooks(&mut self, address: &Address) {
        let hooks: Vec<PullHook> = self
            .config
            .hooks
            .iter()
            .filter(|h| {
                h.crdt_id == address.id && h.from.matches(&address.user) && h.into.user != address.user
            })
            .cloned()
            .collect();
        for hook in hooks {
            if let Err(reason) = self.pull_hook(address, &hook) {
                tracing::debug!(peer = %self.record.id, from = %address, into = %hook.into, %reason, "pull hook skipped");
            }
        }
    }

    fn pull_hook(&mut self, from: &Address, hook: &PullHook) -> Result<(), String> {
        let Some(CrdtState::Cdvcs(source)) = self.crdts.get(from).map(|r| &r.state) else {
            return Err("not a CDVCS".into());
        };
        if !source.graph().is_complete() {
            return Err("the source misses history".into());
        }
        let tip = source.head().ok_or("the source has several heads")?;
        let source: Cdvcs = source.clone();
        let mut central = match self.crdts.get(&hook.into).map(|r| &r.state) {
            Some(CrdtState::Cdvcs(c)) => c.clone(),
            Some(_) => return Err("the central address is not a CDVCS".into()),
            None => Cdvcs::default(),
        };
        let staged = central.pull(&source, tip, hook.allow_induced_conflict).map_err(|e| e.to_string())?;
        let new: Vec<ContentId> = staged.op.commits.iter().map(|e| e.id).collect();
        if let Some(check) = &hook.integrity
            && !check(&hook.into, &new, &self.persist.values())
        {
            return Err("the integrity check refused the commits".into());
        }
        let fresh = !self.crdts.contains_key(&hook.into);
        match self.crdts.get_mut(&hook.into) {
            Some(replica) => replica.state = CrdtState::Cdvcs(central),
            None => {
                self.crdts.insert(hook.into.clone(), Replica::new(CrdtState::Cdvcs(central)));
            }
        }
        if fresh {
            self.extend_subscriptions(&BTreeSet::from([hook.into.clone()]), None);
        }
        self.record_applied(
            &hook.into,
            AnyOp::Cdvcs(staged.op),
            Default::default(),
            &Default::default(),
            Origin::Local,
        )
        .map_err(|e| e.to_string())
    }
}
