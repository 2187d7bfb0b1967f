//! The data commands of the real binary: two nodes on OS-assigned ports, edits through the CLI on
//! one, `watch` and reads on the other; the same on a local store with no node; and the error paths
//! (bad address, invalid JSON, unreachable peer, locked store, missing data) with their exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{WAIT, bin, ok, run};

fn fails(args: &[&str], code: i32, message: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "replikativ {args:?}: {stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(error.contains(message), "replikativ {args:?}: {error:?} does not say {message:?}");
}

/// A running `serve`, killed on drop.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
    }
}

fn serve(store: &str, connect: Option<&str>) -> Node {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--store", store];
    if let Some(url) = connect {
        args.extend(["--connect", url]);
    }
    let mut child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let url = rx.recv_timeout(WAIT).expect("serve prints its address");
    Node { child, url }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn edits_through_one_node_are_seen_with_watch_and_get_on_the_other() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve(&format!("file:{}", da.path().display()), None);
    let b = serve(&format!("file:{}", db.path().display()), Some(&a.url));

    let map = ok(&["ormap", "create", "--peer", &a.url, "--user", "mail:alice@example.org"]);
    assert!(map.starts_with("mail:alice@example.org/"), "{map}");

    // watch on B prints each change as one JSON line.
    let mut watch = bin()
        .args(["watch", &map, "--peer", &b.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &a.url]);
    eventually("B serves the value", || {
        let out = run(&["ormap", "get", &map, "milk", "--peer", &b.url, "--json"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(r#"["add",2]"#)
    });
    let keys = ok(&["ormap", "keys", &map, "--peer", &b.url]);
    assert_eq!(keys, r#""milk""#);
    let deadline = Instant::now() + WAIT;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("watch prints the change");
        let json: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
        assert_eq!(json["address"], map.as_str());
        if line.contains("milk") {
            break;
        }
    }
    let _ = Command::new("kill").args(["-INT", &watch.id().to_string()]).status();
    let _ = watch.wait();

    // CDVCS: commit on A, log and heads on B, a merge resolves concurrent heads.
    let log = ok(&["cdvcs", "create", "--peer", &a.url]);
    let c1 = ok(&["cdvcs", "commit", &log, r#"[["deposit", 10]]"#, "--peer", &a.url]);
    eventually("B has the commit", || {
        run(&["cdvcs", "heads", &log, "--peer", &b.url]).stdout == format!("{c1}\n").into_bytes()
    });
    let history = ok(&["cdvcs", "log", &log, "--peer", &b.url]);
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.lines().last().unwrap().contains("deposit(10)"), "{history}");

    // LWW and G-Set.
    let reg = ok(&["lww", "create", "--peer", &a.url]);
    ok(&["lww", "set", &reg, r#"{"color": "red"}"#, "--peer", &a.url]);
    eventually("B has the register", || {
        run(&["lww", "get", &reg, "--peer", &b.url]).stdout == b"{\"color\":\"red\"}\n"
    });
    let set = ok(&["gset", "create", "--peer", &a.url]);
    ok(&["gset", "add", &set, "1", "--peer", &a.url]);
    ok(&["gset", "add", &set, r#""two""#, "--peer", &b.url]);
    eventually("both elements on A", || {
        run(&["gset", "list", &set, "--peer", &a.url]).stdout == b"1\n\"two\"\n"
    });

    let status = ok(&["status", "--peer", &b.url]);
    assert!(status.contains("listening on:  ws://127.0.0.1:"), "{status}");
    assert!(status.contains(&map), "{status}");
    assert!(status.contains("store size:"), "{status}");
}

#[test]
fn commands_work_on_a_local_store_and_refuse_one_held_by_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let map = ok(&["ormap", "create", "--store", &store, "--user", "bob"]);
    ok(&["ormap", "assoc", &map, r#"{"id": 7}"#, r#"["set", "seven"]"#, "--store", &store]);
    let got = ok(&["ormap", "get", &map, r#"{"id": 7}"#, "--store", &store, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(json[0]["transactions"][0], serde_json::json!(["set", "seven"]));
    let log = ok(&["cdvcs", "create", "--store", &store]);
    ok(&["cdvcs", "commit", &log, r#"[["a", 1], ["b", 2]]"#, "--store", &store]);
    assert_eq!(ok(&["cdvcs", "log", &log, "--store", &store, "--json"]).matches("\"id\"").count(), 2);

    // While a node holds the store, direct use is refused with a hint.
    let node = serve(&store, None);
    fails(&["ormap", "keys", &map, "--store", &store], 4, "use --peer");
    // ... and the same data is there through the node.
    assert_eq!(ok(&["ormap", "keys", &map, "--peer", &node.url]), r#"{"id":7}"#);
}

#[test]
fn bad_arguments_give_one_sentence_and_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    fails(&["ormap", "get", "not-an-address", "k", "--store", &store], 2, "is not of the form USER/UUID");
    fails(&["ormap", "get", "alice/not-a-uuid", "k", "--store", &store], 2, "does not end in a UUID");
    let map = ok(&["ormap", "create", "--store", &store]);
    fails(&["ormap", "assoc", &map, "k", "[[\"set\"", "--store", &store], 2, "not valid JSON");
    fails(&["ormap", "assoc", &map, "k", "{\"set\": 1}", "--store", &store], 2, "[function, params] pairs");
    fails(&["lww", "set", &map, "{", "--store", &store], 2, "not valid JSON");
    fails(&["ormap", "keys", &map, "--peer", "ws://127.0.0.1:1"], 3, "cannot connect to ws://127.0.0.1:1");
    fails(
        &["ormap", "keys", "alice/7d274663-9396-4247-910b-409ae35fe98d", "--store", &store],
        4,
        "no replicated datatype",
    );
    fails(&["lww", "get", &map, "--store", &store], 4, "does not hold an LWW register");
    fails(&["cdvcs", "commit", &map, r#"[["a", 1]]"#, "--store", &store], 4, "holds an OR-Map, not a CDVCS");
    fails(&["ormap", "keys", &map, "--store", "bogus:x"], 2, "unknown store");
    let usage = run(&["ormap", "assoc"]);
    assert_eq!(usage.status.code(), Some(2), "missing arguments are usage errors");
}

/// Every data command: a malformed address is a usage error, an unreachable peer exit 3, a store
/// held by a running node exit 4; every command taking JSON refuses invalid JSON with exit 2.
#[test]
fn every_data_command_reports_its_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let good = "alice/7d274663-9396-4247-910b-409ae35fe98d";
    // (command words, trailing arguments after the address)
    let with_address: &[(&[&str], &[&str])] = &[
        (&["ormap", "assoc"], &["k", r#"[["set", 1]]"#]),
        (&["ormap", "dissoc"], &["k"]),
        (&["ormap", "get"], &["k"]),
        (&["ormap", "keys"], &[]),
        (&["cdvcs", "commit"], &[r#"[["add", 1]]"#]),
        (&["cdvcs", "log"], &[]),
        (&["cdvcs", "heads"], &[]),
        (&["cdvcs", "merge"], &[]),
        (&["cdvcs", "fork"], &[]),
        (&["cdvcs", "pull"], &[good]),
        (&["lww", "set"], &["1"]),
        (&["lww", "get"], &[]),
        (&["gset", "add"], &["1"]),
        (&["gset", "list"], &[]),
        (&["watch"], &[]),
    ];
    for (words, rest) in with_address {
        let mut args: Vec<&str> = words.to_vec();
        args.push("no-uuid-here");
        args.extend_from_slice(rest);
        // (`--peer`: every one of them takes it; the address is checked before connecting.)
        args.extend(["--peer", "ws://127.0.0.1:1"]);
        fails(&args, 2, "is not of the form USER/UUID");
        let mut args: Vec<&str> = words.to_vec();
        args.push(good);
        args.extend_from_slice(rest);
        args.extend(["--peer", "ws://127.0.0.1:1"]);
        fails(&args, 3, "cannot connect to ws://127.0.0.1:1");
    }
    for words in
        [&["ormap", "create"][..], &["cdvcs", "create"], &["lww", "create"], &["gset", "create"], &["status"]]
    {
        let mut args: Vec<&str> = words.to_vec();
        args.extend(["--peer", "ws://127.0.0.1:1"]);
        fails(&args, 3, "cannot connect");
    }
    let json_args: &[&[&str]] = &[
        &["ormap", "assoc", good, "k", "[["],
        &["ormap", "dissoc", good, "k", "[["],
        &["cdvcs", "commit", good, "[["],
        &["lww", "set", good, "{"],
        &["gset", "add", good, "{"],
    ];
    for args in json_args {
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--store", &store]);
        fails(&args, 2, "not valid JSON");
    }
    // A store held by a running node.
    let _node = serve(&store, None);
    for (words, rest) in with_address.iter().filter(|(w, _)| w[0] != "watch") {
        let mut args: Vec<&str> = words.to_vec();
        args.push(good);
        args.extend_from_slice(rest);
        args.extend(["--store", &store]);
        fails(&args, 4, "use --peer");
    }
}
