//! What a finished run must satisfy: every replica equal, every history complete, every
//! acknowledged local op contained everywhere.

use super::Network;
use crate::proto::{CrdtState, Peer};

impl Network {
    pub(super) fn fingerprint(&self) -> Vec<Option<replikativ_crdt::ContentId>> {
        self.peers
            .iter()
            .flat_map(|p| {
                self.addresses
                    .iter()
                    .map(move |(a, _)| p.peer.as_ref().and_then(|p| p.state(a)).map(CrdtState::digest))
            })
            .collect()
    }

    pub(super) fn converged(&self) -> bool {
        let first = &self.peers[0];
        self.addresses.iter().all(|(a, _)| {
            let s = first.peer.as_ref().and_then(|p| p.state(a));
            self.peers.iter().all(|p| p.peer.as_ref().and_then(|p| p.state(a)) == s)
        })
    }

    /// The peer `i`.
    pub fn peer(&self, i: usize) -> &Peer {
        self.peers[i].peer.as_ref().expect("running")
    }

    /// Asserts convergence: every peer has the same state at every address, every CDVCS history
    /// is complete, and every acknowledged op is contained in every replica.
    pub fn check(&self) -> Result<(), String> {
        for (address, _) in &self.addresses {
            let reference = self.peer(0).state(address);
            for (i, p) in self.peers.iter().enumerate() {
                let state = p.peer.as_ref().expect("running").state(address);
                if state != reference {
                    if std::env::var_os("SIM_DEBUG").is_some() {
                        eprintln!(
                            "peer 0: {:?}\npeer {i}: {:?}",
                            reference.map(|s| s.summary()),
                            state.map(|s| s.summary())
                        );
                    }
                    return Err(format!("peer {i} differs from peer 0 at {address}"));
                }
                if state.is_some_and(CrdtState::is_incomplete) {
                    return Err(format!("peer {i} misses history of {address}"));
                }
            }
        }
        for (address, op) in &self.acknowledged {
            for (i, p) in self.peers.iter().enumerate() {
                let Some(state) = p.peer.as_ref().expect("running").state(address) else {
                    return Err(format!("peer {i} lacks {address}, which has acknowledged ops"));
                };
                let mut probe = state.clone();
                if probe.apply(op) != Ok(false) {
                    return Err(format!("peer {i} lacks an acknowledged op of {address}: {op:?}"));
                }
            }
        }
        Ok(())
    }
}
