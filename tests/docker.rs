//! The `docker` executor end to end, against the real engine: `plane dev --executor docker` and
//! a docker drone over a real NATS, running the test image (`FROM scratch` around the statically
//! linked test backend). A machine without an engine fails these tests; it never skips them.

mod common;

use anyhow::{ensure, Context};
use common::{bounded, container_removed, id_of, own_cluster, Cluster, STATE_TIMEOUT};
use plane_test_support::docker::{container_exists, docker, inspect, test_image};
use plane_test_support::{eventually, ChildGuard, NatsServer};
use serde_json::Value;

/// `plane dev --executor docker` under a cluster of its own (see [`own_cluster`]).
async fn docker_dev(name: &str) -> anyhow::Result<Cluster> {
    let cluster = own_cluster(name);
    Cluster::dev_with(&["--executor", "docker", "--cluster", &cluster]).await
}

/// A controller and a docker drone over a real NATS, in a cluster of the test's own (and this
/// run's): a drone that starts takes over or removes every container of its cluster on the
/// engine, so tests that share the engine must not share a cluster.
async fn docker_over_nats(name: &str) -> anyhow::Result<Cluster> {
    let id = format!("{name}-{}", std::process::id());
    let flags = ["--executor", "docker", "--id", &id];
    Cluster::over_named(&own_cluster(name), NatsServer::start()?, &[], &flags).await
}

/// `plane spawn --image` of the test image (never pulled: it is built here) with `extra`.
async fn spawn(c: &Cluster, extra: &[&str]) -> anyhow::Result<Value> {
    let image = test_image()?;
    let mut args = vec!["spawn", "--image", image, "--pull", "never"];
    args.extend_from_slice(extra);
    c.plane_json(&args).await
}

/// Spawns (without waiting), follows the backend to its end, and checks its container went.
async fn ends_as(c: &Cluster, extra: &[&str], path: Option<&str>) -> anyhow::Result<Value> {
    let mut args = extra.to_vec();
    if path.is_some() {
        args.push("--wait");
    }
    let record = spawn(c, &args).await?;
    let id = id_of(&record)?;
    if let Some(path) = path {
        let answer = c.get(&c.host(&id), path, &[])?;
        ensure!(answer.status == 200, "{path}: {answer:?}");
    }
    let events = c.watch_until_terminated(&id).await?;
    container_removed(&id).await?;
    events.last().cloned().context("no events")
}

