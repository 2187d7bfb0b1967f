//! Collection-level anti-entropy: which of thousands of shared addresses differ, without a summary
//! per address.
//!
//! A connection that shares more than [`RECON_ABOVE`] addresses does not send one summary per
//! address (10,000 addresses cost about 1 MB of summaries each way on every reconnect and tick).
//! Instead both sides arrange the shared addresses in a 16-way trie by a 64-bit hash of the address;
//! an item's fingerprint is a 64-bit hash of the address and its summary, and a bucket's is the
//! wrapping sum of its items' with their count. A `recon nodes` message carries, per bucket, its 16
//! children's counts and fingerprints (192 bytes); the receiver compares with its own and answers
//! only for the children that differ: with their children (`nodes`) while both sides hold more than
//! [`LEAF`] items there, else by asking for the summaries of that bucket (`list`), which the other
//! side sends (`listed`) and which then run through the ordinary per-address exchange (an address of
//! a listed bucket that the list lacks is one the other side does not have, and is sent whole).
//! When one side holds nothing in a differing bucket, no descent is needed: its items are sent (or
//! asked for) at once.
//!
//! Cost, 10,000 shared addresses of which 10 changed: the root (192 bytes), the ~10 differing
//! children's nodes (~2 KB), the lists and the 10 addresses' summaries: a few KiB and about three
//! round trips before data flows (test `tests/many_addresses.rs`), against ~2 MB before.
//!
//! The fingerprints are not keyed: a peer that chooses states to make two buckets collide only hides
//! its own difference until a state changes. (Keyed per-session fingerprints, as in the design note,
//! come with connection authentication, issue K.)

use std::collections::BTreeSet;

use replikativ_crdt::Address;
use serde_bytes::ByteBuf;

use super::message::{Bucket, Message, Recon, Summary};
use super::{ConnId, Peer, Refusal};

/// Connections that share more addresses than this reconcile them by fingerprints.
pub const RECON_ABOVE: usize = 64;
/// A differing bucket of at most this many items (on either side) is listed, not descended into.
pub const LEAF: u32 = 8;
/// Bytes of one node's children: 16 x (count u32, fingerprint u64).
const NODE_BYTES: usize = 16 * 12;
/// Nodes one `recon nodes` message of this peer carries at most (about 840 KB).
const MAX_NODES_PER_MESSAGE: usize = 4096;
/// Buckets one `recon` message may name at most.
pub const MAX_RECON_BUCKETS: usize = 1 << 16;

/// The 64-bit trie hash of an address.
fn address_hash(a: &Address) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(a.user.as_bytes());
    h.update(&[0]);
    h.update(a.id.as_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// An item's fingerprint: the address with its summary.
fn item_fingerprint(a: &Address, s: &Summary) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(a.user.as_bytes());
    h.update(&[0]);
    h.update(a.id.as_bytes());
    h.update(&rmp_serde::to_vec(s).expect("summaries encode"));
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn child(b: Bucket, i: u64) -> Bucket {
    Bucket { depth: b.depth + 1, prefix: b.prefix | (i << (60 - 4 * u32::from(b.depth))) }
}

/// The hash range `[lo, hi]` of a bucket.
fn range(b: Bucket) -> (u64, u64) {
    if b.depth == 0 {
        return (0, u64::MAX);
    }
    let free = 64 - 4 * u32::from(b.depth);
    let lo = (b.prefix >> free) << free;
    let hi = if free == 0 { lo } else { lo | ((1u64 << free) - 1) };
    (lo, hi)
}

/// The shared addresses of a connection, by trie hash, with their summaries' fingerprints.
struct Items {
    /// (trie hash, fingerprint, address), sorted by hash.
    items: Vec<(u64, u64, Address)>,
}

impl Items {
    fn within(&self, b: Bucket) -> &[(u64, u64, Address)] {
        let (lo, hi) = range(b);
        let start = self.items.partition_point(|(h, _, _)| *h < lo);
        let end = self.items.partition_point(|(h, _, _)| *h <= hi);
        &self.items[start..end]
    }

    fn sums(&self, b: Bucket) -> (u32, u64) {
        let within = self.within(b);
        (within.len() as u32, within.iter().fold(0u64, |acc, (_, fp, _)| acc.wrapping_add(*fp)))
    }

    fn node(&self, b: Bucket) -> ByteBuf {
        let mut out = Vec::with_capacity(NODE_BYTES);
        for i in 0..16 {
            let (count, fp) = self.sums(child(b, i));
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&fp.to_le_bytes());
        }
        ByteBuf::from(out)
    }
}

impl Peer {
    /// The addresses shared with a connection: what it subscribed to here and what this peer told
    /// it, that this peer holds or subscribes to.
    pub(crate) fn shared_with(&self, conn: ConnId) -> BTreeSet<Address> {
        let Some(c) = self.conns.get(&conn) else { return BTreeSet::new() };
        c.interest
            .iter()
            .chain(c.sent.iter().flatten())
            .filter(|a| self.crdts.contains_key(*a) || self.record.subscriptions.contains(*a))
            .cloned()
            .collect()
    }

