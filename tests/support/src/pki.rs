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
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
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

        let (server_cert, server_key) = issue(
            &issuer,
            &["localhost"],
            "nats",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = issue(
            &issuer,
            &["localhost"],
            "plane",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Pki {
            ca: write("ca.pem", ca_cert.pem())?,
            server_cert: write("server.pem", server_cert)?,
            server_key: write("server-key.pem", server_key)?,
            client_cert: write("client.pem", client_cert)?,
            client_key: write("client-key.pem", client_key)?,
            dir,
            issuer,
        })
    }

    /// A new server certificate and its key (PEM) from the same CA, for `names` (and
    /// `127.0.0.1`): for a test that rotates certificates.
    pub fn server_pair(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        issue(
            &self.issuer,
            names,
            "server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A new server certificate for `names` written as `{stem}.pem` and `{stem}-key.pem` in
    /// the PKI's directory; their paths.
    pub fn write_server_pair(
        &self,
        names: &[&str],
        stem: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert_pem, key_pem) = self.server_pair(names)?;
        let cert = self.dir().join(format!("{stem}.pem"));
        let key = self.dir().join(format!("{stem}-key.pem"));
        std::fs::write(&cert, cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, key_pem).with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }

    /// The directory the files are in (deleted with the `Pki`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
