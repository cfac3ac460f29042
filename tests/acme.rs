//! The cluster's certificate over real components: `plane controller` (its DNS server answering
//! DNS-01) and `plane drone` processes over a real nats-server, a real ACME CA (Let's Encrypt's
//! pebble) that validates through Plane's DNS, dig, curl and a rustls client that trusts only
//! pebble's root.

mod common;

use anyhow::{ensure, Context};
use common::{after, backend_bin, Cluster, STATE_TIMEOUT};
use plane_test_support::dig::{dig, flags, section, status};
use plane_test_support::tls_probe::served_leaf;
use plane_test_support::{eventually, ChildGuard, NatsServer, Pebble};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CLUSTER: &str = "plane-acme.test";

/// Short-lived certificates, so that renewal (a third of the lifetime before expiry) comes
/// within the test.
const VALIDITY_SECS: u64 = 30;

/// The long test's bound: two renewals at most 20 s apart, plus start-up.
const LONG_TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a first certificate may take (an order takes about a second with pebble).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(30);

/// A drone that gets its certificate from `pebble`, keeping its state in `state_dir`.
struct AcmeDrone {
    process: ChildGuard,
    https_port: u16,
    state_dir: PathBuf,
}

fn acme_flags<'a>(pebble: &'a Pebble, state_dir: &'a Path) -> Vec<String> {
    vec![
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--https".into(),
        "127.0.0.1:0".into(),
        "--acme-directory".into(),
        pebble.directory.clone(),
        "--acme-email".into(),
        "ops@plane-acme.test".into(),
        "--acme-root-ca".into(),
        pebble.https_ca().display().to_string(),
    ]
}

fn start_acme_drone(
    c: &Cluster,
    id: &str,
    state_dir: &Path,
    flags: &[String],
) -> anyhow::Result<AcmeDrone> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (process, _plain_port) = c.start_drone(id, &flags)?;
    let https: std::net::SocketAddr = after(&process, "https listening on ")?.parse()?;
    Ok(AcmeDrone {
        process,
        https_port: https.port(),
        state_dir: state_dir.to_owned(),
    })
}

/// The drone's record in `plane drones --json`.
async fn drone_record(c: &Cluster, id: &str) -> anyhow::Result<Value> {
    let drones = c.plane_json(&["drones"]).await?;
    drones
        .as_array()
        .and_then(|all| all.iter().find(|d| d["id"] == id))
        .cloned()
        .with_context(|| format!("drone {id} not in {drones}"))
}

/// Waits until `plane drones` shows the drone serving a certificate for the cluster's names
/// that expires after `after_millis`; returns its `not_after`.
async fn certificate_shown(c: &Cluster, id: &str, after_millis: u64) -> anyhow::Result<u64> {
    eventually(
        ISSUE_TIMEOUT,
        &format!("{id}'s certificate in `plane drones`"),
        || async {
            let record = drone_record(c, id).await?;
            let certificate = &record["certificate"];
            let Some(not_after) = certificate["not_after"].as_u64() else {
                return Ok(None);
            };
            let mut names: Vec<&str> = certificate["names"]
                .as_array()
                .context("names")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            names.sort_unstable();
            ensure!(
                names == ["*.plane-acme.test", "plane-acme.test"],
                "names: {record}"
            );
            ensure!(record["ip"] == "127.0.0.1", "the advertised ip: {record}");
            Ok(
                (not_after > after_millis && certificate["last_renewal_error"].is_null())
                    .then_some(not_after),
            )
        },
    )
    .await
}

/// A request through the drone's HTTPS listener with curl, trusting `root` (or the system's
/// roots): its status code, or curl's exit code when it failed (60: certificate not trusted).
fn curl_https(port: u16, host: &str, root: Option<&Path>) -> anyhow::Result<Result<u16, i32>> {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let mut command = std::process::Command::new("curl");
    command.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ]);
    command.args(["--resolve", &resolve]);
    if let Some(root) = root {
        command.arg("--cacert").arg(root);
    }
    command.arg(format!("https://{host}:{port}/"));
    let output = command.output().context("running curl")?;
    if !output.status.success() {
        return Ok(Err(output.status.code().unwrap_or(-1)));
    }
    let code = String::from_utf8_lossy(&output.stdout);
    Ok(Ok(code.trim().parse().context("curl's status code")?))
}

