//! The original replikativ vectors (`core-test`, `realize-test`, `cdvcs-test`), adapted: small
//! integers stand for commit ids.

use std::collections::BTreeSet;

use super::*;
use crate::Value;

fn id(n: u8) -> ContentId {
    let mut b = [0u8; 32];
    b[31] = n;
    ContentId::from_bytes(b)
}

fn graph(entries: &[(u8, &[u8])]) -> CommitGraph {
    let mut g = CommitGraph::new();
    for (c, ps) in entries {
        let ps: Vec<ContentId> = ps.iter().map(|&p| id(p)).collect();
        g.insert(id(*c), &ps).unwrap();
    }
    g
}

fn set(ns: &[u8]) -> BTreeSet<ContentId> {
    ns.iter().map(|&n| id(n)).collect()
}

fn lca(a: &[(u8, &[u8])], ha: &[u8], b: &[(u8, &[u8])], hb: &[u8]) -> Lca {
    Cdvcs::lowest_common_ancestors(&graph(a), &set(ha), &graph(b), &set(hb))
}

#[test]
fn lca_test() {
    // Identical heads.
    assert_eq!(
        lca(&[(1, &[])], &[1], &[(1, &[])], &[1]),
        Lca { lcas: set(&[1]), visited_a: set(&[1]), visited_b: set(&[1]) }
    );
    assert_eq!(
        lca(&[(1, &[]), (2, &[1])], &[2], &[(1, &[]), (2, &[1])], &[2]),
        Lca { lcas: set(&[2]), visited_a: set(&[2]), visited_b: set(&[2]) }
    );
    // b is ahead of a.
    assert_eq!(
        lca(&[(1, &[])], &[1], &[(1, &[]), (2, &[1])], &[2]),
        Lca { lcas: set(&[1]), visited_a: set(&[1]), visited_b: set(&[1, 2]) }
    );
    let a4: &[(u8, &[u8])] = &[(1, &[]), (2, &[1]), (3, &[1]), (4, &[2, 3])];
    assert_eq!(
        lca(a4, &[4], &[(1, &[]), (5, &[1]), (7, &[5])], &[7]),
        Lca { lcas: set(&[1]), visited_a: set(&[1, 2, 3, 4]), visited_b: set(&[1, 5, 7]) }
    );
    assert_eq!(
        lca(a4, &[4], &[(1, &[]), (2, &[1]), (5, &[2]), (7, &[5])], &[7]),
        Lca { lcas: set(&[2]), visited_a: set(&[1, 2, 3, 4]), visited_b: set(&[2, 5, 7]) }
    );
    // Two heads on each side. The original's breadth-first walk also listed commit 1 in
    // `visited_a` (it walked a one layer further); ours stops at the cut, so `visited_a` is a's
    // commits unknown to b (4) plus the cut (3 and 2). `lcas` and `visited_b` are as in the original.
    assert_eq!(
        lca(
            &[(1, &[]), (2, &[1]), (3, &[1]), (4, &[2])],
            &[3, 4],
            &[(1, &[]), (2, &[1]), (3, &[1]), (5, &[3]), (7, &[2])],
            &[5, 7]
        ),
        Lca { lcas: set(&[2, 3]), visited_a: set(&[2, 3, 4]), visited_b: set(&[2, 3, 5, 7]) }
    );
}

#[test]
fn missing_extra_path_test() {
    let problematic: &[(u8, &[u8])] = &[(1, &[]), (2, &[1]), (3, &[1]), (4, &[3]), (5, &[4]), (6, &[5, 2])];
    let got = lca(&[(1, &[]), (2, &[1])], &[2], problematic, &[6]);
    // `lcas` and `visited_b` as in the original. `visited_a`: the original listed {1 2}; a's head 2
    // is already known to b, so our walk from a stops there at once.
    assert_eq!(got.lcas, set(&[1, 2]));
    assert_eq!(got.visited_b, set(&[1, 2, 3, 4, 5, 6]));
    assert_eq!(got.visited_a, set(&[2]));
}

