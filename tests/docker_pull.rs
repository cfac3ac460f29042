//! Pull policies and registry credentials, against a real registry on loopback (Debian's
//! `docker-registry` with htpasswd authentication) and the real engine: what each policy does
//! with and without the image, with and without (right or wrong) credentials, and that the
//! password shows up in no answer, event or log line.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, id_of, Cluster};
use plane_test_support::docker::{
    container_exists, docker, image_with_own_layer, incompressible, test_image,
};
use plane_test_support::registry::Registry;
use plane_test_support::{eventually, TcpRelay};
use serde_json::Value;

/// The repository and tag the test image is pushed as.
const NAME: &str = "plane/backend";
const TAG: &str = "v1";

/// `plane spawn --wait --image REF ARGS`: the record when it got ready, else the failure's
/// stderr.
async fn spawn(
    c: &Cluster,
    reference: &str,
    args: &[&str],
) -> anyhow::Result<Result<Value, String>> {
    let mut all = vec!["spawn", "--wait", "--json", "--image", reference];
    all.extend_from_slice(args);
    let output = c.plane(&all).await?;
    if output.status.success() {
        Ok(Ok(serde_json::from_slice(&output.stdout)?))
    } else {
        Ok(Err(String::from_utf8_lossy(&output.stderr).into_owned()))
    }
}

/// The record of the last backend of this image, as `plane list` shows it.
async fn last_record(c: &Cluster, reference: &str) -> anyhow::Result<Value> {
    c.last_listed(|r| r["spec"]["executable"]["image"] == reference)
        .await
}

async fn terminate(c: &Cluster, record: &Value) -> anyhow::Result<()> {
    let id = id_of(record)?;
    let output = c.plane(&["terminate", &id]).await?;
    ensure!(output.status.success(), "{output:?}");
    c.watch_until_terminated(&id).await?;
    common::container_removed(&id).await
}

