//! A Plane cluster for end-to-end tests: the real `plane` binary as separate controller and
//! drone processes over a real `nats-server`, or as one `plane dev` process, plus the clients
//! the tests drive it with (the `plane` CLI, curl, a WebSocket client).

#![allow(dead_code)] // Each test file uses its own part of the harness.

pub mod flows;

use anyhow::{bail, Context};
use plane_test_support::{
    curl, eventually, ChildGuard, CurlResponse, NatsCluster, NatsServer, TcpRelay,
};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The cluster of tests over NATS, and of `plane dev`, unless a test names its own.
const CLUSTER: &str = "plane.test";
const DEV_CLUSTER: &str = "plane.localhost";

/// A cluster name no other test (or test run) uses, under `.localhost` (which resolves to
/// loopback): for tests whose drones share the Docker engine.
pub fn own_cluster(name: &str) -> String {
    format!("{name}-{}.localhost", std::process::id())
}

/// Every test's overall bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a backend may take to get from spawn to a given state in these tests.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Heartbeats are fast and the grace short, so that a killed drone is noticed quickly.
const HEARTBEAT_SECS: &str = "0.2";
pub const DRONE_GRACE_SECS: &str = "2";
const STOP_GRACE_SECS: &str = "2";
/// Short enough for the flow that waits for it, long enough for a loaded machine.
pub const READY_TIMEOUT_SECS: &str = "5";

pub fn plane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_plane"))
}

pub fn backend_bin() -> String {
    plane_test_support::test_backend_path()
        .expect("the test backend must be built (cargo build --workspace --bins)")
        .display()
        .to_string()
}

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future<Output = anyhow::Result<()>>>(
    body: F,
) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .context("test timed out")?
}

/// A running cluster and how to reach it.
pub struct Cluster {
    pub cluster: String,
    pub api: String,
    pub proxy_port: u16,
    /// Where the cluster's DNS server answers (`plane dev`'s).
    pub dns: Option<std::net::SocketAddr>,
    /// The drone (or the `plane dev` process): killed by the drone-loss test.
    pub drone: Option<ChildGuard>,
    controller: Option<ChildGuard>,
    nats: Option<NatsServer>,
    /// Or the nodes of a NATS cluster.
    nodes: Option<NatsCluster>,
    /// Between the controller and NATS, when the test cuts the controller off.
    relay: Option<TcpRelay>,
    /// The drone's extra flags, for a restart.
    drone_flags: Vec<String>,
    /// `plane dev`'s flags and state directory (where its drone keeps its id), for a restart.
    dev_flags: Vec<String>,
    state_dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// nats-server, `plane controller` and `plane drone` as three processes.
    pub async fn over_nats() -> anyhow::Result<Cluster> {
        Self::start_over_nats(false).await
    }

    /// [`Cluster::over_nats`], with the controller reaching NATS through a relay the test can
    /// cut ([`Cluster::cut_controller`]) while the drone's connection stays up.
    pub async fn over_nats_with_relay() -> anyhow::Result<Cluster> {
        Self::start_over_nats(true).await
    }

    async fn start_over_nats(relay: bool) -> anyhow::Result<Cluster> {
        Self::over(NatsServer::start()?, relay, &[], &[]).await
    }

    /// [`Cluster::over`] under a cluster name of its own: tests whose drones share one Docker
    /// engine each need one, as a starting drone takes over or removes every container of its
    /// cluster on the engine.
    pub async fn over_named(
        cluster: &str,
        nats: NatsServer,
        controller_flags: &[&str],
        drone_flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Self::launch(
            cluster,
            &nats.url(),
            &nats.url(),
            controller_flags,
            drone_flags,
        )?;
        cluster.nats = Some(nats);
        cluster.wait_for_live_drone().await?;
        Ok(cluster)
    }

    /// A controller and a drone (`drone-1`) over `nats`, each given its extra flags
    /// (credentials, TLS); the controller through a relay if asked.
    pub async fn over(
        nats: NatsServer,
        relay: bool,
        controller_flags: &[&str],
        drone_flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let relay = match relay {
            true => Some(TcpRelay::start(nats.addr()).await?),
            false => None,
        };
        let controller_url = match &relay {
            Some(relay) => format!("nats://{}", relay.addr()),
            None => nats.url(),
        };
        let mut cluster = Self::launch(
            CLUSTER,
            &controller_url,
            &nats.url(),
            controller_flags,
            drone_flags,
        )?;
        cluster.nats = Some(nats);
        cluster.relay = relay;
        cluster.wait_for_live_drone().await?;
        Ok(cluster)
    }

