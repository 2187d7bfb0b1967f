//! Export and import in the protocol core: an exported address imports into another peer equal,
//! with every value stored under its id; an import is checked like wire input (a far-future LWW
//! stamp, a commit record that does not match its graph entry, a missing value, another datatype:
//! refused, nothing applied); exports are bounded by `max_answer_bytes`.

mod world;

use replikativ_crdt::{CrdtKind, Hlc, LwwOp, Value};
use replikativ_peer::proto::backup::Export;
use replikativ_peer::proto::{AnyOp, Command, PeerConfig, Reply, StageError};
use world::{H, P, World, address, world};

fn export(
    w: &mut World,
    node: usize,
    addresses: &[replikativ_crdt::Address],
) -> Result<Vec<Export>, StageError> {
    match w.command(node, Command::Export { addresses: addresses.iter().cloned().collect() })? {
        Reply::Exported(e) => Ok(e),
        other => panic!("not an export: {other:?}"),
    }
}

#[test]
fn an_export_imports_equal_into_another_peer() {
    let mut w = world();
    let (x, wa) = (w.x.clone(), w.w.clone());
    let all = export(&mut w, P, &[]).unwrap();
    assert!(all.iter().any(|e| e.address == x) && all.iter().any(|e| e.address == wa), "every held address");
    // Into copies of the same addresses under new names on H (a peer that has never seen them
    // there), and into the originals on H (a join that changes nothing).
    for (i, e) in all.iter().enumerate() {
        let mut renamed = e.clone();
        renamed.address = address(500 + i as u128);
        assert_eq!(w.command(H, Command::Import(Box::new(renamed))), Ok(Reply::Done));
        assert_eq!(w.state(H, &address(500 + i as u128)), w.state(P, &e.address), "{}", e.address);
    }
    for e in &all {
        assert_eq!(
            w.command(H, Command::Import(Box::new(e.clone()))),
            Ok(Reply::Done),
            "a join changes nothing"
        );
    }
    assert_eq!(w.state(H, &x), w.state(P, &x));
    assert_eq!(w.state(H, &wa), w.state(P, &wa));
    // Every value the imported states name is stored on H under its id.
    for e in &all {
        for v in &e.values {
            let id = replikativ_crdt::ContentId::hash_bytes(v);
            let stored =
                replikativ_peer::proto::persist::stored_value(w.nodes[H].store.as_ref(), &id).unwrap();
            assert_eq!(stored.as_deref(), Some(v.as_slice()));
        }
    }
}

#[test]
fn imports_are_checked_like_wire_input() {
    let mut w = world();
    let (x, wa) = (w.x.clone(), w.w.clone());
    let exports = export(&mut w, P, &[x.clone(), wa.clone()]).unwrap();
    let (map, log) = (&exports[0], &exports[1]);
    let reg = address(90);

    // A far-future LWW stamp (the clock-skew rule of remote ops).
    let forged = Export {
        address: reg.clone(),
        kind: CrdtKind::Lww,
        op: AnyOp::Lww(LwwOp {
            value: Value::from("late"),
            stamp: Some(Hlc {
                wall_ms: u64::MAX / 4,
                counter: 0,
                actor: replikativ_crdt::ActorId::from_u128(9),
            }),
        }),
        values: vec![],
    };
    let e = w.command(P, Command::Import(Box::new(forged))).unwrap_err();
    assert!(matches!(&e, StageError::InvalidImport(r) if r.contains("ahead")), "{e}");
    assert!(w.state(P, &reg).is_none(), "nothing applied");

    // A missing value: an op naming a commit record that neither the export nor the store holds.
    let mut missing = map.clone();
    missing.address = address(91);
    let AnyOp::Ormap(op) = &mut missing.op else { panic!("an OR-Map") };
    op.adds[0].commit = replikativ_crdt::ContentId::hash_bytes(b"nowhere");
    let e = w.command(H, Command::Import(Box::new(missing))).unwrap_err();
    assert!(
        matches!(&e, StageError::InvalidImport(r) if r.contains("neither in the export nor in the store")),
        "{e}"
    );
    assert!(w.state(H, &address(91)).is_none());

    // A CDVCS graph entry whose parents are not its record's.
    let mut bent = log.clone();
    bent.address = address(92);
    let AnyOp::Cdvcs(op) = &mut bent.op else { panic!("a CDVCS") };
    let last = op.commits.last_mut().unwrap();
    last.parents.clear();
    let e = w.command(H, Command::Import(Box::new(bent))).unwrap_err();
    assert!(matches!(&e, StageError::InvalidImport(_)), "{e}");

    // Another datatype at the address.
    let mut other = log.clone();
    other.address = x.clone();
    let e = w.command(P, Command::Import(Box::new(other))).unwrap_err();
    assert!(matches!(e, StageError::WrongKind { .. }), "{e}");

    // A kind that is not the op's.
    let mut lying = map.clone();
    lying.kind = CrdtKind::Cdvcs;
    assert!(matches!(w.command(P, Command::Import(Box::new(lying))), Err(StageError::InvalidImport(_))));
    // Refused imports are counted like bad wire input (on P: the skew and the lying kind).
    assert_eq!(w.p().refusals().get(replikativ_peer::proto::Refusal::InvalidCommand), 2);
}

#[test]
fn exports_are_bounded() {
    let mut w = World::new(PeerConfig { anti_entropy: None, max_answer_bytes: 64, ..PeerConfig::default() });
    let x = w.x.clone();
    let e = export(&mut w, P, &[x]).unwrap_err();
    assert!(matches!(&e, StageError::TooLarge(r) if r.contains("max_answer_bytes")), "{e}");
    let e = export(&mut w, P, &[address(999)]).unwrap_err();
    assert!(matches!(e, StageError::NotFound(_)), "{e}");
}
