//! `--store postgres://USER@HOST:PORT/DB?namespace=NAME`: data commands and `serve` on a PostgreSQL
//! namespace, the lease between processes, URL and password handling (never echoed).

mod common;

#[path = "../../store/tests/support/pg.rs"]
mod pg;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{WAIT, bin, listening_url, ok, run, wait_exit};

#[test]
fn data_commands_create_edit_and_read_a_namespace() {
    let Some(base) = pg::base_url() else { return };
    let store = pg::url(&base, &pg::unique_ns("cli"));
    let map = ok(&["ormap", "create", "--store", &store, "--user", "mail:alice@example.org"]);
    ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--store", &store]);
    assert_eq!(ok(&["ormap", "keys", &map, "--store", &store]), r#""milk""#);
    // A namespace that was never created is refused by reads and edits, and not created.
    let missing = pg::url(&base, &pg::unique_ns("cli-typo"));
    for args in
        [vec!["ormap", "keys", &map, "--store", &missing], vec!["lww", "set", &map, "1", "--store", &missing]]
    {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains("the namespace does not exist"), "{stderr}");
    }
    let out = run(&["ormap", "keys", &map, "--store", &missing]);
    assert_eq!(out.status.code(), Some(4), "still missing after the refused commands");
}

#[test]
fn bad_urls_are_usage_errors_and_passwords_never_appear() {
    let Some(base) = pg::base_url() else { return };
    // The base URL names a user: put a password into its user part.
    let (scheme, rest) = base.split_once("://").expect("url");
    let (user, host) = rest.split_once('@').expect("user@host");
    let url = format!("{scheme}://{user}:hunter2-in-url@{host}?namespace=x");
    let out = run(&["ormap", "create", "--store", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PGPASSWORD") && !stderr.contains("hunter2"), "{stderr}");
    for (url, says) in [
        (base.clone(), "namespace"),
        (pg::url(&base, "no/slashes"), "namespace"),
        (format!("{}&sslmode=require", pg::url(&base, "n")), "unknown URL parameter"),
    ] {
        let out = run(&["ormap", "create", "--store", &url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

#[test]
fn serve_holds_the_namespace_and_what_it_acknowledged_survives_kill_9() {
    let Some(base) = pg::base_url() else { return };
    let store = pg::url(&base, &pg::unique_ns("serve"));
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "file-secret-42\n").unwrap();
    let store_pw = format!("{store}&password_file={}", pwfile.display());
    let mut node = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store_pw, "--log-level", "debug"])
        .env("PGPASSWORD", "env-secret-42")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = listening_url(&mut node);
    // A second node on the same namespace is refused at once.
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--store", &store]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("held by another node"), "{stderr}");

    let map = ok(&["ormap", "create", "--peer", &url, "--user", "mail:alice@example.org"]);
    ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &url]);
    node.kill().unwrap();
    wait_exit(&mut node, &["serve"]);
    let out = node.wait_with_output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!logs.contains("secret-42"), "a password was printed: {logs}");
    // The acknowledged edit is in PostgreSQL; the killed node's lease ended with its session.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run(&["ormap", "keys", &map, "--store", &store]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#""milk""#);
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("held by another node") && Instant::now() < deadline, "{stderr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PostgreSQL restarts under a running node: edits during the outage fail with an error (nothing is
/// acknowledged that is not committed), the node reconnects by itself, later edits succeed, and every
/// acknowledged edit is in the database.
#[test]
fn serve_survives_a_postgres_restart() {
    let Some(_) = pg::base_url() else { return };
    let server = pg::PrivateServer::start();
    let store = pg::url(&server.url(), "restart");
    let mut node = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = listening_url(&mut node);
    let map = ok(&["ormap", "create", "--peer", &url, "--user", "mail:alice@example.org"]);
    ok(&["ormap", "assoc", &map, "before", r#"[["set", 1]]"#, "--peer", &url]);
    server.stop_immediate();
    let during = run(&["ormap", "assoc", &map, "during", r#"[["set", 2]]"#, "--peer", &url]);
    eprintln!(
        "edit during the outage: {:?} {}",
        during.status.code(),
        String::from_utf8_lossy(&during.stderr).trim()
    );
    server.start_again();
    // The node is still up and takes edits again once it has reconnected.
    let deadline = Instant::now() + WAIT;
    let mut refusals = Vec::new();
    loop {
        assert!(node.try_wait().unwrap().is_none(), "the node exited: {refusals:?}");
        let out = run(&["ormap", "assoc", &map, "after", r#"[["set", 3]]"#, "--peer", &url]);
        if out.status.success() {
            break;
        }
        refusals.push(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        assert!(Instant::now() < deadline, "no edit succeeded after the restart: {refusals:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("edits refused after the restart before one succeeded: {refusals:?}");
    let keys = ok(&["ormap", "keys", &map, "--peer", &url]);
    eprintln!("keys on the node after the restart: {keys:?}");
    assert!(keys.contains("\"before\"") && keys.contains("\"after\""), "{keys}");
    let _ = node.kill();
    let _ = node.wait();
    // Every acknowledged edit is in the database (the during-outage edit only if it was acknowledged).
    let deadline = Instant::now() + WAIT;
    let keys = loop {
        let out = run(&["ormap", "keys", &map, "--store", &store]);
        if out.status.success() {
            eprintln!("keys in the database: {:?}", String::from_utf8_lossy(&out.stdout));
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(keys.contains("\"before\"") && keys.contains("\"after\""), "{keys}");
    if during.status.success() {
        assert!(keys.contains("\"during\""), "an acknowledged edit was lost: {keys}");
    }
}
