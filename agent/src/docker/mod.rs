//! The `docker` executor: each backend is a container named `plane-{backend}`, labelled with
//! its backend, cluster and drone, its port published on the drone's loopback only (or, with a
//! network named, reached at its own address on that network), with the spawn's memory, CPU and
//! process limits. Exits come from the engine's events stream
//! (`exits.rs`); images are pulled by policy (`image.rs`).
//!
//! Nothing is left behind: a launch cut short (a terminate during the pull or the create)
//! removes what it created, as does a backend handle dropped without a stop; a stop is the
//! engine's own (SIGTERM, the grace, SIGKILL) followed by removal. Containers outlive a drone
//! killed outright: the drone, started again under its id, finds them by label and takes over
//! those the cluster still wants (see `drone`'s recovery); the rest are stopped and removed.

mod exits;
mod image;
mod output;

use crate::executor::{Adopted, Executor, Exit, Launch, LaunchError, Running, UsageReading};
use crate::limits::{CONTAINER_PORT, USAGE_READS_AT_ONCE, USAGE_READ_TIMEOUT};
use crate::logs::BackendLog;
use crate::readiness::ReadyCheck;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectNetworkOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use exits::Exits;
use futures::future::BoxFuture;
use futures::StreamExt;
use plane_dataplane::TokenDigest;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{ExecutorKind, Survivor, SurvivorStatus};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use image::engine_message;

/// The labels on every container Plane starts (**contract**: how a restarted drone, or an
/// operator, finds them).
pub mod labels {
    pub const BACKEND: &str = "dev.plane.backend";
    pub const CLUSTER: &str = "dev.plane.cluster";
    pub const DRONE: &str = "dev.plane.drone";
    /// The SHA-256 of the backend's access token, when it requires one: a restarted drone
    /// routes an adopted backend with the same check (the digest admits no request by itself).
    pub const TOKEN_SHA256: &str = "dev.plane.token-sha256";
}

