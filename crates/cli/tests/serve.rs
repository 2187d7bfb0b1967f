//! Runs the real `replikativ serve`: it listens, replicates with a peer, shuts down on SIGINT,
//! and refuses bad arguments, unreachable peers and a locked store with one clear sentence and a
//! distinct exit code.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replikativ_crdt::Value;
use replikativ_peer::stage::Stage;

fn serve(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replikativ"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

/// Reads stdout until the "listening on ws://..." line; returns the URL.
fn listening_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("serve prints its address")
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn serve_replicates_and_shuts_down_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let store_arg = format!("file:{}", dir.path().display());
    let mut node = serve(&["--listen", "127.0.0.1:0", "--store", &store_arg]);
    let url = listening_url(&mut node);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bounded = |f| tokio::time::timeout(Duration::from_secs(20), f);
        let alice = Stage::builder(Arc::new(replikativ_store::MemoryStore::new()))
            .user("alice")
            .spawn()
            .await
            .unwrap();
        let bob =
            Stage::builder(Arc::new(replikativ_store::MemoryStore::new())).user("bob").spawn().await.unwrap();
        let set = alice.create_gset(None).await.unwrap();
        bob.subscribe([set.clone()]).await.unwrap();
        bounded(alice.node().connect(&url)).await.unwrap().unwrap();
        bounded(bob.node().connect(&url)).await.unwrap().unwrap();
        alice.add(&set, Value::from("via the served node")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !bob
            .elements(&set)
            .await
            .map(|e| e.contains(&Value::from("via the served node")))
            .unwrap_or(false)
        {
            assert!(tokio::time::Instant::now() < deadline, "bob never saw alice's element through the node");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        alice.shutdown().await;
        bob.shutdown().await;
    });

    // A second node cannot open the same store while the first holds it.
    let mut second = serve(&["--listen", "127.0.0.1:0", "--store", &store_arg]);
    let status = wait_exit(&mut second);
    assert_eq!(status.code(), Some(4), "a locked store is a data error");
    let stderr = stderr_of(&mut second);
    assert!(stderr.starts_with("error: cannot open the store"), "{stderr}");
    assert!(stderr.to_lowercase().contains("lock"), "{stderr}");

    let kill = Command::new("kill").args(["-INT", &node.id().to_string()]).status().unwrap();
    assert!(kill.success());
    assert_eq!(wait_exit(&mut node).code(), Some(0), "Ctrl-C shuts down cleanly");
    // The store was closed cleanly: it opens again.
    let mut again = serve(&["--listen", "127.0.0.1:0", "--store", &store_arg]);
    listening_url(&mut again);
    Command::new("kill").args(["-INT", &again.id().to_string()]).status().unwrap();
    assert_eq!(wait_exit(&mut again).code(), Some(0));
}

#[test]
fn bad_store_spec_is_usage_error() {
    let mut child = serve(&["--store", "bogus:x", "--listen", "127.0.0.1:0"]);
    assert_eq!(wait_exit(&mut child).code(), Some(2));
    let stderr = stderr_of(&mut child);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown store \"bogus:x\""), "{stderr}");
}

#[test]
fn unreachable_peer_exits_3() {
    let mut child = serve(&["--store", "memory", "--listen", "127.0.0.1:0", "--connect", "ws://127.0.0.1:1"]);
    assert_eq!(wait_exit(&mut child).code(), Some(3));
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("error: cannot connect to ws://127.0.0.1:1"), "{stderr}");
}