#[test]
fn remove_ancestors_test() {
    // graph-a lacks 3 and 5; joining b's entries gives heads #{3 5 6}.
    let mut a = Cdvcs { graph: graph(&[(1, &[]), (2, &[1]), (4, &[2]), (6, &[2])]), prepared: vec![] };
    assert_eq!(a.heads(), &set(&[4, 6]));
    let op = CdvcsOp {
        method: CdvcsMethod::Commit,
        commits: vec![
            GraphEntry { id: id(3), parents: vec![id(2)] },
            GraphEntry { id: id(5), parents: vec![id(4)] },
        ],
        heads: set(&[3, 5]),
    };
    assert!(a.apply(&op).unwrap());
    assert_eq!(a.heads(), &set(&[3, 5, 6]));
}

#[test]
fn commit_history_test() {
    let g = graph(&[(1, &[]), (2, &[1]), (3, &[2]), (4, &[3]), (5, &[1]), (6, &[5, 4])]);
    assert_eq!(g.history(&id(6)), [1, 5, 2, 3, 4, 6].map(id));
    let g = graph(&[(5, &[3, 1]), (4, &[3, 1]), (3, &[2]), (2, &[1]), (1, &[])]);
    assert_eq!(g.history(&id(5)), [1, 2, 3, 5].map(id));
}

#[test]
fn consistent_graph_test() {
    assert!(graph(&[(1, &[]), (2, &[1]), (3, &[1]), (4, &[3, 2])]).is_complete());
    let g = graph(&[(1, &[]), (3, &[1]), (4, &[3, 2])]);
    assert!(!g.is_complete());
    assert_eq!(g.missing().collect::<Vec<_>>(), vec![id(2)]);
    // 4 waits for 2 to learn its generation.
    assert_eq!(g.generation(&id(4)), None);
    // What a peer must send from: everything above 3 (2 and 4 included).
    assert_eq!(g.complete_frontier(), set(&[3]));
}

#[test]
fn out_of_order_arrival_gives_the_same_heads_and_generations() {
    let mut g = graph(&[(4, &[3, 2]), (3, &[1]), (2, &[1])]);
    assert_eq!(g.heads(), &set(&[4]));
    assert_eq!(g.generation(&id(4)), None);
    g.insert(id(1), &[]).unwrap();
    assert!(g.is_complete());
    assert_eq!(g.heads(), &set(&[4]));
    assert_eq!(g.generation(&id(4)), Some(2));
    assert_eq!(g, graph(&[(1, &[]), (2, &[1]), (3, &[1]), (4, &[3, 2])]));
}

#[test]
fn merge_bases_and_ancestry() {
    let g = graph(&[(1, &[]), (2, &[1]), (3, &[2]), (4, &[2]), (5, &[3]), (6, &[4]), (7, &[5, 6])]);
    assert_eq!(g.merge_bases(&[id(5)], &[id(6)]).unwrap(), vec![id(2)]);
    assert_eq!(g.merge_bases(&[id(7)], &[id(6)]).unwrap(), vec![id(6)]);
    assert!(g.is_ancestor(&id(1), &id(7)));
    assert!(g.is_ancestor(&id(7), &id(7)));
    assert!(!g.is_ancestor(&id(5), &id(6)));
    // Criss-cross: two bases.
    let g = graph(&[(1, &[]), (2, &[1]), (3, &[1]), (4, &[2, 3]), (5, &[3, 2])]);
    assert_eq!(g.merge_bases(&[id(4)], &[id(5)]).unwrap(), vec![id(2), id(3)]);
}

fn tx(n: i64) -> Transaction {
    Transaction::new("add", n)
}

