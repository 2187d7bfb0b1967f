//! `serve`'s configuration from four sources: flags, then environment variables (clap reads
//! both: a flag wins over its variable), then the `--config` TOML file, then the defaults.
//! `--print-config` prints the result as TOML that `--config` reads back.

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use super::*;

/// The keys a `--config` file may set: the flags' names with `_` for `-`. Durations are strings
/// like the flags' (`"10s"`); an unknown key is an error (a typo must not be ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    store: Option<String>,
    connect: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    client: Option<bool>,
    peer_id: Option<String>,
    web: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure_no_tls: Option<bool>,
    ca: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
    max_handshake_bytes: Option<usize>,
    idle_timeout: Option<String>,
    max_frame_bytes: Option<usize>,
    max_subscriptions: Option<usize>,
    max_subscriptions_per_connection: Option<usize>,
    max_clock_skew: Option<String>,
    max_queued_publications: Option<usize>,
    max_queued_bytes: Option<usize>,
    outbox_bytes: Option<usize>,
    outbox_total_bytes: Option<usize>,
    max_answer_bytes: Option<usize>,
    auth: Option<String>,
    node_key: Option<PathBuf>,
    key: Option<PathBuf>,
    trust: Option<PathBuf>,
    trusted: Option<Vec<String>>,
    public: Option<Vec<String>>,
    public_user: Option<Vec<String>>,
}

/// Whether the user set the argument `id` (a flag or its environment variable).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

fn usage(message: String) -> Failure {
    Failure(EXIT_USAGE, message)
}

/// Reads the `--config` file (if any) into the arguments the user did not give.
pub(crate) fn resolve(mut args: ServeArgs, matches: &ArgMatches) -> Result<ServeArgs, Failure> {
    let Some(path) = args.config.clone() else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| usage(format!("cannot read the config file {}: {e}", path.display())))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        // Where: the line number and the line itself (the message alone may not name the key).
        let at = e
            .span()
            .map(|s| {
                let number = text[..s.start].matches('\n').count() + 1;
                let line = text.lines().nth(number - 1).unwrap_or("").trim();
                format!(" (line {number}: {line})")
            })
            .unwrap_or_default();
        usage(format!("the config file {}{at}: {}", path.display(), e.message().trim_end()))
    })?;
    let duration = |key: &str, v: &str| {
        parse_duration(v).map_err(|e| usage(format!("the config file {}: {key}: {e}", path.display())))
    };
    let one_of = |key: &str, v: String, valid: &[&str]| {
        if valid.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(usage(format!(
                "the config file {}: {key} = {v:?} is not one of {}",
                path.display(),
                valid.join(", ")
            )))
        }
    };
    macro_rules! fill {
        ($field:expr, $id:literal, $value:expr) => {
            if !given(matches, $id)
                && let Some(v) = $value
            {
                $field = v;
            }
        };
    }
    fill!(args.listen, "listen", file.listen);
    fill!(args.store, "store", file.store);
    fill!(args.connect, "connect", file.connect);
    fill!(args.subscribe, "subscribe", file.subscribe);
    fill!(args.client, "client", file.client);
    fill!(args.peer_id, "peer_id", file.peer_id.map(Some));
    fill!(args.web, "web", file.web.map(Some));
    fill!(args.tls_cert, "tls_cert", file.tls_cert.map(Some));
    fill!(args.tls_key, "tls_key", file.tls_key.map(Some));
    fill!(args.insecure_no_tls, "insecure_no_tls", file.insecure_no_tls);
    fill!(args.ca, "ca", file.ca.map(Some));
    fill!(
        args.log_level,
        "log_level",
        file.log_level.map(|v| one_of("log_level", v, LOG_LEVELS)).transpose()?
    );
    fill!(
        args.log_format,
        "log_format",
        file.log_format.map(|v| one_of("log_format", v, LOG_FORMATS)).transpose()?
    );
    let a = &mut args.auth;
    fill!(a.auth, "auth", file.auth.map(|v| one_of("auth", v, &["on", "off"])).transpose()?);
    fill!(a.node_key, "node_key", file.node_key.map(Some));
    fill!(a.key, "key", file.key.map(Some));
    fill!(a.trust, "trust", file.trust.map(Some));
    fill!(a.trusted, "trusted", file.trusted);
    fill!(a.public, "public", file.public);
    fill!(a.public_user, "public_user", file.public_user);
    let l = &mut args.limits;
    fill!(l.max_connections, "max_connections", file.max_connections.map(Some));
    fill!(
        l.handshake_timeout,
        "handshake_timeout",
        file.handshake_timeout.map(|v| duration("handshake_timeout", &v)).transpose()?
    );
    fill!(l.max_handshake_bytes, "max_handshake_bytes", file.max_handshake_bytes);
    fill!(
        l.idle_timeout,
        "idle_timeout",
        file.idle_timeout.map(|v| duration("idle_timeout", &v)).transpose()?
    );
    fill!(l.max_frame_bytes, "max_frame_bytes", file.max_frame_bytes);
    fill!(l.max_subscriptions, "max_subscriptions", file.max_subscriptions);
    fill!(
        l.max_subscriptions_per_connection,
        "max_subscriptions_per_connection",
        file.max_subscriptions_per_connection
    );
    fill!(
        l.max_clock_skew,
        "max_clock_skew",
        file.max_clock_skew.map(|v| duration("max_clock_skew", &v)).transpose()?
    );
    fill!(l.max_queued_publications, "max_queued_publications", file.max_queued_publications);
    fill!(l.max_queued_bytes, "max_queued_bytes", file.max_queued_bytes);
    fill!(l.outbox_bytes, "outbox_bytes", file.outbox_bytes);
    fill!(l.outbox_total_bytes, "outbox_total_bytes", file.outbox_total_bytes);
    fill!(l.max_answer_bytes, "max_answer_bytes", file.max_answer_bytes);
    Ok(args)
}

