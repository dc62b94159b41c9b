//! TLS for every outgoing connection: one rustls crypto provider (ring) for the process,
//! and the client configuration Postgres connections use (the public web PKI roots, or
//! only the CAs of a file the configuration names).

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

/// The CAs a Postgres server's certificate must chain to: the public web PKI roots (Neon's
/// certificates come from Let's Encrypt), or, when `ca_file` names a PEM file
/// (`DATABASE_CA_FILE`, or `sslrootcert` in the URL), only the CAs in it, as libpq's
/// `sslrootcert` means: a server with a private CA is then not also trusted to be
/// impersonated by any public CA's certificate for its name.
fn root_store(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA file {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("bad PEM in CA file {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no CA certificate in CA file {}",
        path.display()
    );
    Ok(roots)
}

/// The rustls client configuration, trusting [`root_store`]`(ca_file)`.
pub fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    // Required by `sslnegotiation=direct` (TLS from the first byte, one round trip less
    // than SSLRequest; Neon's proxy and Postgres 17 accept it); harmless otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The TLS connector for Postgres connections, trusting [`root_store`]`(ca_file)`.
pub fn connector(ca_file: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(tls_config(ca_file)?))
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

    /// A self-signed CA certificate (P-256), made for this test.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUDyLwnFgzpQ/wNsSlSlU1uj76QGwwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVdG9kby1hcGkgdW5pdCB0ZXN0IENBMCAXDTI2MTEyNDE3MjEw
OFoYDzIxMjYxMDMxMTcyMTA4WjAgMR4wHAYDVQQDDBV0b2RvLWFwaSB1bml0IHRl
c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQBAdYlAKSwTjTRi/PSXAo2
eLD6kh4X7Bv+4pp32ruF3n/cGIqatfW8mPHY2ZeNztk82iXoe80+rIMJrS9wqqR4
o1MwUTAdBgNVHQ4EFgQUi+KUSwSr8FzHGnFHcfKjvfuK/XEwHwYDVR0jBBgwFoAU
i+KUSwSr8FzHGnFHcfKjvfuK/XEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiBkVkHthuXp5bvd23n+IQytGxRq7hYjJMxTKhjRG6yXbAIhAOb4ZxxK
XRBye5qtGeq1PjlkJhtc+QvqAYAENn2KhsXt
-----END CERTIFICATE-----
";

    #[test]
    fn the_public_roots_are_trusted_unless_a_ca_file_names_the_only_ones() {
        assert!(root_store(None).unwrap().len() > 100);
        let dir = std::env::temp_dir().join(format!("todo-api-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        assert_eq!(root_store(Some(&ca)).unwrap().len(), 1);
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(root_store(Some(&empty)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }
}
