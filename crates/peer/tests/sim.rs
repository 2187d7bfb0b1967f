//! Deterministic multi-peer simulation: random workloads of every datatype over line, star, ring
//! and mesh topologies, with and without faults. Each run ends quiescent and asserts that every
//! replica agrees and holds every acknowledged op.
//!
//! `SEED=.. PEERS=.. OPS=.. TOPOLOGY=line|star|ring|mesh cargo test -p replikativ-peer --test sim one_run`
//! reproduces one run.

use replikativ_peer::sim::{Faults, Network, Topology};

fn run(seed: u64, peers: usize, ops: usize, topology: Topology, faults: Faults) -> Result<Network, String> {
    let mut net = Network::new(peers, topology, seed, faults);
    net.run_workload(ops);
    net.settle()?;
    net.check()?;
    Ok(net)
}

fn topology(name: &str) -> Topology {
    match name {
        "line" => Topology::Line,
        "star" => Topology::Star,
        "ring" => Topology::Ring,
        _ => Topology::Mesh,
    }
}

#[test]
fn three_peers_in_a_line_converge_without_faults() {
    let net = run(1, 3, 60, Topology::Line, Faults::default()).unwrap();
    assert!(net.acknowledged.len() > 20, "the workload did something: {:?}", net.stats);
}

#[test]
fn one_run() {
    let env = |k: &str| std::env::var(k).ok();
    let seed = env("SEED").and_then(|s| s.parse().ok()).unwrap_or(42);
    let peers = env("PEERS").and_then(|s| s.parse().ok()).unwrap_or(4);
    let ops = env("OPS").and_then(|s| s.parse().ok()).unwrap_or(80);
    let topo = topology(&env("TOPOLOGY").unwrap_or_else(|| "mesh".into()));
    if let Err(e) = run(seed, peers, ops, topo, Faults::hostile()) {
        panic!("SEED={seed} PEERS={peers} OPS={ops} TOPOLOGY={topo:?}: {e}");
    }
}

#[test]
fn many_seeds_with_faults_converge() {
    let seeds: u64 = std::env::var("SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let topologies = [Topology::Line, Topology::Star, Topology::Ring, Topology::Mesh];
    let mut failures = Vec::new();
    for seed in 0..seeds {
        let topo = topologies[(seed % 4) as usize];
        let peers = 3 + (seed % 3) as usize;
        if let Err(e) = run(seed, peers, 60, topo, Faults::hostile()) {
            failures.push(format!("SEED={seed} PEERS={peers} OPS=60 TOPOLOGY={topo:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} of {seeds} runs failed:\n{}", failures.len(), failures.join("\n"));
}
