//! Helpers shared by the command line's tests: running the binary, bounded.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound of every wait for the binary.
pub const WAIT: Duration = Duration::from_secs(20);

/// The binary, without the user or key from the environment, and with authentication off (the
/// tests of authentication turn it on: `tests/auth.rs`).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_replikativ"));
    c.env_remove("REPLIKATIV_USER").env_remove("REPLIKATIV_KEY").env("REPLIKATIV_AUTH", "off");
    c
}

/// Runs the binary to its end (bounded by [`WAIT`]).
pub fn run(args: &[&str]) -> Output {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_exit(&mut child, args);
    child.wait_with_output().unwrap()
}

/// Runs the binary, which must succeed; returns its stdout, trimmed.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "replikativ {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits (bounded) until `child` exits.
pub fn wait_exit(child: &mut Child, what: &[&str]) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "replikativ {what:?} did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a `serve`'s stdout until its "listening on ws://..." line; returns the URL.
pub fn listening_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("serve prints its address")
}

/// A running `replikativ serve` whose output is collected line by line; stopped with SIGINT
/// (then killed, bounded) when dropped.
pub struct Served {
    pub child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Served {
    /// `replikativ serve ARGS` with these environment variables (and no RUST_LOG).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut cmd = bin();
        cmd.arg("serve").args(args).env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary runs");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Served { child, stdout, stderr }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until stdout or stderr, as chosen, has a line containing `text`.
    pub fn wait_for(&self, on_stderr: bool, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = if on_stderr { &self.stderr } else { &self.stdout };
            if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {text:?}; stdout: {}; stderr: {}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL from the "listening on ws://..." line.
    pub fn url(&self) -> String {
        let line = self.wait_for(false, "listening on ");
        line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
    }

    /// HOST:PORT of the listen address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url().trim_start_matches("ws://").parse().unwrap()
    }

    pub fn signal(&self, name: &str) {
        let kill = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(kill.expect("kill runs").success());
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        wait_exit(&mut self.child, &["serve"])
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + WAIT;
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One plain HTTP GET (bounded): the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connects");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).expect("the reply, then the server closes");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

/// Runs a command of the binary to its end (bounded); exit code, stdout (trimmed), stderr.
pub fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