fn account_file(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = state_dir.join(CLUSTER).join("acme");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    ensure!(files.len() == 1, "one account file: {files:?}");
    Ok(files.remove(0))
}

/// One order serves every drone; the certificate is served only to clients that trust the CA
/// and for the cluster's names; renewal swaps it with no failed request; a restarted drone
/// orders with the account it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drones_share_renew_and_serve_the_cluster_certificate() -> anyhow::Result<()> {
    tokio::time::timeout(LONG_TEST_TIMEOUT, async {
        let c = Cluster::controller_only(CLUSTER, NatsServer::start()?)?;
        let dns = c.dns.context("the controller's DNS")?;
        let pebble = Pebble::start(dns, VALIDITY_SECS)?;
        let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);

        // The first drone orders; the second, started once it has, takes the stored one.
        let flags_1 = acme_flags(&pebble, dirs.0.path());
        let mut drone_1 = start_acme_drone(&c, "drone-1", dirs.0.path(), &flags_1)?;
        let first = certificate_shown(&c, "drone-1", 0).await?;
        let drone_2 = start_acme_drone(
            &c,
            "drone-2",
            dirs.1.path(),
            &acme_flags(&pebble, dirs.1.path()),
        )?;
        ensure!(certificate_shown(&c, "drone-2", 0).await? == first);
        ensure!(pebble.issued() == 1, "one order for both drones");
        let name = format!("anything.{CLUSTER}");
        let leaf_1 = served_leaf(drone_1.https_port, &name, &pebble.root).await?;
        let leaf_2 = served_leaf(drone_2.https_port, &name, &pebble.root).await?;
        ensure!(leaf_1 == leaf_2, "both drones serve the one certificate");
        ensure!(
            served_leaf(drone_1.https_port, "other.example", &pebble.root)
                .await
                .is_err(),
            "not valid for a name outside the cluster"
        );
        // The order's DNS-01 values are gone with it.
        let txt = dig(dns, &["TXT", &format!("_acme-challenge.{CLUSTER}")])?;
        ensure!(status(&txt).0 == "NXDOMAIN", "{txt}");

        // A backend, reached through each kind of client.
        let command = backend_bin();
        let record = c
            .plane_json(&["spawn", "--wait", "--command", &command])
            .await?;
        let id = record["id"].as_str().context("id")?.to_owned();
        ensure!(
            record["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://")),
            "{record}"
        );
        let port = match record["drone"].as_str() {
            Some("drone-1") => drone_1.https_port,
            _ => drone_2.https_port,
        };
        let host = format!("{id}.{CLUSTER}");
        ensure!(curl_https(port, &host, Some(&pebble.root))? == Ok(200));
        ensure!(
            curl_https(port, &host, None)? == Err(60),
            "a client that does not trust pebble's root is refused"
        );

        // Renewal: requests on new connections all along, until the served certificate changes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(VALIDITY_SECS + 10);
        let mut requests = 0;
        loop {
            let code = curl_https(port, &host, Some(&pebble.root))?;
            requests += 1;
            ensure!(
                code == Ok(200),
                "request {requests} during renewal: {code:?}"
            );
            if served_leaf(port, &host, &pebble.root).await? != leaf_1 {
                break;
            }
            ensure!(tokio::time::Instant::now() < deadline, "no renewal in time");
        }
        for _ in 0..3 {
            ensure!(curl_https(port, &host, Some(&pebble.root))? == Ok(200));
        }
        let renewed_leaf = served_leaf(port, &host, &pebble.root).await?;
        ensure!(pebble.issued() == 2, "one renewal for both drones");
        let renewed = certificate_shown(&c, "drone-1", first).await?;
        ensure!(certificate_shown(&c, "drone-2", first).await? == renewed);

        // A restart: drone-1 alone, so it orders the next renewal, with the account it kept.
        let account = account_file(dirs.0.path())?;
        let kept = std::fs::read(&account)?;
        let accounts = pebble.accounts_created();
        drop(drone_2);
        drone_1.process.signal(libc::SIGKILL)?;
        drone_1.process.wait_exit(STATE_TIMEOUT)?;
        drone_1 = start_acme_drone(&c, "drone-1", &drone_1.state_dir, &flags_1)?;
        // Its certificate is due a third of the lifetime before it expires.
        eventually(
            Duration::from_secs(VALIDITY_SECS + 15),
            "the renewal after the restart",
            || async {
                let shown = drone_record(&c, "drone-1").await?["certificate"]["not_after"].as_u64();
                Ok(shown.filter(|&not_after| not_after > renewed))
            },
        )
        .await?;
        ensure!(pebble.issued() == 3);
        ensure!(pebble.accounts_created() == accounts, "no new account");
        ensure!(
            std::fs::read(&account)? == kept,
            "the account file is unchanged"
        );
        ensure!(
            drone_1
                .process
                .output_so_far()
                .contains("reusing the kept ACME account"),
            "the restarted drone reused its account"
        );
        // The restarted drone serves the third certificate (its backend died with it).
        let third = served_leaf(drone_1.https_port, &name, &pebble.root).await?;
        ensure!(third != leaf_1 && third != renewed_leaf);
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// A CA that requires external account binding: a drone without it reports why it has no
/// certificate; one with it gets a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_and_failures_are_reported() -> anyhow::Result<()> {
    common::bounded(async {
        let c = Cluster::controller_only(CLUSTER, NatsServer::start()?)?;
        let dns = c.dns.context("the controller's DNS")?;
        let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
        let pebble = Pebble::start_with(dns, 3600, Some(("kid-1", hmac)))?;
        let dir = tempfile::tempdir()?;

        let unbound = acme_flags(&pebble, dir.path());
        let drone = start_acme_drone(&c, "drone-1", dir.path(), &unbound)?;
        let error = eventually(
            ISSUE_TIMEOUT,
            "the renewal error in `plane drones`",
            || async {
                let record = drone_record(&c, "drone-1").await?;
                let certificate = &record["certificate"];
                ensure!(certificate["not_after"].is_null(), "{record}");
                Ok(certificate["last_renewal_error"]
                    .as_str()
                    .map(str::to_owned))
            },
        )
        .await?;
        ensure!(error.contains("externalAccount"), "{error}");
        let table = c.plane(&["drones"]).await?;
        let table = String::from_utf8_lossy(&table.stdout);
        ensure!(
            table.contains("none yet") && table.contains("renewal failing"),
            "{table}"
        );
        drop(drone);

        let hmac_file = dir.path().join("eab-hmac");
        std::fs::write(&hmac_file, format!("{hmac}\n"))?;
        let mut bound = unbound.clone();
        bound.extend([
            "--acme-eab-kid".to_string(),
            "kid-1".to_string(),
            "--acme-eab-hmac-file".to_string(),
            hmac_file.display().to_string(),
        ]);
        let drone = start_acme_drone(&c, "drone-1", dir.path(), &bound)?;
        certificate_shown(&c, "drone-1", 0).await?;
        let leaf = served_leaf(drone.https_port, &format!("x.{CLUSTER}"), &pebble.root).await?;
        ensure!(!leaf.is_empty());
        Ok(())
    })
    .await
}

