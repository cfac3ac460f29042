//! A real browser through Plane: Debian's Chromium, headless, loads the test backend's `/page`
//! through `plane dev`; the page opens a WebSocket to its own origin and writes what came back
//! (and the protocol the page arrived over) into its DOM, which the test reads from
//! `--dump-dom`. Over plain HTTP, then over `plane dev --https` with a test CA the browser is
//! told to trust (its own NSS database), where the page must have come over h2, and a backend
//! that requires a token is reached after `/_plane_auth` set the cookie.

mod common;

use anyhow::{bail, ensure, Context};
use common::{bounded, id_of, Cluster};
use plane_test_support::pki::Pki;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long Chromium may take to load a page and run its script.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Loads `url` in headless Chromium with `home` as its home (and so its NSS database) and
/// returns the JSON the page wrote into `<pre id="result">`.
fn browse(url: &str, home: &Path) -> anyhow::Result<Value> {
    let profile = home.join("profile");
    let mut child = Command::new("chromium")
        .env("HOME", home)
        .args([
            "--headless",
            // As root (CI) the sandbox cannot start; the page is our own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting chromium: is it installed?")?;
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("chromium did not finish loading {url} within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let dom = String::from_utf8_lossy(&output.stdout);
    let result = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .with_context(|| {
            format!(
                "no result in the page from {url}: {dom}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let result = result.replace("&quot;", "\"").replace("&amp;", "&");
    serde_json::from_str(&result).with_context(|| format!("page result {result:?} from {url}"))
}

/// A home directory whose NSS database trusts `ca` for websites, as a user's would after
/// importing it.
fn home_trusting(ca: &Path, home: &Path) -> anyhow::Result<()> {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db = format!("sql:{}", db.display());
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new("certutil")
            .args(args)
            .output()
            .context("running certutil: is libnss3-tools installed?")?;
        ensure!(output.status.success(), "certutil {args:?}: {output:?}");
        Ok(())
    };
    run(&["-N", "-d", &db, "--empty-password"])?;
    let ca = ca.display().to_string();
    run(&[
        "-A",
        "-d",
        &db,
        "-t",
        "C,,",
        "-n",
        "plane-test-ca",
        "-i",
        &ca,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_whose_websocket_echoes_over_http_and_over_h2() -> anyhow::Result<()>
{
    bounded(async {
        let home = tempfile::tempdir()?;

        // Plain HTTP through plane dev.
        let c = Cluster::dev().await?;
        let id = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let url = format!("http://{}:{}/page", c.host(&id), c.proxy_port);
        let home_path = home.path().to_owned();
        let result = tokio::task::spawn_blocking(move || browse(&url, &home_path)).await??;
        ensure!(
            result["echo"] == "hello from the browser",
            "plain HTTP page: {result}"
        );
        ensure!(
            result["protocol"] == "http/1.1",
            "plain HTTP page: {result}"
        );
        drop(c);

        // HTTPS: the browser trusts the test CA; the page comes over h2.
        let pki = Pki::generate()?;
        home_trusting(&pki.ca, home.path())?;
        let (cert_pem, key_pem) = pki.server_pair(&["*.plane.localhost"])?;
        let cert = pki.dir().join("drone.pem");
        let key = pki.dir().join("drone-key.pem");
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
        let c = Cluster::dev_with(&[
            "--https",
            "127.0.0.1:0",
            "--cert",
            &cert_arg,
            "--key",
            &key_arg,
        ])
        .await?;
        let id = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let url = format!("https://{}:{}/page", c.host(&id), c.proxy_port);
        let home_path = home.path().to_owned();
        let result = tokio::task::spawn_blocking(move || browse(&url, &home_path)).await??;
        ensure!(
            result["echo"] == "hello from the browser",
            "HTTPS page: {result}"
        );
        ensure!(
            result["protocol"] == "h2",
            "the page came over h2: {result}"
        );

        // A backend that requires a token: the browser gets the cookie from /_plane_auth.
        let record = c
            .spawn_ready("", &["--idle", "60", "--require-token"])
            .await?;
        let id = id_of(&record)?;
        let token = record["token"].as_str().context("token")?;
        let url = format!(
            "https://{}:{}/_plane_auth?token={token}&redirect=%2Fpage",
            c.host(&id),
            c.proxy_port
        );
        let home_path = home.path().to_owned();
        let result = tokio::task::spawn_blocking(move || browse(&url, &home_path)).await??;
        ensure!(
            result["echo"] == "hello from the browser",
            "the token backend's page, after /_plane_auth: {result}"
        );
        Ok(())
    })
    .await
}
