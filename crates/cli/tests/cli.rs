//! Runs the real `replikativ` binary.

use std::process::Command;

fn replikativ(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_replikativ")).args(args).output().expect("the binary runs")
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
fn help_explains_the_commands() {
    let out = replikativ(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("value"), "{stdout}");
    let usage = replikativ(&["no-such-command"]);
    assert_eq!(usage.status.code(), Some(2));
}
