//! `replikativ serve` as a service: its configuration from flags, environment and a TOML file
//! (and `--print-config`), its logs (text without colors on a pipe, JSON, connection lines at
//! DEBUG only), HTTP on the listen port (`/healthz`, `/readyz`, `/metrics`, `--web`), and
//! subscribing a client peer from the shell (`serve --subscribe`, `replikativ subscribe`).

mod common;

use std::time::{Duration, Instant};

use common::{Served, WAIT, cli, http_get, ok};

fn print_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = common::bin();
    cmd.arg("serve").args(args).arg("--print-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("--print-config prints TOML")
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1111\"\nmax_connections = 50\nidle_timeout = \"2m\"\nconnect = [\"ws://127.0.0.1:9\"]\nlog_format = \"json\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    // Defaults only.
    let c = print_config(&[], &[]);
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:31744"));
    assert_eq!(c["idle_timeout"].as_str(), Some("1m"));
    assert!(!c.contains_key("max_connections"));
    // The file over the defaults.
    let c = print_config(&["--config", path], &[]);
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:1111"));
    assert_eq!(c["max_connections"].as_integer(), Some(50));
    assert_eq!(c["idle_timeout"].as_str(), Some("2m"));
    assert_eq!(c["log_format"].as_str(), Some("json"));
    assert_eq!(c["connect"].as_array().unwrap().len(), 1);
    // The environment over the file (the file itself named by REPLIKATIV_CONFIG).
    let env = [
        ("REPLIKATIV_CONFIG", path),
        ("REPLIKATIV_LISTEN", "127.0.0.1:2222"),
        ("REPLIKATIV_MAX_CONNECTIONS", "60"),
        ("REPLIKATIV_CONNECT", "ws://127.0.0.1:7,ws://127.0.0.1:8"),
    ];
    let c = print_config(&[], &env);
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:2222"));
    assert_eq!(c["max_connections"].as_integer(), Some(60));
    assert_eq!(c["connect"].as_array().unwrap().len(), 2);
    assert_eq!(c["idle_timeout"].as_str(), Some("2m"), "the file still sets what the environment does not");
    // Flags over the environment.
    let c = print_config(&["--listen", "127.0.0.1:3333", "--max-connections", "70"], &env);
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:3333"));
    assert_eq!(c["max_connections"].as_integer(), Some(70));
    // What --print-config prints is a config file that gives the same configuration.
    let printed = dir.path().join("printed.toml");
    let mut cmd = common::bin();
    let out = cmd.args(["serve", "--config", path, "--print-config"]).output().unwrap();
    std::fs::write(&printed, &out.stdout).unwrap();
    let again = print_config(&["--config", printed.to_str().unwrap()], &[]);
    assert_eq!(again, print_config(&["--config", path], &[]));
}

