//! CRDT laws for every datatype, over random multi-replica workloads:
//! - join (merge of states) is commutative, associative and idempotent;
//! - applying every op of the workload in any order, with duplicates, equals joining the replicas;
//! - OR-Map: a concurrent assoc survives a dissoc (add wins);
//! - CDVCS: replicas that exchanged everything linearize identically.

use proptest::prelude::*;
use replikativ_crdt::{ActorId, Cdvcs, Crdt, GSet, LwwRegister, OrMap, Transaction, Value};

const REPLICAS: usize = 3;

/// One step of a workload: a local operation on a replica, or delivery of an earlier op.
#[derive(Clone, Debug)]
enum Step {
    Local { replica: usize, kind: u8, key: u8, value: i8 },
    Deliver { to: usize, op: prop::sample::Index },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step =
        prop_oneof![
            (0..REPLICAS, any::<u8>(), 0u8..4, any::<i8>())
                .prop_map(|(replica, kind, key, value)| Step::Local { replica, kind, key, value }),
            (0..REPLICAS, any::<prop::sample::Index>()).prop_map(|(to, op)| Step::Deliver { to, op }),
        ];
    prop::collection::vec(step, 1..60)
}

/// A tiny deterministic shuffle (xorshift), so a failing case reproduces from its seed.
fn shuffled_with_duplicates<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out: Vec<T> = items.to_vec();
    for _ in 0..items.len() / 2 {
        let i = (next() % items.len() as u64) as usize;
        out.push(items[i].clone());
    }
    for i in (1..out.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

/// Runs a workload: `local` performs a replica's local operation and returns the op it produced
/// (if the state allowed one). Returns the replicas and every op produced.
fn run<C: Crdt>(
    start: &[C::Op],
    steps: &[Step],
    mut local: impl FnMut(&mut C, usize, u8, u8, i8, u64) -> Option<C::Op>,
) -> (Vec<C>, Vec<C::Op>) {
    let mut replicas: Vec<C> = (0..REPLICAS).map(|_| C::default()).collect();
    let mut ops: Vec<C::Op> = start.to_vec();
    for r in &mut replicas {
        for op in start {
            r.apply(op).expect("initial ops apply");
        }
    }
    for (t, step) in steps.iter().enumerate() {
        match step {
            Step::Local { replica, kind, key, value } => {
                if let Some(op) = local(&mut replicas[*replica], *replica, *kind, *key, *value, t as u64 + 1)
                {
                    ops.push(op);
                }
            }
            Step::Deliver { to, op } => {
                if !ops.is_empty() {
                    let op = &ops[op.index(ops.len())];
                    replicas[*to].apply(op).expect("a produced op applies anywhere");
                }
            }
        }
    }
    (replicas, ops)
}

fn join_all<C: Crdt + std::fmt::Debug>(replicas: &[C]) -> C {
    let mut joined = C::default();
    for r in replicas {
        joined.merge(r).unwrap();
    }
    joined
}

fn check_laws<C: Crdt + std::fmt::Debug>(
    replicas: &[C],
    ops: &[C::Op],
    seed: u64,
) -> Result<C, TestCaseError> {
    let joined = join_all(replicas);
    // Any delivery order with duplicates converges to the join.
    let mut delivered = C::default();
    for op in shuffled_with_duplicates(ops, seed) {
        delivered.apply(&op).unwrap();
    }
    prop_assert_eq!(&delivered, &joined);
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    let merged = |x: &C, y: &C| {
        let mut z = x.clone();
        z.merge(y).unwrap();
        z
    };
    prop_assert_eq!(merged(a, b), merged(b, a), "commutative");
    prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)), "associative");
    prop_assert_eq!(merged(a, a), a.clone(), "idempotent");
    // Re-applying a replica's own state changes nothing.
    let mut again = a.clone();
    prop_assert!(!again.apply(&a.state_op()).unwrap());
    Ok(joined)
}

fn actor(replica: usize) -> ActorId {
    ActorId::from_u128(replica as u128 + 1)
}

fn ormap_local(
    m: &mut OrMap,
    replica: usize,
    kind: u8,
    key: u8,
    value: i8,
    ts: u64,
) -> Option<replikativ_crdt::OrMapOp> {
    let key = Value::from(format!("k{key}"));
    let author = format!("user{replica}");
    match kind % 3 {
        0 | 1 => {
            Some(m.assoc(key, vec![Transaction::new("set", value)], actor(replica), &author, ts).unwrap().op)
        }
        _ => m.dissoc(&key, vec![Transaction::new("unset", value)], &author, ts).ok().map(|s| s.op),
    }
}