#[tokio::test]
async fn a_container_is_routed_with_its_env_limits_labels_and_a_loopback_port() -> anyhow::Result<()>
{
    bounded(async {
        let c = docker_dev("docker-routed").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let record = spawn(
            &c,
            &[
                "--wait",
                "--memory",
                "64M",
                "--cpus",
                "0.5",
                "--pids",
                "64",
                "--env",
                "GREETING=hi",
            ],
        )
        .await?;
        ensure!(record["state"] == "ready", "{record}");
        let id = id_of(&record)?;

        let answer = c.get(&c.host(&id), "/info", &[])?;
        ensure!(answer.status == 200, "{answer:?}");
        let info: Value = serde_json::from_str(&answer.body)?;
        let env = &info["env"];
        ensure!(env["PORT"] == "8080", "{env}");
        ensure!(env["PLANE_BACKEND_ID"] == id.as_str(), "{env}");
        ensure!(env["PLANE_CLUSTER"] == c.cluster.as_str(), "{env}");
        ensure!(env["GREETING"] == "hi", "{env}");

        let name = format!("plane-{id}");
        let container = inspect(&name)?;
        let labels = &container["Config"]["Labels"];
        ensure!(labels["dev.plane.backend"] == id.as_str(), "{labels}");
        ensure!(
            labels["dev.plane.cluster"] == c.cluster.as_str(),
            "{labels}"
        );
        ensure!(
            labels["dev.plane.drone"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{labels}"
        );
        let host = &container["HostConfig"];
        ensure!(host["Memory"] == 64 << 20, "memory: {}", host["Memory"]);
        ensure!(
            host["NanoCpus"] == 500_000_000,
            "cpus: {}",
            host["NanoCpus"]
        );
        ensure!(host["PidsLimit"] == 64, "pids: {}", host["PidsLimit"]);
        let published = container["NetworkSettings"]["Ports"]["8080/tcp"]
            .as_array()
            .context("port 8080 published")?;
        ensure!(!published.is_empty());
        for binding in published {
            ensure!(binding["HostIp"] == "127.0.0.1", "loopback only: {binding}");
        }

        let output = c.plane(&["terminate", &id]).await?;
        ensure!(output.status.success(), "{output:?}");
        let events = c.watch_until_terminated(&id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "terminated", "{last}");
        container_removed(&id).await
    })
    .await
}

#[tokio::test]
async fn container_backends_end_as_the_lifecycle_says() -> anyhow::Result<()> {
    bounded(async {
        let c = docker_dev("docker-lifecycle").await?;
        let _cleanup = c.containers_removed_at_end().await?;

        // Exits before it ever answers.
        let last = ends_as(&c, &["--command=--exit-code 3"], None).await?;
        ensure!(last["reason"] == "error_starting", "{last}");

        // Docker's proxy accepts on the published port, but nothing answers HTTP inside.
        let last = ends_as(&c, &["--command=--ready-delay-ms 600000"], None).await?;
        ensure!(last["reason"] == "timed_out", "{last}");
        let message = last["message"].as_str().unwrap_or_default();
        ensure!(message.contains("answer HTTP"), "{last}");

        // Ready, then fails, or exits cleanly.
        let last = ends_as(&c, &[], Some("/exit?code=3")).await?;
        ensure!(
            last["reason"] == "failed" && last["exit_code"] == 3,
            "{last}"
        );
        let last = ends_as(&c, &[], Some("/exit?code=0")).await?;
        ensure!(
            last["reason"] == "exited" && last["exit_code"] == 0,
            "{last}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_container_killed_for_memory_is_failed_with_oom_killed() -> anyhow::Result<()> {
    bounded(async {
        let c = docker_dev("docker-oom").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let record = spawn(&c, &["--wait", "--memory", "32M"]).await?;
        let id = id_of(&record)?;
        // The kill cuts the answer off: whatever curl gets is beside the point.
        let _ = c.get(&c.host(&id), "/alloc?mib=256", &[]);
        let events = c.watch_until_terminated(&id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "failed", "{last}");
        ensure!(last["oom_killed"] == true, "{last}");
        let status = c.status(&id).await?;
        ensure!(status["oom_killed"] == true, "{status}");
        container_removed(&id).await
    })
    .await
}

#[tokio::test]
async fn a_missing_image_with_pull_never_is_error_loading_with_the_reason() -> anyhow::Result<()> {
    bounded(async {
        let c = docker_dev("docker-missing-image").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let output = c
            .plane(&[
                "spawn",
                "--wait",
                "--image",
                "plane-no-such-image:none",
                "--pull",
                "never",
            ])
            .await?;
        ensure!(!output.status.success(), "spawn --wait must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains("error_loading"), "stderr: {stderr}");
        let record = c
            .last_listed(|r| r["spec"]["executable"]["image"] == "plane-no-such-image:none")
            .await?;
        ensure!(record["reason"] == "error_loading", "{record}");
        let message = record["message"].as_str().unwrap_or_default();
        ensure!(message.contains("pull policy is never"), "{record}");
        // The backend's log says why too, as Plane.
        let id = id_of(&record)?;
        let log = eventually(STATE_TIMEOUT, "the reason in the log", || async {
            let log = c.plane(&["logs", &id]).await?;
            let text = String::from_utf8_lossy(&log.stdout).into_owned();
            Ok(text.contains("pull policy is never").then_some(text))
        })
        .await?;
        ensure!(log.contains("plane  terminated: error_loading"), "{log}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_docker_drone_over_nats_runs_routes_and_removes_a_container() -> anyhow::Result<()> {
    bounded(async {
        let image = test_image()?;
        let c = docker_over_nats("docker-routes").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        // A process spawn has no drone to go to, and the refusal says why.
        let output = c.plane(&["spawn", "--command", "true"]).await?;
        ensure!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains("process executor"), "{stderr}");

        let record = c
            .plane_json(&[
                "spawn",
                "--wait",
                "--image",
                image,
                "--pull",
                "if_not_present",
            ])
            .await?;
        let id = id_of(&record)?;
        let answer = c.get(&c.host(&id), "/", &[])?;
        ensure!(answer.status == 200, "{answer:?}");
        ensure!(answer.body.contains(&id), "{answer:?}");
        ensure!(container_exists(&format!("plane-{id}"))?);
        let output = c.plane(&["terminate", &id]).await?;
        ensure!(output.status.success(), "{output:?}");
        c.watch_until_terminated(&id).await?;
        container_removed(&id).await
    })
    .await
}

#[tokio::test]
async fn a_restarted_dev_removes_the_containers_its_killed_process_left() -> anyhow::Result<()> {
    bounded(async {
        let mut c = docker_dev("docker-dev-restart").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let record = spawn(&c, &["--wait"]).await?;
        let id = id_of(&record)?;
        c.kill_drone();
        // Containers outlive their drone process...
        ensure!(
            container_exists(&format!("plane-{id}"))?,
            "outlived the drone"
        );
        // ...and the same drone, started again, removes what it no longer runs.
        c.start_dev_again().await?;
        container_removed(&id).await
    })
    .await
}

/// Spawns the test image over `c` and waits until it is ready.
async fn ready(c: &Cluster, extra: &[&str]) -> anyhow::Result<Value> {
    let mut args = vec!["--wait"];
    args.extend_from_slice(extra);
    spawn(c, &args).await
}

/// The engine's id of backend `id`'s container.
fn container_id(id: &str) -> anyhow::Result<String> {
    let inspected = inspect(&format!("plane-{id}"))?;
    Ok(inspected["Id"].as_str().context("an Id")?.to_string())
}

/// The loopback port the engine published backend `id`'s container on.
fn published_port(id: &str) -> anyhow::Result<u16> {
    let inspected = inspect(&format!("plane-{id}"))?;
    let port = &inspected["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"];
    port.as_str()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no published port: {inspected}"))
}

/// Waits until a drone process other than the one that started at `before` has reported the
/// backend (it took it over), and returns its status.
async fn taken_over(c: &Cluster, id: &str, before: &Value) -> anyhow::Result<Value> {
    eventually(STATE_TIMEOUT, "the backend taken over", || async {
        let status = c.status(id).await?;
        let moved = status["drone_started_at"] != *before;
        Ok(moved.then_some(status))
    })
    .await
}

#[tokio::test]
async fn a_restarted_docker_drone_adopts_what_the_cluster_still_wants() -> anyhow::Result<()> {
    bounded(async {
        let mut c = docker_over_nats("docker-adopts").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        // One that requires a token and is swept when idle; one that ends while the drone is
        // down.
        let kept = ready(&c, &["--require-token", "--idle", "8"]).await?;
        let kept_id = id_of(&kept)?;
        let token = kept["token"].as_str().context("a token")?.to_string();
        let ends = ready(&c, &[]).await?;
        let ends_id = id_of(&ends)?;
        let before = c.status(&kept_id).await?["drone_started_at"].clone();
        let container = container_id(&kept_id)?;

        c.kill_drone();
        // Straight to the container (the proxy died with the drone): it exits with 3.
        let port = published_port(&ends_id)?;
        let exited = plane_test_support::curl(&[&format!("http://127.0.0.1:{port}/exit?code=3")])?;
        ensure!(exited.status == 200, "{exited:?}");
        eventually(STATE_TIMEOUT, "the container exited", || async {
            let status = inspect(&format!("plane-{ends_id}"))?["State"]["Status"].clone();
            Ok((status == "exited").then_some(()))
        })
        .await?;
        c.restart_drone().await?;

        // Taken over, the same container, routed by the new proxy with the same token check.
        let status = taken_over(&c, &kept_id, &before).await?;
        ensure!(status["state"] == "ready", "{status}");
        ensure!(container_id(&kept_id)? == container, "the same container");
        let bearer = format!("Authorization: Bearer {token}");
        let answer = c.get(&c.host(&kept_id), "/", &["-H", &bearer])?;
        ensure!(
            answer.status == 200 && answer.body.contains(&kept_id),
            "{answer:?}"
        );
        let refused = c.get(
            &c.host(&kept_id),
            "/",
            &["-H", "Authorization: Bearer wrong"],
        )?;
        ensure!(refused.status == 403, "{refused:?}");
        ensure!(c.get(&c.host(&kept_id), "/", &[])?.status == 401);
        // The one that exited meanwhile: its end reported, its container removed.
        let events = c.watch_until_terminated(&ends_id).await?;
        let last = events.last().context("events")?;
        ensure!(
            last["reason"] == "failed" && last["exit_code"] == 3,
            "{last}"
        );
        container_removed(&ends_id).await?;
        // The idle clock restarted with the new process: untouched, the adopted one is swept.
        let events = c.watch_until_terminated(&kept_id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "swept", "{last}");
        container_removed(&kept_id).await
    })
    .await
}

#[tokio::test]
async fn a_lost_drones_containers_are_removed_by_the_next_drone_on_the_engine() -> anyhow::Result<()>
{
    bounded(async {
        let mut c = docker_over_nats("docker-lost").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let record = ready(&c, &[]).await?;
        let id = id_of(&record)?;
        c.kill_drone();
        // Silent past the grace: the drone is lost and so is its backend...
        let events = c.watch_until_terminated(&id).await?;
        let last = events.last().context("events")?;
        ensure!(last["reason"] == "lost", "{last}");
        ensure!(
            container_exists(&format!("plane-{id}"))?,
            "outlived the drone"
        );
        // ...and another drone of the cluster on the same engine removes its container.
        let other = format!("docker-lost-other-{}", std::process::id());
        c.restart_drone_as(&other).await?;
        container_removed(&id).await
    })
    .await
}

#[tokio::test]
async fn terminates_that_land_during_the_create_leave_no_container() -> anyhow::Result<()> {
    bounded(async {
        let c = docker_dev("docker-early-stop").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .to_string();
        let mut ids = Vec::new();
        for _ in 0..6 {
            // Terminated as soon as the spawn is accepted: during the image check, the create
            // or the start.
            let id = id_of(&spawn(&c, &[]).await?)?;
            let output = c.plane(&["terminate", &id]).await?;
            ensure!(output.status.success(), "{output:?}");
            ids.push(id);
        }
        for id in &ids {
            c.watch_until_terminated(id).await?;
            container_removed(id).await?;
        }
        // Every container the engine created for this cluster was destroyed (one created after
        // its stop included), and none is left.
        let label = format!("label=dev.plane.cluster={}", c.cluster);
        eventually(STATE_TIMEOUT, "as many destroys as creates", || async {
            let until = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                .to_string();
            let events = docker(&[
                "events",
                "--since",
                &since,
                "--until",
                &until,
                "--filter",
                &label,
                "--filter",
                "type=container",
                "--format",
                "{{.Action}}",
            ])?;
            let count = |action: &str| events.lines().filter(|l| *l == action).count();
            Ok((count("create") == count("destroy")).then_some(()))
        })
        .await?;
        let left = plane_test_support::docker::containers_labelled(&format!(
            "dev.plane.cluster={}",
            c.cluster
        ))?;
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_containers_output_is_kept_and_followed() -> anyhow::Result<()> {
    bounded(async {
        let c = docker_dev("docker-logs").await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let id = id_of(&ready(&c, &[]).await?)?;
        common::flows::logs_of_a_ready_backend(&c, &id).await?;
        container_removed(&id).await
    })
    .await
}

#[tokio::test]
async fn a_containers_cpu_and_memory_use_show_in_its_status() -> anyhow::Result<()> {
    bounded(async {
        let cluster = own_cluster("docker-usage");
        let flags = [
            "--executor",
            "docker",
            "--cluster",
            &cluster,
            "--usage-secs",
            "0.5",
        ];
        let c = Cluster::dev_with(&flags).await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let id = id_of(&ready(&c, &[]).await?)?;
        // 64 MiB held, and one core kept busy for a few samples.
        let held = c.get(&c.host(&id), "/alloc?mib=64", &[])?;
        ensure!(held.status == 200, "{held:?}");
        let url = format!("http://127.0.0.1:{}/spin?ms=4000", c.proxy_port);
        let host = format!("Host: {}", c.host(&id));
        let spinning =
            tokio::task::spawn_blocking(move || plane_test_support::curl(&["-H", &host, &url]));
        let usage = eventually(STATE_TIMEOUT, "the load in the usage", || async {
            let usage = c.status(&id).await?["usage"].clone();
            let memory = usage["memory_bytes"].as_u64().unwrap_or(0);
            let cpu = usage["cpu_millis"].as_u64().unwrap_or(0);
            Ok((memory >= 64 << 20 && cpu >= 300).then_some(usage))
        })
        .await?;
        ensure!(usage["at"].as_u64().is_some_and(|at| at > 0), "{usage}");
        let spun = spinning.await??;
        ensure!(spun.status == 200, "{spun:?}");
        // Idle again, the next samples say so.
        eventually(STATE_TIMEOUT, "the CPU use back down", || async {
            let usage = c.status(&id).await?["usage"].clone();
            let cpu = usage["cpu_millis"].as_u64().unwrap_or(u64::MAX);
            Ok((cpu < 100).then_some(()))
        })
        .await?;
        // `plane status` says it in words too.
        let output = c.plane(&["status", &id]).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(text.contains("cores") && text.contains("MB"), "{text}");
        Ok(())
    })
    .await
}

/// `plane dev --executor docker` with `extra`, expected to refuse to start: its output.
fn refused_dev(extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let state = tempfile::tempdir()?;
    let mut dev = common::dev_command();
    dev.args(["--executor", "docker"])
        .args(extra)
        .arg("--state-dir")
        .arg(state.path())
        .envs(env.iter().copied());
    let dev = ChildGuard::spawn("dev", dev)?;
    let status = dev
        .wait_exit(STATE_TIMEOUT)
        .context("plane dev did not exit")?;
    let output = dev.output_so_far();
    ensure!(!status.success(), "must not start: {output}");
    Ok(output)
}

#[test]
fn without_an_engine_the_docker_executor_refuses_to_start_and_says_why() -> anyhow::Result<()> {
    let docker_host = ("DOCKER_HOST", "unix:///nonexistent/plane-test/docker.sock");
    let output = refused_dev(&[], &[docker_host])?;
    ensure!(
        output.contains("cannot reach the Docker engine"),
        "{output}"
    );
    let output = refused_dev(&["--docker-network", "plane-no-such-network"], &[])?;
    ensure!(
        output.contains("no Docker network \"plane-no-such-network\""),
        "{output}"
    );
    let output = refused_dev(&["--docker-network", "host"], &[])?;
    ensure!(output.contains("no address of their own"), "{output}");
    Ok(())
}

/// A Docker network the test creates (internal: nothing on it reaches beyond this machine),
/// removed when dropped.
struct TestNetwork(String);

impl TestNetwork {
    fn create(name: &str) -> anyhow::Result<TestNetwork> {
        let name = format!("{name}-{}", std::process::id());
        docker(&["network", "create", "--internal", &name])?;
        Ok(TestNetwork(name))
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

#[tokio::test]
async fn on_a_docker_network_a_container_is_reached_at_its_own_address() -> anyhow::Result<()> {
    bounded(async {
        let network = TestNetwork::create("plane-test-net")?;
        let cluster = own_cluster("docker-network");
        // Given by id: the drone finds its name (containers' addresses are keyed by name).
        let network_id = docker(&["network", "inspect", "--format", "{{.Id}}", &network.0])?;
        let network_id = network_id.trim();
        let flags = [
            "--executor",
            "docker",
            "--cluster",
            &cluster,
            "--docker-network",
            network_id,
        ];
        let c = Cluster::dev_with(&flags).await?;
        let _cleanup = c.containers_removed_at_end().await?;
        let id = id_of(&ready(&c, &[]).await?)?;
        let inspected = inspect(&format!("plane-{id}"))?;
        ensure!(
            inspected["HostConfig"]["NetworkMode"] == network.0.as_str(),
            "{inspected}"
        );
        let bindings = &inspected["HostConfig"]["PortBindings"];
        ensure!(
            bindings.as_object().is_none_or(|b| b.is_empty()),
            "nothing published: {bindings}"
        );
        // The proxy forwards to its address on that network (a network namespace this test
        // made): the backend sees the request come from the network's gateway.
        let described: Value = serde_json::from_str(&docker(&["network", "inspect", &network.0])?)?;
        let gateway = described[0]["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .context("the network's gateway")?
            .to_string();
        let answer = c.get(&c.host(&id), "/info", &[])?;
        ensure!(answer.status == 200, "{answer:?}");
        let info: Value = serde_json::from_str(&answer.body)?;
        ensure!(info["env"]["PLANE_BACKEND_ID"] == id.as_str(), "{info}");
        let peer = info["peer"].as_str().unwrap_or_default();
        ensure!(
            peer.starts_with(&format!("{gateway}:")),
            "peer {peer}, gateway {gateway}"
        );
        let output = c.plane(&["terminate", &id]).await?;
        ensure!(output.status.success(), "{output:?}");
        c.watch_until_terminated(&id).await?;
        container_removed(&id).await
    })
    .await
}
