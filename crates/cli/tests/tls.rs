//! The real `replikativ` over TLS (issue 16): two `serve`s with certificates made here by rcgen
//! replicate over `wss://` and the data commands work through either (`--peer wss://... --ca`);
//! a client without the CA gets one clear line and exit 3; `serve` refuses a non-loopback listen
//! address without TLS (exit 2) and bad TLS flags with the reason.

mod common;

#[path = "../../../tests/common/certs.rs"]
mod certs;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Served, WAIT, cli, ok};

/// The test certificates as files: `ca.pem`, `cert.pem`, `key.pem` in `dir`.
fn write_certs(dir: &Path) -> (String, String, String) {
    let c = certs::make();
    let path = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (path("ca.pem", &c.ca), path("cert.pem", &c.cert), path("key.pem", &c.key))
}

/// Retries `args` until it succeeds and its stdout contains `needle` (bounded by [`WAIT`]).
fn until_shows(args: &[&str], needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = cli(args);
        if code == Some(0) && out.contains(needle) {
            return out;
        }
        assert!(Instant::now() < deadline, "{args:?} never showed {needle:?}: {code:?} {out} {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_served_nodes_and_the_cli_replicate_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(dir.path());
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let a = Served::start(&[&["--listen", "127.0.0.1:0", "--store", "memory"][..], &tls].concat(), &[]);
    let a_url = a.url();
    assert!(a_url.starts_with("wss://127.0.0.1:"), "{a_url}");
    a.wait_for(false, "HTTPS on https://127.0.0.1:");
    let map = ok(&["ormap", "create", "--peer", &a_url, "--ca", &ca]);

    // B: TLS too (its certificate from the config file), dialing A over wss:// with the CA from
    // the environment.
    let config = dir.path().join("b.toml");
    std::fs::write(&config, format!("tls_cert = {cert:?}\ntls_key = {key:?}\n")).unwrap();
    let b = Served::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--config",
            &config.display().to_string(),
            "--connect",
            &a_url,
            "--subscribe",
            &map,
        ],
        &[("REPLIKATIV_CA", &ca)],
    );
    let b_url = b.url();
    assert!(b_url.starts_with("wss://127.0.0.1:"), "{b_url}");

    // A write through A shows on B; one through B shows on A.
    ok(&["ormap", "assoc", &map, "milk", r#"[["add", 2]]"#, "--peer", &a_url, "--ca", &ca]);
    until_shows(&["ormap", "get", &map, "milk", "--json", "--peer", &b_url, "--ca", &ca], "add");
    ok(&["ormap", "assoc", &map, "eggs", r#"[["add", 6]]"#, "--peer", &b_url, "--ca", &ca]);
    until_shows(&["ormap", "get", &map, "eggs", "--json", "--peer", &a_url, "--ca", &ca], "add");

    // status over wss, with the node's HTTPS /metrics and /connections (its TLS links marked).
    let status = ok(&["status", "--peer", &a_url, "--ca", &ca]);
    assert!(status.contains(&format!("listening on:  {a_url}")), "{status}");
    assert!(status.contains("traffic (all connections since the start):"), "{status}");
    let json = ok(&["status", "--peer", &a_url, "--ca", &ca, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let conns = json["connection_metrics"].as_array().expect("per-connection figures over https");
    assert!(conns.iter().any(|c| c["tls"] == serde_json::json!(true)), "{json}");
    // watch through B over wss.
    let mut watch = common::bin()
        .args(["watch", &map, "--peer", &b_url, "--ca", &ca])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(WAIT).expect("watch prints the catch-up");
    assert!(first.contains("milk") && first.contains("eggs"), "{first}");
    let _ = watch.kill();
    let _ = watch.wait();
    drop(b);
    drop(a);
}

#[test]
fn a_cli_without_the_ca_gets_one_clear_line_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(dir.path());
    let a = Served::start(
        &["--listen", "127.0.0.1:0", "--store", "memory", "--tls-cert", &cert, "--tls-key", &key],
        &[],
    );
    let url = a.url();
    let (code, _, err) = cli(&["ormap", "create", "--peer", &url]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot connect to {url}: the server's certificate is not trusted: it is not signed by a certificate authority this client trusts; give the CA that signed it with --ca FILE (or REPLIKATIV_CA)\n"
        )
    );
    // watch says the same (it dials like a peer).
    let map = ok(&["ormap", "create", "--peer", &url, "--ca", &ca]);
    let (code, _, err) = cli(&["watch", &map, "--peer", &url]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("the server's certificate is not trusted: it is not signed by a certificate authority this client trusts"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Plain ws:// against the TLS port: told to use wss://.
    let plain = url.replacen("wss://", "ws://", 1);
    let (code, _, err) = cli(&["status", "--peer", &plain]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("the server answered HTTP 400 Bad Request: this port speaks TLS: use wss://"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A --ca that cannot be read, or is no certificate: bad usage.
    let (code, _, err) = cli(&["status", "--peer", &url, "--ca", "/nonexistent/ca.pem"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("error: --ca: cannot read /nonexistent/ca.pem: "), "{err}");
    let (code, _, err) = cli(&["status", "--peer", &url, "--ca", &key]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no certificate in it"), "{err}");
    // A serve dialing the node without the CA keeps retrying, and its log says why each time.
    let b = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory", "--connect", &url], &[]);
    let line = b.wait_for(true, "connecting failed; retrying");
    assert!(line.contains("the server's certificate is not trusted"), "{line}");
    drop(b);
    // With the CA: fine (the node survived the refused handshakes).
    let status = ok(&["status", "--peer", &url, "--ca", &ca]);
    assert!(status.contains("handshake-failed"), "the refusals are counted: {status}");
}

#[test]
fn serve_refuses_a_public_address_without_tls_and_bad_tls_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(dir.path());
    let serve = |args: &[&str]| {
        let (code, out, err) = cli(&[&["serve", "--store", "memory"][..], args].concat());
        assert_eq!(code, Some(2), "{args:?}: {out} {err}");
        // One error line (with --auth on an INFO line about the node key comes first).
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        format!("{}\n", errors[0])
    };
    let err = serve(&["--listen", "0.0.0.0:0"]);
    assert!(
        err.starts_with("error: refusing to listen on 0.0.0.0:0 without TLS: it is not a loopback address"),
        "{err}"
    );
    assert!(err.contains("--tls-cert FILE and --tls-key FILE, or --insecure-no-tls"), "{err}");
    let err = serve(&["--listen", "[::]:0"]);
    assert!(err.starts_with("error: refusing to listen on [::]:0 without TLS"), "{err}");
    // With --insecure-no-tls (or TLS) the check passes: an address this machine does not have
    // then fails at the bind, not at the check (nothing listens beyond loopback in this test).
    for args in [
        // (--auth on: the tests run the binary with REPLIKATIV_AUTH=off, refused off loopback.)
        &["--listen", "192.0.2.1:0", "--insecure-no-tls", "--auth", "on"][..],
        &["--listen", "192.0.2.1:0", "--tls-cert", &cert, "--tls-key", &key, "--auth", "on"][..],
    ] {
        let err = serve(args);
        assert!(err.starts_with("error: cannot listen on 192.0.2.1:0: "), "{args:?}: {err}");
    }
    let err = serve(&["--tls-cert", &cert]);
    assert_eq!(err, "error: --tls-cert needs --tls-key (the certificate's private key)\n");
    let err = serve(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(err.contains(&format!("the certificate file {key}: no certificate in it")), "{err}");
    let err = serve(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(err.contains(&format!("the key file {cert}: no private key in it")), "{err}");
    // A key that is not the certificate's.
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = write_certs(other.path());
    let err = serve(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert!(err.contains("do not make a TLS identity"), "{err}");
    let err = serve(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", &key]);
    assert!(err.starts_with("error: TLS: cannot read /nonexistent/cert.pem: "), "{err}");
    let err = serve(&["--ca", "/nonexistent/ca.pem"]);
    assert!(err.starts_with("error: --ca: cannot read /nonexistent/ca.pem"), "{err}");
    // The settings round-trip through --print-config.
    let printed = ok(&[
        "serve",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--ca",
        &ca,
        "--insecure-no-tls",
        "--print-config",
    ]);
    for line in [
        format!("tls_cert = {cert:?}"),
        format!("tls_key = {key:?}"),
        format!("ca = {ca:?}"),
        "insecure_no_tls = true".to_owned(),
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in {printed}");
    }
}