    /// A controller (with `controller_flags`) and a drone given every node of a NATS cluster.
    pub async fn over_nats_cluster(
        nodes: NatsCluster,
        controller_flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let urls = nodes.urls();
        let mut cluster = Self::launch(CLUSTER, &urls, &urls, controller_flags, &[])?;
        cluster.nodes = Some(nodes);
        cluster.wait_for_live_drone().await?;
        Ok(cluster)
    }

    /// Starts the controller and the drone; the caller keeps what NATS they run on.
    fn launch(
        cluster: &str,
        controller_nats: &str,
        drone_nats: &str,
        controller_flags: &[&str],
        drone_flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let cluster = cluster.to_string();
        let (controller, api) = start_controller_with(controller_nats, &cluster, controller_flags)?;
        let dns = dns_of(&controller)?;
        let (drone, proxy_port) =
            start_drone_with(drone_nats, &cluster, Some("drone-1"), drone_flags)?;
        Ok(Cluster {
            cluster,
            api,
            proxy_port,
            dns,
            drone: Some(drone),
            controller: Some(controller),
            nats: None,
            nodes: None,
            relay: None,
            drone_flags: drone_flags.iter().map(|f| f.to_string()).collect(),
            dev_flags: Vec::new(),
            state_dir: None,
        })
    }

    /// A controller of `cluster` over `nats` and no drone yet: the test starts its drones
    /// itself ([`Cluster::start_drone`]), once what they need is up.
    pub fn controller_only(cluster: &str, nats: NatsServer) -> anyhow::Result<Cluster> {
        let (controller, api) = start_controller_with(&nats.url(), cluster, &[])?;
        Ok(Cluster {
            cluster: cluster.to_string(),
            api,
            proxy_port: 0,
            dns: dns_of(&controller)?,
            drone: None,
            controller: Some(controller),
            nats: Some(nats),
            nodes: None,
            relay: None,
            drone_flags: Vec::new(),
            dev_flags: Vec::new(),
            state_dir: None,
        })
    }

    /// Starts a drone `id` of this cluster with `flags`; returns it and its plain proxy port.
    pub fn start_drone(&self, id: &str, flags: &[&str]) -> anyhow::Result<(ChildGuard, u16)> {
        let nats = self.nats.as_ref().context("no NATS in this cluster")?;
        start_drone_with(&nats.url(), &self.cluster, Some(id), flags)
    }

    /// Hands the NATS cluster's nodes to the test (to kill and restart one while the cluster
    /// is in use).
    pub fn take_nodes(&mut self) -> Option<NatsCluster> {
        self.nodes.take()
    }

    /// Stops nats-server (as a crash would), keeping its store for [`Cluster::start_nats`].
    pub fn stop_nats(&mut self) -> anyhow::Result<()> {
        self.nats
            .as_mut()
            .context("no NATS in this cluster")?
            .kill();
        Ok(())
    }

    /// Starts nats-server again, on the same port with the same store.
    pub fn start_nats(&mut self) -> anyhow::Result<()> {
        self.nats
            .as_mut()
            .context("no NATS in this cluster")?
            .restart()
    }

    /// Cuts the controller's connection to NATS (the drone's stays up).
    pub fn cut_controller(&self) -> anyhow::Result<()> {
        self.relay
            .as_ref()
            .context("no relay in this cluster")?
            .cut();
        Ok(())
    }

    /// Lets the controller reach NATS again.
    pub fn restore_controller(&self) -> anyhow::Result<()> {
        self.relay
            .as_ref()
            .context("no relay in this cluster")?
            .restore();
        Ok(())
    }

    /// One `plane dev` process.
    pub async fn dev() -> anyhow::Result<Cluster> {
        Self::dev_with(&[]).await
    }

