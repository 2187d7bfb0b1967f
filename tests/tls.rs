//! TLS (issue 16): nodes replicating over `wss://` on 127.0.0.1 with certificates made here by
//! rcgen, and HTTPS on the same port; clients that cannot verify the certificate, plain clients on a TLS port and TLS clients
//! on a plain port fail with a clear reason and leave the node serving; a garbage ClientHello, a
//! silent client and an endless ClientHello are refused and counted.

mod common;

use std::time::Duration;

use common::certs::{self, Certs};
use common::{Backend, bounded, config, eventually, open_store};
use replikativ::crdt::{Address, Transaction, Value};
use replikativ::peer::client::{ClientError, RemoteClient};
use replikativ::peer::node::tls::{ChannelBinding, ClientTls, ServerTls};
use replikativ::peer::node::{NodeConfig, WsConfig};
use replikativ::peer::proto::{Command, Refusal, Reply};
use replikativ::peer::stage::Stage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A stage on a file store with `config`, listening with TLS (if given) on 127.0.0.1.
struct Tls {
    stage: Stage,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tls {
    fn url(&self) -> String {
        format!("wss://localhost:{}", self.addr.port())
    }

    async fn refused(&self, why: Refusal) -> u64 {
        bounded("status", self.stage.node().status()).await.expect("status").refusals.get(why)
    }
}

async fn start(name: &str, config: NodeConfig, tls: Option<&Certs>) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(Backend::File, dir.path());
    let stage = bounded(
        "spawn",
        Stage::builder(store).user(format!("mail:{name}@example.org")).config(config).spawn(),
    )
    .await
    .expect("stage starts");
    let addr = match tls {
        Some(c) => {
            let server =
                ServerTls::from_pem(c.cert.as_bytes(), c.key.as_bytes()).expect("the test certificate");
            bounded("listen", stage.node().listen_tls("127.0.0.1:0", server)).await.expect("listens")
        }
        None => bounded("listen", stage.node().listen("127.0.0.1:0")).await.expect("listens"),
    };
    Tls { stage, addr, _dir: dir }
}

fn trusting(name: &str, certs: &Certs) -> NodeConfig {
    NodeConfig { client_tls: Some(ClientTls::with_ca_pem(certs.ca.as_bytes()).unwrap()), ..config(name) }
}

async fn has(stage: &Stage, map: &Address, key: &str) -> bool {
    stage.get(map, &Value::from(key)).await.is_ok_and(|v| !v.is_empty())
}

