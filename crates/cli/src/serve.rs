//! `replikativ serve`: its flags and limits, signals, and running the node.

use super::*;

#[derive(Debug, Args)]
#[command(after_long_help = SERVE_EXAMPLES)]
pub(crate) struct ServeArgs {
    /// Address to listen on (websocket peers and HTTP: /healthz, /readyz, /metrics, --web files)
    #[arg(long, env = "REPLIKATIV_LISTEN", value_name = "HOST:PORT", default_value_t = format!("127.0.0.1:{DEFAULT_PORT}"))]
    pub(crate) listen: String,
    /// Where to keep data: file:DIR (crash-safe embedded store), sled:DIR,
    /// postgres://USER@HOST:PORT/DB?namespace=NAME (password from PGPASSWORD or &password_file=PATH),
    /// or memory
    #[arg(long, env = "REPLIKATIV_STORE", value_name = "STORE", default_value = DEFAULT_STORE)]
    pub(crate) store: String,
    /// A peer to connect to (ws://HOST:PORT, or wss://HOST:PORT over TLS, verified with the public
    /// roots and --ca), repeatable (in the environment: comma-separated). It need not be up: the
    /// peer keeps trying with backoff, and reconnects whenever the connection drops
    #[arg(long = "connect", env = "REPLIKATIV_CONNECT", value_name = "URL", value_delimiter = ',')]
    pub(crate) connect: Vec<String>,
    /// An address (USER/UUID) to replicate, repeatable (in the environment: comma-separated): the
    /// peer subscribes to it, so its data arrives from the connected peers (what a --client peer
    /// needs to replicate anything)
    #[arg(long, env = "REPLIKATIV_SUBSCRIBE", value_name = "ADDRESS", value_delimiter = ',')]
    pub(crate) subscribe: Vec<String>,
    /// Behave as a client: only forward the subscriptions that overlap with this peer's own,
    /// instead of taking on every subscription of its peers (a server)
    #[arg(long, env = "REPLIKATIV_CLIENT")]
    pub(crate) client: bool,
    /// The peer id, used when the store has none yet [default: a random one]
    #[arg(long, env = "REPLIKATIV_PEER_ID", value_name = "ID")]
    pub(crate) peer_id: Option<String>,
    /// Serve the files of DIR over HTTP on the listen port (e.g. a browser app): GET /PATH
    /// answers DIR/PATH, GET / answers DIR/index.html
    #[arg(long, env = "REPLIKATIV_WEB", value_name = "DIR")]
    pub(crate) web: Option<PathBuf>,
    /// Speak TLS on the listen port (wss:// and https://) with this certificate chain, PEM (the
    /// server's certificate first, then intermediates); needs --tls-key
    #[arg(long, env = "REPLIKATIV_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "REPLIKATIV_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Listen without TLS on an address that is not loopback (refused otherwise): only on a
    /// network where anyone who can read the traffic may
    #[arg(long, env = "REPLIKATIV_INSECURE_NO_TLS")]
    pub(crate) insecure_no_tls: bool,
    /// A PEM file of certificate authorities to trust for wss:// --connect peers, besides the
    /// public ones (e.g. a deployment's own CA)
    #[arg(long, env = "REPLIKATIV_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace; RUST_LOG (a tracing filter) overrides it
    #[arg(long, env = "REPLIKATIV_LOG_LEVEL", value_name = "LEVEL", default_value = "info", value_parser = clap::builder::PossibleValuesParser::new(config::LOG_LEVELS))]
    pub(crate) log_level: String,
    /// Log format on stderr: text (colored only on a terminal, and not with NO_COLOR set) or
    /// json (one object per line)
    #[arg(long, env = "REPLIKATIV_LOG_FORMAT", value_name = "FORMAT", default_value = "text", value_parser = clap::builder::PossibleValuesParser::new(config::LOG_FORMATS))]
    pub(crate) log_format: String,
    /// Read settings from a TOML file (keys: the flag names with _ for -, e.g. listen = "...",
    /// max_connections = 100, connect = ["ws://..."]); flags and environment variables override it
    #[arg(long, env = "REPLIKATIV_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration (flags > environment > --config file > defaults) as
    /// TOML, usable as a --config file, and exit
    #[arg(long)]
    pub(crate) print_config: bool,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    #[command(flatten)]
    pub(crate) limits: Limits,
}