fn cdvcs_local(
    c: &mut Cdvcs,
    replica: usize,
    kind: u8,
    _key: u8,
    value: i8,
    ts: u64,
) -> Option<replikativ_crdt::CdvcsOp> {
    let author = format!("user{replica}");
    if c.heads().len() > 1 && kind.is_multiple_of(2) {
        let heads: Vec<_> = c.heads().iter().copied().collect();
        return Some(c.merge(&author, ts, &heads, None, vec![]).unwrap().op);
    }
    c.transact(&author, ts, vec![Transaction::new("add", value)]).ok().map(|s| s.op)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ormap_laws(steps in steps(), seed in any::<u64>()) {
        let (replicas, ops) = run::<OrMap>(&[], &steps, ormap_local);
        let joined = check_laws(&replicas, &ops, seed)?;
        // Live values of the join: exactly the adds no removal names.
        for key in joined.keys() {
            prop_assert!(!joined.get(key).is_empty());
        }
    }

    #[test]
    fn cdvcs_laws(steps in steps(), seed in any::<u64>()) {
        let (_, root) = Cdvcs::new("root", 0);
        let (replicas, ops) = run::<Cdvcs>(&[root.op], &steps, cdvcs_local);
        let joined = check_laws(&replicas, &ops, seed)?;
        prop_assert!(joined.graph().is_complete());
        // Replicas that exchanged everything agree on the linearization.
        let mut others: Vec<Cdvcs> = replicas.clone();
        for r in &mut others {
            for op in shuffled_with_duplicates(&ops, seed ^ 0x5555) {
                r.apply(&op).unwrap();
            }
            prop_assert_eq!(&*r, &joined);
            prop_assert_eq!(r.linearize(), joined.linearize());
        }
        // The linearization lists every commit once, each after its parents.
        let order = joined.linearize();
        prop_assert_eq!(order.len(), joined.graph().len());
        let pos: std::collections::HashMap<_, _> = order.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        for (id, parents) in joined.graph().entries() {
            for p in parents {
                prop_assert!(pos[&p] < pos[&id]);
            }
        }
    }

    #[test]
    fn lww_laws(steps in steps(), seed in any::<u64>()) {
        let (replicas, ops) = run::<LwwRegister>(&[], &steps, |r, replica, _, _, value, ts| {
            // Wall clocks that disagree between replicas and go backwards.
            let now = (ts * 7 + replica as u64 * 13) % 50;
            Some(r.set(Value::from(value), now, actor(replica)).unwrap())
        });
        check_laws(&replicas, &ops, seed)?;
    }

    #[test]
    fn gset_laws(steps in steps(), seed in any::<u64>()) {
        let (replicas, ops) = run::<GSet>(&[], &steps, |s, _, _, key, value, _| {
            Some(s.add(Value::list([Value::from(key), Value::from(value)])).unwrap())
        });
        let joined = check_laws(&replicas, &ops, seed)?;
        for op in &ops {
            prop_assert!(op.elements.iter().all(|e| joined.contains(e)));
        }
    }

    /// Add wins: an assoc concurrent with a dissoc of the same key survives it, in either order.
    #[test]
    fn ormap_add_wins(before in 0u8..4, value in any::<i8>(), remove_first in any::<bool>()) {
        let key = Value::from("k");
        let mut x = OrMap::default();
        for i in 0..before {
            x.assoc(key.clone(), vec![Transaction::new("set", i)], actor(0), "x", 1).unwrap();
        }
        let mut y = x.clone();
        let rm = x.dissoc(&key, vec![], "x", 2).ok();
        let add = y.assoc(key.clone(), vec![Transaction::new("set", value)], actor(1), "y", 2).unwrap();
        let mut z = OrMap::default();
        z.merge(&x).unwrap();
        if remove_first {
            if let Some(rm) = &rm { z.apply(&rm.op).unwrap(); }
            z.apply(&add.op).unwrap();
        } else {
            z.apply(&add.op).unwrap();
            if let Some(rm) = &rm { z.apply(&rm.op).unwrap(); }
        }
        prop_assert_eq!(z.get(&key), vec![add.op.adds[0].commit]);
    }

    /// Decoders never panic on arbitrary bytes; they return typed errors.
    #[test]
    fn decoders_survive_garbage(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Value::decode(&bytes);
        let _ = rmp_serde::from_slice::<replikativ_crdt::CdvcsOp>(&bytes);
        let _ = rmp_serde::from_slice::<Cdvcs>(&bytes);
        let _ = rmp_serde::from_slice::<replikativ_crdt::OrMapOp>(&bytes);
        let _ = rmp_serde::from_slice::<OrMap>(&bytes);
        let _ = rmp_serde::from_slice::<replikativ_crdt::LwwOp>(&bytes);
        let _ = rmp_serde::from_slice::<replikativ_crdt::GSetOp>(&bytes);
        let _ = rmp_serde::from_slice::<Value>(&bytes);
        if let Ok(v) = Value::decode(&bytes) {
            let _ = replikativ_crdt::Commit::from_value(&v);
        }
    }
}

