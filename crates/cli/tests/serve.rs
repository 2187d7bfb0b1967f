//! Runs the real `replikativ serve`: it listens, replicates with a peer, shuts down gracefully on
//! SIGINT and SIGTERM, keeps retrying a `--connect` peer that is down, and refuses bad arguments
//! and a locked store with one clear sentence and a distinct exit code.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replikativ_crdt::Value;
use replikativ_peer::stage::Stage;

fn serve(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replikativ"))
        .env("REPLIKATIV_AUTH", "off")
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

use common::{Served, WAIT, listening_url};

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

/// Only `serve --connect` retries: a data command whose `--peer` is unreachable still fails at once
/// with exit code 3, and a `--connect` URL that can never work is a usage error.
#[test]
fn unreachable_peer_exits_3_for_data_commands_and_a_bad_connect_url_exits_2() {
    let data = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_replikativ"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let status = wait_exit(&mut child);
        (status, stderr_of(&mut child))
    };
    let map = "alice/7d274663-9396-4247-910b-409ae35fe98d";
    for args in
        [&["ormap", "keys", map, "--peer", "ws://127.0.0.1:1"][..], &["status", "--peer", "ws://127.0.0.1:1"]]
    {
        let (status, stderr) = data(args);
        assert_eq!(status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: cannot connect to ws://127.0.0.1:1"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let mut child =
        serve(&["--store", "memory", "--listen", "127.0.0.1:0", "--connect", "http://127.0.0.1:1"]);
    assert_eq!(wait_exit(&mut child).code(), Some(2));
    let stderr = stderr_of(&mut child);
    assert_eq!(
        stderr,
        "error: cannot connect to http://127.0.0.1:1: only ws://HOST:PORT and wss://HOST:PORT URLs are supported (e.g. ws://127.0.0.1:31744)\n"
    );
}

/// Runs a data command of the binary (bounded); returns its exit code, stdout and stderr.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(args);
    assert_eq!(code, Some(0), "replikativ {args:?}: {stderr}");
    stdout
}

/// A port nobody listens on (yet): bound by the OS, then released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serve_connect_to_a_peer_that_is_down_keeps_retrying_and_replicates_once_it_is_up() {
    let port = free_port();
    let target = format!("ws://127.0.0.1:{port}");
    let a = Served::start(&["--store", "memory", "--listen", "127.0.0.1:0", "--connect", &target], &[]);
    let a_url = a.url();
    a.wait_for(false, &format!("connecting to {target} (retrying in the background)"));
    assert!(!a.stdout().contains("connected to"), "{}", a.stdout());
    // It keeps running, and says on stderr that it retries.
    std::thread::sleep(Duration::from_secs(2));
    let mut a = a;
    assert_eq!(a.child.try_wait().unwrap(), None, "serve exited; stderr: {}", a.stderr());
    let warning = a.wait_for(true, "retrying");
    assert!(warning.contains(&target), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");

    // The peer comes up on that port: the two connect and replicate.
    let b = Served::start(&["--store", "memory", "--listen", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(b.url(), target);
    let map = cli_ok(&["ormap", "create", "--peer", &a_url, "--user", "mail:alice@example.org"]);
    cli_ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &a_url]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, stdout, _) = cli(&["ormap", "get", &map, "milk", "--peer", &target, "--json"]);
        if code == Some(0) && stdout.contains(r#"["add",2]"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit through A never became readable through B; A's stderr: {}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.child.try_wait().unwrap(), None, "A is still running");
}

#[test]
fn sigterm_shuts_serve_down_gracefully_and_what_it_acknowledged_is_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let a = Served::start(&["--store", &store, "--listen", "127.0.0.1:0"], &[]);
    let a_url = a.url();
    // A second peer connected to it sees the connection closed with a reason.
    let b = Served::start(&["--store", "memory", "--listen", "127.0.0.1:0", "--connect", &a_url], &[]);
    b.url();

    let map = cli_ok(&["ormap", "create", "--peer", &a_url]);
    let commit = cli_ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &a_url]);
    let log = cli_ok(&["cdvcs", "create", "--peer", &a_url]);
    cli_ok(&["cdvcs", "commit", &log, r#"[["deposit", 10]]"#, "--peer", &a_url]);
    // B is connected by now (its first attempt is immediate; wait for A to show it, bounded).
    let deadline = Instant::now() + WAIT;
    while !cli_ok(&["status", "--peer", &a_url, "--json"]).contains("\"connections\":[\"") {
        assert!(Instant::now() < deadline, "B never connected to A");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut a = a;
    a.signal("TERM");
    let status = wait_exit(&mut a.child);
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit; stderr: {}", a.stderr());
    a.wait_for(false, "shutting down (SIGTERM)");
    a.wait_for(false, "shut down cleanly: the store is closed");
    b.wait_for(true, "closed by the remote: the node is shutting down");

    // Everything acknowledged is in the store, read back directly (the lock is released).
    let got = cli_ok(&["ormap", "get", &map, "milk", "--store", &store, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(json[0]["id"], commit.as_str());
    assert_eq!(json[0]["transactions"][0], serde_json::json!(["add", 2]));
    let history = cli_ok(&["cdvcs", "log", &log, "--store", &store]);
    assert!(history.lines().last().unwrap().contains("deposit(10)"), "{history}");
}

#[test]
fn sigint_also_shuts_serve_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let mut a = Served::start(&["--store", &store, "--listen", "127.0.0.1:0"], &[]);
    let url = a.url();
    let set = cli_ok(&["gset", "create", "--peer", &url]);
    cli_ok(&["gset", "add", &set, r#""kept""#, "--peer", &url]);
    a.signal("INT");
    assert_eq!(wait_exit(&mut a.child).code(), Some(0), "stderr: {}", a.stderr());
    a.wait_for(false, "shutting down (SIGINT)");
    a.wait_for(false, "shut down cleanly");
    assert_eq!(cli_ok(&["gset", "list", &set, "--store", &store]), r#""kept""#);
}
