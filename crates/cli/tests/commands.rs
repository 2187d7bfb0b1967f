//! The command line's manners: every command prints its result (text, or a JSON object with
//! --json), errors carry the hint that fixes them, ids are accepted by unique prefix, integers
//! beyond 64 bits are refused instead of silently turned into floats, `status` names its fields
//! as its text does, and every command's --help has examples and exit codes and offers only
//! flags that do something.

mod common;

use common::{Served, cli, ok};

fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let (got, _, stderr) = cli(args);
    assert_eq!(got, Some(code), "replikativ {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "replikativ {args:?}: {stderr:?} does not say {needle:?}");
    stderr
}

/// The arguments followed by the store flag.
fn on<'a>(store: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [args, store].concat()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn every_edit_prints_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let s = ["--store", store.as_str()];

    let map = ok(&on(&s, &["ormap", "create"]));
    ok(&on(&s, &["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#]));
    // assoc adds (two sequential assocs keep both values); put replaces them in one op.
    ok(&on(&s, &["ormap", "assoc", &map, "milk", r#"[["add", 3]]"#]));
    let values = json(&ok(&on(&s, &["ormap", "get", &map, "milk", "--json"])));
    assert_eq!(values.as_array().unwrap().len(), 2, "{values}");
    let put = ok(&on(&s, &["ormap", "put", &map, "milk", r#"[["add", 4]]"#]));
    let values = json(&ok(&on(&s, &["ormap", "get", &map, "milk", "--json"])));
    assert_eq!(values.as_array().unwrap().len(), 1, "{values}");
    assert_eq!(values[0]["id"], put.as_str());
    assert_eq!(values[0]["transactions"], serde_json::json!([["add", 4]]));
    let removal = ok(&on(&s, &["ormap", "dissoc", &map, "milk"]));
    assert_eq!(removal.len(), 64, "dissoc prints the removal's commit id: {removal:?}");
    assert!(removal.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(ok(&on(&s, &["ormap", "keys", &map])), "");

    let register = ok(&on(&s, &["lww", "create"]));
    assert_eq!(ok(&on(&s, &["lww", "set", &register, r#""light""#])), format!("{register} = \"light\""));
    let j = json(&ok(&on(&s, &["lww", "set", &register, r#"{"size": 3}"#, "--json"])));
    assert_eq!(j, serde_json::json!({ "address": register, "value": { "size": 3 } }));

    let set = ok(&on(&s, &["gset", "create"]));
    assert_eq!(ok(&on(&s, &["gset", "add", &set, r#""alice""#])), format!("added \"alice\" to {set}"));
    let j = json(&ok(&on(&s, &["gset", "add", &set, "7", "--json"])));
    assert_eq!(j, serde_json::json!({ "address": set, "added": 7 }));

    // pull: bob forks alice's history, alice commits, bob pulls (a fast-forward).
    let alice = ok(&on(&s, &["cdvcs", "create", "--user", "mail:alice@example.org"]));
    let bob = ok(&on(&s, &["cdvcs", "fork", &alice, "--user", "mail:bob@example.org"]));
    let tip = ok(&on(&s, &["cdvcs", "commit", &alice, r#"[["deposit", 10]]"#]));
    let said = ok(&on(&s, &["cdvcs", "pull", &alice, &bob]));
    assert_eq!(said, format!("pulled {alice} into {bob} up to {}", &tip[..12]));
}

#[test]
fn errors_carry_the_hint_that_fixes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let s = ["--store", store.as_str()];
    let register = ok(&on(&s, &["lww", "create"]));
    let map = ok(&on(&s, &["ormap", "create"]));

    // A --peer that is not a websocket URL: a usage error with the fix.
    fails(&["ormap", "keys", &map, "--peer", "127.0.0.1:31744"], 2, "use ws://127.0.0.1:31744");
    fails(&["ormap", "keys", &map, "--peer", "http://127.0.0.1:31744"], 2, "use ws://127.0.0.1:31744");
    fails(&["watch", &map, "--peer", "localhost:1"], 2, "use ws://localhost:1");
    // A bare word where JSON is expected.
    fails(&on(&s, &["lww", "set", &register, "light"]), 2, r#"a JSON string needs quotes: '"light"'"#);
    // An empty transaction list is bad usage, not a data error.
    fails(&on(&s, &["ormap", "assoc", &map, "k", "[]"]), 2, "the transaction list is empty");
    fails(&on(&s, &["cdvcs", "commit", &map, "[]"]), 2, "the transaction list is empty");
    // Articles.
    fails(&on(&s, &["cdvcs", "commit", &map, r#"[["a", 1]]"#]), 4, "holds an OR-Map, not a CDVCS");
    fails(&on(&s, &["ormap", "keys", &register]), 4, "does not hold an OR-Map");
    // A pull that is not a fast-forward names the flag that allows it.
    let alice = ok(&on(&s, &["cdvcs", "create", "--user", "mail:alice@example.org"]));
    let bob = ok(&on(&s, &["cdvcs", "fork", &alice, "--user", "mail:bob@example.org"]));
    ok(&on(&s, &["cdvcs", "commit", &alice, r#"[["a", 1]]"#]));
    ok(&on(&s, &["cdvcs", "commit", &bob, r#"[["b", 2]]"#]));
    fails(&on(&s, &["cdvcs", "pull", &alice, &bob]), 4, "--allow-induced-conflict");
    ok(&on(&s, &["cdvcs", "pull", &alice, &bob, "--allow-induced-conflict"]));
    assert_eq!(ok(&on(&s, &["cdvcs", "heads", &bob])).lines().count(), 2);
    fails(&on(&s, &["cdvcs", "commit", &bob, r#"[["c", 3]]"#]), 4, "cdvcs merge");
    // No --peer and no --store: the error says which store was meant.
    let empty = tempfile::tempdir().unwrap();
    let out = common::bin()
        .args(["ormap", "keys", &map])
        .current_dir(empty.path())
        .env_remove("REPLIKATIV_STORE")
        .env_remove("REPLIKATIV_PEER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without --peer or --store, commands use the store file:./replikativ-data"),
        "{stderr}"
    );
    assert!(!empty.path().join("replikativ-data").exists(), "nothing was created");
    // A command that works on the default store says so on stderr; stdout is only the result.
    let out = common::bin()
        .args(["ormap", "create"])
        .current_dir(empty.path())
        .env_remove("REPLIKATIV_STORE")
        .env_remove("REPLIKATIV_PEER")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("note: no --peer or --store given: used the store file:./replikativ-data"),
        "{stderr}"
    );
    let created = String::from_utf8(out.stdout).unwrap();
    assert!(created.trim().starts_with("mail:cli@localhost/"), "{created}");
    assert!(empty.path().join("replikativ-data").is_dir());
}

#[test]
fn heads_are_merged_by_id_prefix_as_the_log_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let s = ["--store", store.as_str()];
    let alice = ok(&on(&s, &["cdvcs", "create", "--user", "mail:alice@example.org"]));
    let bob = ok(&on(&s, &["cdvcs", "fork", &alice, "--user", "mail:bob@example.org"]));
    ok(&on(&s, &["cdvcs", "commit", &alice, r#"[["a", 1]]"#]));
    ok(&on(&s, &["cdvcs", "commit", &bob, r#"[["b", 2]]"#]));
    ok(&on(&s, &["cdvcs", "pull", &alice, &bob, "--allow-induced-conflict"]));
    let heads: Vec<String> = ok(&on(&s, &["cdvcs", "heads", &bob])).lines().map(str::to_owned).collect();
    assert_eq!(heads.len(), 2);
    // The log prints 12-digit prefixes.
    let log = ok(&on(&s, &["cdvcs", "log", &bob]));
    for head in &heads {
        assert!(log.lines().any(|l| l.starts_with(&head[..12])), "{log}");
    }
    fails(&on(&s, &["cdvcs", "merge", &bob, "zzzz"]), 2, "not a commit id or a prefix");
    fails(
        &on(
            &s,
            &["cdvcs", "merge", &bob, "0000000000000000000000000000000000000000000000000000000000000000"],
        ),
        4,
        "no head starts with",
    );
    let merge = ok(&on(&s, &["cdvcs", "merge", &bob, &heads[1][..12], &heads[0][..8]]));
    assert_eq!(ok(&on(&s, &["cdvcs", "heads", &bob])), merge, "one head: the merge");
    let log = json(&ok(&on(&s, &["cdvcs", "log", &bob, "--json"])));
    let last = log.as_array().unwrap().last().unwrap();
    assert_eq!(last["parents"], serde_json::json!([heads[1], heads[0]]), "in the order given");
}

#[test]
fn integers_beyond_64_bits_are_refused_and_those_within_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().display());
    let s = ["--store", store.as_str()];
    let register = ok(&on(&s, &["lww", "create"]));
    fails(&on(&s, &["lww", "set", &register, "18446744073709551616"]), 2, "beyond 64 bits");
    fails(&on(&s, &["lww", "set", &register, r#"{"n": [-9223372036854775809]}"#]), 2, "beyond 64 bits");
    fails(&["value", "18446744073709551616"], 2, "write it as a string");
    for exact in ["18446744073709551615", "-9223372036854775808", r#""18446744073709551616""#] {
        ok(&on(&s, &["lww", "set", &register, exact]));
        assert_eq!(ok(&on(&s, &["lww", "get", &register])), exact);
    }
}

#[test]
fn status_json_uses_the_names_of_the_text_and_shows_traffic() {
    let node = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[]);
    let url = node.url();
    ok(&["ormap", "create", "--peer", &url]);
    let text = ok(&["status", "--peer", &url]);
    assert!(text.contains("role:          server"), "{text}");
    assert!(text.contains("traffic (all connections since the start):"), "{text}");
    assert!(text.contains("messages_received: "), "{text}");
    assert!(text.contains("per connection (messages and bytes in / out"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with('#') && l.contains("127.0.0.1:")), "{text}");
    let j = json(&ok(&["status", "--peer", &url, "--json"]));
    assert_eq!(j["role"], "server");
    assert!(j.get("extend").is_none(), "{j}");
    assert!(j["traffic"]["messages_received"].as_u64().unwrap() > 0, "{j}");
    assert!(j["traffic"]["bytes_sent"].as_u64().unwrap() > 0, "{j}");
    // The status call's own connection is among them, with the bytes it sent so far.
    let conns = j["connection_metrics"].as_array().expect("per-connection metrics");
    assert!(
        conns.iter().any(|c| c["remote"].as_str().unwrap().starts_with("127.0.0.1:")
            && c["bytes_in"].as_u64().unwrap() > 0),
        "{j}"
    );
}

#[test]
fn every_command_explains_itself_with_examples_and_exit_codes() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["subscribe"],
        &["watch"],
        &["status"],
        &["value"],
        &["ormap", "create"],
        &["ormap", "assoc"],
        &["ormap", "put"],
        &["ormap", "dissoc"],
        &["ormap", "get"],
        &["ormap", "keys"],
        &["cdvcs", "create"],
        &["cdvcs", "commit"],
        &["cdvcs", "log"],
        &["cdvcs", "heads"],
        &["cdvcs", "merge"],
        &["cdvcs", "pull"],
        &["cdvcs", "fork"],
        &["lww", "create"],
        &["lww", "set"],
        &["lww", "get"],
        &["gset", "create"],
        &["gset", "add"],
        &["gset", "list"],
    ];
    for words in commands {
        let args = [*words, &["--help"]].concat();
        let help = ok(&args);
        assert!(help.contains("Examples:"), "{words:?} --help has examples:\n{help}");
        assert!(
            help.contains("Exit codes:") || help.contains("Exit codes: "),
            "{words:?}: exit codes:\n{help}"
        );
        // Every positional argument is described (the short help has one line per argument).
        let short = ok(&[*words, &["-h"]].concat());
        if let Some(section) = short.split("Arguments:\n").nth(1) {
            for line in section.lines().take_while(|l| !l.is_empty()) {
                let line = line.trim();
                if line.starts_with('<') || line.starts_with('[') {
                    let described = line.split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
                    assert!(described, "{words:?}: {line:?} has no description");
                }
            }
        }
    }
    // Flags that do nothing for a command are not offered.
    let watch = ok(&["watch", "--help"]);
    for flag in ["--store", "--user", "--json"] {
        assert!(!watch.contains(flag), "watch offers {flag}:\n{watch}");
    }
    for read in [
        &["status"][..],
        &["subscribe"],
        &["ormap", "get"],
        &["cdvcs", "log"],
        &["lww", "get"],
        &["gset", "list"],
    ] {
        let help = ok(&[read, &["--help"]].concat());
        assert!(!help.contains("--user"), "{read:?} offers --user:\n{help}");
        assert!(help.contains("--json") && help.contains("--store"), "{read:?}");
    }
    let (code, _, stderr) = cli(&["watch", "a/b", "--store", "memory"]);
    assert_eq!(code, Some(2), "{stderr}");
}
