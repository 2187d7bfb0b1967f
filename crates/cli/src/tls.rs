//! TLS for the command line: `serve`'s certificate (`--tls-cert`, `--tls-key`), the refusal to
//! listen beyond loopback without it, and the CA a client trusts (`--ca`).

use std::path::Path;

use replikativ_peer::node::tls::{ClientTls, ServerTls};

use crate::{EXIT_USAGE, Failure};

/// How `wss://` servers are verified: the public roots, plus the certificates of `ca` if given.
pub(crate) fn client_tls(ca: Option<&Path>) -> Result<ClientTls, Failure> {
    match ca {
        None => Ok(ClientTls::webpki_roots()),
        Some(path) => ClientTls::with_ca_file(path).map_err(|e| Failure(EXIT_USAGE, format!("--ca: {e}"))),
    }
}

/// `serve`'s TLS identity from `--tls-cert` and `--tls-key` (both or neither).
pub(crate) fn server_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, Failure> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => ServerTls::from_pem_files(cert, key)
            .map(Some)
            .map_err(|e| Failure(EXIT_USAGE, format!("TLS: {e}"))),
        (Some(_), None) => {
            Err(Failure(EXIT_USAGE, "--tls-cert needs --tls-key (the certificate's private key)".into()))
        }
        (None, Some(_)) => {
            Err(Failure(EXIT_USAGE, "--tls-key needs --tls-cert (the certificate chain)".into()))
        }
    }
}

/// Whether every address `listen` (HOST:PORT) names is a loopback one. A name that does not
/// resolve is left to the bind to report.
fn loopback_only(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addrs) => addrs.into_iter().all(|a| a.ip().is_loopback()),
        Err(_) => true,
    }
}

/// `serve` without TLS listens beyond loopback only with `--insecure-no-tls`.
pub(crate) fn check_listen(listen: &str, tls: bool, insecure_no_tls: bool) -> Result<(), Failure> {
    if tls || insecure_no_tls || loopback_only(listen) {
        return Ok(());
    }
    Err(Failure(
        EXIT_USAGE,
        format!(
            "refusing to listen on {listen} without TLS: it is not a loopback address, so the traffic would cross the network unencrypted; give --tls-cert FILE and --tls-key FILE, or --insecure-no-tls to serve plain ws:// anyway"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_tls() {
        for ok in ["127.0.0.1:0", "[::1]:31744", "localhost:0", "127.5.6.7:80"] {
            assert!(check_listen(ok, false, false).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:0", "[::]:0", "192.0.2.1:31744"] {
            let Failure(code, message) = check_listen(refused, false, false).unwrap_err();
            assert_eq!(code, EXIT_USAGE);
            assert!(
                message.starts_with(&format!("refusing to listen on {refused} without TLS")),
                "{message}"
            );
            assert_eq!(message.lines().count(), 1);
            assert!(check_listen(refused, true, false).is_ok(), "with TLS");
            assert!(check_listen(refused, false, true).is_ok(), "with --insecure-no-tls");
        }
    }
}
