//! How data commands open a local `--store`: a command that only reads refuses a store that does
//! not exist (exit 4, one line naming the path) and creates nothing; it opens an existing store
//! read-only, so a store in a read-only directory is readable and nothing in it changes (not even
//! the repairs a writable open makes); edits of existing addresses do not create a store either.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{ok, run};

const ADDRESS: &str = "alice/7d274663-9396-4247-910b-409ae35fe98d";

/// Every read command, on `address` (of the right type where the command needs one).
fn reads<'a>(map: &'a str, log: &'a str, reg: &'a str, set: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["ormap", "get", map, "milk"],
        vec!["ormap", "keys", map],
        vec!["cdvcs", "log", log],
        vec!["cdvcs", "heads", log],
        vec!["lww", "get", reg],
        vec!["gset", "list", set],
        vec!["status"],
    ]
}

#[test]
fn read_commands_refuse_a_missing_store_with_exit_4_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["file", "sled"] {
        let missing = dir.path().join(format!("typo-{kind}"));
        let store = format!("{kind}:{}", missing.display());
        for mut args in reads(ADDRESS, ADDRESS, ADDRESS, ADDRESS) {
            args.extend(["--store", &store]);
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(4), "replikativ {args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.starts_with(&format!(
                    "error: no store at {}: the directory does not exist",
                    missing.display()
                )),
                "replikativ {args:?}: {stderr}"
            );
            assert!(!missing.exists(), "replikativ {args:?} created {}", missing.display());
        }
    }
    // An existing directory that holds no store is refused the same way and stays empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["ormap", "keys", ADDRESS, "--store", &format!("file:{}", empty.display())]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no store"));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn edits_of_existing_addresses_refuse_a_missing_store_and_create_commands_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let store = format!("file:{}", missing.display());
    let edits: &[&[&str]] = &[
        &["ormap", "assoc", ADDRESS, "k", r#"[["set", 1]]"#],
        &["ormap", "dissoc", ADDRESS, "k"],
        &["cdvcs", "commit", ADDRESS, r#"[["add", 1]]"#],
        &["cdvcs", "merge", ADDRESS],
        &["cdvcs", "pull", ADDRESS, ADDRESS],
        &["cdvcs", "fork", ADDRESS],
        &["lww", "set", ADDRESS, "1"],
        &["gset", "add", ADDRESS, "1"],
    ];
    for args in edits {
        let mut args = args.to_vec();
        args.extend(["--store", &store]);
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "replikativ {args:?}: {stderr}");
        assert!(stderr.contains(&format!("no store at {}", missing.display())), "{stderr}");
        assert!(!missing.exists(), "replikativ {args:?} created the store");
    }
    let map = ok(&["ormap", "create", "--store", &store]);
    assert!(missing.is_dir(), "create makes the store");
    ok(&["ormap", "assoc", &map, "k", r#"[["set", 1]]"#, "--store", &store]);
    assert_eq!(ok(&["ormap", "keys", &map, "--store", &store]), r#""k""#);
}

/// Every file under `dir` with its size, modification time and permissions.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().unwrap(), meta.permissions().mode()));
        }
    }
    out
}

/// `chmod -R a-w` (or `u+w` back): directories and files.
fn set_writable(dir: &Path, writable: bool) {
    let mode = if writable { "u+w" } else { "a-w" };
    let status = Command::new("chmod").args(["-R", mode, dir.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
}

/// Restores write permission on drop, so the temp dir can be removed even when a test fails.
struct Writable<'a>(&'a Path);

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        set_writable(self.0, true);
    }
}

#[test]
fn read_commands_on_a_read_only_store_succeed_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = format!("file:{}", root.display());
    let map = ok(&["ormap", "create", "--store", &store, "--user", "bob"]);
    ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--store", &store]);
    let log = ok(&["cdvcs", "create", "--store", &store]);
    let c1 = ok(&["cdvcs", "commit", &log, r#"[["deposit", 10]]"#, "--store", &store]);
    let reg = ok(&["lww", "create", "--store", &store]);
    ok(&["lww", "set", &reg, r#"{"color": "red"}"#, "--store", &store]);
    let set = ok(&["gset", "create", "--store", &store]);
    ok(&["gset", "add", &set, "1", "--store", &store]);

    // What a writable open would repair, and a read-only open must leave alone: the incomplete
    // record a crash leaves at the end of the last segment, and a blob temp file.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(b"RPKR\x40\x00\x00\x00torn");
    std::fs::write(last, &bytes).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join("blobs").join("tmp-1-0"), b"partial").unwrap();

    set_writable(&root, false);
    let _restore = Writable(&root);
    let before = snapshot(&root);
    std::thread::sleep(Duration::from_millis(20)); // a write would now show in the mtimes

    let expected = |args: &[&str]| -> Option<String> {
        match (args[0], args[1]) {
            ("ormap", "keys") => Some(r#""milk""#.to_owned()),
            ("cdvcs", "heads") => Some(c1.clone()),
            ("lww", "get") => Some(r#"{"color":"red"}"#.to_owned()),
            ("gset", "list") => Some("1".to_owned()),
            _ => None,
        }
    };
    for mut args in reads(&map, &log, &reg, &set) {
        args.extend(["--store", &store]);
        let out = ok(&args);
        if let Some(want) = expected(&args) {
            assert_eq!(out, want, "replikativ {args:?}");
        }
        match (args[0], args[1]) {
            ("ormap", "get") => assert!(out.contains("add(2)"), "{out}"),
            ("cdvcs", "log") => assert!(out.lines().last().unwrap().contains("deposit(10)"), "{out}"),
            ("status", _) => assert!(out.contains("addresses:     4"), "{out}"),
            _ => {}
        }
    }
    assert_eq!(snapshot(&root), before, "a read command changed the store directory");
}
