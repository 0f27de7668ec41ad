//! TLS for Osler: the hub's own certificate authority (CA) and server certificate, and the
//! rustls configurations that serve them and pin them.
//!
//! A hub is its own CA (`osler hub init`): clients trust exactly that CA, never the system's
//! roots, so a hub presenting any other certificate is refused. Keys are ECDSA P-256; rustls
//! runs on the `ring` provider (no C toolchain beyond what `ring` needs, no cmake), TLS 1.2
//! and 1.3 only.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0:?} is not a valid DNS name for a certificate")]
    Name(String),
}

/// A hub's certificate authority and its server certificate, PEM encoded.
pub struct HubCertificates {
    pub ca_pem: String,
    /// The CA's private key: signs new server certificates; owner-only on disk.
    pub ca_key_pem: String,
    /// The server certificate followed by the CA certificate (the chain a server presents).
    pub server_chain_pem: String,
    pub server_key_pem: String,
}

/// How long the CA and the server certificate are valid: ten years and two, a hub is expected
/// to run unattended for years, and clients pin the CA rather than the server certificate.
const CA_YEARS: i32 = 10;
const SERVER_YEARS: i32 = 2;

/// Makes a CA named after `org` and a server certificate for `names` (DNS) and `addresses`
/// (IP), signed by it. With neither, the server certificate is for `localhost`, 127.0.0.1 and
/// ::1 (a hub for this machine).
pub fn generate(
    org: &str,
    names: &[String],
    addresses: &[IpAddr],
    now_year: i32,
) -> Result<HubCertificates, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("{org} certificate authority"));
    ca.distinguished_name.push(DnType::OrganizationName, org);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(now_year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(now_year + CA_YEARS, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, &ca_key);

    let (names, addresses): (Vec<String>, Vec<IpAddr>) = if names.is_empty() && addresses.is_empty()
    {
        (
            vec!["localhost".to_owned()],
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        )
    } else {
        (names.to_vec(), addresses.to_vec())
    };
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(Vec::<String>::new())?;
    for n in &names {
        if !is_dns_name(n) {
            return Err(TlsError::Name(n.clone()));
        }
        let dns = n
            .as_str()
            .try_into()
            .map_err(|_| TlsError::Name(n.clone()))?;
        server.subject_alt_names.push(SanType::DnsName(dns));
    }
    server
        .subject_alt_names
        .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
    server.distinguished_name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| addresses[0].to_string()),
    );
    server
        .distinguished_name
        .push(DnType::OrganizationName, org);
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = rcgen::date_time_ymd(now_year - 1, 1, 1);
    server.not_after = rcgen::date_time_ymd(now_year + SERVER_YEARS, 1, 1);
    let server_cert = server.signed_by(&server_key, &issuer)?;
    Ok(HubCertificates {
        server_chain_pem: format!("{}{}", server_cert.pem(), ca_pem),
        ca_pem,
        ca_key_pem: ca_key.serialize_pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A host name as RFC 1123 allows it: dot-separated labels of letters, digits and hyphens,
/// none starting or ending with a hyphen, at most 63 characters each and 253 in all.
fn is_dns_name(n: &str) -> bool {
    n.len() <= 253
        && !n.is_empty()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM text, in order.
pub fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// A server configuration presenting `chain_pem` with `key_pem`.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(chain_pem, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the server key",
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts the CAs in `ca_pem` and nothing else.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_pem, "the CA file")? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_hub_loads_as_server_and_its_ca_as_client_roots() {
        let c = generate("Osler hub", &[], &[], 2026).unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(certificates(&c.server_chain_pem, "chain").unwrap().len(), 2);
        server_config(&c.server_chain_pem, &c.server_key_pem).unwrap();
        client_config(&c.ca_pem).unwrap();
    }

    #[test]
    fn bad_pem_is_refused_with_what_it_was() {
        let e = client_config("not a certificate").unwrap_err().to_string();
        assert!(e.contains("the CA file"), "{e}");
        assert!(matches!(
            generate("x", &["not a name!".into()], &[], 2026),
            Err(TlsError::Name(_))
        ));
    }
}
