//! The command line with authentication: `key gen` and `key show`, and data commands against a
//! node with `--auth on` (writes as the key's user succeed, anything else is refused with a reason
//! and exit code 4), and the refusal of `--auth off` on a non-loopback address.

mod common;

use common::{Served, bin, run, wait_exit};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs the binary with `env` set.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_exit(&mut child, args);
    child.wait_with_output().unwrap()
}

#[test]
fn keys_are_written_private_never_overwritten_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.key");
    let file = path.to_str().unwrap();
    let made = run(&["key", "gen", file]);
    assert_eq!(code(&made), Some(0), "{}", stderr(&made));
    let user = stdout(&made);
    assert!(user.starts_with("key:") && user.len() == 56, "{user}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = run(&["key", "gen", file]);
    assert_eq!(code(&again), Some(4), "{}", stderr(&again));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    assert_eq!(stdout(&run(&["key", "show", file])), user, "the file still holds the first key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = run(&["key", "show", file]);
    assert_eq!(code(&open), Some(4));
    assert!(stderr(&open).contains("chmod 600"), "{}", stderr(&open));
    let missing = run(&["key", "show", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(code(&missing), Some(4), "{}", stderr(&missing));
}

#[test]
fn with_auth_on_writes_succeed_only_as_the_keys_user() {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = dir.path().join("alice.key");
    let bob_key = dir.path().join("bob.key");
    let alice = stdout(&run(&["key", "gen", alice_key.to_str().unwrap()]));
    run(&["key", "gen", bob_key.to_str().unwrap()]);
    let node = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[("REPLIKATIV_AUTH", "on")]);
    let url = node.url();
    node.wait_for(false, "authentication on");
    let as_alice = [("REPLIKATIV_KEY", alice_key.to_str().unwrap())];
    let as_bob = [("REPLIKATIV_KEY", bob_key.to_str().unwrap())];

    let created = run_env(&["ormap", "create", "--peer", &url], &as_alice);
    assert_eq!(code(&created), Some(0), "{}", stderr(&created));
    let map = stdout(&created);
    assert!(map.starts_with(&format!("{alice}/")), "the address is alice's: {map}");
    let assoc = run_env(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &url], &as_alice);
    assert_eq!(code(&assoc), Some(0), "{}", stderr(&assoc));
    let got = run_env(&["ormap", "get", &map, "milk", "--peer", &url, "--json"], &as_alice);
    assert_eq!(code(&got), Some(0), "{}", stderr(&got));
    assert!(stdout(&got).contains("add"), "{}", stdout(&got));

    // Another user's key: refused, with a reason, exit 4; nothing changed.
    let forged = run_env(&["ormap", "assoc", &map, "milk", r#"[["add", 99]]"#, "--peer", &url], &as_bob);
    assert_eq!(code(&forged), Some(4), "{}", stderr(&forged));
    assert!(stderr(&forged).contains("not allowed"), "{}", stderr(&forged));
    // Alice's key with another author named: refused too.
    let other_author = run_env(
        &[
            "ormap",
            "assoc",
            &map,
            "milk",
            r#"[["add", 98]]"#,
            "--peer",
            &url,
            "--user",
            "mail:mallory@example.org",
        ],
        &as_alice,
    );
    assert_eq!(code(&other_author), Some(4), "{}", stderr(&other_author));
    assert!(stderr(&other_author).contains("writes as"), "{}", stderr(&other_author));
    // Without a key: neither writes nor reads of a private address.
    let anonymous = run(&["ormap", "get", &map, "milk", "--peer", &url]);
    assert_eq!(code(&anonymous), Some(4), "{}", stderr(&anonymous));
    let anonymous_create = run(&["ormap", "create", "--peer", &url]);
    assert_eq!(code(&anonymous_create), Some(4), "{}", stderr(&anonymous_create));
    // Bob reads alice's map with a read capability she granted him, and not without it.
    let bob = stdout(&run(&["key", "show", bob_key.to_str().unwrap()]));
    let grant = |address: &str| {
        let owner = alice_key.to_str().unwrap();
        run(&["key", "grant", "--key", owner, "--to", &bob, "--address", address, "--for", "1h"])
    };
    let granted = grant(&map);
    assert_eq!(code(&granted), Some(0), "{}", stderr(&granted));
    let cap = dir.path().join("bob.cap");
    std::fs::write(&cap, stdout(&granted)).unwrap();
    let with_cap =
        run_env(&["ormap", "get", &map, "milk", "--peer", &url, "--cap", cap.to_str().unwrap()], &as_bob);
    assert_eq!(code(&with_cap), Some(0), "{}", stderr(&with_cap));
    let without = run_env(&["ormap", "get", &map, "milk", "--peer", &url], &as_bob);
    assert_eq!(code(&without), Some(4), "{}", stderr(&without));
    // A read capability does not let bob write; a write capability does.
    let cap_arg = cap.to_str().unwrap();
    let write = &["ormap", "assoc", &map, "tea", r#"[["add", 1]]"#, "--peer", &url, "--cap", cap_arg];
    assert_eq!(code(&run_env(write, &as_bob)), Some(4));
    let owner = alice_key.to_str().unwrap();
    let granted_w =
        run(&["key", "grant", "--key", owner, "--to", &bob, "--address", &map, "--for", "1h", "--write"]);
    std::fs::write(&cap, stdout(&granted_w)).unwrap();
    let wrote = run_env(write, &as_bob);
    assert_eq!(code(&wrote), Some(0), "{}", stderr(&wrote));
    let for_another = grant("mail:x@y/6f1c0b5c-0000-4000-8000-000000000000");
    assert_eq!(code(&for_another), Some(2), "{}", stderr(&for_another));
    let after = run_env(&["ormap", "get", &map, "milk", "--peer", &url, "--json"], &as_alice);
    let text = stdout(&after);
    // (The transactions, not the whole text: hex ids and timestamps contain "98" and "99".)
    assert!(
        !text.contains(r#"["add",99]"#) && !text.contains(r#"["add",98]"#) && text.contains(r#"["add",2]"#),
        "a refused write changed the map: {text}"
    );
}

#[test]
fn auth_off_is_refused_on_a_non_loopback_address() {
    // (--insecure-no-tls: without it the TLS check refuses the plain listen address first.)
    let out = run_env(
        &["serve", "--store", "memory", "--listen", "0.0.0.0:0", "--auth", "off", "--insecure-no-tls"],
        &[],
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("refusing --auth off on 0.0.0.0:0"), "{}", stderr(&out));
}

#[test]
fn a_node_and_a_watch_proving_the_users_key_replicate_her_private_map() {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = dir.path().join("alice.key");
    run(&["key", "gen", alice_key.to_str().unwrap()]);
    let as_alice = [("REPLIKATIV_KEY", alice_key.to_str().unwrap())];
    let on = ("REPLIKATIV_AUTH", "on");
    let a = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[on]);
    let url_a = a.url();
    let map = stdout(&run_env(&["ormap", "create", "--peer", &url_a], &as_alice));
    let assoc = run_env(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &url_a], &as_alice);
    assert_eq!(code(&assoc), Some(0), "{}", stderr(&assoc));
    // Node B dials A proving alice's key (serve's --key reads REPLIKATIV_KEY too).
    let b = Served::start(
        &["--listen", "127.0.0.1:0", "--store", "memory", "--connect", &url_a, "--subscribe", &map],
        &[on, as_alice[0]],
    );
    let url_b = b.url();
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let got = run_env(&["ormap", "get", &map, "milk", "--peer", &url_b, "--json"], &as_alice);
        if code(&got) == Some(0) && stdout(&got).contains("add") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never replicated: {}", stderr(&got));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // watch proving alice's key sees the map; without the key it does not.
    let watched = run_env(&["watch", &map, "--peer", &url_a, "--timeout", "5s"], &[]);
    assert_eq!(code(&watched), Some(4), "an anonymous watch must not see the map: {}", stdout(&watched));
    let mut child = bin()
        .args(["watch", &map, "--peer", &url_a])
        .env("REPLIKATIV_KEY", alice_key.to_str().unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(common::WAIT).expect("watch prints the catch-up");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("catch_up") && first.contains("milk"), "{first}");
}
