//! TLS for the node's websockets (`wss://`): rustls with the `ring` provider, on the listening
//! side ([`ServerTls`], [`Node::listen_tls`](super::Node::listen_tls)) and the dialing side
//! ([`ClientTls`], [`NodeConfig::client_tls`](super::NodeConfig::client_tls),
//! [`RemoteClient::connect_with`](crate::client::RemoteClient::connect_with)), and each
//! connection's [`ChannelBinding`] (the TLS exporter, RFC 5705) for the authenticated hello
//! exchange (`docs/design.md` §8.7).
//!
//! A node listening on `wss://` with a certificate and a peer that trusts its CA:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use replikativ_peer::node::{Node, NodeConfig};
//! use replikativ_peer::node::tls::{ClientTls, ServerTls};
//! use replikativ_store::MemoryStore;
//! # let ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
//! # let mut ca = ca; ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
//! # let ca_key = rcgen::KeyPair::generate()?;
//! # let ca_cert = ca.self_signed(&ca_key)?;
//! # let issuer = rcgen::Issuer::new(ca, ca_key);
//! # let leaf_key = rcgen::KeyPair::generate()?;
//! # let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&leaf_key, &issuer)?;
//! # let (cert_pem, key_pem, ca_pem) = (leaf.pem(), leaf_key.serialize_pem(), ca_cert.pem());
//! let actor = || replikativ_peer::crdt::ActorId::from(uuid::Uuid::new_v4());
//!
//! // The server: its certificate chain and key, PEM (what `serve --tls-cert --tls-key` reads).
//! let server = Node::start(Arc::new(MemoryStore::new()), NodeConfig::default(), actor())?;
//! let addr = server.listen_tls("127.0.0.1:0", ServerTls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?).await?;
//!
//! // A peer that trusts the public roots and this deployment's own CA (`--ca FILE`).
//! let config = NodeConfig { client_tls: Some(ClientTls::with_ca_pem(ca_pem.as_bytes())?), ..NodeConfig::default() };
//! let client = Node::start(Arc::new(MemoryStore::new()), config, actor())?;
//! client.connect(&format!("wss://localhost:{}", addr.port())).await?;
//!
//! // A peer that trusts only the public roots cannot verify the certificate: a clear error.
//! let stranger = Node::start(Arc::new(MemoryStore::new()), NodeConfig::default(), actor())?;
//! let refused = stranger.connect(&format!("wss://localhost:{}", addr.port())).await.unwrap_err();
//! assert!(refused.to_string().contains("certificate is not trusted"), "{refused}");
//! # client.shutdown().await; stranger.shutdown().await; server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Providers: every configuration built here names the `ring` provider explicitly, so nothing
//! depends on a process-wide default; [`install_default_provider`] installs `ring` as that default
//! too, for code that builds its own rustls configurations with `ClientConfig::builder()`.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use rustls;

/// The label of the TLS exporter each connection's [`ChannelBinding`] holds (RFC 5705, no
/// context, [`EXPORTER_LEN`] bytes).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-replikativ-rs-v1";

/// Bytes of the exporter.
pub const EXPORTER_LEN: usize = 32;

/// Bytes a PEM file (certificate chain, key, CA bundle) may have at most: 1 MiB.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Installs the `ring` provider as rustls's process-wide default, once (later calls, and a default
/// installed by someone else, are left alone). Nothing in this crate needs it (its configurations
/// name their provider); the command line calls it at start for any other rustls user in the
/// process.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_PEM_BYTES`].
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key file")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The PEM text holds no certificate, or no private key, or cannot be parsed.
    #[error("{what}: {reason}")]
    Pem {
        /// What was read (a file name, or "the certificate PEM").
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate or key (e.g. the key is not the certificate's).
    #[error("{0}")]
    Config(String),
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| TlsError::Read { path: name.clone(), source })?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TlsError::Read { path: name.clone(), source })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: name });
    }
    Ok(bytes)
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem { what: what.to_owned(), reason: format!("not valid PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            reason: "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The listening side's TLS: a certificate chain and its key (cheap to clone).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM text: `cert_chain` holds the server's certificate first, then any intermediates;
    /// `key` its private key (PKCS#8, PKCS#1 or SEC1). TLS 1.3 and 1.2, no client certificates.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        Self::build(cert_chain, key, "the certificate PEM", "the key PEM")
    }

    /// From PEM files (what `serve --tls-cert FILE --tls-key FILE` reads); errors name the file.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let (cert_pem, key_pem) = (read_pem_file(cert_chain)?, read_pem_file(key)?);
        Self::build(
            &cert_pem,
            &key_pem,
            &format!("the certificate file {}", cert_chain.display()),
            &format!("the key file {}", key.display()),
        )
    }

    fn build(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
    ) -> Result<ServerTls, TlsError> {
        let certs = certificates(cert_pem, cert_what)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: key_what.to_owned(),
            reason: match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no private key in it (expected -----BEGIN PRIVATE KEY----- or an RSA or EC key)".into()
                }
                e => format!("not a valid PEM private key: {e}"),
            },
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                TlsError::Config(format!("{cert_what} and {key_what} do not make a TLS identity: {e}"))
            })?;
        Ok(ServerTls { config: Arc::new(config) })
    }

    /// From a rustls configuration made by the application (client certificates, a certificate
    /// resolver, ALPN, ...). It should use the `ring` provider (the only one this crate enables).
    pub fn from_config(config: Arc<rustls::ServerConfig>) -> ServerTls {
        ServerTls { config }
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// The dialing side's TLS: which certificate authorities `wss://` servers are verified against
/// (cheap to clone). [`ClientTls::default`] is [`ClientTls::webpki_roots`].
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls::webpki_roots()
    }
}

fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