#[test]
fn commit_refuses_on_several_heads_and_without_transactions() {
    let (mut a, root) = Cdvcs::new("alice", 0);
    let mut b = Cdvcs::default();
    assert_eq!(b.transact("bob", 1, vec![tx(1)]), Err(OpError::Empty));
    b.apply(&root.op).unwrap();
    assert_eq!(a.commit("alice", 1), Err(OpError::NoTransactions));
    let ca = a.transact("alice", 1, vec![tx(1)]).unwrap();
    let cb = b.transact("bob", 1, vec![tx(2)]).unwrap();
    a.apply(&cb.op).unwrap();
    b.apply(&ca.op).unwrap();
    assert_eq!(a, b);
    assert!(matches!(a.transact("alice", 2, vec![tx(3)]), Err(OpError::MultipleHeads { .. })));
    assert!(a.prepared().is_empty(), "a refused transact leaves nothing prepared");
}

#[test]
fn commit_op_is_a_delta_with_values() {
    let (mut a, _) = Cdvcs::new("alice", 0);
    let root = a.head().unwrap();
    let staged = a.transact("alice", 5, vec![Transaction::new("set", Value::map([("x", 1)]))]).unwrap();
    assert_eq!(staged.op.commits.len(), 1);
    let entry = &staged.op.commits[0];
    assert_eq!(entry.parents, vec![root]);
    assert_eq!(staged.op.heads, set_of(&[entry.id]));
    // The commit record and the params value, by content id.
    assert_eq!(staged.values.len(), 2);
    let commit = crate::Commit::from_value(&staged.values[&entry.id]).unwrap();
    assert_eq!(commit.parents, vec![root]);
    assert_eq!(commit.author, "alice");
    assert_eq!(staged.values[&commit.transactions[0].params], Value::map([("x", 1)]));
}

fn set_of(ids: &[ContentId]) -> BTreeSet<ContentId> {
    ids.iter().copied().collect()
}

#[test]
fn merge_orders_parents_and_checks_heads() {
    let (mut a, root) = Cdvcs::new("alice", 0);
    let mut b = Cdvcs::default();
    b.apply(&root.op).unwrap();
    let ca = a.transact("alice", 1, vec![tx(1)]).unwrap();
    let cb = b.transact("bob", 1, vec![tx(2)]).unwrap();
    let (ha, hb) = (ca.op.commits[0].id, cb.op.commits[0].id);
    // Merge b's state into a (remote merge): heads must be the union.
    assert!(matches!(a.merge("alice", 2, &[ha], Some(&b), vec![]), Err(OpError::HeadsDontMatch { .. })));
    let m = a.merge("alice", 2, &[hb, ha], Some(&b), vec![tx(9)]).unwrap();
    let merge_id = m.op.commits.last().unwrap().id;
    assert_eq!(m.op.method, CdvcsMethod::Merge);
    assert_eq!(a.graph().parents(&merge_id).unwrap().collect::<Vec<_>>(), vec![hb, ha]);
    assert_eq!(a.heads(), &set_of(&[merge_id]));
    // The merge op carries the merge commit (and remote commits a lacked), not a's own earlier
    // commit: b, which never saw ca, learns that it is missing and completes with ca's op.
    assert!(b.apply(&m.op).unwrap());
    assert_eq!(b.graph().missing().collect::<Vec<_>>(), vec![ha]);
    assert_eq!(b.heads(), &set_of(&[merge_id]));
    assert!(b.apply(&ca.op).unwrap());
    assert!(b.graph().is_complete());
    assert_eq!(a, b);
    // Parent order decides the linearization: b's commit first.
    let root_id = root.op.commits[0].id;
    assert_eq!(b.linearize(), vec![root_id, hb, ha, merge_id]);
}

#[test]
fn merge_refuses_pending_transactions_and_single_heads() {
    let (mut a, _) = Cdvcs::new("alice", 0);
    let h = a.head().unwrap();
    assert_eq!(a.merge("alice", 1, &[h], None, vec![]), Err(OpError::NothingToMerge));
    a.prepare(tx(1));
    assert_eq!(a.merge("alice", 1, &[h], None, vec![]), Err(OpError::TransactionsPending));
}

