//! HTTPS end to end through `plane dev --https`, driven by curl: backend URLs say https, the
//! backend answers over TLS, plain HTTP is sent to https with a 308, and the certificate files
//! are replaced under load with no request failing and new connections getting the new one.

mod common;

use anyhow::{ensure, Context};
use common::{after, bounded, id_of, Cluster};
use plane_test_support::curl;
use plane_test_support::pki::Pki;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn write_pair(cert: &Path, key: &Path, pair: &(String, String)) -> anyhow::Result<()> {
    // As a renewer does: each file written aside and renamed into place, key first.
    for (path, pem) in [(key, &pair.1), (cert, &pair.0)] {
        let aside = path.with_extension("new");
        std::fs::write(&aside, pem)?;
        std::fs::rename(&aside, path)?;
    }
    Ok(())
}

/// The first line of a PEM certificate's base64: enough to tell two certificates apart.
fn fingerprint(cert_pem: &str) -> anyhow::Result<String> {
    cert_pem
        .lines()
        .nth(1)
        .map(str::to_string)
        .context("a PEM certificate")
}

/// One HTTPS request with a new connection: its status, and the server certificate's PEM as
/// curl saw it.
fn https_get(ca: &Path, host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let output = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &resolve, "-o", "/dev/null"])
        .args(["-w", "%{http_code}\n%{certs}", &url])
        .output()
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, certs) = out.split_once('\n').context("curl's write-out")?;
    Ok((status.trim().parse()?, certs.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plane_dev_serves_https_redirects_plain_http_and_rotates_its_certificate(
) -> anyhow::Result<()> {
    bounded(async {
        let pki = Pki::generate()?;
        let cert = pki.dir().join("drone.pem");
        let key = pki.dir().join("drone-key.pem");
        let first = pki.server_pair(&["*.plane.localhost"])?;
        write_pair(&cert, &key, &first)?;
        let c = Cluster::dev_https(&cert, &key).await?;
        let https_port = c.proxy_port;
        let dev = c.drone.as_ref().context("plane dev")?;
        let plain = after(dev, "answers 308 to https (listening on ")?;
        let plain = plain.trim_end_matches(')').to_string();

        // The drone reports the certificate its listener serves (operator-provided files).
        plane_test_support::eventually(
            common::STATE_TIMEOUT,
            "the certificate in plane drones",
            || async {
                let drones = c.plane_json(&["drones"]).await?;
                let certificate = &drones[0]["certificate"];
                ensure!(certificate["last_renewal_error"].is_null(), "{drones}");
                let shown = certificate["names"] == serde_json::json!(["*.plane.localhost"])
                    && certificate["not_after"].is_u64();
                Ok(shown.then_some(()))
            },
        )
        .await?;

        let record = c.spawn_ready("", &["--idle", "60"]).await?;
        let id = id_of(&record)?;
        let host = c.host(&id);
        let url = record["url"].as_str().context("url")?;
        ensure!(
            url == format!("https://{host}:{https_port}/"),
            "the backend's URL says https: {record}"
        );

        let (status, certs) = https_get(&pki.ca, &host, https_port, "/")?;
        ensure!(status == 200, "over https: {status}");
        ensure!(certs.contains(&fingerprint(&first.0)?), "{certs}");

        let redirected = curl(&[
            "-i",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{plain}/a?b=c"),
        ])?;
        ensure!(redirected.status == 308, "{redirected:?}");
        let location = format!("location: https://{host}:{https_port}/a?b=c");
        ensure!(
            redirected
                .body
                .lines()
                .any(|line| line.trim().eq_ignore_ascii_case(&location)),
            "{redirected:?}"
        );

        // Requests on new connections, one after another, while the files are replaced.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let second = pki.server_pair(&["*.plane.localhost"])?;
        let new_print = fingerprint(&second.0)?;
        let seen_new = Arc::new(AtomicBool::new(false));
        let load = {
            let (stop, served, failures, seen_new) = (
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failures),
                Arc::clone(&seen_new),
            );
            let (ca, host, new_print) = (pki.ca.clone(), host.clone(), new_print.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match https_get(&ca, &host, https_port, "/") {
                        Ok((200, certs)) => {
                            served.fetch_add(1, Ordering::SeqCst);
                            if certs.contains(&new_print) {
                                seen_new.store(true, Ordering::SeqCst);
                            }
                        }
                        Ok((status, _)) => failures
                            .lock()
                            .expect("failures")
                            .push(format!("status {status}")),
                        Err(error) => failures.lock().expect("failures").push(error.to_string()),
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while served.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        write_pair(&cert, &key, &second)?;
        while !seen_new.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || load.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
        let failures = failures.lock().expect("failures").clone();
        ensure!(
            failures.is_empty(),
            "requests failed during rotation: {failures:?}"
        );
        ensure!(
            seen_new.load(Ordering::SeqCst),
            "new connections got the new certificate within 20 s ({} served)",
            served.load(Ordering::SeqCst)
        );
        Ok(())
    })
    .await
}
