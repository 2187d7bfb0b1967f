//! `export` and `import`: a backup of all four datatypes round-trips into a fresh store with every
//! id, author and timestamp kept (the restored reads equal the original's), through a running peer
//! as well; a tampered or foreign file is refused and imports nothing.

mod common;

use common::{Served, ok, run};

fn on<'a>(store: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [args, store].concat()
}

/// What a reader sees of the four addresses (JSON reads, ids and authors included).
fn reads(s: &[&str], map: &str, log: &str, register: &str, set: &str) -> Vec<String> {
    vec![
        ok(&on(s, &["ormap", "get", map, "milk", "--json"])),
        ok(&on(s, &["ormap", "get", map, "eggs", "--json"])),
        ok(&on(s, &["ormap", "keys", map, "--json"])),
        ok(&on(s, &["cdvcs", "log", log, "--json"])),
        ok(&on(s, &["cdvcs", "heads", log, "--json"])),
        ok(&on(s, &["lww", "get", register, "--json"])),
        ok(&on(s, &["gset", "list", set, "--json"])),
    ]
}

#[test]
fn a_backup_of_every_datatype_restores_with_its_ids() {
    let a = tempfile::tempdir().unwrap();
    let store_a = format!("file:{}", a.path().display());
    let s = ["--store", store_a.as_str()];
    let map = ok(&on(&s, &["ormap", "create"]));
    ok(&on(&s, &["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#]));
    ok(&on(&s, &["ormap", "assoc", &map, "eggs", r#"[["add", 12]]"#]));
    ok(&on(&s, &["ormap", "dissoc", &map, "eggs"]));
    let log = ok(&on(&s, &["cdvcs", "create", "--user", "mail:alice@example.org"]));
    ok(&on(&s, &["cdvcs", "commit", &log, r#"[["deposit", 10]]"#, "--user", "mail:alice@example.org"]));
    ok(&on(&s, &["cdvcs", "commit", &log, r#"[["withdraw", 3]]"#, "--user", "mail:bob@example.org"]));
    let register = ok(&on(&s, &["lww", "create"]));
    ok(&on(&s, &["lww", "set", &register, r#"{"size": 3}"#]));
    let set = ok(&on(&s, &["gset", "create"]));
    ok(&on(&s, &["gset", "add", &set, r#""alice""#]));
    let before = reads(&s, &map, &log, &register, &set);

    let backup = a.path().join("backup.jsonl");
    let backup_s = backup.display().to_string();
    ok(&on(&s, &["export", "--all", "-o", &backup_s]));
    let text = std::fs::read_to_string(&backup).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "a header and four addresses: {text}");
    assert!(lines[0].contains(r#""format":"replikativ-export""#), "{}", lines[0]);

    // Into a fresh store: everything reads back the same, ids and authors included.
    let b = tempfile::tempdir().unwrap();
    let store_b = format!("file:{}", b.path().display());
    let sb = ["--store", store_b.as_str()];
    let said = ok(&on(&sb, &["import", &backup_s]));
    assert_eq!(said.lines().count(), 4, "{said}");
    assert_eq!(reads(&sb, &map, &log, &register, &set), before);
    // Importing again changes nothing (a join).
    ok(&on(&sb, &["import", &backup_s]));
    assert_eq!(reads(&sb, &map, &log, &register, &set), before);

    // Through a running peer, one address exported to stdout and imported from stdin.
    let c = tempfile::tempdir().unwrap();
    let node =
        Served::start(&["--listen", "127.0.0.1:0", "--store", &format!("file:{}", c.path().display())], &[]);
    let url = node.url();
    let one = ok(&on(&s, &["export", &log]));
    let mut child = common::bin()
        .args(["import", "-", "--peer", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(one.as_bytes()).unwrap();
    let status = common::wait_exit(&mut child, &["import", "-"]);
    assert!(status.success(), "{}", String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr));
    let p = ["--peer", url.as_str()];
    assert_eq!(ok(&on(&p, &["cdvcs", "log", &log, "--json"])), before[3]);
}

#[test]
fn a_tampered_or_foreign_backup_is_refused_and_imports_nothing() {
    let a = tempfile::tempdir().unwrap();
    let store_a = format!("file:{}", a.path().display());
    let s = ["--store", store_a.as_str()];
    let map = ok(&on(&s, &["ormap", "create"]));
    ok(&on(&s, &["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#]));
    let text = ok(&on(&s, &["export", &map]));
    let b = tempfile::tempdir().unwrap();
    let store_b = format!("file:{}", b.path().display());
    let sb = ["--store", store_b.as_str()];

    // A value changed: it no longer hashes to the id it is filed under.
    let mut line: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    let values = line["values"].as_object_mut().unwrap();
    let (id, hex) = values
        .iter()
        .max_by_key(|(_, v)| v.as_str().unwrap().len())
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let mut tampered = hex.as_str().unwrap().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    values.insert(id, serde_json::Value::String(tampered));
    let file = a.path().join("tampered.jsonl");
    std::fs::write(&file, format!("{}\n{}\n", text.lines().next().unwrap(), line)).unwrap();
    let out = run(&on(&sb, &["import", &file.display().to_string()]));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hashes to"));

    // A value missing: the peer refuses the op that names it.
    let mut line: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    let values = line["values"].as_object_mut().unwrap();
    let first = values.keys().next().unwrap().clone();
    values.remove(&first);
    std::fs::write(&file, format!("{}\n{}\n", text.lines().next().unwrap(), line)).unwrap();
    let out = run(&on(&sb, &["import", &file.display().to_string()]));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid import"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing of it arrived.
    let out = run(&on(&sb, &["ormap", "keys", &map]));
    assert_ne!(out.status.code(), Some(0), "the address does not exist after a refused import");

    // A header, then an endless line: refused at the size bound, not buffered without end.
    let mut huge = b"{\"format\":\"replikativ-export\",\"version\":1,\"addresses\":1}\n".to_vec();
    huge.resize(huge.len() + (30 << 20), b'a');
    std::fs::write(&file, &huge).unwrap();
    let out = run(&on(&sb, &["import", &file.display().to_string()]));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));

    // Not a backup at all, or another version: usage errors.
    std::fs::write(&file, "hello\n").unwrap();
    assert_eq!(run(&on(&sb, &["import", &file.display().to_string()])).status.code(), Some(2));
    std::fs::write(&file, "{\"format\":\"replikativ-export\",\"version\":99,\"addresses\":0}\n").unwrap();
    let out = run(&on(&sb, &["import", &file.display().to_string()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 99"));
}