    /// `plane dev --https` with the certificate and key in these files.
    pub async fn dev_https(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<Cluster> {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        Self::dev_with(&["--https", "127.0.0.1:0", "--cert", &cert, "--key", &key]).await
    }

    /// `plane dev` with extra flags, its drone's state in a directory of its own.
    pub async fn dev_with(extra: &[&str]) -> anyhow::Result<Cluster> {
        let state_dir = tempfile::tempdir()?;
        let mut flags = vec![
            "--state-dir".to_string(),
            state_dir.path().display().to_string(),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        let (dev, proxy_port, api, dns) = Self::start_dev(&flags)?;
        let name = extra
            .iter()
            .position(|f| *f == "--cluster")
            .and_then(|at| extra.get(at + 1))
            .unwrap_or(&DEV_CLUSTER);
        let cluster = Cluster {
            cluster: name.to_string(),
            api,
            proxy_port,
            dns,
            drone: Some(dev),
            controller: None,
            nats: None,
            nodes: None,
            relay: None,
            drone_flags: Vec::new(),
            dev_flags: flags,
            state_dir: Some(state_dir),
        };
        cluster.wait_for_live_drone().await?;
        Ok(cluster)
    }

    #[allow(clippy::type_complexity)]
    fn start_dev(
        flags: &[String],
    ) -> anyhow::Result<(ChildGuard, u16, String, Option<std::net::SocketAddr>)> {
        let mut dev = dev_command();
        dev.args([
            "--stop-grace-secs",
            STOP_GRACE_SECS,
            "--ready-timeout-secs",
            READY_TIMEOUT_SECS,
        ]);
        dev.args(flags);
        let dev = ChildGuard::spawn("dev", dev)?;
        let api = after(&dev, "API      ")?;
        let dns = after(&dev, "DNS      ")?;
        let dns = dns
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()
            .ok();
        let proxy = after(&dev, "(listening on ")?;
        let proxy_port = port_of(proxy.trim_end_matches(')'))?;
        Ok((dev, proxy_port, api, dns))
    }

    /// Kills `plane dev` or the drone (SIGKILL).
    pub fn kill_drone(&mut self) {
        drop(self.drone.take());
    }

    /// Starts `plane dev` again (after [`Cluster::kill_drone`]) with the same flags and state
    /// directory, so its drone has the same id; its API and proxy addresses change.
    pub async fn start_dev_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.state_dir.is_some(), "not a `plane dev` cluster");
        let (dev, proxy_port, api, dns) = Self::start_dev(&self.dev_flags)?;
        self.dns = dns;
        self.drone = Some(dev);
        self.proxy_port = proxy_port;
        self.api = api;
        self.wait_for_live_drone().await
    }

    /// Kills the controller (SIGKILL).
    pub fn kill_controller(&mut self) {
        drop(self.controller.take());
    }

