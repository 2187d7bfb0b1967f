//! The `replikativ` command line.
//!
//! It grows with the node: today it inspects the value model (`replikativ value`); `serve`, the data
//! commands and `watch` arrive with the networked peer.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use replikativ_crdt::{Value, to_value};

/// replikativ: CRDT peer-to-peer replication of OR-Maps, CDVCS, LWW registers and G-Sets.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a JSON value's canonical encoding (hex) and its content id (blake3 of the encoding).
    ///
    /// Content ids name every commit and params value replikativ stores and replicates; this shows
    /// the id a value gets. JSON objects become maps, arrays lists, integers ints, other numbers
    /// floats.
    Value {
        /// The value as JSON, e.g. '{"name": "Hal"}'.
        json: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Value { json } => {
            let parsed: serde_json::Value = match serde_json::from_str(&json) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: the value is not valid JSON: {e}");
                    return ExitCode::from(2);
                }
            };
            let value: Value = match to_value(&parsed) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: cannot convert the JSON to a value: {e}");
                    return ExitCode::from(3);
                }
            };
            println!("encoding: {}", hex_string(&value.encode()));
            println!("id:       {}", value.content_id());
            ExitCode::SUCCESS
        }
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
