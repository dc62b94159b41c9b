//! TLS for every outgoing connection: one rustls crypto provider (ring) for the process,
//! and the client configuration Postgres connections use (public web PKI roots plus an
//! optional extra CA).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio_postgres_rustls::MakeRustlsConnect;

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Other rustls users in the process (the JWKS client) use the same provider.
            let _ = rustls::crypto::CryptoProvider::install_default((*provider).clone());
            provider
        })
        .clone()
}

/// Makes sure rustls has a process-wide crypto provider (ring).
pub fn install_crypto_provider() {
    crypto_provider();
}

/// The rustls client configuration: the public web PKI roots plus an optional extra CA.
pub fn tls_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read CA file {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("bad PEM in CA file {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Required by `sslnegotiation=direct` (TLS from the first byte, one round trip less
    // than SSLRequest; Neon's proxy and Postgres 17 accept it); harmless otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The TLS connector for Postgres connections, trusting `extra_ca` besides the public roots.
pub fn connector(extra_ca: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(tls_config(extra_ca)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_postgresql_is_offered_for_direct_tls_negotiation() {
        assert_eq!(
            tls_config(None).unwrap().alpn_protocols,
            vec![b"postgresql".to_vec()]
        );
    }

    #[test]
    fn the_tls_config_has_public_roots() {
        assert!(tls_config(None).is_ok());
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }
}