/// Who may connect, and read and write what (see `replikativ key --help`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Authentication")]
pub(crate) struct AuthArgs {
    /// on: every connection opens with a signed handshake; an address USER/UUID is written only
    /// by connections proving USER's key (a key:... user is its own key; a named user needs a
    /// --trust binding) and read only by them, --public ones by every connection. off: anyone
    /// who can connect reads everything and writes as any user (allowed only on a loopback
    /// --listen address; logged as a warning)
    #[arg(long, env = "REPLIKATIV_AUTH", value_name = "on|off", default_value = "on", value_parser = clap::builder::PossibleValuesParser::new(["on", "off"]))]
    pub(crate) auth: String,
    /// This node's key file (its identity to other nodes; `replikativ key gen FILE`)
    /// [default: a new key every start]
    #[arg(long, env = "REPLIKATIV_NODE_KEY", value_name = "FILE")]
    pub(crate) node_key: Option<PathBuf>,
    /// The user key this node proves when it dials --connect peers (so it may replicate that
    /// user's addresses)
    #[arg(long, env = "REPLIKATIV_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// A file binding named users to keys, one `NAME KEY` per line (e.g.
    /// `mail:alice@example.org key:...`)
    #[arg(long, env = "REPLIKATIV_TRUST", value_name = "FILE")]
    pub(crate) trust: Option<PathBuf>,
    /// A key (key:...) trusted to read and write everything and to run every command: another
    /// node of this operator (a mirror) or the operator's own user key; repeatable
    #[arg(long, env = "REPLIKATIV_TRUSTED", value_name = "KEY", value_delimiter = ',')]
    pub(crate) trusted: Vec<String>,
    /// An address (USER/UUID) every connection may read; repeatable
    #[arg(long, env = "REPLIKATIV_PUBLIC", value_name = "ADDRESS", value_delimiter = ',')]
    pub(crate) public: Vec<String>,
    /// A user all of whose addresses every connection may read; repeatable
    #[arg(long, env = "REPLIKATIV_PUBLIC_USER", value_name = "USER", value_delimiter = ',')]
    pub(crate) public_user: Vec<String>,
}

impl AuthArgs {
    /// The node's authentication (`None`: off), checked against the listen address.
    pub(crate) fn node_auth(&self, listen: &str) -> Result<Option<replikativ_peer::node::NodeAuth>, Failure> {
        use replikativ_peer::auth::{AuthPolicy, PublicKey, SecretKey};
        if self.auth == "off" {
            if !is_loopback(listen) {
                return Err(Failure(
                    EXIT_USAGE,
                    format!(
                        "refusing --auth off on {listen}: without authentication anyone who can connect reads and \
                         writes everything; listen on 127.0.0.1 or turn authentication on"
                    ),
                ));
            }
            return Ok(None);
        }
        let usage = |e: String| Failure(EXIT_USAGE, e);
        let node_key = match &self.node_key {
            Some(path) => SecretKey::read_file(path).map_err(|e| usage(e.to_string()))?,
            None => SecretKey::generate().map_err(|e| Failure(1, e.to_string()))?,
        };
        let user =
            self.key.as_deref().map(SecretKey::read_file).transpose().map_err(|e| usage(e.to_string()))?;
        let mut policy = AuthPolicy::default();
        if let Some(path) = &self.trust {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read the trust file {}: {e}", path.display())))?;
            policy.names = AuthPolicy::parse_names(&text)
                .map_err(|e| usage(format!("the trust file {}: {e}", path.display())))?;
        }
        for key in &self.trusted {
            let key: PublicKey =
                key.parse().map_err(|e: replikativ_peer::auth::KeyError| usage(format!("--trusted: {e}")))?;
            policy.trusted.insert(key);
        }
        for a in &self.public {
            policy.public.insert(parse_address(a).map_err(|Failure(_, e)| usage(format!("--public: {e}")))?);
        }
        for u in &self.public_user {
            Address::validate_user(u).map_err(|e| usage(format!("--public-user: {e}")))?;
            policy.public_users.insert(u.clone());
        }
        Ok(Some(replikativ_peer::node::NodeAuth {
            node_key,
            user,
            policy: Arc::new(policy),
            caps: Vec::new(),
        }))
    }
}

