//! The drone's certificate, read from PEM files and swapped while the proxy runs.
//!
//! Whoever renews the certificate (an operator, or the ACME refresher) writes new files; the
//! proxy notices (a cheap metadata check on an interval, no file-system notifications to lose)
//! and serves the new pair from the next handshake on. Established connections keep the
//! session they negotiated. A pair that does not load, or whose key does not match its
//! certificate (the two files are renamed into place one after the other, so for a moment they
//! can disagree), is not served: the previous pair stays until a good one is there.
//!
//! The TLS settings themselves are fixed here, not configurable: TLS 1.3 and 1.2 only, rustls'
//! cipher suites (AEAD only, forward secret), ALPN `h2` then `http/1.1`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tracing::{info, warn};

/// How often the certificate files are checked for a change.
pub const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading reported.
        #[source]
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate (or a malformed one).
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key (or a malformed one).
    #[error("{path} holds no PEM private key")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is of a kind rustls cannot sign with, or does not match the certificate.
    #[error("the key in {key} cannot serve the certificate in {cert}")]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the TLS settings (cannot happen with the versions asked for here).
    #[error("TLS settings refused")]
    Settings(#[source] rustls::Error),
}

/// What the files looked like when last loaded: a change in any of it means a new pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified: i64,
    modified_nanos: i64,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        let meta = fs::metadata(path)?;
        Ok(Stamp {
            inode: meta.ino(),
            modified: meta.mtime(),
            modified_nanos: meta.mtime_nsec(),
            len: meta.len(),
        })
    }
}

/// The certificate and key the proxy serves, loaded from two PEM files and reloaded when they
/// change. It is the rustls certificate resolver of every TLS listener built from it.
#[derive(Debug)]
pub struct Certificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// `None` until a first usable pair is there (see [`Certificate::awaiting`]).
    current: ArcSwapOption<CertifiedKey>,
    seen: Mutex<Seen>,
}

/// The stamps of both files, certificate first.
type Stamps = (Stamp, Stamp);

/// The files as last loaded.
#[derive(Debug)]
struct Seen {
    /// The pair served now.
    served: Option<Stamps>,
    /// The last pair that failed: not retried until the files change again, so a bad pair is
    /// reported once.
    failed: Option<Stamps>,
}

impl Certificate {
    /// Loads the chain in `cert` (leaf first) and the private key in `key` (PKCS#8, PKCS#1 or
    /// SEC1 PEM).
    ///
    /// # Errors
    /// A file cannot be read, holds no PEM certificate or key, or the key does not match.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = stamps(cert, key);
        let pair = load_pair(cert, key, &provider)?;
        Ok(Arc::new(Certificate {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            current: ArcSwapOption::from_pointee(pair),
            seen: Mutex::new(Seen {
                served: stamps.ok(),
                failed: None,
            }),
        }))
    }

    /// The certificate to come in `cert` and `key` (the ACME refresher writes them): served
    /// from when the files make a usable pair; until then handshakes fail (there is no
    /// certificate to present). Files already there are loaded at once.
    pub fn awaiting(cert: &Path, key: &Path) -> Arc<Certificate> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(Certificate {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            current: ArcSwapOption::empty(),
            seen: Mutex::new(Seen {
                served: None,
                failed: None,
            }),
        });
        if let Err(error) = certificate.reload_if_changed() {
            warn!(error = %error_chain(&error), "the certificate files there cannot be served; waiting for new ones");
        }
        certificate
    }

    /// The chain served now (leaf first), if any.
    pub fn served_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.current.load().as_ref().map(|pair| pair.cert.clone())
    }

    /// Loads the files again if they changed since the last load; `Ok(true)` if a new pair is
    /// now served. A pair that fails is reported once and not retried until the files change.
    ///
    /// # Errors
    /// The changed files do not make a usable pair (the previous pair is still served).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let Ok(stamps) = stamps(&self.cert_path, &self.key_path) else {
            // Between a delete and a rename, or gone: keep serving what we have.
            return Ok(false);
        };
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.served == Some(stamps) || seen.failed == Some(stamps) {
                return Ok(false);
            }
        }
        let loaded = load_pair(&self.cert_path, &self.key_path, &self.provider);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(pair) => {
                self.current.store(Some(Arc::new(pair)));
                *seen = Seen {
                    served: Some(stamps),
                    failed: None,
                };
                Ok(true)
            }
            Err(error) => {
                seen.failed = Some(stamps);
                Err(error)
            }
        }
    }

    /// Checks the files every `interval` until the future is dropped, swapping in each new
    /// usable pair and logging each unusable one.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let checked = {
                let this = Arc::clone(&self);
                tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            };
            match checked {
                Ok(Ok(true)) => info!(cert = %self.cert_path.display(), "new certificate served"),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => warn!(
                    error = %error_chain(&error),
                    "certificate files changed but cannot be served; still serving the previous pair"
                ),
                Err(join) => warn!(%join, "certificate check failed"),
            }
        }
    }

    /// rustls settings for a listener serving this certificate: TLS 1.3 and 1.2, no client
    /// certificates, ALPN `h2` (preferred) and `http/1.1`.
    ///
    /// # Errors
    /// [`TlsError::Settings`] if rustls refuses them.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