/// The binding of each remote connection of a node.
async fn bindings(node: &Tls) -> Vec<ChannelBinding> {
    let status = bounded("status", node.stage.node().status()).await.unwrap();
    status
        .connections
        .iter()
        .filter(|(_, remote, _)| matches!(remote, replikativ::peer::middleware::Remote::Peer(_)))
        .filter_map(|(conn, _, _)| node.stage.node().channel_binding(*conn))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_replicate_over_wss_and_both_ends_share_the_tls_exporter() {
    let certs = certs::make();
    // Remote commands on, for the remote client below.
    let a = start("a", NodeConfig { remote_commands: true, ..config("a") }, Some(&certs)).await;
    let b = start("b", trusting("b", &certs), None).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", b.stage.node().connect(&a.url())).await.expect("B verifies A's certificate");
    bounded("assoc", a.stage.assoc(&map, "milk".into(), vec![Transaction::new("add", 2)])).await.unwrap();
    eventually("B has A's write over wss", || has(&b.stage, &map, "milk")).await;
    // And the other way: B's write reaches A over the same TLS link.
    let b_map = bounded("create", b.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", a.stage.subscribe([b_map.clone()])).await.unwrap();
    bounded("assoc", b.stage.assoc(&b_map, "eggs".into(), vec![Transaction::new("add", 6)])).await.unwrap();
    eventually("A has B's write over wss", || has(&a.stage, &b_map, "eggs")).await;

    // Both ends of the link hold the same exporter, and it is not the plain one.
    let (on_a, on_b) = (bindings(&a).await, bindings(&b).await);
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "one link");
    assert!(on_a[0].is_tls() && on_b[0].is_tls());
    assert_eq!(on_a[0].exporter(), on_b[0].exporter(), "the same TLS session on both ends");
    assert_ne!(on_a[0], ChannelBinding::PLAIN);

    // A remote client over wss: its commands run, and its exporter is the one the node has for
    // its connection (and differs from the other session's).
    let client_tls = ClientTls::with_ca_pem(certs.ca.as_bytes()).unwrap();
    let mut client =
        bounded("client", RemoteClient::connect_with(&a.url(), "cli", &client_tls)).await.unwrap();
    let reply = bounded("status", client.call(Command::Status)).await.unwrap().unwrap();
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    let binding = client.channel_binding();
    assert!(binding.is_tls());
    assert_ne!(binding.exporter(), on_a[0].exporter(), "every session has its own exporter");
    eventually("the node knows the client's exporter", || {
        let a = &a;
        async move { bindings(a).await.iter().any(|b| b == &binding) }
    })
    .await;
    bounded("close", client.close()).await;

    // A plain link has the plain binding (zeros).
    let plain = start("c", config("c"), None).await;
    bounded("connect", a.stage.node().connect(&format!("ws://{}", plain.addr))).await.unwrap();
    eventually("the plain link is up", || {
        let plain = &plain;
        async move { bindings(plain).await == vec![ChannelBinding::PLAIN] }
    })
    .await;
    assert_eq!(ChannelBinding::PLAIN.exporter(), &[0u8; 32]);

    for n in [&plain, &b, &a] {
        bounded("shutdown", n.stage.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_verify_the_certificate_gets_a_clear_error() {
    let certs = certs::make();
    let a = start("a", config("a"), Some(&certs)).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();

    // Only the public roots: the test CA is unknown.
    let stranger = start("s", config("s"), None).await;
    let e = bounded("connect", stranger.stage.node().connect(&a.url())).await.unwrap_err().to_string();
    assert!(
        e.contains("the server's certificate is not trusted: it is not signed by a certificate authority this client trusts"),
        "{e}"
    );
    assert!(e.contains("--ca FILE"), "the fix is named: {e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = bounded("client", RemoteClient::connect(&a.url(), "cli")).await.unwrap_err();
    let ClientError::Connect { reason, .. } = &e else { panic!("a connect error: {e}") };
    assert!(reason.contains("not signed by a certificate authority this client trusts"), "{reason}");

    // Trusting another CA is no better.
    let other = certs::make();
    let tls = ClientTls::only_ca_pem(other.ca.as_bytes()).unwrap();
    let e =
        bounded("client", RemoteClient::connect_with(&a.url(), "cli", &tls)).await.unwrap_err().to_string();
    assert!(e.contains("not signed by a certificate authority this client trusts"), "{e}");

    // The right CA, but a certificate for another name.
    let named = certs::make_for(&["replikativ.invalid"]);
    let n = start("n", config("n"), Some(&named)).await;
    let tls_n = ClientTls::with_ca_pem(named.ca.as_bytes()).unwrap();
    let e2 =
        bounded("client", RemoteClient::connect_with(&n.url(), "cli", &tls_n)).await.unwrap_err().to_string();
    assert!(
        e2.contains("the server's certificate is not trusted: it is not valid for this host name"),
        "{e2}"
    );

    // The failed handshakes were counted by the server, and it still serves a client that trusts it.
    eventually("A counted the refused handshakes", || {
        let a = &a;
        async move { a.refused(Refusal::HandshakeFailed).await >= 3 }
    })
    .await;
    let b = start("b", trusting("b", &certs), None).await;
    bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", b.stage.node().connect(&a.url())).await.unwrap();
    bounded("assoc", a.stage.assoc(&map, "k".into(), vec![Transaction::new("set", 1)])).await.unwrap();
    eventually("B has A's write", || has(&b.stage, &map, "k")).await;
    for node in [&b, &n, &stranger, &a] {
        bounded("shutdown", node.stage.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_on_a_tls_port_and_tls_clients_on_a_plain_port_fail_cleanly() {
    let certs = certs::make();
    let secure = start("secure", config("secure"), Some(&certs)).await;
    let plain = start("plain", config("plain"), None).await;
    let client = start("client", trusting("client", &certs), None).await;

    // ws:// against the TLS port: the node answers 400 saying to use TLS.
    let e = bounded("connect", client.stage.node().connect(&format!("ws://{}", secure.addr)))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the server answered HTTP 400 Bad Request: this port speaks TLS: use wss://"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // wss:// against the plain port: the client says the server does not speak TLS.
    let e =
        bounded("connect", client.stage.node().connect(&format!("wss://localhost:{}", plain.addr.port())))
            .await
            .unwrap_err()
            .to_string();
    assert!(e.contains("the server does not speak TLS (is it a plain ws:// port?)"), "{e}");
    // Plain HTTP to the TLS port (a health check without https): the same 400.
    let mut tcp = bounded("tcp", tokio::net::TcpStream::connect(secure.addr)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    bounded("answer", tcp.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.ends_with("this port speaks TLS: use wss:// (or https://)\n"), "{answer}");

    // HTTPS on the TLS port: /healthz and /metrics answer over TLS.
    let client_tls = ClientTls::with_ca_pem(certs.ca.as_bytes()).unwrap();
    for (path, expect) in [("/healthz", "ok\n"), ("/metrics", "replikativ_connections")] {
        let (mut stream, binding) =
            bounded("https", replikativ::peer::node::tls::connect_stream(&secure.url(), &client_tls))
                .await
                .unwrap();
        assert!(binding.is_tls());
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = bounded("https answer", stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {answer}");
        assert!(answer.contains(expect), "{path}: {answer}");
    }

    // Both nodes counted what they refused and still serve: the right scheme works on each.
    assert!(secure.refused(Refusal::HandshakeFailed).await >= 2, "two plain requests on the TLS port");
    assert!(plain.refused(Refusal::HandshakeFailed).await >= 1, "a ClientHello is not an HTTP request");
    let map = bounded("create", secure.stage.create_ormap(None)).await.unwrap();
    bounded("subscribe", client.stage.subscribe([map.clone()])).await.unwrap();
    bounded("subscribe", plain.stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", client.stage.node().connect(&secure.url())).await.unwrap();
    bounded("connect", plain.stage.node().connect(&format!("ws://{}", client.addr))).await.unwrap();
    bounded("assoc", secure.stage.assoc(&map, "k".into(), vec![Transaction::new("set", 1)])).await.unwrap();
    eventually("the write went over wss, then ws", || has(&plain.stage, &map, "k")).await;
    for node in [&plain, &client, &secure] {
        bounded("shutdown", node.stage.shutdown()).await;
    }
}

/// A TLS record header (handshake, TLS 1.0 record version) of `len` bytes.
fn record(len: u16) -> Vec<u8> {
    let mut r = vec![0x16, 0x03, 0x01];
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// Reads until the server closes (bounded); what it sent.
async fn until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = bounded("the server closes", tcp.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silent_and_endless_client_hellos_are_refused_and_counted() {
    let certs = certs::make();
    let mut cfg = config("a");
    cfg.ws = WsConfig { handshake_timeout: Duration::from_millis(500), ..cfg.ws };
    let a = start("a", cfg, Some(&certs)).await;
    let map = bounded("create", a.stage.create_ormap(None)).await.unwrap();

    // A handshake record whose body is not a ClientHello.
    let mut tcp = bounded("tcp", tokio::net::TcpStream::connect(a.addr)).await.unwrap();
    let mut garbage = record(64);
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    tcp.write_all(&garbage).await.unwrap();
    let answer = until_closed(&mut tcp).await;
    // At most a TLS alert (content type 21) before the close.
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    eventually("the garbage is counted", || {
        let a = &a;
        async move { a.refused(Refusal::HandshakeFailed).await == 1 }
    })
    .await;

    // A client that sends the first byte of a handshake and nothing more: the handshake timeout.
    let mut tcp = bounded("tcp", tokio::net::TcpStream::connect(a.addr)).await.unwrap();
    tcp.write_all(&[0x16]).await.unwrap();
    until_closed(&mut tcp).await;
    assert_eq!(a.refused(Refusal::HandshakeTimeout).await, 1);

    // A ClientHello that claims 60,000 bytes and keeps coming: the handshake byte budget (16 KiB).
    let mut tcp = bounded("tcp", tokio::net::TcpStream::connect(a.addr)).await.unwrap();
    let mut hello = record(16384);
    hello.extend([0x01, 0x00, 0xea, 0x60]); // ClientHello, 60,000 bytes
    hello.extend(std::iter::repeat_n(0u8, 16380));
    for chunk in 0..3 {
        if chunk > 0 {
            hello = record(16384);
            hello.extend(std::iter::repeat_n(0u8, 16384));
        }
        if tcp.write_all(&hello).await.is_err() {
            break; // the server closed already
        }
    }
    until_closed(&mut tcp).await;
    eventually("the endless hello is counted", || {
        let a = &a;
        async move { a.refused(Refusal::HandshakeTooLarge).await == 1 }
    })
    .await;

    // The node still serves over wss, and nothing else was counted as a TLS refusal.
    let b = start("b", trusting("b", &certs), None).await;
    bounded("subscribe", b.stage.subscribe([map.clone()])).await.unwrap();
    bounded("connect", b.stage.node().connect(&a.url())).await.unwrap();
    bounded("assoc", a.stage.assoc(&map, "k".into(), vec![Transaction::new("set", 1)])).await.unwrap();
    eventually("B has A's write", || has(&b.stage, &map, "k")).await;
    assert_eq!(a.refused(Refusal::HandshakeFailed).await, 1);
    // A TCP connection that closes at once (a load balancer's check) is no refusal.
    drop(bounded("tcp", tokio::net::TcpStream::connect(a.addr)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.refused(Refusal::HandshakeFailed).await, 1);
    assert_eq!(a.refused(Refusal::HandshakeTimeout).await, 1);
    bounded("shutdown", b.stage.shutdown()).await;
    bounded("shutdown", a.stage.shutdown()).await;
}