    /// Starts a new controller (after [`Cluster::kill_controller`]); its API address changes.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let nats = self
            .nats
            .as_ref()
            .context("only a NATS cluster has a separate controller")?;
        let (controller, api) = start_controller(&nats.url(), &self.cluster)?;
        self.dns = dns_of(&controller)?;
        self.controller = Some(controller);
        self.api = api;
        Ok(())
    }

    /// Starts another controller beside the first (several may serve one cluster); returns it
    /// and its API's URL.
    pub fn second_controller(&self) -> anyhow::Result<(ChildGuard, String)> {
        let nats = self
            .nats
            .as_ref()
            .context("only a NATS cluster has separate controllers")?;
        start_controller(&nats.url(), &self.cluster)
    }

    /// Starts a new drone process with the same id as the first (after that one was killed):
    /// a drone restart. The proxy port changes.
    pub async fn restart_drone(&mut self) -> anyhow::Result<()> {
        let nats = self
            .nats
            .as_ref()
            .context("only a NATS cluster has separate drones")?;
        let flags: Vec<&str> = self.drone_flags.iter().map(String::as_str).collect();
        let (drone, proxy_port) =
            start_drone_with(&nats.url(), &self.cluster, Some("drone-1"), &flags)?;
        self.drone = Some(drone);
        self.proxy_port = proxy_port;
        Ok(())
    }

    /// Starts a drone with the first one's flags but another id (after the first was killed):
    /// another drone of the cluster on the same machine. The proxy port changes.
    pub async fn restart_drone_as(&mut self, id: &str) -> anyhow::Result<()> {
        let mut flags = self.drone_flags.clone();
        match flags.iter().position(|f| f == "--id") {
            Some(at) if at + 1 < flags.len() => flags[at + 1] = id.to_string(),
            _ => flags.extend(["--id".to_string(), id.to_string()]),
        }
        self.drone_flags = flags;
        self.restart_drone().await
    }

    async fn wait_for_live_drone(&self) -> anyhow::Result<()> {
        eventually(STATE_TIMEOUT, "a live drone in `plane drones`", || async {
            let drones = self.plane_json(&["drones"]).await?;
            let live = drones
                .as_array()
                .is_some_and(|all| all.iter().any(|d| d["live"] == true));
            Ok(live.then_some(()))
        })
        .await
    }

    /// Runs the `plane` CLI against this cluster's API.
    pub async fn plane(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut command = tokio::process::Command::new(plane_bin());
        command
            .args(args)
            .args(["--api", &self.api])
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .with_context(|| format!("plane {args:?} hung"))?
            .with_context(|| format!("running plane {args:?}"))
    }

    /// Runs `plane ARGS --json` and parses its output; fails if the command fails.
    pub async fn plane_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let output = self.plane(&with_json).await?;
        if !output.status.success() {
            bail!(
                "plane {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "plane {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Spawns the test backend with `backend_args` and waits until it is ready.
    pub async fn spawn_ready(&self, backend_args: &str, extra: &[&str]) -> anyhow::Result<Value> {
        let command = format!("{} {backend_args}", backend_bin());
        let mut args = vec!["spawn", "--wait", "--command", &command];
        args.extend_from_slice(extra);
        let record = self.plane_json(&args).await?;
        anyhow::ensure!(record["state"] == "ready", "not ready: {record}");
        Ok(record)
    }

    /// Follows `plane watch ID` until the backend is terminated; returns every event.
    pub async fn watch_until_terminated(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        let mut command = Command::new(plane_bin());
        command.args(["watch", id, "--json", "--api", &self.api]);
        let watch = ChildGuard::spawn("watch", command)?;
        let status = tokio::task::spawn_blocking(move || {
            let status = watch.wait_exit(STATE_TIMEOUT);
            (status, watch.output_so_far())
        })
        .await?;
        let (status, output) = status;
        let status = status.context("plane watch did not end")?;
        anyhow::ensure!(status.success(), "plane watch failed: {output}");
        // Only stdout lines that are JSON objects are events (stderr is interleaved).
        let events: Vec<Value> = output
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|v| v.is_object())
            .collect();
        let last = events.last().context("no events")?;
        anyhow::ensure!(last["state"] == "terminated", "last event: {last}");
        Ok(events)
    }

    /// The `Host` of a backend.
    pub fn host(&self, id: &str) -> String {
        format!("{id}.{}", self.cluster)
    }

    /// GET `path` on the proxy with `Host: {host}` (plus extra curl args).
    pub fn get(&self, host: &str, path: &str, extra: &[&str]) -> anyhow::Result<CurlResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.proxy_port);
        let host_header = format!("Host: {host}");
        let mut args = vec!["-H", &host_header];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    /// A guard that removes every container of this cluster's drones when the test ends,
    /// however it ends.
    pub async fn containers_removed_at_end(
        &self,
    ) -> anyhow::Result<plane_test_support::docker::RemoveContainersOnDrop> {
        let drones = self.plane_json(&["drones"]).await?;
        let ids = drones
            .as_array()
            .context("a list of drones")?
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect();
        Ok(plane_test_support::docker::RemoveContainersOnDrop::of_drones(ids))
    }

    /// The newest backend in `plane list` that `matches`.
    pub async fn last_listed(&self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let list = self.plane_json(&["list"]).await?;
        list.as_array()
            .and_then(|all| all.iter().rev().find(|r| matches(r)))
            .cloned()
            .with_context(|| format!("no such backend in the list: {list}"))
    }

    /// Where the drone (or `plane dev`) serves its metrics.
    pub fn drone_metrics_url(&self) -> anyhow::Result<String> {
        metrics_url_of(self.drone.as_ref().context("a running drone")?)
    }

    /// The state of a backend now.
    pub async fn status(&self, id: &str) -> anyhow::Result<Value> {
        self.plane_json(&["status", id]).await
    }
}

/// Waits until backend `id`'s container is gone from the engine.
pub async fn container_removed(id: &str) -> anyhow::Result<()> {
    let name = format!("plane-{id}");
    eventually(STATE_TIMEOUT, &format!("{name} removed"), || async {
        Ok((!plane_test_support::docker::container_exists(&name)?).then_some(()))
    })
    .await
}