    fn recon_items(&self, conn: ConnId) -> Items {
        let shared = self.shared_with(conn);
        let summaries = self.summaries(conn, shared.iter());
        let mut items: Vec<(u64, u64, Address)> =
            summaries.into_iter().map(|(a, s)| (address_hash(&a), item_fingerprint(&a, &s), a)).collect();
        items.sort_unstable_by(|x, y| (x.0, &x.2).cmp(&(y.0, &y.2)));
        Items { items }
    }

    /// Starts a reconciliation with `conn`: the root's children.
    pub(crate) fn start_recon(&mut self, conn: ConnId) {
        let root = Bucket { depth: 0, prefix: 0 };
        let node = self.recon_items(conn).node(root);
        self.send(conn, Message::Recon(Recon::Nodes(vec![(root, node)])));
    }

    pub(crate) fn on_recon(&mut self, conn: ConnId, r: Recon) {
        let count = match &r {
            Recon::Nodes(n) => n.len(),
            Recon::List(b) | Recon::Listed { buckets: b, .. } => b.len(),
        };
        let bad_bucket = |b: &Bucket| b.depth > 16;
        let malformed = match &r {
            Recon::Nodes(n) => n.iter().any(|(b, c)| c.len() != NODE_BYTES || bad_bucket(b) || b.depth == 16),
            Recon::List(b) | Recon::Listed { buckets: b, .. } => b.iter().any(bad_bucket),
        };
        if count > MAX_RECON_BUCKETS || malformed {
            let reason = format!("a recon message naming {count} buckets, or a malformed one");
            return self.close(conn, Refusal::BadRecon, reason);
        }
        let items = self.recon_items(conn);
        match r {
            Recon::Nodes(nodes) => {
                // A bucket named twice is answered once (else one message of repeats would make
                // this peer send its answer many times over).
                let nodes: std::collections::BTreeMap<Bucket, ByteBuf> = nodes.into_iter().rev().collect();
                let (mut deeper, mut list, mut send_all) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
                for (bucket, children) in nodes {
                    for i in 0..16u64 {
                        let at = i as usize * 12;
                        let theirs_count = u32::from_le_bytes(children[at..at + 4].try_into().expect("4"));
                        let theirs_fp = u64::from_le_bytes(children[at + 4..at + 12].try_into().expect("8"));
                        let c = child(bucket, i);
                        let (count, fp) = items.sums(c);
                        if (count, fp) == (theirs_count, theirs_fp) {
                            continue;
                        }
                        if theirs_count == 0 {
                            // They hold none of these: send ours.
                            send_all.insert(c);
                        } else if count <= LEAF || theirs_count <= LEAF || c.depth >= 16 {
                            list.insert(c);
                        } else {
                            deeper.push((c, items.node(c)));
                        }
                    }
                }
                for part in deeper.chunks(MAX_NODES_PER_MESSAGE) {
                    self.send(conn, Message::Recon(Recon::Nodes(part.to_vec())));
                }
                if !list.is_empty() {
                    self.send(conn, Message::Recon(Recon::List(list.into_iter().collect())));
                }
                if !send_all.is_empty() {
                    let absent: Vec<(Address, Summary)> = send_all
                        .iter()
                        .flat_map(|b| items.within(*b).iter().map(|(_, _, a)| (a.clone(), Summary::Empty)))
                        .collect();
                    self.on_sync(conn, absent, true);
                }
            }
            Recon::List(buckets) => {
                // (Buckets may repeat or nest: every address once.)
                let addresses: BTreeSet<Address> =
                    buckets.iter().flat_map(|b| items.within(*b).iter().map(|(_, _, a)| a.clone())).collect();
                let summaries = self.summaries(conn, addresses.iter());
                self.send(conn, Message::Recon(Recon::Listed { buckets, summaries }));
            }
            Recon::Listed { buckets, mut summaries } => {
                // Their summaries of the buckets, and ours they did not list (they lack them).
                let mut listed: BTreeSet<Address> = summaries.iter().map(|(a, _)| a.clone()).collect();
                for b in &buckets {
                    for (_, _, a) in items.within(*b) {
                        if listed.insert(a.clone()) {
                            summaries.push((a.clone(), Summary::Empty));
                        }
                    }
                }
                self.on_sync(conn, summaries, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_partition_their_bucket() {
        let root = Bucket { depth: 0, prefix: 0 };
        let mut covered = 0u128;
        for i in 0..16 {
            let (lo, hi) = range(child(root, i));
            assert_eq!(lo, i << 60);
            covered += u128::from(hi - lo) + 1;
            let grand = child(child(root, i), 15);
            let (glo, ghi) = range(grand);
            assert!(glo >= lo && ghi <= hi);
        }
        assert_eq!(covered, 1u128 << 64);
        let mut b = root;
        for _ in 0..16 {
            b = child(b, 5);
        }
        assert_eq!(range(b), (0x5555_5555_5555_5555, 0x5555_5555_5555_5555));
    }
}