fn stamps(cert: &Path, key: &Path) -> io::Result<Stamps> {
    Ok((Stamp::of(cert)?, Stamp::of(key)?))
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: cert.to_owned(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: key.to_owned(),
    })?;
    let unusable = |source| TlsError::Unusable {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(unusable)?;
    let pair = CertifiedKey::new(chain, signing_key);
    // Unlike `CertifiedKey::from_der`, a key whose match cannot be checked is refused too.
    pair.keys_match().map_err(unusable)?;
    Ok(pair)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_test_support::pki::Pki;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn client(pki: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        let ca = fs::read(&pki.ca).expect("ca");
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("ca pem")).expect("trust the CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // http/1.1 first: the server's preference, not the client's, must pick h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// An echo server over TLS with `certificate`'s settings; returns its address.
    async fn echo_server(certificate: &Arc<Certificate>) -> std::net::SocketAddr {
        let acceptor = TlsAcceptor::from(certificate.server_config().expect("settings"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        addr
    }

    type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

    async fn connect(connector: &TlsConnector, addr: std::net::SocketAddr) -> ClientStream {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("a.plane.localhost").expect("name");
        connector.connect(name, tcp).await.expect("handshake")
    }

    /// The certificate the server presented.
    fn presented(stream: &ClientStream) -> CertificateDer<'static> {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("certificates")[0]
            .clone()
    }

    async fn echoes(stream: &mut ClientStream, what: &[u8]) {
        stream.write_all(what).await.expect("send");
        let mut back = vec![0u8; what.len()];
        stream.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, what);
    }

    fn write_pair(cert: &Path, key: &Path, pair: &(String, String)) {
        // As a renewer does: each file written aside, then renamed into place.
        for (path, pem) in [(key, &pair.1), (cert, &pair.0)] {
            let aside = path.with_extension("new");
            fs::write(&aside, pem).expect("write");
            fs::rename(&aside, path).expect("rename");
        }
    }

    #[tokio::test]
    async fn serves_tls_1_3_and_1_2_preferring_h2() {
        let pki = Pki::generate().expect("pki");
        let (cert, key) = (pki.dir().join("a.pem"), pki.dir().join("a-key.pem"));
        write_pair(
            &cert,
            &key,
            &pki.server_pair(&["*.plane.localhost"]).expect("pair"),
        );
        let certificate = Certificate::load(&cert, &key).expect("load");
        let addr = echo_server(&certificate).await;
        for (version, expected) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let mut stream = connect(&client(&pki, &[version]), addr).await;
            let (_, session) = stream.get_ref();
            assert_eq!(session.protocol_version(), Some(expected));
            assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
            echoes(&mut stream, b"ping").await;
        }
    }

    #[tokio::test]
    async fn a_new_pair_is_served_to_new_connections_and_old_ones_go_on() {
        let pki = Pki::generate().expect("pki");
        let (cert, key) = (pki.dir().join("a.pem"), pki.dir().join("a-key.pem"));
        let first = pki.server_pair(&["*.plane.localhost"]).expect("first");
        write_pair(&cert, &key, &first);
        let certificate = Certificate::load(&cert, &key).expect("load");
        let addr = echo_server(&certificate).await;
        let connector = client(&pki, &[&rustls::version::TLS13]);
        let mut old = connect(&connector, addr).await;
        let first_der = presented(&old);
        assert!(!certificate.reload_if_changed().expect("unchanged"));

        // The key is renamed into place first: for a moment the files disagree, and the
        // mismatched pair is not served.
        let second = pki.server_pair(&["*.plane.localhost"]).expect("second");
        let aside = key.with_extension("new");
        fs::write(&aside, &second.1).expect("write key");
        fs::rename(&aside, &key).expect("rename key");
        let mismatch = certificate
            .reload_if_changed()
            .expect_err("mismatched pair");
        assert!(
            matches!(mismatch, TlsError::Unusable { .. }),
            "{mismatch:?}"
        );
        assert_eq!(presented(&connect(&connector, addr).await), first_der);
        assert!(
            !certificate.reload_if_changed().expect("reported once"),
            "the same bad pair is not retried"
        );

        write_pair(&cert, &key, &second);
        assert!(certificate.reload_if_changed().expect("second pair"));
        let new = connect(&connector, addr).await;
        assert_ne!(
            presented(&new),
            first_der,
            "new connections get the new pair"
        );
        echoes(&mut old, b"still here").await;
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let pki = Pki::generate().expect("pki");
        let dir = pki.dir();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, "not a PEM file").expect("write");
        let other = pki.server_pair(&["other.test"]).expect("other");
        let other_key = dir.join("other-key.pem");
        fs::write(&other_key, &other.1).expect("write");

        let error = Certificate::load(&missing, &pki.server_key).expect_err("missing");
        assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
        let error = Certificate::load(&garbage, &pki.server_key).expect_err("garbage cert");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        let error = Certificate::load(&pki.server_cert, &garbage).expect_err("garbage key");
        assert!(matches!(error, TlsError::NoKey { .. }), "{error:?}");
        let error = Certificate::load(&pki.server_cert, &other_key).expect_err("other key");
        assert!(matches!(error, TlsError::Unusable { .. }), "{error:?}");
        assert!(error.to_string().contains("other-key.pem"), "{error}");
        assert!(Certificate::load(&pki.server_cert, &pki.server_key).is_ok());
    }
}