#[tokio::test]
async fn pull_policies_with_and_without_credentials() -> anyhow::Result<()> {
    bounded(async {
        let registry = Registry::start(true)?;
        // An image with a layer of its own, which the engine no longer has once pushed.
        let local = format!("plane-pull-test:{}", std::process::id());
        image_with_own_layer(test_image()?, &local, &registry.addr)?;
        let reference = registry.push(&local, &format!("{NAME}:{TAG}"))?;
        docker(&["rmi", &local])?;
        let (user, password) = registry
            .credentials
            .clone()
            .context("an authenticating registry")?;
        let dir = tempfile::tempdir()?;
        let right = dir.path().join("right");
        std::fs::write(&right, format!("{password}\n"))?;
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "not-the-password")?;
        let (right, wrong) = (right.display().to_string(), wrong.display().to_string());
        let with = |file: &str| -> Vec<String> {
            ["--registry-user", &user, "--registry-password-file", file]
                .map(str::to_string)
                .to_vec()
        };
        let cluster = common::own_cluster("pull-policies");
        let c = Cluster::dev_with(&["--executor", "docker", "--cluster", &cluster]).await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let fetches = || registry.manifest_fetches(NAME, TAG);

        // Not on the engine: `never` does not even ask the registry.
        let failed = spawn(&c, &reference, &["--pull", "never"]).await?;
        ensure!(failed.is_err(), "{failed:?}");
        let record = last_record(&c, &reference).await?;
        ensure!(record["reason"] == "error_loading", "{record}");
        ensure!(fetches() == 0, "{}", registry.log());

        // Without credentials, then with the wrong ones: the registry refuses, and the
        // engine's reason is in the record.
        for args in [Vec::new(), with(&wrong)] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let failed = spawn(&c, &reference, &args).await?;
            ensure!(failed.is_err(), "{failed:?}");
            let record = last_record(&c, &reference).await?;
            ensure!(record["reason"] == "error_loading", "{record}");
            let message = record["message"].as_str().unwrap_or_default();
            ensure!(
                message.contains("pull failed") && message.contains(&reference),
                "{record}"
            );
        }

        // The right ones: pulled (if_not_present, the default), and ready.
        let args = with(&right);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = fetches();
        let ready = spawn(&c, &reference, &args)
            .await?
            .map_err(anyhow::Error::msg)?;
        ensure!(ready["state"] == "ready", "{ready}");
        ensure!(fetches() > before, "pulled: {}", registry.log());
        // The pull's last figures, as the drone reported them while loading.
        let pull = &c.status(&id_of(&ready)?).await?["pull"];
        ensure!(
            pull["layers_total"].as_u64().is_some_and(|n| n >= 1),
            "{pull}"
        );
        ensure!(pull["layers_done"] == pull["layers_total"], "{pull}");
        let answer = c.get(&c.host(&id_of(&ready)?), "/", &[])?;
        ensure!(answer.status == 200, "{answer:?}");
        terminate(&c, &ready).await?;

        // Now on the engine: if_not_present and never start it without asking the registry,
        // and without credentials.
        let before = fetches();
        for policy in ["if_not_present", "never"] {
            let ready = spawn(&c, &reference, &["--pull", policy])
                .await?
                .map_err(anyhow::Error::msg)?;
            terminate(&c, &ready).await?;
        }
        ensure!(fetches() == before, "no pull: {}", registry.log());

        // `always` asks the registry every time.
        let mut always = args.clone();
        always.extend(["--pull", "always"]);
        let ready = spawn(&c, &reference, &always)
            .await?
            .map_err(anyhow::Error::msg)?;
        ensure!(fetches() > before, "pulled again: {}", registry.log());
        terminate(&c, &ready).await?;

        // The password is in no answer, record or event, nor in Plane's own log.
        let list = c.plane_json(&["list"]).await?.to_string();
        ensure!(!list.contains(&password), "in the list: {list}");
        let events = c.watch_until_terminated(&id_of(&ready)?).await?;
        let events = serde_json::to_string(&events)?;
        ensure!(!events.contains(&password), "in events: {events}");
        let log = c.drone.as_ref().context("the dev process")?.output_so_far();
        ensure!(!log.contains(&password), "in Plane's log");
        ensure!(!list.contains("\"credentials\""), "{list}");

        docker(&["rmi", &reference])?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_terminate_during_a_slow_pull_leaves_nothing() -> anyhow::Result<()> {
    bounded(async {
        let registry = Registry::start(false)?;
        // 8 MiB that the engine does not have, pulled through a 256 KiB/s link: half a minute.
        let local = format!("plane-slow-pull:{}", std::process::id());
        let layer = incompressible(8 << 20, u64::from(std::process::id()));
        image_with_own_layer(test_image()?, &local, &layer)?;
        registry.push(&local, "plane/slow:v1")?;
        docker(&["rmi", &local])?;
        let relay = TcpRelay::throttled(registry.addr.parse()?, 256 * 1024).await?;
        let reference = format!("{}/plane/slow:v1", relay.addr());

        let cluster = common::own_cluster("slow-pull");
        let c = Cluster::dev_with(&["--executor", "docker", "--cluster", &cluster]).await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let record = c.plane_json(&["spawn", "--image", &reference]).await?;
        let id = id_of(&record)?;
        eventually(common::STATE_TIMEOUT, "the pull under way", || async {
            let status = c.status(&id).await?;
            let pulling = status["state"] == "loading"
                && status["pull"]["bytes_done"].as_u64().is_some_and(|n| n > 0);
            Ok(pulling.then_some(()))
        })
        .await?;
        let output = c.plane(&["terminate", &id]).await?;
        ensure!(output.status.success(), "{output:?}");
        let events = c.watch_until_terminated(&id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "terminated", "{last}");
        ensure!(
            !container_exists(&format!("plane-{id}"))?,
            "no container was made"
        );
        let _ = docker(&["rmi", &reference]);
        Ok(())
    })
    .await
}
