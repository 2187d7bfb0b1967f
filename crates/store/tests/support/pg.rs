//! Where the PostgreSQL tests find their server: `REPLIKATIV_PG_URL` (`postgres://USER@HOST:PORT/DB`,
//! without a namespace). When it is unset the tests print a reason and return, unless `CI=true` or
//! `REPLIKATIV_REQUIRE_PG=1`, where a missing server fails them.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The server's base URL, or `None` (after printing why) when the PostgreSQL tests are skipped.
pub fn base_url() -> Option<String> {
    match std::env::var("REPLIKATIV_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            let required = std::env::var("REPLIKATIV_REQUIRE_PG").is_ok_and(|v| v == "1");
            assert!(
                !ci && !required,
                "REPLIKATIV_PG_URL is not set, but CI=true or REPLIKATIV_REQUIRE_PG=1: the PostgreSQL tests must run (.ci/run starts a server)"
            );
            eprintln!("skipped: REPLIKATIV_PG_URL not set");
            None
        }
    }
}

/// A namespace no other test (of this or an earlier run) uses.
pub fn unique_ns(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{tag}-{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The store URL of namespace `ns` on the server at `base`.
pub fn url(base: &str, ns: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}namespace={ns}")
}

/// A PostgreSQL server of its own (for tests that stop and restart it), in a temporary directory on a free
/// 127.0.0.1 port. The binaries come from `REPLIKATIV_PG_BIN` (default `/usr/lib/postgresql/15/bin`);
/// run as root, the server runs as the `postgres` user (initdb refuses root). Stopped on drop.
pub struct PrivateServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: std::path::PathBuf,
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PrivateServer {
    fn pg(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    /// Creates and starts the server.
    pub fn start() -> PrivateServer {
        let bin = std::path::PathBuf::from(
            std::env::var("REPLIKATIV_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the server directory to postgres");
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let server = PrivateServer { dir, port, bin };
        let data = server.data();
        let out = server.pg("initdb", &["-D", &data, "-A", "trust", "-U", "replikativ", "--no-sync"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().expect("utf8").to_string()
    }

    /// Starts the (stopped) server.
    pub fn start_again(&self) {
        let opts = format!("-c listen_addresses=127.0.0.1 -p {} -k {}", self.port, self.dir.path().display());
        let log = self.dir.path().join("log");
        let out = self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-l", log.to_str().expect("utf8"), "-w", "-o", &opts, "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server at once, as a crash would (`-m immediate`: no checkpoint, clients cut off).
    pub fn stop_immediate(&self) {
        let out = self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Base URL of the server.
    pub fn url(&self) -> String {
        format!("postgres://replikativ@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}
