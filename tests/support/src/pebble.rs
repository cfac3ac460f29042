//! A real ACME CA for tests: Let's Encrypt's `pebble` (Debian's 2.4.0), on loopback, checking
//! DNS-01 challenges against the DNS server the test names, with the nonce rejections and
//! validation sleeps that make it slow turned off, authorizations never reused (every order
//! is validated anew) and a certificate lifetime the test chooses.
//!
//! Pebble ships no certificate for its own HTTPS: it gets one from a throwaway [`Pki`] (trust
//! [`Pebble::https_ca`] to talk to it). The roots it issues under are made anew at each start;
//! [`Pebble::start`] fetches the root from the management interface into [`Pebble::root`].

use crate::process::ChildGuard;
use crate::{free_port, Pki};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long pebble gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pebble; stopped on drop.
pub struct Pebble {
    child: ChildGuard,
    pki: Pki,
    /// The ACME directory URL.
    pub directory: String,
    /// The root certificate (PEM) of what pebble issues.
    pub root: PathBuf,
}

impl Pebble {
    /// Starts pebble validating DNS-01 against `dns`, issuing certificates valid for
    /// `validity_secs`.
    pub fn start(dns: SocketAddr, validity_secs: u64) -> anyhow::Result<Pebble> {
        Self::start_with(dns, validity_secs, None)
    }

    /// [`Pebble::start`], requiring external account binding with the key id and
    /// base64url HMAC key given.
    pub fn start_with(
        dns: SocketAddr,
        validity_secs: u64,
        eab: Option<(&str, &str)>,
    ) -> anyhow::Result<Pebble> {
        let pki = Pki::generate()?;
        let (listen, management) = (free_port()?, free_port()?);
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": pki.server_cert,
            "privateKey": pki.server_key,
            // Not listened on: only the VA would connect there, for other challenge types.
            "httpPort": free_port()?,
            "tlsPort": free_port()?,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
            "certificateValidityPeriod": validity_secs,
        });
        if let Some((kid, hmac)) = eab {
            pebble["externalAccountMACKeys"] = serde_json::json!({ kid: hmac });
        }
        let config = pki.dir().join("pebble-config.json");
        std::fs::write(
            &config,
            serde_json::to_vec(&serde_json::json!({ "pebble": pebble }))?,
        )
        .context("writing pebble's config")?;
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let child = ChildGuard::spawn("pebble", command)
            .context("starting pebble (Debian package `pebble`)")?;
        child.wait_for_output("ACME directory available at", START_TIMEOUT)?;
        let root = pki.dir().join("pebble-root.pem");
        let fetched = Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(&pki.ca)
            .arg(format!("https://127.0.0.1:{management}/roots/0"))
            .arg("-o")
            .arg(&root)
            .status()
            .context("running curl")?;
        anyhow::ensure!(fetched.success(), "fetching pebble's root failed");
        Ok(Pebble {
            child,
            pki,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            root,
        })
    }

    /// The CA to trust for pebble's own HTTPS (`plane drone --acme-root-ca`).
    pub fn https_ca(&self) -> &Path {
        &self.pki.ca
    }

    /// How many certificates pebble has issued so far (from its log).
    pub fn issued(&self) -> usize {
        self.child
            .output_so_far()
            .matches("Issued certificate serial")
            .count()
    }

    /// How many accounts pebble has created so far (from its log).
    pub fn accounts_created(&self) -> usize {
        self.child
            .output_so_far()
            .matches("accounts in memory")
            .count()
    }
}
