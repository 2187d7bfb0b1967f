//! Runs the real `replikativ` binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary to completion, bounded: a run that does not finish in 20 s is killed and fails.
fn replikativ(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replikativ"))
        .env("REPLIKATIV_AUTH", "off")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("replikativ {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn value_prints_the_canonical_encoding_and_id() {
    let out = replikativ(&["value", r#"["a", null]"#]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    // [ "a", nil ]: list of 2, string of 1 byte 'a', nil.
    assert!(stdout.contains("encoding: 070205016100"), "{stdout}");
    let id = stdout.lines().find_map(|l| l.strip_prefix("id:")).unwrap().trim();
    assert_eq!(id.len(), 64);
    // Equal JSON objects with keys in another order have the same id.
    let a = replikativ(&["value", r#"{"x":1,"y":2}"#]);
    let b = replikativ(&["value", r#"{"y":2,"x":1}"#]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_json_is_one_clear_sentence_and_exit_code_2() {
    let out = replikativ(&["value", "{bad"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: the value is not valid JSON"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn help_and_version_print_normally_with_exit_code_0() {
    for args in
        [&["--help"][..], &["-h"], &["help"], &["ormap", "--help"], &["help", "ormap"], &["serve", "--help"]]
    {
        let out = replikativ(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("Usage: replikativ"), "{args:?}: {stdout}");
        assert!(stdout.lines().count() > 5, "{args:?}: {stdout}");
        assert!(out.stderr.is_empty(), "{args:?}");
    }
    let top = String::from_utf8(replikativ(&["--help"]).stdout).unwrap();
    assert!(top.contains("value"), "{top}");
    for args in [&["--version"][..], &["-V"]] {
        let out = replikativ(args);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("replikativ {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// A usage error is `error: ...` on one line plus one hint line naming the help to read, on
/// stderr, with exit code 2: (arguments, what the error line says, the hint).
#[test]
fn usage_errors_are_one_line_and_one_hint_with_exit_code_2() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["frobnicate"],
            "error: unknown command 'frobnicate' for 'replikativ' (the commands: serve, ormap,",
            "try 'replikativ --help'",
        ),
        (
            &["stauts"],
            "error: unknown command 'stauts' for 'replikativ' (did you mean 'status'?)",
            "try 'replikativ --help'",
        ),
        (
            &["ormap", "frob"],
            "error: unknown command 'frob' for 'replikativ ormap'",
            "try 'replikativ ormap --help'",
        ),
        (&[], "error: 'replikativ' needs a command: serve, ormap,", "try 'replikativ --help'"),
        (
            &["ormap"],
            "error: 'replikativ ormap' needs a command: create, assoc, put, dissoc, get, keys",
            "try 'replikativ ormap --help'",
        ),
        (
            &["ormap", "assoc"],
            "error: 'replikativ ormap assoc' is missing <ADDRESS> <KEY> <TXS>",
            "try 'replikativ ormap assoc --help'",
        ),
        (
            &["cdvcs", "pull", "a/b"],
            "error: 'replikativ cdvcs pull' is missing <INTO>",
            "try 'replikativ cdvcs pull --help'",
        ),
        (
            &["ormap", "create", "--id", "not-a-uuid"],
            "error: invalid value 'not-a-uuid' for '--id <ID>': ",
            "try 'replikativ ormap create --help'",
        ),
        (
            &["serve", "--store", "memory", "--listen", "127.0.0.1:0", "--log-level", "loud"],
            "error: invalid value 'loud' for '--log-level <LEVEL>' (valid: error, warn, info, debug, trace)",
            "try 'replikativ serve --help'",
        ),
        (
            &["serve", "--store", "memory", "--listen"],
            "error: '--listen <HOST:PORT>' needs a value",
            "try 'replikativ serve --help'",
        ),
        (
            &["ormap", "--bogus"],
            "error: unknown argument '--bogus' for 'replikativ ormap'",
            "try 'replikativ ormap --help'",
        ),
        (
            &["ormap", "keys", "a/b", "--stor", "x"],
            "error: unknown argument '--stor' for 'replikativ ormap keys' (did you mean '--store'?)",
            "try 'replikativ ormap keys --help'",
        ),
        (
            &["value", "1", "2"],
            "error: unexpected argument '2' for 'replikativ value'",
            "try 'replikativ value --help'",
        ),
    ];
    for (args, error, hint) in cases {
        let out = replikativ(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: one error line and one hint: {stderr}");
        assert!(lines[0].starts_with(error), "{args:?}: {:?} does not start with {error:?}", lines[0]);
        assert_eq!(lines[1], *hint, "{args:?}");
    }
}