#[test]
fn cdvcs_ops_round_trip_through_msgpack() {
    let (mut c, root) = Cdvcs::new("alice", 0);
    let op = c.transact("alice", 1, vec![Transaction::new("add", 1)]).unwrap().op;
    for op in [root.op, op] {
        let bytes = rmp_serde::to_vec_named(&op).unwrap();
        assert_eq!(rmp_serde::from_slice::<replikativ_crdt::CdvcsOp>(&bytes).unwrap(), op);
    }
    let mut m = OrMap::default();
    m.assoc(Value::list([1, 2]), vec![Transaction::new("set", 1)], actor(0), "a", 1).unwrap();
    let bytes = rmp_serde::to_vec_named(&m).unwrap();
    assert_eq!(rmp_serde::from_slice::<OrMap>(&bytes).unwrap(), m);
}

#[test]
fn values_too_deep_to_decode_are_refused_everywhere() {
    let mut deep = Value::Nil;
    for _ in 0..=replikativ_crdt::value::MAX_DEPTH {
        deep = Value::List(vec![deep]);
    }
    assert!(!deep.within_depth_limit());
    assert!(Value::decode(&deep.encode()).is_err(), "the decoder refuses it, so nobody may admit it");
    let mut ok = Value::Nil;
    for _ in 0..replikativ_crdt::value::MAX_DEPTH {
        ok = Value::List(vec![ok]);
    }
    assert!(ok.within_depth_limit());
    assert_eq!(Value::decode(&ok.encode()).unwrap(), ok);

    let too_deep = replikativ_crdt::OpError::TooDeep;
    let mut c = Cdvcs::new("a", 0).0;
    assert_eq!(c.transact("a", 1, vec![Transaction::new("f", deep.clone())]), Err(too_deep.clone()));
    let mut m = OrMap::default();
    assert_eq!(
        m.assoc(deep.clone(), vec![Transaction::new("f", 1)], actor(0), "a", 1),
        Err(too_deep.clone())
    );
    assert_eq!(
        m.assoc("k".into(), vec![Transaction::new("f", deep.clone())], actor(0), "a", 1),
        Err(too_deep.clone())
    );
    assert_eq!(LwwRegister::default().set(deep.clone(), 1, actor(0)), Err(too_deep.clone()));
    assert_eq!(GSet::default().add(deep.clone()), Err(too_deep));
    // From the wire: refused by validation.
    let op = replikativ_crdt::GSetOp { elements: [deep].into_iter().collect() };
    assert_eq!(GSet::default().apply(&op), Err(replikativ_crdt::ValidationError::TooDeep));
}

#[test]
fn values_cross_msgpack_bit_exactly_inside_ops() {
    // Beyond 64 bits, NaN, bytes, non-string keys: an op carrying them keeps every content id.
    let key =
        Value::map([(Value::Int(i128::MIN), Value::Float(f64::NAN)), (Value::Bytes(vec![0, 1]), Value::Nil)]);
    let mut m = OrMap::default();
    m.assoc(key.clone(), vec![Transaction::new("set", Value::Int(i128::MAX))], actor(0), "a", 1).unwrap();
    let bytes = rmp_serde::to_vec_named(&m).unwrap();
    let back: OrMap = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.get(&key).len(), 1);
    let op = replikativ_crdt::LwwOp { value: Value::Int(i128::MAX - 1), stamp: None };
    let json = serde_json::to_string(&Value::Int(5)).unwrap();
    assert_eq!(json, "5", "human-readable formats get natural data");
    let bytes = rmp_serde::to_vec_named(&op).unwrap();
    assert_eq!(rmp_serde::from_slice::<replikativ_crdt::LwwOp>(&bytes).unwrap(), op);
}
