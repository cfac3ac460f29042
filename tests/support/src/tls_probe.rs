//! A TLS handshake as a client that trusts only a given root: what certificate a server
//! presents for a name, or why the handshake failed.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The leaf certificate (DER) the server on `127.0.0.1:port` presents for `name`, verified
/// against `root` (PEM); an error if the handshake or the verification fails.
pub async fn served_leaf(port: u16, name: &str, root: &Path) -> anyhow::Result<Vec<u8>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).context("reading the root")? {
        roots.add(cert.context("a PEM certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to port {port}"))?;
    let server_name = ServerName::try_from(name.to_owned()).context("a DNS name")?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake for {name}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no certificate presented")?;
    Ok(leaf.to_vec())
}