/// The log levels `--log-level` takes.
pub(crate) const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
/// The formats `--log-format` takes.
pub(crate) const LOG_FORMATS: &[&str] = &["text", "json"];

/// A duration as the flags write it, in the largest unit that keeps it exact.
fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// The effective configuration as a TOML document (`--print-config`).
pub(crate) fn to_toml(args: &ServeArgs) -> String {
    let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let list =
        |v: &[String]| toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()).to_string();
    let mut out = String::from(
        "# The effective configuration of `replikativ serve` (flags > environment > --config file > defaults).\n",
    );
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    line("listen", s(&args.listen));
    line("store", s(&args.store));
    line("connect", list(&args.connect));
    line("subscribe", list(&args.subscribe));
    line("client", args.client.to_string());
    if let Some(id) = &args.peer_id {
        line("peer_id", s(id));
    }
    if let Some(web) = &args.web {
        line("web", s(&web.to_string_lossy()));
    }
    for (key, path) in [("tls_cert", &args.tls_cert), ("tls_key", &args.tls_key), ("ca", &args.ca)] {
        if let Some(path) = path {
            line(key, s(&path.to_string_lossy()));
        }
    }
    line("insecure_no_tls", args.insecure_no_tls.to_string());
    line("log_level", s(&args.log_level));
    line("log_format", s(&args.log_format));
    let a = &args.auth;
    line("auth", s(&a.auth));
    for (key, path) in [("node_key", &a.node_key), ("key", &a.key), ("trust", &a.trust)] {
        if let Some(p) = path {
            line(key, s(&p.to_string_lossy()));
        }
    }
    line("trusted", list(&a.trusted));
    line("public", list(&a.public));
    line("public_user", list(&a.public_user));
    let l = &args.limits;
    if let Some(n) = l.max_connections {
        line("max_connections", n.to_string());
    }
    line("handshake_timeout", s(&format_duration(l.handshake_timeout)));
    line("max_handshake_bytes", l.max_handshake_bytes.to_string());
    line("idle_timeout", s(&format_duration(l.idle_timeout)));
    line("max_frame_bytes", l.max_frame_bytes.to_string());
    line("max_subscriptions", l.max_subscriptions.to_string());
    line("max_subscriptions_per_connection", l.max_subscriptions_per_connection.to_string());
    line("max_clock_skew", s(&format_duration(l.max_clock_skew)));
    line("max_queued_publications", l.max_queued_publications.to_string());
    line("max_queued_bytes", l.max_queued_bytes.to_string());
    line("outbox_bytes", l.outbox_bytes.to_string());
    line("outbox_total_bytes", l.outbox_total_bytes.to_string());
    line("max_answer_bytes", l.max_answer_bytes.to_string());
    if args.limits.max_connections.is_none() {
        out.push_str("# max_connections: unset (the descriptor limit less 64, at most 10000)\n");
    }
    if args.peer_id.is_none() {
        out.push_str("# peer_id: unset (the store's, or a random one for a new store)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_largest_exact_unit_and_parse_back() {
        for (ms, text) in
            [(500, "500ms"), (10_000, "10s"), (600_000, "10m"), (7_200_000, "2h"), (1_500, "1500ms")]
        {
            let d = std::time::Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }
}