/// Whether a listen address (HOST:PORT) is on the loopback interface.
fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

const SERVE_EXAMPLES: &str = "\
Examples:
  replikativ serve                                   # 127.0.0.1:31744, data in ./replikativ-data
  replikativ serve --listen 127.0.0.1:31745 --store file:./node-b --connect ws://127.0.0.1:31744
  replikativ serve --client --connect ws://server:31744 --subscribe mail:alice@example.org/UUID
  REPLIKATIV_LISTEN=127.0.0.1:8080 replikativ serve --web ./public --log-format json
  replikativ serve --config node.toml --print-config  # what would run, as TOML
  replikativ serve --listen 0.0.0.0:31744 --tls-cert cert.pem --tls-key key.pem   # wss://
  replikativ serve --connect wss://hub.example.org:31744 --ca our-ca.pem

HTTP on the listen port: GET /healthz (live), GET /readyz (store open, accepting),
GET /metrics (Prometheus text), and with --web DIR the files of DIR.

TLS: with --tls-cert and --tls-key the port speaks only TLS (wss:// peers, https:// requests; a
plain request is answered 400). The TLS handshake counts toward --handshake-timeout and
--max-handshake-bytes; failed ones are counted as refusals. A non-loopback --listen without TLS
is refused (exit 2) unless --insecure-no-tls is given.

Configuration: every flag also from its environment variable (shown with each flag) and from
the --config TOML file; flags win over the environment, the environment over the file, the
file over the defaults.

Exit codes: 0 shut down cleanly (SIGINT or SIGTERM), 1 a second signal during the shutdown,
2 bad usage (a flag, a URL, an address, the --config file, a TLS certificate or key file,
a non-loopback --listen without TLS), 4 the store cannot be opened.";

/// What one connection, or all of them, may cost the peer. What is refused is counted by reason
/// in `replikativ status`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits (refusals are counted by reason in `status`)")]
pub(crate) struct Limits {
    /// Incoming connections open at once, handshakes included; more are refused with an HTTP 503
    /// [default: the descriptor limit less 64, at most 10000]
    #[arg(long, env = "REPLIKATIV_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Time a client has to finish the websocket handshake (e.g. 10s, 500ms)
    #[arg(long, env = "REPLIKATIV_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) handshake_timeout: std::time::Duration,
    /// Bytes a handshake request may have
    #[arg(long, env = "REPLIKATIV_MAX_HANDSHAKE_BYTES", value_name = "BYTES", default_value_t = 16 << 10)]
    pub(crate) max_handshake_bytes: usize,
    /// A connection silent this long is closed
    #[arg(long, env = "REPLIKATIV_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) idle_timeout: std::time::Duration,
    /// Largest websocket message accepted, in bytes
    #[arg(long, env = "REPLIKATIV_MAX_FRAME_BYTES", value_name = "BYTES", default_value_t = 16 << 20)]
    pub(crate) max_frame_bytes: usize,
    /// Addresses the peer subscribes to at most; what its connections subscribe to beyond that is
    /// not taken on
    #[arg(long, env = "REPLIKATIV_MAX_SUBSCRIPTIONS", value_name = "N", default_value_t = 100_000)]
    pub(crate) max_subscriptions: usize,
    /// Addresses one subscribe message may name; more closes the connection
    #[arg(
        long,
        env = "REPLIKATIV_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub(crate) max_subscriptions_per_connection: usize,
    /// How far ahead of this peer's clock a received LWW write may be stamped; later ones are
    /// refused
    #[arg(long, env = "REPLIKATIV_MAX_CLOCK_SKEW", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub(crate) max_clock_skew: std::time::Duration,
    /// Publications waiting on one connection (for values being fetched); more closes it
    #[arg(long, env = "REPLIKATIV_MAX_QUEUED_PUBLICATIONS", value_name = "N", default_value_t = 4096)]
    pub(crate) max_queued_publications: usize,
    /// Bytes of values those waiting publications may hold; more closes the connection
    #[arg(long, env = "REPLIKATIV_MAX_QUEUED_BYTES", value_name = "BYTES", default_value_t = 64 << 20)]
    pub(crate) max_queued_bytes: usize,
    /// Bytes of messages queued to one connection that does not read; more are dropped (and the
    /// connection caught up once it reads again)
    #[arg(long, env = "REPLIKATIV_OUTBOX_BYTES", value_name = "BYTES", default_value_t = 16 << 20)]
    pub(crate) outbox_bytes: usize,
    /// Bytes of messages queued to all connections together
    #[arg(long, env = "REPLIKATIV_OUTBOX_TOTAL_BYTES", value_name = "BYTES", default_value_t = 1 << 30)]
    pub(crate) outbox_total_bytes: usize,
    /// Bytes one catch-up answer sends at most; the rest follows in later rounds
    #[arg(long, env = "REPLIKATIV_MAX_ANSWER_BYTES", value_name = "BYTES", default_value_t = 16 << 20)]
    pub(crate) max_answer_bytes: usize,
}