#[test]
fn a_bad_config_file_or_log_setting_is_a_usage_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    for (text, needle) in [
        ("listen = \"127.0.0.1:1\"\nlisen = \"x\"\n", "line 2"),
        ("idle_timeout = \"10\"\n", "idle_timeout"),
        ("log_level = \"loud\"\n", "log_level"),
        ("max_connections = \"many\"\n", "max_connections"),
        ("listen = \n", "line 1"),
    ] {
        std::fs::write(&file, text).unwrap();
        let (code, _, stderr) = cli(&["serve", "--config", file.to_str().unwrap(), "--store", "memory"]);
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{text:?}: {stderr}");
    }
    let (code, _, stderr) = cli(&["serve", "--config", "/nonexistent/node.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read the config file"), "{stderr}");
    let (code, _, stderr) = cli(&["serve", "--log-level", "loud"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("valid: error, warn, info, debug, trace"), "{stderr}");
    let (code, _, stderr) = cli(&["serve", "--log-format", "xml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("text, json"), "{stderr}");
    let out = common::bin()
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "replikativ=[")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUST_LOG"));
    let (code, _, stderr) = cli(&["serve", "--web", "/nonexistent-dir", "--store", "memory"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a directory"), "{stderr}");
}

#[test]
fn connection_lines_are_debug_and_json_logs_are_one_object_per_line() {
    // At the default level (info), a command line call adds no log line; text has no colors
    // on a pipe.
    let mut node = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[]);
    let url = node.url();
    ok(&["status", "--peer", &url]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.stop().code(), Some(0));
    let stderr = node.stderr();
    assert!(!stderr.contains("connection"), "no connection lines at info: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI escapes on a pipe: {stderr:?}");

    // At debug, in JSON: every line is an object; the call's connection opens and closes, with
    // the peer's address and the reason.
    let mut node = Served::start(
        &["--listen", "127.0.0.1:0", "--store", "memory", "--log-format", "json", "--log-level", "debug"],
        &[],
    );
    let url = node.url();
    ok(&["status", "--peer", &url]);
    node.wait_for(true, "connection closed");
    assert_eq!(node.stop().code(), Some(0));
    let lines = node.stderr_lines();
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        objects
            .iter()
            .find(|o| o["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} in {lines:?}"))
            .clone()
    };
    let opened = find("connection opened");
    assert_eq!(opened["level"], "DEBUG");
    assert!(opened["fields"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{opened}");
    let closed = find("connection closed");
    assert!(closed["fields"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{closed}");
    assert!(!closed["fields"]["reason"].as_str().unwrap().is_empty(), "{closed}");
}

#[test]
fn serve_answers_health_readiness_metrics_and_web_files_on_its_port() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<p>hello</p>\n").unwrap();
    let store = tempfile::tempdir().unwrap();
    let store_arg = format!("file:{}", store.path().display());
    let node = Served::start(
        &["--listen", "127.0.0.1:0", "--store", &store_arg],
        &[("REPLIKATIV_WEB", web.path().to_str().unwrap())],
    );
    let addr = node.addr();
    node.wait_for(false, "/healthz, /readyz, /metrics, files of");
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(http_get(addr, "/"), (200, "<p>hello</p>\n".to_owned()));
    let count = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .parse()
            .unwrap()
    };
    let (status, before) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let url = node.url();
    let map = ok(&["ormap", "create", "--peer", &url]);
    ok(&["ormap", "assoc", &map, "k", "[[\"set\", 1]]", "--peer", &url]);
    let (_, after) = http_get(addr, "/metrics");
    assert!(count(&after, "replikativ_addresses") >= count(&before, "replikativ_addresses") + 1.0);
    assert!(
        count(&after, "replikativ_messages_received_total")
            > count(&before, "replikativ_messages_received_total")
    );
    assert!(count(&after, "replikativ_barrier_duration_seconds_count") > 0.0);
}

#[test]
fn a_client_peer_replicates_what_it_is_told_to_subscribe_to() {
    let server = Served::start(&["--listen", "127.0.0.1:0", "--store", "memory"], &[]);
    let server_url = server.url();
    let first = ok(&["ormap", "create", "--peer", &server_url, "--user", "mail:alice@example.org"]);
    let second = ok(&["ormap", "create", "--peer", &server_url, "--user", "mail:alice@example.org"]);
    ok(&["ormap", "assoc", &first, "a", "[[\"set\", 1]]", "--peer", &server_url]);
    ok(&["ormap", "assoc", &second, "b", "[[\"set\", 2]]", "--peer", &server_url]);

    // serve --client --subscribe: replicates the first map from the start.
    let client = Served::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--client",
            "--connect",
            &server_url,
            "--subscribe",
            &first,
        ],
        &[],
    );
    client.wait_for(false, &format!("subscribed to {first}"));
    let client_url = client.url();
    let eventually = |address: &str, key: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, stdout, _) = cli(&["ormap", "get", address, key, "--peer", &client_url]);
            if code == Some(0) && stdout.contains("set") {
                return;
            }
            assert!(Instant::now() < deadline, "{address} {key} never reached the client: {stdout}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    eventually(&first, "a");
    // The second map is not replicated until the client is told to subscribe.
    let (code, _, _) = cli(&["ormap", "get", &second, "b", "--peer", &client_url]);
    assert_ne!(code, Some(0), "not subscribed yet");
    let said = ok(&["subscribe", &second, "--peer", &client_url]);
    assert_eq!(said, format!("subscribed to {second}"));
    eventually(&second, "b");
    let json = ok(&["subscribe", &second, "--peer", &client_url, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["subscribed"][0], second);
    // A bad address is a usage error.
    let (code, _, stderr) = cli(&["subscribe", "not-an-address", "--peer", &client_url]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) =
        cli(&["serve", "--store", "memory", "--listen", "127.0.0.1:0", "--subscribe", "nope"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--subscribe nope"), "{stderr}");
}
