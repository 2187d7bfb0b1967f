//! Helpers shared by the command line's tests: running the binary, bounded.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound of every wait for the binary.
pub const WAIT: Duration = Duration::from_secs(20);

/// The binary, without the user from the environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_replikativ"));
    c.env_remove("REPLIKATIV_USER");
    c
}

/// Runs the binary to its end (bounded by [`WAIT`]).
pub fn run(args: &[&str]) -> Output {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_exit(&mut child, args);
    child.wait_with_output().unwrap()
}

/// Runs the binary, which must succeed; returns its stdout, trimmed.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "replikativ {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits (bounded) until `child` exits.
pub fn wait_exit(child: &mut Child, what: &[&str]) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "replikativ {what:?} did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a `serve`'s stdout until its "listening on ws://..." line; returns the URL.
pub fn listening_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("serve prints its address")
}