/// The certificate requests drones make, sent by hand over real NATS: only the lock holder
/// publishes DNS-01 values, which the controller's DNS serves until the order ends; requests
/// under another drone's subject and malformed ones get nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_lock_guards_the_dns01_values() -> anyhow::Result<()> {
    common::bounded(async {
        let nats = NatsServer::start()?;
        let url = nats.url();
        let c = Cluster::controller_only(CLUSTER, nats)?;
        let dns = c.dns.context("the controller's DNS")?;
        let client = async_nats::connect(&url).await?;
        let subject = |drone: &str| format!("plane.plane-acme_test.drone.{drone}.certificate");
        let ask = |drone: &str, body: Value| {
            let (client, subject) = (client.clone(), subject(drone));
            async move {
                let reply = tokio::time::timeout(
                    Duration::from_secs(3),
                    client.request(subject, body.to_string().into()),
                )
                .await
                .context("no answer")??;
                anyhow::Ok(serde_json::from_slice::<Value>(&reply.payload)?)
            }
        };
        let challenge = format!("_acme-challenge.{CLUSTER}");
        let txt = || -> anyhow::Result<Vec<String>> {
            let answer = dig(dns, &["TXT", &challenge])?;
            Ok(section(&answer, "ANSWER")
                .into_iter()
                .map(|(_, value)| value.trim_matches('"').to_owned())
                .collect())
        };

        let granted = ask("d-a", serde_json::json!({"request": "get", "drone": "d-a"})).await?;
        ensure!(granted["answer"] == "order", "{granted}");
        let waiting = ask("d-b", serde_json::json!({"request": "get", "drone": "d-b"})).await?;
        ensure!(waiting["answer"] == "wait", "{waiting}");
        let publish = |drone: &str, value: &str| {
            serde_json::json!({"request": "challenge", "drone": drone, "value": value})
        };
        let refused = ask("d-b", publish("d-b", "bvalue")).await?;
        ensure!(refused["answer"] == "error", "only the holder publishes: {refused}");
        ensure!(txt()?.is_empty());

        ensure!(ask("d-a", publish("d-a", "first-value_1")).await?["answer"] == "done");
        ensure!(txt()? == ["first-value_1"]);
        ensure!(ask("d-a", publish("d-a", "second-value")).await?["answer"] == "done");
        let mut values = txt()?;
        values.sort();
        ensure!(values == ["first-value_1", "second-value"], "{values:?}");
        let other = dig(dns, &["A", &challenge])?;
        ensure!(status(&other).0 == "NOERROR" && section(&other, "ANSWER").is_empty(), "NODATA: {other}");

        let bad = ask("d-a", publish("d-a", "not base64url!")).await?;
        ensure!(bad["answer"] == "error", "{bad}");
        // Another drone's subject: not believed, not answered.
        let spoofed = ask("d-b", serde_json::json!({"request": "release", "drone": "d-a"})).await;
        ensure!(spoofed.is_err(), "{spoofed:?}");
        ensure!(txt()?.len() == 2, "the values stay");
        // Garbage: a clear refusal, and the controller goes on.
        let garbage = client
            .request(subject("d-a"), "{not json".into())
            .await?;
        let garbage: Value = serde_json::from_slice(&garbage.payload)?;
        ensure!(garbage["answer"] == "error", "{garbage}");
        let store = serde_json::json!({"request": "store", "drone": "d-a", "certificate": {
            "chain_pem": "", "key_pem": "", "names": ["other.example"], "not_before": 0,
            "not_after": 4_000_000_000_000u64, "ordered_by": "d-a"}});
        let stored = ask("d-a", store).await?;
        ensure!(stored["answer"] == "error", "a certificate for other names: {stored}");

        ensure!(ask("d-a", serde_json::json!({"request": "release", "drone": "d-a"})).await?["answer"] == "done");
        let gone = dig(dns, &["TXT", &challenge])?;
        ensure!(status(&gone).0 == "NXDOMAIN", "{gone}");
        let next = ask("d-b", serde_json::json!({"request": "get", "drone": "d-b"})).await?;
        ensure!(next["answer"] == "order", "the lock is free again: {next}");
        ensure!(flags(&gone).contains(&"aa"));
        Ok(())
    })
    .await
}