/// Why the executor could not reach the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine (is it running, and may this user use its socket?)")]
    Connect(#[source] bollard::errors::Error),
    #[error("cannot list this drone's containers")]
    List(#[source] bollard::errors::Error),
    #[error("no Docker network {network:?} to attach containers to")]
    Network {
        network: String,
        source: bollard::errors::Error,
    },
    #[error("Docker network {network:?} gives containers no address of their own to forward to")]
    NetworkWithoutAddresses { network: String },
}

/// The engine and whose containers these are.
pub(crate) struct Engine {
    docker: Docker,
    cluster: String,
    drone: String,
    /// The network containers are attached to, when not published on loopback.
    network: Option<String>,
}

impl Engine {
    /// Where the proxy reaches a started container's `port`: its published loopback port, or
    /// its own address on the network.
    fn address_of(&self, inspected: &ContainerInspectResponse, port: u16) -> Option<SocketAddr> {
        let Some(network) = &self.network else {
            let published = published_port(inspected, port)?;
            return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, published)));
        };
        let ip = inspected
            .network_settings
            .as_ref()?
            .networks
            .as_ref()?
            .get(network)?
            .ip_address
            .as_deref()?;
        // Empty once the container has stopped.
        let ip: std::net::IpAddr = ip.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }

    /// How the container `name` ended, if it has (exited or dead; not merely created).
    async fn exit_of(&self, name: &str) -> Option<Exit> {
        let state = self
            .docker
            .inspect_container(name, None)
            .await
            .ok()?
            .state?;
        match state.status {
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => Some(Exit {
                code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
                signal: None,
                oom_killed: state.oom_killed.unwrap_or(false),
            }),
            _ => None,
        }
    }

    /// The cluster's containers on this engine (every drone's), as survivors.
    async fn survivors(&self) -> Result<Vec<Survivor>, DockerError> {
        let cluster = format!("{}={}", labels::CLUSTER, self.cluster);
        let filters = HashMap::from([("label", vec![cluster.as_str()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::List)?;
        let mut found = Vec::new();
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let backend = labels.get(labels::BACKEND).map(BackendId::new);
            let drone = labels.get(labels::DRONE).map(DroneId::new);
            let (Some(Ok(backend)), Some(Ok(drone))) = (backend, drone) else {
                warn!(container = ?container.names, "a container with the cluster's label but no valid backend or drone label; leaving it");
                continue;
            };
            let status = match container.state {
                Some(ContainerSummaryStateEnum::CREATED) => SurvivorStatus::Created,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING,
                ) => SurvivorStatus::Running,
                // Being removed by someone else already.
                Some(ContainerSummaryStateEnum::REMOVING) => continue,
                _ => {
                    let name = DockerExecutor::container_name(backend.as_str());
                    let exit = self.exit_of(&name).await.unwrap_or(Exit::UNKNOWN);
                    SurvivorStatus::Exited {
                        exit_code: exit.code,
                        oom_killed: exit.oom_killed,
                    }
                }
            };
            found.push(Survivor {
                backend,
                drone,
                status,
            });
        }
        Ok(found)
    }

    /// A container's counters from one `one-shot` stats call: CPU time, and memory less the page
    /// cache (`cache` on cgroup v1, `inactive_file` on v2, as `docker stats` counts it).
    async fn usage_of(&self, name: &str) -> Option<UsageReading> {
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = self.docker.stats(name, Some(options));
        let stats = match tokio::time::timeout(USAGE_READ_TIMEOUT, stats.next()).await {
            Ok(Some(Ok(stats))) => stats,
            Ok(Some(Err(error))) => {
                debug!(container = name, %error, "no stats");
                return None;
            }
            Ok(None) | Err(_) => return None,
        };
        let cpu = stats.cpu_stats?.cpu_usage?.total_usage?;
        let memory = stats.memory_stats?;
        let counters = memory.stats.unwrap_or_default();
        let cache = counters
            .get("cache")
            .or_else(|| counters.get("inactive_file"))
            .copied()
            .unwrap_or(0);
        Some(UsageReading {
            cpu: Duration::from_nanos(cpu),
            memory_bytes: memory.usage?.saturating_sub(cache),
        })
    }

    /// Creates the container `name` of `image`, replacing a leftover of the same name. The
    /// engine call runs to its end in a task of its own: should the caller stop waiting (a stop
    /// while loading), a container created after all is removed there, never left behind.
    async fn create(
        self: &Arc<Self>,
        name: &str,
        image: &str,
        body: ContainerCreateBody,
    ) -> Result<(), LaunchError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let (engine, name, image) = (self.clone(), name.to_owned(), image.to_owned());
        tokio::spawn(async move {
            let result = engine.create_replacing(&name, &image, body).await;
            let created = result.is_ok();
            debug!(container = %name, created, "create call ended");
            if done.send(result).is_err() && created {
                debug!(container = %name, "created after its launch was given up; removing it");
                engine.remove(&name).await;
            }
        });
        outcome.await.unwrap_or_else(|_| {
            Err(LaunchError::Start {
                message: "the create call ended without an answer".into(),
            })
        })
    }

    async fn create_replacing(
        &self,
        name: &str,
        image: &str,
        body: ContainerCreateBody,
    ) -> Result<(), LaunchError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let Err(error) = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        else {
            return Ok(());
        };
        let conflict = matches!(
            error,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            }
        );
        if !conflict {
            return Err(create_failed(image, &error));
        }
        // A container of the same backend left by an earlier drone process: this spawn is the
        // one that counts.
        warn!(container = %name, "replacing a leftover container of the same name");
        self.remove(name).await;
        self.docker
            .create_container(Some(options), body)
            .await
            .map(drop)
            .map_err(|e| create_failed(image, &e))
    }

    /// Stops a container (the engine's SIGTERM, `grace`, SIGKILL) and removes it.
    async fn stop_and_remove(&self, name: &str, grace: Duration) {
        let seconds = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        if let Err(error) = self.docker.stop_container(name, Some(options)).await {
            debug!(container = %name, %error, "stop");
        }
        self.remove(name).await;
    }

    async fn remove(&self, name: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => debug!(container = name, "container removed"),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(error) => warn!(container = name, %error, "could not remove container"),
        }
    }
}

