//! A real browser through Plane: Debian's Chromium, headless, loads the test backend's `/page`
//! through `plane dev`; the page opens a WebSocket to its own origin and writes what came back
//! (and the protocol the page arrived over) into its DOM, which the test reads over the
//! DevTools protocol. Over plain HTTP, then over `plane dev --https` with a test CA the browser is
//! told to trust (its own NSS database), where the page must have come over h2, and a backend
//! that requires a token is reached after `/_plane_auth` set the cookie.

mod common;

use anyhow::{bail, ensure, Context};
use common::{bounded, id_of, Cluster};
use plane_test_support::pki::Pki;
use plane_test_support::{curl, ChildGuard};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long the page may take to load and write its result.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Headless Chromium driven over the DevTools protocol: the page's script runs in real time,
/// and the test waits for the result it writes instead of guessing how long it takes.
struct Chromium {
    _process: ChildGuard,
    devtools: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Chromium {
    /// Starts Chromium with `home` as its home (and so its NSS database).
    async fn start(home: &Path) -> anyhow::Result<Chromium> {
        let mut command = Command::new("chromium");
        command
            .env("HOME", home)
            .args([
                "--headless",
                // As root (CI) the sandbox cannot start; the pages are our own.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                home.join("profile").display()
            ))
            .arg("about:blank");
        let process = ChildGuard::spawn("chromium", command)?;
        let line = process.wait_for_output("DevTools listening on ", PAGE_TIMEOUT)?;
        let browser_url = line
            .split("DevTools listening on ")
            .nth(1)
            .context("the DevTools address")?
            .trim()
            .to_string();
        // The page target's own socket: `ws://127.0.0.1:PORT/devtools/page/ID`.
        let http = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .context("the DevTools host")?
            .to_string();
        let list = curl(&[&format!("http://{http}/json/list")])?.json()?;
        let page = list
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .with_context(|| format!("no page target: {list}"))?
            .to_string();
        let (devtools, _) = tokio_tungstenite::connect_async(page.as_str()).await?;
        Ok(Chromium {
            _process: process,
            devtools,
            next_id: 0,
        })
    }

    /// Sends one DevTools command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        use futures::{SinkExt, StreamExt};
        self.next_id += 1;
        let id = self.next_id;
        let message = serde_json::json!({ "id": id, "method": method, "params": params });
        self.devtools
            .send(Message::text(message.to_string()))
            .await?;
        loop {
            let reply = tokio::time::timeout(PAGE_TIMEOUT, self.devtools.next())
                .await
                .with_context(|| format!("no answer to {method}"))?
                .context("DevTools closed")??;
            let Ok(text) = reply.to_text() else { continue };
            let reply: Value = serde_json::from_str(text)?;
            if reply["id"] == id {
                ensure!(reply.get("error").is_none(), "{method}: {reply}");
                return Ok(reply["result"].clone());
            }
        }
    }

    /// Opens `url` and returns the JSON the page wrote into `<pre id="result">`.
    async fn result_of(&mut self, url: &str) -> anyhow::Result<Value> {
        self.call("Page.navigate", serde_json::json!({ "url": url }))
            .await?;
        let deadline = Instant::now() + PAGE_TIMEOUT;
        let expression = "(() => { const r = document.getElementById('result'); \
                          return r ? r.textContent : 'pending'; })()";
        loop {
            let evaluated = self
                .call(
                    "Runtime.evaluate",
                    serde_json::json!({ "expression": expression, "returnByValue": true }),
                )
                .await?;
            let text = evaluated["result"]["value"].as_str().unwrap_or("pending");
            if text != "pending" {
                return serde_json::from_str(text)
                    .with_context(|| format!("page result {text:?} from {url}"));
            }
            if Instant::now() > deadline {
                bail!("{url} wrote no result within {PAGE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
        let mut browser = Chromium::start(home.path()).await?;
        let result = browser.result_of(&url).await?;
        drop(browser);
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
        let (cert, key) = pki.write_server_pair(&["*.plane.localhost"], "drone")?;
        let c = Cluster::dev_https(&cert, &key).await?;
        let id = id_of(&c.spawn_ready("", &["--idle", "60"]).await?)?;
        let url = format!("https://{}:{}/page", c.host(&id), c.proxy_port);
        // Started after the CA went into its NSS database.
        let mut browser = Chromium::start(home.path()).await?;
        let result = browser.result_of(&url).await?;
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
        let result = browser.result_of(&url).await?;
        ensure!(
            result["echo"] == "hello from the browser",
            "the token backend's page, after /_plane_auth: {result}"
        );
        Ok(())
    })
    .await
}
