//! A peer goes away while its peers keep writing, comes back from its store and catches up;
//! nothing acknowledged is lost. Once by a graceful shutdown, once by SIGKILL of a child process.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, bounded, eventually, link, spawn_in, spawn_peer};
use replikativ::crdt::{Address, Transaction, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shut_down_peer_restarts_from_its_store_and_catches_up() {
    restart_and_catch_up(Backend::File).await;
}

/// The same on PostgreSQL namespaces: shutting down releases the lease, the restarted peer takes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shut_down_peer_restarts_from_its_postgres_namespace_and_catches_up() {
    if common::postgres_available() {
        restart_and_catch_up(Backend::Postgres).await;
    }
}

async fn restart_and_catch_up(backend: Backend) {
    let a = spawn_peer("a", backend).await;
    let b = spawn_peer("b", backend).await;
    link(&b, &a).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    let log = bounded("create", a.stage.create_cdvcs(None)).await.unwrap();
    bounded("subscribe", b.stage.subscribe([map.clone(), log.clone()])).await.unwrap();
    eventually("b has the map", || async { b.stage.ormap(&map).await.is_ok() }).await;
    // B writes (acknowledged = durable at B) and A sees it.
    for i in 0..20 {
        bounded("assoc", b.stage.assoc(&map, Value::from(format!("b{i}")), vec![Transaction::new("set", i)]))
            .await
            .unwrap();
    }
    eventually("a has b's writes", || async {
        a.stage.ormap(&map).await.map(|m| m.len() == 20).unwrap_or(false)
    })
    .await;

    // B goes down; A keeps writing.
    let b_dir = b.dir.clone();
    bounded("shutdown", b.stage.shutdown()).await;
    drop(b);
    for i in 0..20 {
        bounded("assoc", a.stage.assoc(&map, Value::from(format!("a{i}")), vec![Transaction::new("set", i)]))
            .await
            .unwrap();
        bounded("transact", a.stage.transact(&log, vec![Transaction::new("add", i)])).await.unwrap();
    }

    // B comes back from its store: its own acknowledged writes are there at once, and it catches up.
    let b = spawn_in("b", backend, b_dir).await;
    let m = bounded("read", b.stage.ormap(&map)).await.unwrap();
    assert!(m.len() >= 20, "b's acknowledged writes survived the restart");
    link(&b, &a).await;
    eventually("b caught up", || async {
        b.stage.ormap(&map).await.map(|m| m.len() == 40).unwrap_or(false)
            && b.stage.cdvcs(&log).await.map(|c| c.graph().len() == 21).unwrap_or(false)
    })
    .await;
    assert_eq!(b.stage.log(&log).await.unwrap(), a.stage.log(&log).await.unwrap());
    bounded("shutdown", a.stage.shutdown()).await;
    bounded("shutdown", b.stage.shutdown()).await;
}

/// The child: a peer on the store in `REPLIKATIV_CHILD_DIR`, connected to `REPLIKATIV_CHILD_PEER`,
/// writing assocs and printing each acknowledged key, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_writer() {
    let (Ok(dir), Ok(url), Ok(address)) = (
        std::env::var("REPLIKATIV_CHILD_DIR"),
        std::env::var("REPLIKATIV_CHILD_PEER"),
        std::env::var("REPLIKATIV_CHILD_ADDRESS"),
    ) else {
        return; // Run as a normal test: nothing to do (the parent test runs this as a child).
    };
    let backend = match std::env::var("REPLIKATIV_CHILD_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::File,
    };
    let store = common::open_store(backend, std::path::Path::new(&dir));
    let stage = replikativ::peer::stage::Stage::builder(store)
        .user("mail:child@example.org")
        .config(common::config("child"))
        .spawn()
        .await
        .unwrap();
    let map: Address = address.parse().unwrap();
    stage.subscribe([map.clone()]).await.unwrap();
    stage.node().connect(&url).await.unwrap();
    eventually("child has the map", || async { stage.ormap(&map).await.is_ok() }).await;
    for i in 0.. {
        let key = format!("child{i}");
        stage.assoc(&map, Value::from(key.clone()), vec![Transaction::new("set", i)]).await.unwrap();
        println!("ACK {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_restarts_and_loses_nothing_acknowledged() {
    killed_peer_restarts(Backend::File).await;
}

/// The same with the killed peer on a PostgreSQL namespace: its lease dies with it, and the restarted
/// peer finds every acknowledged write in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_postgres_peer_restarts_and_loses_nothing_acknowledged() {
    if common::postgres_available() {
        killed_peer_restarts(Backend::Postgres).await;
    }
}

async fn killed_peer_restarts(backend: Backend) {
    let a = spawn_peer("a", backend).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    let child_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env("REPLIKATIV_CHILD_DIR", child_dir.path())
        .env("REPLIKATIV_CHILD_PEER", a.url())
        .env("REPLIKATIV_CHILD_ADDRESS", map.to_string())
        .env("REPLIKATIV_CHILD_BACKEND", if backend == Backend::Postgres { "postgres" } else { "file" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it write for a while, then SIGKILL it.
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("ACK ").map(str::to_owned))
            .collect::<Vec<_>>()
    });
    eventually("the child writes", || async {
        a.stage.ormap(&map).await.map(|m| m.len() >= 30).unwrap_or(false)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let acknowledged = reader.join().unwrap();
    assert!(acknowledged.len() >= 10, "the child acknowledged writes before it died: {}", acknowledged.len());

    // Restart the killed peer from its store (in this process): every acknowledged write is there.
    let child = spawn_in("child", backend, child_dir).await;
    let m = bounded("read", child.stage.ormap(&map)).await.unwrap();
    for key in &acknowledged {
        assert!(!m.get(&Value::from(key.as_str())).is_empty(), "acknowledged {key} survived SIGKILL");
    }
    // A kept writing meanwhile; the restarted peer catches up and both converge.
    for i in 0..10 {
        bounded("assoc", a.stage.assoc(&map, Value::from(format!("a{i}")), vec![Transaction::new("set", i)]))
            .await
            .unwrap();
    }
    link(&child, &a).await;
    eventually("converged", || async {
        let (x, y) = (a.stage.ormap(&map).await.ok(), child.stage.ormap(&map).await.ok());
        x.is_some() && x == y
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    bounded("shutdown", a.stage.shutdown()).await;
    bounded("shutdown", child.stage.shutdown()).await;
}
