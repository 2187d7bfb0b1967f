//! Certificates made in the test with rcgen: a CA, and a server certificate it signs.

#![allow(dead_code, unreachable_pub)]

/// A test CA and a server certificate (for `names`) it signed, PEM.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA's certificate: what a client trusts (`--ca`).
    pub ca: String,
    /// The server's certificate chain (just its certificate).
    pub cert: String,
    /// The server's private key.
    pub key: String,
}

/// A fresh CA and a server certificate for `localhost` and `127.0.0.1`.
pub fn make() -> Certs {
    make_for(&["localhost", "127.0.0.1"])
}

/// A fresh CA and a server certificate for `names` (DNS names or IP addresses).
pub fn make_for(names: &[&str]) -> Certs {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("replikativ test CA {n}"));
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
    Certs { ca: ca_cert.pem(), cert: cert.pem(), key: key.serialize_pem() }
}