/// `plane dev` with every listener on a free loopback port, so that tests never race for one
/// (each prints where it got).
pub fn dev_command() -> Command {
    let mut dev = Command::new(plane_bin());
    dev.args([
        "dev",
        "--api",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--dns",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    dev
}

/// Where a started drone (or `plane dev`) serves its metrics: `http://ADDR/metrics`.
pub fn metrics_url_of(drone: &ChildGuard) -> anyhow::Result<String> {
    Ok(format!(
        "http://{}/metrics",
        after(drone, "metrics listening on ")?
    ))
}

/// Where a started controller's DNS server answers.
pub fn dns_of(controller: &ChildGuard) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let addr = after(controller, "DNS listening on ")?;
    Ok(Some(
        addr.parse()
            .with_context(|| format!("not an address: {addr}"))?,
    ))
}

/// Starts `plane controller`; returns it and its API's URL.
fn start_controller(nats: &str, cluster: &str) -> anyhow::Result<(ChildGuard, String)> {
    start_controller_with(nats, cluster, &[])
}

/// [`start_controller`] with extra flags.
pub fn start_controller_with(
    nats: &str,
    cluster: &str,
    extra: &[&str],
) -> anyhow::Result<(ChildGuard, String)> {
    let mut controller = Command::new(plane_bin());
    controller.args([
        "controller",
        "--nats",
        nats,
        "--cluster",
        cluster,
        "--api",
        "127.0.0.1:0",
        "--drone-grace-secs",
        DRONE_GRACE_SECS,
        "--dns",
        "127.0.0.1:0",
    ]);
    controller.args(extra);
    let controller = ChildGuard::spawn("controller", controller)?;
    let api = after(&controller, "API listening on ")?;
    Ok((controller, api))
}

/// Starts `plane drone`; returns it and its proxy's port.
fn start_drone(nats: &str, cluster: &str, id: Option<&str>) -> anyhow::Result<(ChildGuard, u16)> {
    start_drone_with(nats, cluster, id, &[])
}

/// [`start_drone`] with extra flags.
pub fn start_drone_with(
    nats: &str,
    cluster: &str,
    id: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<(ChildGuard, u16)> {
    let mut drone = Command::new(plane_bin());
    drone.args([
        "drone",
        "--nats",
        nats,
        "--cluster",
        cluster,
        "--http",
        "127.0.0.1:0",
        "--heartbeat-secs",
        HEARTBEAT_SECS,
        "--stop-grace-secs",
        STOP_GRACE_SECS,
        "--ready-timeout-secs",
        READY_TIMEOUT_SECS,
    ]);
    if let Some(id) = id.filter(|_| !extra.contains(&"--id")) {
        drone.args(["--id", id]);
    }
    if !extra.contains(&"--executor") {
        drone.args(["--executor", "process"]);
    }
    if !extra.contains(&"--metrics") {
        drone.args(["--metrics", "127.0.0.1:0"]);
    }
    drone.args(extra);
    let drone = ChildGuard::spawn("drone", drone)?;
    let proxy_port = port_of(&after(&drone, "proxy listening on ")?)?;
    Ok((drone, proxy_port))
}

/// How long a started process gets to print where it listens.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The rest of the first output line of `child` that contains `marker`. Processes listen on
/// port 0 and print the address they got, so tests never race for a port.
pub fn after(child: &ChildGuard, marker: &str) -> anyhow::Result<String> {
    let line = child.wait_for_output(marker, STARTUP_TIMEOUT)?;
    let (_, rest) = line
        .split_once(marker)
        .with_context(|| format!("{marker:?} not in {line:?}"))?;
    Ok(rest.trim().to_string())
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("not an address: {addr:?}"))?;
    Ok(addr.port())
}

/// The backend's id from a record.
pub fn id_of(record: &Value) -> anyhow::Result<String> {
    record["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("record without id: {record}"))
}

/// Waits until no process has `PLANE_BACKEND_ID={id}` in its environment.
pub async fn no_process_left(id: &str) -> anyhow::Result<()> {
    eventually(
        STATE_TIMEOUT,
        &format!("backend {id}'s process to end"),
        || async {
            Ok(
                plane_test_support::processes_with_env("PLANE_BACKEND_ID", id)
                    .is_empty()
                    .then_some(()),
            )
        },
    )
    .await
}

/// Starts the test backend on a free loopback port (`plane proxy`'s static routes need one
/// that is already known) and waits until it listens.
pub async fn listening_backend() -> anyhow::Result<(ChildGuard, u16)> {
    let port = plane_test_support::free_port()?;
    let mut backend = Command::new(backend_bin());
    backend
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string());
    let guard = ChildGuard::spawn("backend", backend)?;
    plane_test_support::eventually(Duration::from_secs(10), "the backend to listen", || async {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(drop))
    })
    .await?;
    Ok((guard, port))
}

/// Starts `plane proxy ARGS`; returns it and the address its plain listener took.
pub fn plane_proxy(args: &[&str]) -> anyhow::Result<(ChildGuard, String)> {
    let mut proxy = Command::new(plane_bin());
    proxy.arg("proxy").args(args);
    let proxy = ChildGuard::spawn("proxy", proxy)?;
    let addr = after(&proxy, "proxy listening on ")?;
    Ok((proxy, addr))
}
