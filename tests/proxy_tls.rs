//! `plane proxy --tls-listen`: curl gets through with the CA that issued the certificate and
//! is refused without it, the plain listener keeps serving, and sslscan (Debian's package)
//! finds TLS 1.2 and 1.3 only, with forward-secret AEAD suites only.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, listening_backend, plane_bin};
use plane_test_support::pki::Pki;
use plane_test_support::{curl, ChildGuard};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_with_its_certificate_and_only_strong_tls() -> anyhow::Result<()> {
    bounded(async {
        let (_backend, port) = listening_backend().await?;

        let pki = Pki::generate()?;
        let (cert, key) = pki.write_server_pair(&["app.example.test"], "proxy")?;
        let mut proxy = Command::new(plane_bin());
        proxy
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--route", &format!("app.example.test=127.0.0.1:{port}")]);
        let proxy = ChildGuard::spawn("proxy", proxy)?;
        let address = |marker: &str| -> anyhow::Result<String> {
            let line = proxy.wait_for_output(marker, Duration::from_secs(20))?;
            Ok(line
                .split(marker)
                .nth(1)
                .context("an address")?
                .trim()
                .to_string())
        };
        let plain = address("proxy listening on ")?;
        let tls = address("https listening on ")?;
        let tls_port = tls.rsplit(':').next().context("port")?.to_string();
        let resolve = format!("app.example.test:{tls_port}:127.0.0.1");
        let url = format!("https://app.example.test:{tls_port}/info");
        let ca = pki.ca.display().to_string();

        let trusted = curl(&["--cacert", &ca, "--resolve", &resolve, &url])?;
        ensure!(trusted.status == 200, "{trusted:?}");
        ensure!(
            trusted.body.contains("app.example.test"),
            "the backend sees the Host: {trusted:?}"
        );
        match curl(&["--resolve", &resolve, &url]) {
            // curl's exit code 60: the peer's certificate cannot be verified.
            Err(error) => ensure!(
                error.to_string().contains("(60)"),
                "refused for another reason than the certificate: {error:#}"
            ),
            Ok(response) => anyhow::bail!("a client that does not trust the CA got {response:?}"),
        }
        let plain = curl(&[
            "-H",
            "Host: app.example.test",
            &format!("http://{plain}/info"),
        ])?;
        ensure!(plain.status == 200, "plain HTTP keeps serving: {plain:?}");

        let scan = Command::new("sslscan")
            .args(["--no-colour", &tls])
            .output()
            .context("running sslscan: is it installed?")?;
        ensure!(scan.status.success(), "sslscan failed: {scan:?}");
        let report = String::from_utf8_lossy(&scan.stdout);
        for (protocol, state) in [
            ("SSLv2", "disabled"),
            ("SSLv3", "disabled"),
            ("TLSv1.0", "disabled"),
            ("TLSv1.1", "disabled"),
            ("TLSv1.2", "enabled"),
            ("TLSv1.3", "enabled"),
        ] {
            ensure!(
                report.lines().any(|line| {
                    let mut words = line.split_whitespace();
                    words.next() == Some(protocol) && words.next() == Some(state)
                }),
                "{protocol} should be {state}:\n{report}"
            );
        }
        let suites: Vec<&str> = report
            .lines()
            .filter(|line| line.starts_with("Accepted") || line.starts_with("Preferred"))
            .collect();
        ensure!(!suites.is_empty(), "no cipher suites found:\n{report}");
        for suite in suites {
            let aead = suite.contains("GCM") || suite.contains("CHACHA20");
            let forward_secret = suite.contains("TLSv1.3") || suite.contains("ECDHE");
            ensure!(aead && forward_secret, "weak suite: {suite}");
        }
        Ok(())
    })
    .await
}