/// Runs backends as Docker containers.
pub struct DockerExecutor {
    engine: Arc<Engine>,
    exits: Arc<Exits>,
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST`, else its socket), agrees on an API version
    /// with it, and starts watching this drone's containers. Within a tokio runtime.
    /// With `network`, containers are attached to that network (which must exist) and reached
    /// at their address on it instead of a loopback port.
    pub async fn connect(
        cluster: &str,
        drone: &str,
        network: Option<&str>,
    ) -> Result<DockerExecutor, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(DockerError::Connect)?
            .negotiate_version()
            .await
            .map_err(DockerError::Connect)?;
        docker.ping().await.map_err(DockerError::Connect)?;
        info!(api = %docker.client_version(), "connected to the Docker engine");
        let network = match network {
            Some(network) => Some(usable_network(&docker, network).await?),
            None => None,
        };
        let engine = Arc::new(Engine {
            docker,
            cluster: cluster.to_string(),
            drone: drone.to_string(),
            network,
        });
        Ok(DockerExecutor {
            exits: Arc::new(Exits::start(engine.clone())),
            engine,
        })
    }

    /// The container of a backend.
    pub fn container_name(backend: &str) -> String {
        format!("plane-{backend}")
    }

    fn labels(&self, launch: &Launch) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (labels::BACKEND.to_string(), launch.backend.to_string()),
            (labels::CLUSTER.to_string(), self.engine.cluster.clone()),
            (labels::DRONE.to_string(), self.engine.drone.clone()),
        ]);
        if let Some(token) = &launch.token {
            labels.insert(labels::TOKEN_SHA256.to_string(), token.to_hex());
        }
        labels
    }

    fn create_body(&self, launch: &Launch, image: &str) -> ContainerCreateBody {
        let spec = &launch.spec;
        let port = format!("{}/tcp", launch.port);
        let resources = &spec.resources;
        let memory = resources.memory_bytes.and_then(|m| i64::try_from(m).ok());
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: (!spec.executable.command.is_empty()).then(|| spec.executable.command.clone()),
            env: Some(launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels(launch)),
            exposed_ports: Some(vec![port.clone()]),
            host_config: Some(HostConfig {
                // On a network: reached at its own address there. Otherwise published on
                // loopback only, on a port the engine picks: read back after the start.
                network_mode: self.engine.network.clone(),
                port_bindings: self.engine.network.is_none().then(|| {
                    HashMap::from([(
                        port,
                        Some(vec![PortBinding {
                            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                            host_port: Some(String::new()),
                        }]),
                    )])
                }),
                memory,
                // No swap beyond the memory limit, so the limit is what the backend gets.
                memory_swap: memory,
                nano_cpus: resources
                    .cpu_millis
                    .and_then(|c| i64::try_from(c.saturating_mul(1_000_000)).ok()),
                pids_limit: resources.pids.and_then(|p| i64::try_from(p).ok()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    /// Pull, create, start; `created` removes the container should this be cut short.
    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, LaunchError> {
        let image = launch
            .spec
            .executable
            .image
            .clone()
            .ok_or(LaunchError::NoImage)?;
        let policy = launch.spec.executable.pull_policy.unwrap_or_default();
        image::ensure(
            &self.engine.docker,
            &image,
            policy,
            launch.credentials.as_ref(),
            launch.pull_progress.as_ref(),
        )
        .await?;
        let name = Self::container_name(launch.backend.as_str());
        let mut created = Created {
            engine: self.engine.clone(),
            name: Some(name.clone()),
        };
        let creating = std::time::Instant::now();
        let body = self.create_body(&launch, &image);
        self.engine.create(&name, &image, body).await?;
        let created_in = creating.elapsed();
        let exit = self.exits.register(&name);
        // Forgotten again however this ends: a failed start, a stop while loading, the end.
        let awaited = Awaited {
            exits: self.exits.clone(),
            name: name.clone(),
        };
        let starting = std::time::Instant::now();
        let docker = &self.engine.docker;
        docker
            .start_container(&name, None)
            .await
            .map_err(|error| step_failed("starting", &name, &error))?;
        output::follow(self.engine.clone(), name.clone(), launch.log.clone(), 0);
        let inspected = docker
            .inspect_container(&name, None)
            .await
            .map_err(|error| step_failed("inspecting", &name, &error))?;
        let address = match self.engine.address_of(&inspected, launch.port) {
            Some(address) => address,
            // Already exited (the engine unpublishes a stopped container's port): port 0 is
            // never ready, and the exit, on its way from the events stream, ends the start.
            None if self.engine.exit_of(&name).await.is_some() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
            }
            None => {
                return Err(LaunchError::Start {
                    message: format!(
                        "the engine gave {name} no address to reach its port {}/tcp at",
                        launch.port
                    ),
                })
            }
        };
        info!(
            backend = %launch.backend,
            container = %name,
            %address,
            create_ms = created_in.as_secs_f64() * 1e3,
            start_ms = starting.elapsed().as_secs_f64() * 1e3,
            "container started"
        );
        Ok(Box::new(Container {
            name,
            created: created.take(),
            _awaited: awaited,
            exit,
            address,
        }))
    }
}

/// The name of the network `given` (a name or an id): containers' addresses are keyed by it.
/// A network whose containers have no address of their own (`host`, `none`) cannot be used.
async fn usable_network(docker: &Docker, given: &str) -> Result<String, DockerError> {
    let inspected = docker
        .inspect_network(given, None::<InspectNetworkOptions>)
        .await
        .map_err(|source| DockerError::Network {
            network: given.to_string(),
            source,
        })?;
    if matches!(inspected.driver.as_deref(), Some("host" | "null")) {
        return Err(DockerError::NetworkWithoutAddresses {
            network: given.to_string(),
        });
    }
    Ok(inspected.name.unwrap_or_else(|| given.to_string()))
}

/// The loopback port the engine published the container's `port` on.
fn published_port(inspected: &ContainerInspectResponse, port: u16) -> Option<u16> {
    inspected
        .network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(&format!("{port}/tcp"))?
        .as_ref()?
        .iter()
        .find_map(|binding| binding.host_port.as_deref())?
        .parse()
        .ok()
}

/// A step of a container's start that the engine refused, named with the container.
fn step_failed(step: &str, container: &str, error: &bollard::errors::Error) -> LaunchError {
    LaunchError::Start {
        message: format!("{step} {container}: {}", engine_message(error)),
    }
}

fn create_failed(image: &str, error: &bollard::errors::Error) -> LaunchError {
    LaunchError::Start {
        message: format!(
            "cannot create a container of {image}: {}",
            engine_message(error)
        ),
    }
}

impl Executor for DockerExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Docker
    }

    fn port(&self) -> std::io::Result<u16> {
        Ok(CONTAINER_PORT)
    }

    fn default_ready_check(&self) -> ReadyCheck {
        ReadyCheck::Answers
    }

    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Running>, LaunchError>> {
        Box::pin(self.start(launch))
    }

    fn survivors(&self) -> BoxFuture<'_, Result<Vec<Survivor>, String>> {
        Box::pin(async {
            self.engine
                .survivors()
                .await
                .map_err(|e| plane_protocol::error_chain(&e))
        })
    }

    fn adopt(
        &self,
        survivor: &Survivor,
        log: BackendLog,
    ) -> BoxFuture<'_, Result<Adopted, LaunchError>> {
        let backend = survivor.backend.clone();
        Box::pin(async move { self.take_over(&backend, log).await })
    }

    fn read_usage(
        &self,
        backends: Vec<BackendId>,
    ) -> BoxFuture<'_, Vec<(BackendId, UsageReading)>> {
        Box::pin(async move {
            futures::stream::iter(backends)
                .map(|backend| async move {
                    let name = Self::container_name(backend.as_str());
                    let reading = self.engine.usage_of(&name).await?;
                    Some((backend, reading))
                })
                .buffer_unordered(USAGE_READS_AT_ONCE)
                .filter_map(std::future::ready)
                .collect()
                .await
        })
    }

    fn discard(&self, survivor: &Survivor, grace: Duration) -> BoxFuture<'_, ()> {
        let name = Self::container_name(survivor.backend.as_str());
        Box::pin(async move { self.engine.stop_and_remove(&name, grace).await })
    }
}

impl DockerExecutor {
    /// Watches a running container of this drone again, as if it had just started it.
    async fn take_over(
        &self,
        backend: &BackendId,
        log: BackendLog,
    ) -> Result<Adopted, LaunchError> {
        let name = Self::container_name(backend.as_str());
        let failed = |message: String| LaunchError::Adopt { message };
        // Awaited before it is inspected: an exit after the inspection is not missed.
        let exit = self.exits.register(&name);
        let awaited = Awaited {
            exits: self.exits.clone(),
            name: name.clone(),
        };
        let inspected = self
            .engine
            .docker
            .inspect_container(&name, None)
            .await
            .map_err(|e| failed(engine_message(&e)))?;
        let labels = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(labels::DRONE) != Some(&self.engine.drone)
            || labels.get(labels::CLUSTER) != Some(&self.engine.cluster)
        {
            return Err(failed(format!("{name} is not this drone's")));
        }
        let state = inspected.state.as_ref();
        if !state.and_then(|s| s.running).unwrap_or(false) {
            return Err(LaunchError::Ended {
                exit: Exit {
                    code: state
                        .and_then(|s| s.exit_code)
                        .and_then(|c| i32::try_from(c).ok()),
                    signal: None,
                    oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
                },
            });
        }
        let token = match labels.get(labels::TOKEN_SHA256) {
            Some(hex) => Some(
                TokenDigest::from_hex(hex)
                    .map_err(|e| failed(format!("{name}: label {}: {e}", labels::TOKEN_SHA256)))?,
            ),
            None => None,
        };
        let address = self
            .engine
            .address_of(&inspected, CONTAINER_PORT)
            .ok_or_else(|| failed(format!("{name} has no address to reach it at")))?;
        info!(%backend, container = %name, %address, "container taken over");
        // Its output from now on (what it wrote while no drone watched is not sent again).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        output::follow(self.engine.clone(), name.clone(), log, now);
        Ok(Adopted {
            running: Box::new(Container {
                created: Created {
                    engine: self.engine.clone(),
                    name: Some(name.clone()),
                },
                name,
                _awaited: awaited,
                exit,
                address,
            }),
            token,
        })
    }
}

/// A created container, removed when dropped unless taken: what a launch cut short, or a
/// backend handle dropped without a stop, leaves to clean up.
struct Created {
    engine: Arc<Engine>,
    name: Option<String>,
}

impl Created {
    fn take(&mut self) -> Created {
        Created {
            engine: self.engine.clone(),
            name: self.name.take(),
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let engine = self.engine.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { engine.remove(&name).await });
                }
                Err(_) => warn!(container = %name, "no runtime left to remove the container"),
            }
        }
    }
}

/// A started container.
struct Container {
    name: String,
    created: Created,
    _awaited: Awaited,
    exit: watch::Receiver<Option<Exit>>,
    address: SocketAddr,
}

impl Container {
    async fn exited(&mut self) -> Exit {
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(Exit::UNKNOWN),
            // The executor is gone: nothing will tell any more.
            Err(_) => Exit::UNKNOWN,
        }
    }
}

impl Running for Container {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn verify_listener(&self) -> BoxFuture<'_, Result<(), String>> {
        // The engine bound the published port for this container and no one else.
        Box::pin(async { Ok(()) })
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(self.exited())
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let name = self.name.clone();
            let engine = self.created.engine.clone();
            let seconds = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
            let options = StopContainerOptionsBuilder::default().t(seconds).build();
            if let Err(error) = engine.docker.stop_container(&name, Some(options)).await {
                debug!(container = %name, %error, "stop");
            }
            // The engine's stop returns once the container is down; its exit is on the way.
            let exit = match tokio::time::timeout(Duration::from_secs(5), self.exited()).await {
                Ok(exit) => exit,
                Err(_) => engine.exit_of(&name).await.unwrap_or(Exit::UNKNOWN),
            };
            engine.remove(&name).await;
            self.created.name = None;
            exit
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.created.name.is_some() {
            // Stopped or not, it goes (Created's drop removes it): no orphan.
            debug!(container = %self.name, "dropping a container that was not stopped");
        }
    }
}

/// A container whose exit is awaited; no longer once this is dropped.
struct Awaited {
    exits: Arc<Exits>,
    name: String,
}

impl Drop for Awaited {
    fn drop(&mut self) {
        self.exits.forget(&self.name);
    }
}