impl ClientTls {
    /// The public web's certificate authorities (Mozilla's root program, compiled in by the
    /// `webpki-roots` crate: the same on every machine, no system store needed).
    pub fn webpki_roots() -> ClientTls {
        Self::from_roots(public_roots())
    }

    /// The public roots plus the certificates of `ca_pem` (a deployment's own CA, or a self-signed
    /// server certificate): what `--ca FILE` gives.
    pub fn with_ca_pem(ca_pem: &[u8]) -> Result<ClientTls, TlsError> {
        Self::add_ca(public_roots(), ca_pem, "the CA PEM")
    }

    /// [`ClientTls::with_ca_pem`] from a file; errors name the file.
    pub fn with_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        let pem = read_pem_file(path)?;
        Self::add_ca(public_roots(), &pem, &format!("the CA file {}", path.display()))
    }

    /// Only the certificates of `ca_pem`, without the public roots (a closed deployment).
    pub fn only_ca_pem(ca_pem: &[u8]) -> Result<ClientTls, TlsError> {
        Self::add_ca(rustls::RootCertStore::empty(), ca_pem, "the CA PEM")
    }

    fn add_ca(mut roots: rustls::RootCertStore, pem: &[u8], what: &str) -> Result<ClientTls, TlsError> {
        for cert in certificates(pem, what)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: what.to_owned(),
                reason: format!("a certificate cannot be a trust anchor: {e}"),
            })?;
        }
        Ok(Self::from_roots(roots))
    }

    fn from_roots(roots: rustls::RootCertStore) -> ClientTls {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls { config: Arc::new(config) }
    }

    /// From a rustls configuration made by the application (client certificates, a custom
    /// verifier, ...). It should use the `ring` provider.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls { config }
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }
}

/// What a connection's transport binds to: on TLS, the exporter of its session (RFC 5705, label
/// [`EXPORTER_LABEL`], no context, [`EXPORTER_LEN`] bytes), the same on both ends and different in
/// every session; on plain `ws://`, zeros. The authenticated hello exchange signs it with both
/// nonces (`docs/design.md` §8.7, `shared/design/auth.md` §6), so a signature made in one TLS session is worthless in another
/// (a man in the middle terminating TLS twice cannot relay it).
///
/// Known on both sides before the connection's first message:
/// [`Node::channel_binding`](super::Node::channel_binding) for the node's connections,
/// [`RemoteClient::channel_binding`](crate::client::RemoteClient::channel_binding) for a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelBinding {
    exporter: [u8; EXPORTER_LEN],
    tls: bool,
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The exporter is keying material: not logged.
        f.debug_struct("ChannelBinding").field("tls", &self.tls).finish_non_exhaustive()
    }
}

impl ChannelBinding {
    /// A plain (`ws://`, or in-process) connection: no TLS, the exporter is zeros.
    pub const PLAIN: ChannelBinding = ChannelBinding { exporter: [0; EXPORTER_LEN], tls: false };

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The exporter (zeros on a plain connection).
    pub fn exporter(&self) -> &[u8; EXPORTER_LEN] {
        &self.exporter
    }

    /// The exporter of a TLS session whose handshake is complete.
    pub(crate) fn of<D>(conn: &rustls::ConnectionCommon<D>) -> Result<ChannelBinding, rustls::Error> {
        let exporter = conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)?;
        Ok(ChannelBinding { exporter, tls: true })
    }
}

/// A dialed connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum MaybeTls {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A `ws://` or `wss://` URL, taken apart.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    /// Host as written (for SNI and verification; IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Parses a `ws://` or `wss://` URL.
pub(crate) fn target(url: &str) -> Result<Target, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let request = url.into_client_request().map_err(|e| format!("not a websocket URL: {e}"))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err("only ws:// and wss:// URLs are supported".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { tls, host, port })
}

/// Opens the byte stream to a `ws://` or `wss://` URL: TCP (no Nagle), then for `wss://` the TLS
/// handshake, verified against `tls`. Not bounded in time: callers bound it (the node by its
/// handshake timeout). The error is one sentence naming the cause (for an unverifiable certificate,
/// which check failed and what to do).
pub async fn connect_stream(url: &str, tls: &ClientTls) -> Result<(MaybeTls, ChannelBinding), String> {
    let target = target(url)?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok((MaybeTls::Plain(tcp), ChannelBinding::PLAIN));
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{:?} cannot be checked against a certificate: {e}", target.host))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| tls_failure(&e))?;
    let binding = ChannelBinding::of(stream.get_ref().1).map_err(|e| format!("TLS exporter: {e}"))?;
    Ok((MaybeTls::Tls(Box::new(stream)), binding))
}

/// One sentence for a failed TLS handshake on the dialing side.
fn tls_failure(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(error) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                "the server ended the connection during the TLS handshake (is it a plain ws:// port?)".into()
            }
            _ => format!("TLS handshake failed: {e}"),
        };
    };
    let hint = "give the CA that signed it with --ca FILE (or REPLIKATIV_CA)";
    match error {
        Error::InvalidCertificate(cause) => {
            let cause = match cause {
                CertificateError::UnknownIssuer => {
                    format!("it is not signed by a certificate authority this client trusts; {hint}")
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "it is not valid for this host name (connect by a name the certificate lists)".into()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired".into()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet (check the clocks)".into()
                }
                CertificateError::Revoked => "it is revoked".into(),
                CertificateError::BadSignature => "its signature does not verify".into(),
                other => format!("{other:?}"),
            };
            format!("the server's certificate is not trusted: {cause}")
        }
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS (is it a plain ws:// port?)".into()
        }
        Error::AlertReceived(alert) => format!("the server refused the TLS handshake (alert {alert:?})"),
        other => format!("TLS handshake failed: {other}"),
    }
}
