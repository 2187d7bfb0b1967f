//! `replikativ watch` against real `serve` nodes: the catch-up comes first, resolved and in
//! bounded chunks, closed by a `catch_up_done` line; then live changes, resolved (key, value,
//! author, commit id); disconnects and reconnects are said on stderr; an address that does not
//! exist is an error after --timeout; SIGTERM ends it cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Served, WAIT, cli, ok};
use replikativ_crdt::{Transaction, Value};
use replikativ_peer::stage::Stage;

/// A running `watch`: its stdout lines on a channel, its stderr collected.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(address: &str, url: &str) -> Watch {
        let mut child = common::bin()
            .args(["watch", address, "--peer", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Watch { child, lines, stderr }
    }

    fn next(&self) -> serde_json::Value {
        let line = self.lines.recv_timeout(WAIT).expect("watch prints a line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
    }

    fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(Instant::now() < deadline, "no {text:?} on stderr: {:?}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        common::wait_exit(&mut self.child, &["watch"]).code()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_catch_up_comes_first_in_chunks_then_resolved_live_changes() {
    let node = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[]);
    let url = node.url();
    let map = ok(&["ormap", "create", "--peer", &url]);
    // 300 entries, written by a stage through the node (faster than 300 command line calls).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let writer = Stage::builder(Arc::new(replikativ_store::MemoryStore::new()))
            .user("mail:writer@example.org")
            .spawn()
            .await
            .unwrap();
        let address = map.parse().unwrap();
        writer.subscribe([address]).await.unwrap();
        tokio::time::timeout(WAIT, writer.node().connect(&url)).await.unwrap().unwrap();
        let address = map.parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while writer.ormap(&address).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the map reached the writer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let writes =
            (0..300).map(|i| writer.assoc(&address, Value::from(i), vec![Transaction::new("set", i)]));
        for w in futures::future::join_all(writes).await {
            w.unwrap();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let keys = ok(&["ormap", "keys", &map, "--peer", &url, "--json"]);
            if serde_json::from_str::<serde_json::Value>(&keys).unwrap().as_array().unwrap().len() == 300 {
                break;
            }
            assert!(Instant::now() < deadline, "the node has the 300 entries");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writer.shutdown().await;
    });

    let mut watch = Watch::start(&map, &url);
    let mut entries = Vec::new();
    let mut chunks = 0;
    let done = loop {
        let line = watch.next();
        assert_eq!(line["address"], map.as_str());
        if let Some(chunk) = line.get("catch_up") {
            let chunk = chunk.as_array().unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= 256, "chunks of at most 256 entries");
            chunks += 1;
            entries.extend(chunk.iter().cloned());
        } else {
            break line;
        }
    };
    assert_eq!(done["catch_up_done"]["entries"], 300, "{done}");
    assert!(chunks >= 2, "300 entries come in more than one line");
    assert_eq!(entries.len(), 300);
    let first = entries.iter().find(|e| e["key"] == 7).expect("key 7");
    assert_eq!(first["value"], serde_json::json!([["set", 7]]));
    assert_eq!(first["author"], "mail:writer@example.org");
    assert_eq!(first["commit"].as_str().unwrap().len(), 64);

    // Live: an assoc and a dissoc, resolved.
    let commit = ok(&[
        "ormap",
        "assoc",
        &map,
        "live",
        r#"[["add", 1]]"#,
        "--peer",
        &url,
        "--user",
        "mail:bob@example.org",
    ]);
    let line = watch.next();
    assert_eq!(line["key"], "live", "{line}");
    assert_eq!(line["value"], serde_json::json!([["add", 1]]));
    assert_eq!(line["author"], "mail:bob@example.org");
    assert_eq!(line["commit"], commit.as_str());
    let removal = ok(&["ormap", "dissoc", &map, "live", "--peer", &url]);
    let line = watch.next();
    assert_eq!(line["key"], "live", "{line}");
    assert_eq!(line["removed"], true);
    assert_eq!(line["commit"], removal.as_str());
    assert_eq!(watch.stop(), Some(0), "SIGTERM ends watch cleanly");
}

#[test]
fn a_cdvcs_watch_shows_commits_and_an_unknown_address_is_an_error_in_time() {
    let node = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[]);
    let url = node.url();
    let log = ok(&["cdvcs", "create", "--peer", &url]);
    ok(&["cdvcs", "commit", &log, r#"[["deposit", 10]]"#, "--peer", &url]);
    let mut watch = Watch::start(&log, &url);
    let line = watch.next();
    let history = line["catch_up"].as_array().expect("a catch-up line");
    assert_eq!(history.len(), 2, "the root and the commit: {line}");
    assert_eq!(history[1]["transactions"], serde_json::json!([["deposit", 10]]));
    assert_eq!(watch.next()["catch_up_done"]["entries"], 2);
    let id = ok(&["cdvcs", "commit", &log, r#"[["withdraw", 3]]"#, "--peer", &url]);
    let line = watch.next();
    assert_eq!(line["id"], id.as_str(), "{line}");
    assert_eq!(line["transactions"], serde_json::json!([["withdraw", 3]]));
    assert_eq!(watch.stop(), Some(0));

    let started = Instant::now();
    let (code, _, stderr) = cli(&[
        "watch",
        "mail:nobody@example.org/0b5c2f1e-3c1e-4a47-9a51-3d1f2b7c9e10",
        "--peer",
        &url,
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("no replicated datatype at mail:nobody@example.org/"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn disconnects_and_reconnects_are_said_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let mut node = Served::start(&["--listen", "127.0.0.1:0", "--store", &store], &[]);
    let url = node.url();
    let listen = url.trim_start_matches("ws://").to_owned();
    let set = ok(&["gset", "create", "--peer", &url]);
    ok(&["gset", "add", &set, r#""before""#, "--peer", &url]);
    let watch = Watch::start(&set, &url);
    assert_eq!(watch.next()["catch_up"], serde_json::json!([{ "element": "before" }]));
    assert_eq!(watch.next()["catch_up_done"]["entries"], 1);
    assert_eq!(node.stop().code(), Some(0));
    watch.wait_stderr(&format!("disconnected from {url}"));
    // The same node again, on the same port and store.
    let node = Served::start(&["--listen", &listen, "--store", &store], &[]);
    node.url();
    watch.wait_stderr(&format!("reconnected to {url}"));
    ok(&["gset", "add", &set, r#""after""#, "--peer", &url]);
    assert_eq!(watch.next()["added"], "after");
}
