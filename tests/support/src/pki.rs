//! A throwaway PKI for tests: a CA, a server certificate for `127.0.0.1`/`localhost`, and a
//! client certificate, written as PEM files into a temporary directory (rcgen, nothing fetched).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// PEM files of a CA and the certificates it issued; deleted on drop.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir().context("a directory for the test PKI")?;
        let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Plane test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let issue =
            |name: &str, purpose: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                params.distinguished_name.push(DnType::CommonName, name);
                params.extended_key_usages = vec![purpose];
                let cert = params.signed_by(&key, &issuer)?;
                Ok((cert.pem(), key.serialize_pem()))
            };
        let (server_cert, server_key) = issue("nats", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) = issue("plane", ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(Pki {
            ca: write("ca.pem", ca_cert.pem())?,
            server_cert: write("server.pem", server_cert)?,
            server_key: write("server-key.pem", server_key)?,
            client_cert: write("client.pem", client_cert)?,
            client_key: write("client-key.pem", client_key)?,
            _dir: dir,
        })
    }
}
