//! The `replikativ` command line (grows with the peer; see README.md).

use clap::Parser;

/// replikativ: CRDT peer-to-peer replication.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