impl Limits {
    /// The node configuration these limits make (everything else default).
    pub(crate) fn apply(&self, config: &mut NodeConfig) {
        config.max_connections = self.max_connections;
        config.ws.handshake_timeout = self.handshake_timeout;
        config.ws.max_handshake_bytes = self.max_handshake_bytes;
        config.ws.idle_timeout = self.idle_timeout;
        config.ws.max_frame = self.max_frame_bytes;
        config.ws.max_message = self.max_frame_bytes;
        config.peer.max_subscriptions = self.max_subscriptions;
        config.peer.max_subscriptions_per_connection = self.max_subscriptions_per_connection;
        config.peer.max_clock_skew = self.max_clock_skew;
        config.peer.max_queued_publications = self.max_queued_publications;
        config.peer.max_queued_bytes = self.max_queued_bytes;
        config.outbox_bytes = self.outbox_bytes;
        config.outbox_total_bytes = self.outbox_total_bytes;
        config.peer.max_answer_bytes = self.max_answer_bytes;
    }
}

/// A duration: a number with a unit, `ms`, `s`, `m` or `h` (e.g. `500ms`, `10s`, `10m`).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?} has no unit: use ms, s, m or h (e.g. 10s)")),
    };
    ms.map(std::time::Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// SIGINT and SIGTERM, installed before anything starts so that neither kills the process abruptly.
pub(crate) struct Signals {
    pub(crate) interrupt: tokio::signal::unix::Signal,
    pub(crate) terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| signal(kind).map_err(|e| Failure(1, format!("cannot handle signals: {e}")));
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal; returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// `replikativ serve`: resolves the configuration, prints it or sets up the logs, and runs the
/// node until a signal.
pub(crate) fn serve_main(args: ServeArgs, matches: &clap::ArgMatches) -> Result<(), Failure> {
    let args = config::resolve(args, matches)?;
    if args.print_config {
        print!("{}", config::to_toml(&args));
        return Ok(());
    }
    // Arguments that can never work are usage errors, reported before anything starts.
    if let Some(url) = args.connect.iter().find(|u| !u.starts_with("ws://") && !u.starts_with("wss://")) {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "cannot connect to {url}: only ws://HOST:PORT and wss://HOST:PORT URLs are supported (e.g. ws://127.0.0.1:31744)"
            ),
        ));
    }
    let server_tls = tls::server_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    tls::check_listen(&args.listen, server_tls.is_some(), args.insecure_no_tls)?;
    let client_tls = tls::client_tls(args.ca.as_deref())?;
    for a in &args.subscribe {
        parse_address(a).map_err(|Failure(code, e)| Failure(code, format!("--subscribe {a}: {e}")))?;
    }
    if let Some(web) = &args.web
        && !web.is_dir()
    {
        return Err(Failure(EXIT_USAGE, format!("--web {}: not a directory", web.display())));
    }
    init_logs(&args)?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| Failure(1, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(args, server_tls, client_tls))
}