#[test]
fn pull_fast_forwards_and_refuses_otherwise() {
    let (mut alice, root) = Cdvcs::new("alice", 0);
    let (mut central, _) = alice.fork();
    let c1 = alice.transact("alice", 1, vec![tx(1)]).unwrap();
    let c2 = alice.transact("alice", 2, vec![tx(2)]).unwrap();
    let tip = c2.op.commits[0].id;
    let pulled = central.pull(&alice, tip, false).unwrap();
    assert_eq!(pulled.op.method, CdvcsMethod::Pull);
    // The op carries exactly the commits central lacked, parents first.
    assert_eq!(pulled.op.commits.iter().map(|e| e.id).collect::<Vec<_>>(), vec![c1.op.commits[0].id, tip]);
    assert_eq!(central, alice);
    assert_eq!(central.pull(&alice, tip, false), Err(OpError::PullUnnecessary { tip }));

    // Central moves on; alice commits too: pulling alice is no longer a fast-forward.
    let mut bob = central.clone();
    let cb = bob.transact("bob", 3, vec![tx(3)]).unwrap();
    central.apply(&cb.op).unwrap();
    let ca = alice.transact("alice", 3, vec![tx(4)]).unwrap();
    let alice_tip = ca.op.commits[0].id;
    assert_eq!(central.pull(&alice, alice_tip, false), Err(OpError::NotSuperset { tip: alice_tip }));
    let induced = central.pull(&alice, alice_tip, true).unwrap();
    assert_eq!(central.heads().len(), 2);
    assert_eq!(induced.op.commits.len(), 1);
    let _ = root;
    let unknown = ContentId::hash_bytes(b"nowhere");
    assert_eq!(central.pull(&alice, unknown, false), Err(OpError::BadRemoteTip { tip: unknown }));
}

#[test]
fn forged_ops_are_refused_whole() {
    let (mut a, root) = Cdvcs::new("alice", 0);
    let r = root.op.commits[0].id;
    let before = a.clone();
    let bad = CdvcsOp {
        method: CdvcsMethod::Commit,
        commits: vec![
            GraphEntry { id: id(1), parents: vec![r] },
            // The root is known without parents.
            GraphEntry { id: r, parents: vec![id(1)] },
        ],
        heads: set(&[1]),
    };
    assert_eq!(a.apply(&bad), Err(ValidationError::ConflictingParents { id: r }));
    assert_eq!(a, before);
    let self_parent = CdvcsOp {
        method: CdvcsMethod::Commit,
        commits: vec![GraphEntry { id: id(2), parents: vec![id(2)] }],
        heads: set(&[2]),
    };
    assert_eq!(a.apply(&self_parent), Err(ValidationError::BadParents { id: id(2) }));
    let twice = CdvcsOp {
        method: CdvcsMethod::Commit,
        commits: vec![GraphEntry { id: id(3), parents: vec![r] }, GraphEntry { id: id(3), parents: vec![] }],
        heads: set(&[3]),
    };
    assert_eq!(a.apply(&twice), Err(ValidationError::ConflictingParents { id: id(3) }));
    assert_eq!(a, before);
}

#[test]
fn state_serializes_and_rebuilds() {
    let (mut a, _) = Cdvcs::new("alice", 0);
    a.transact("alice", 1, vec![tx(1)]).unwrap();
    let bytes = rmp_serde::to_vec_named(&a).unwrap();
    let back: Cdvcs = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.linearize(), a.linearize());
}

#[test]
fn commits_since_is_what_the_other_side_lacks() {
    let g = graph(&[(1, &[]), (2, &[1]), (3, &[2]), (4, &[2]), (5, &[3]), (6, &[4]), (7, &[5, 6])]);
    assert_eq!(g.commits_since(&set(&[7]), &[id(5)]), [4, 6, 7].map(id));
    assert_eq!(g.commits_since(&set(&[7]), &[]), [1, 2, 3, 4, 5, 6, 7].map(id));
    assert!(g.commits_since(&set(&[5]), &[id(7)]).is_empty());
    // Unknown excluded ids are ignored.
    assert_eq!(g.commits_since(&set(&[2]), &[id(99)]), [1, 2].map(id));
    assert_eq!(g.commits_since(&set(&[5, 6]), &[id(3), id(4)]), [5, 6].map(id));
}
