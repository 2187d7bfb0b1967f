//! Several nodes behind a load balancer (README "Running several nodes"): three `replikativ serve`
//! processes, each on its own namespace of one PostgreSQL, connected as peers (two edges to a hub, and
//! the edges to each other), behind haproxy in `mode http` with websocket tunnelling and round-robin
//! balancing. CLI clients connect through haproxy, land on different nodes, and every node converges.

mod common;

#[path = "../../store/tests/support/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{WAIT, bin, listening_url, ok, run};

/// Kills the child processes on drop (also when an assertion fails).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn haproxy() -> Option<String> {
    let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned);
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let required = std::env::var("REPLIKATIV_REQUIRE_PG").is_ok_and(|v| v == "1");
        assert!(
            !ci && !required,
            "haproxy is not installed, but the scale-out test must run (.ci/run installs it)"
        );
        eprintln!("skipped: haproxy not installed (apt-get install haproxy)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_behind_haproxy_converge() {
    let Some(base) = pg::base_url() else { return };
    let Some(haproxy) = haproxy() else { return };
    let mut procs = Procs(Vec::new());
    let run_id = pg::unique_ns("lb");
    let mut urls: Vec<String> = Vec::new();
    for i in 0..3 {
        let store = pg::url(&base, &format!("{run_id}-n{i}"));
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            store,
            "--peer-id".into(),
            format!("node-{i}"),
        ];
        // node-1 and node-2 connect to node-0 (the hub), node-2 also to node-1: a mesh with a cycle.
        for u in &urls {
            args.extend(["--connect".into(), u.clone()]);
        }
        let mut child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        urls.push(listening_url(&mut child));
        procs.0.push(child);
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let servers: String = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("    server node{i} {}\n", u.trim_start_matches("ws://")))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout tunnel 1h\n    option redispatch\n    retries 2\n\
             frontend ws\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
             backend nodes\n    balance roundrobin\n{servers}"
        ),
    )
    .unwrap();
    let lb = Command::new(&haproxy)
        .args(["-f", cfg.to_str().unwrap(), "-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(lb);
    let lb_url = format!("ws://127.0.0.1:{port}");
    eventually("haproxy accepts", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    // Successive CLI connections through haproxy land on every node. (`status` opens three
    // connections, its websocket and two HTTP requests, as many as there are nodes: one more
    // connection per round moves the websocket on to the next node.)
    let mut seen = BTreeSet::new();
    eventually("status through haproxy", || {
        let out = run(&["status", "--peer", &lb_url, "--json"]);
        if out.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let peer = json["peer_id"].as_str().unwrap().to_owned();
            // Figures from HTTP are shown only if the node that answered the websocket answered
            // them too: then its connection list holds this very CLI connection.
            if let Some(conns) = json["connection_metrics"].as_array() {
                assert!(conns.iter().any(|c| c["peer_id"] == "replikativ-cli"), "{json}");
            }
            seen.insert(peer);
        }
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
            let _ = tcp.read_to_end(&mut Vec::new());
        }
        seen.len() == 3
    });
    assert_eq!(seen, BTreeSet::from(["node-0".to_owned(), "node-1".to_owned(), "node-2".to_owned()]));

    // Writers through haproxy (each command its own connection, so on a different node each time).
    let map = ok(&["ormap", "create", "--peer", &lb_url, "--user", "mail:alice@example.org"]);
    let keys: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
    // An edit that fails (e.g. a try that reached a node as it was killed) is repeated, bounded; each
    // failure is printed.
    let assoc = |k: &str, i: usize| {
        let tx = format!(r#"[["set", {i}]]"#);
        let deadline = Instant::now() + WAIT;
        loop {
            let out = run(&["ormap", "assoc", &map, k, &tx, "--peer", &lb_url]);
            if out.status.success() {
                break;
            }
            eprintln!("assoc {k} refused, retrying: {}", String::from_utf8_lossy(&out.stderr).trim());
            assert!(Instant::now() < deadline, "assoc {k}: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let converged = |urls: &[String], keys: &[String]| {
        let expected: BTreeSet<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        for u in urls {
            eventually(&format!("{u} converges"), || {
                let out = run(&["ormap", "keys", &map, "--peer", u]);
                let got: BTreeSet<String> =
                    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
                out.status.success() && got == expected
            });
        }
    };
    for (i, k) in keys.iter().enumerate() {
        assoc(k, i);
    }
    converged(&urls, &keys);

    // kill -9 of node-2: clients through haproxy keep working (a try that lands on the dead node fails
    // and is repeated), and node-2 restarted from its namespace on the same port catches up.
    let mut node2 = procs.0.remove(2);
    node2.kill().unwrap();
    node2.wait().unwrap();
    let mut keys = keys;
    for i in 9..15 {
        let k = format!("k{i}");
        assoc(&k, i);
        keys.push(k);
    }
    let mut again = Vec::new();
    let restart_deadline = Instant::now() + WAIT;
    let node2 = loop {
        let mut child = bin()
            .args(["serve", "--listen", urls[2].trim_start_matches("ws://"), "--peer-id", "node-2"])
            .args(["--store", &pg::url(&base, &format!("{run_id}-n2"))])
            .args(["--connect", &urls[0], "--connect", &urls[1]])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Until the server has noticed the killed session, its lease is still held: start again.
        std::thread::sleep(Duration::from_millis(200));
        match child.try_wait().unwrap() {
            None => break child,
            Some(_) => {
                let out = child.wait_with_output().unwrap();
                again.push(String::from_utf8_lossy(&out.stderr).into_owned());
                assert!(Instant::now() < restart_deadline, "node-2 does not restart: {again:?}");
            }
        }
    };
    procs.0.push(node2);
    converged(&urls, &keys);
    let expected: BTreeSet<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    // Each node keeps its data in its own namespace of the one database.
    drop(procs);
    for i in 0..3 {
        let store = pg::url(&base, &format!("{run_id}-n{i}"));
        eventually("the node's namespace is free and complete", || {
            let out = run(&["ormap", "keys", &map, "--store", &store]);
            let got: BTreeSet<String> =
                String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
            out.status.success() && got == expected
        });
    }
}