/// Logs to stderr in the chosen format; colors only on a terminal and without `NO_COLOR`.
fn init_logs(args: &ServeArgs) -> Result<(), Failure> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| Failure(EXIT_USAGE, format!("RUST_LOG={v:?} is not a log filter: {e}")))?,
        _ => EnvFilter::new(&args.log_level),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().with_ansi(false).init();
    } else {
        logs.with_ansi(ansi).init();
    }
    Ok(())
}

pub(crate) async fn serve(
    args: ServeArgs,
    server_tls: Option<replikativ_peer::node::tls::ServerTls>,
    client_tls: replikativ_peer::node::tls::ClientTls,
) -> Result<(), Failure> {
    let mut signals = Signals::install()?;
    let auth = args.auth.node_auth(&args.listen)?;
    let store = open_store(&args.store, Access::Create)?;
    let mut config = NodeConfig {
        peer_id: args
            .peer_id
            .clone()
            .unwrap_or_else(|| format!("peer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        extend: !args.client,
        remote_commands: true,
        web: args.web.clone(),
        client_tls: Some(client_tls),
        auth: auth.clone(),
        ..NodeConfig::default()
    };
    args.limits.apply(&mut config);
    match &auth {
        None => tracing::warn!(
            "authentication is off (--auth off): anyone who can connect reads every address and writes as any user"
        ),
        Some(a) => tracing::info!(node_key = %a.node_key.public(), "authentication on"),
    }
    let node = match Node::start(store.clone(), config, ActorId::from(uuid::Uuid::new_v4())) {
        Ok(node) => node,
        Err(e) => {
            let _ = store.close();
            return Err(Failure(EXIT_DATA, format!("cannot start the peer: {e}")));
        }
    };
    let started = async {
        let (addr, ws, http) = match server_tls {
            Some(tls) => (node.listen_tls(&args.listen, tls).await, "wss", "HTTPS on https"),
            None => (node.listen(&args.listen).await, "ws", "HTTP on http"),
        };
        let addr = addr.map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
        println!("replikativ peer {} listening on {ws}://{addr} (store: {})", node.peer_id(), args.store);
        let web = args.web.as_ref().map(|w| format!(", files of {}", w.display())).unwrap_or_default();
        println!("{http}://{addr}: /healthz, /readyz, /metrics{web}");
        match &auth {
            Some(a) => println!("authentication on: node key {}", a.node_key.public()),
            None => println!("authentication off: every connection reads and writes everything"),
        }
        if !args.subscribe.is_empty() {
            let addresses: Vec<Address> =
                args.subscribe.iter().map(|a| parse_address(a)).collect::<Result<_, _>>()?;
            let stage = replikativ_peer::stage::Stage::attach(node.clone(), "replikativ-serve")
                .await
                .map_err(|e| Failure(EXIT_DATA, e.to_string()))?;
            stage
                .subscribe(addresses.clone())
                .await
                .map_err(|e| Failure(EXIT_DATA, format!("cannot subscribe: {e}")))?;
            for a in &addresses {
                println!("subscribed to {a}");
            }
        }
        for url in &args.connect {
            // An unreachable peer is normal at start: the node keeps trying in the background (each
            // failed attempt is a WARN log line with the delay before the next one).
            node.connect_retrying(url).map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            println!("connecting to {url} (retrying in the background)");
        }
        Ok(())
    };
    let started: Result<(), Failure> = started.await;
    if started.is_ok() {
        let signal = signals.recv().await;
        println!("shutting down ({signal}): closing connections");
    }
    // A second signal while shutting down ends the process at once: what the peer acknowledged is
    // durable already, and the store recovers whatever else was in flight like after a crash.
    tokio::select! {
        () = node.shutdown() => {}
        signal = signals.recv() => {
            eprintln!("error: {signal} while shutting down: exiting at once, without closing the store");
            std::process::exit(1);
        }
    }
    let closed = store.close().map_err(|e| Failure(EXIT_DATA, format!("closing the store failed: {e}")));
    if started.is_ok() && closed.is_ok() {
        println!("shut down cleanly: the store is closed");
    }
    started.and(closed)
}
