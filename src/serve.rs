//! The long-running commands: `plane dev`, `plane controller`, `plane drone`. Each binds its
//! listeners first (so a busy port is an immediate, clear error), then runs until SIGINT or
//! SIGTERM, and stops in order: the drone stops its backends and delivers their last reports
//! while the controller still listens; only then do the controller and the proxy stop.

use crate::cli::{
    AcmeArgs, ApiServerAuth, ControllerArgs, DataPlaneArgs, DevArgs, DnsZoneArgs, DroneArgs,
    DroneTuning, ExecutorArg, ExecutorArgs, HttpsArgs, MetricsArgs, ProxyArgs, ThreadsArg,
};
use crate::secrets;
use crate::shutdown;
use crate::state_dir;
use anyhow::Context as _;
use plane_agent::certificates::{AcmeConfig, ExternalAccount, Refresher, RefresherConfig};
use plane_agent::docker::DockerExecutor;
use plane_agent::executor::Executor;
use plane_agent::process::ProcessExecutor;
use plane_agent::{Drone, DroneConfig};
use plane_bus::Bus;
use plane_controlplane::{api, Controller, ControllerConfig};
use plane_dataplane::tls::Certificate;
use plane_dataplane::{Listeners, ProxyConfig, RouteTable};
use plane_protocol::ids::DroneId;
use plane_protocol::subjects::Subjects;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::info;

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

/// The DNS server's UDP socket and TCP listener on one address (with port 0, the same port the
/// UDP socket got).
async fn bind_dns(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (UDP) for DNS"))?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0: another process has that port over TCP; try another.
            Err(error) if addr.port() == 0 => last_error = Some(error),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot listen on {addr} (TCP) for DNS"))
            }
        }
    }
    Err(last_error.map_or_else(|| anyhow::anyhow!("no port"), anyhow::Error::from))
        .context("no port free for DNS over both UDP and TCP")
}

/// Starts the cluster's DNS server on `addr`; returns where it listens and its task.
async fn start_dns(
    addr: SocketAddr,
    zone: &DnsZoneArgs,
    cluster: &str,
    controller: &Controller,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let zone = plane_controlplane::dns::ZoneConfig::new(
        cluster,
        zone.dns_ns.as_deref(),
        zone.dns_soa_email.as_deref(),
    )?;
    let (udp, tcp) = bind_dns(addr).await?;
    let local = udp.local_addr()?;
    let serving = plane_controlplane::dns::serve(
        udp,
        tcp,
        controller.clone(),
        zone,
        shutdown.cancelled_owned(),
    );
    // Said when it happens, not only at shutdown when the task is awaited.
    let task = tokio::spawn(async move {
        let served = serving.await;
        if let Err(error) = &served {
            tracing::error!(%error, "the DNS server stopped");
        }
        served
    });
    Ok((local, task))
}

/// The proxy's listening sockets: one per thread that serves it.
fn bind_proxy(addr: SocketAddr, threads: &ThreadsArg) -> anyhow::Result<Listeners> {
    let threads = threads.count();
    Listeners::bind(addr, threads)
        .with_context(|| format!("cannot listen on {addr} for the proxy ({threads} threads)"))
}

/// A positive duration in seconds: zero would make an interval that never waits.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    let duration = Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag}: {value} is not a valid number of seconds"))?;
    anyhow::ensure!(
        !duration.is_zero(),
        "--{flag}: must be more than 0 seconds, not {value}"
    );
    Ok(duration)
}

async fn executor(
    args: &ExecutorArgs,
    cluster: &str,
    drone: &DroneId,
) -> anyhow::Result<Arc<dyn Executor>> {
    match args.executor {
        ExecutorArg::Process => {
            anyhow::ensure!(
                args.docker_network.is_none(),
                "--docker-network: only for --executor docker"
            );
            Ok(Arc::new(
                ProcessExecutor::new().context("starting the process executor")?,
            ))
        }
        ExecutorArg::Docker => Ok(Arc::new(
            DockerExecutor::connect(cluster, drone.as_str(), args.docker_network.as_deref())
                .await
                .context("starting the docker executor")?,
        )),
    }
}

/// A drone's proxy: its plain listener and, with `--https`, its TLS listener and certificate.
struct DroneProxy {
    plain: Listeners,
    plain_config: ProxyConfig,
    https: Option<HttpsListener>,
    /// How clients reach backends: `http` or `https`, and the port they use.
    scheme: &'static str,
    public_port: u16,
}

struct HttpsListener {
    listeners: Listeners,
    config: ProxyConfig,
    certificate: Arc<Certificate>,
}

impl DroneProxy {
    /// Binds the listeners and loads the certificate: a busy port or an unusable certificate
    /// is an error before anything starts.
    /// With `acme`, the TLS listener serves the refresher's files (nothing until it wrote them).
    fn bind(
        http: SocketAddr,
        public_port: Option<u16>,
        https: &HttpsArgs,
        acme: Option<&RefresherConfig>,
        threads: &ThreadsArg,
        data_plane: &DataPlaneArgs,
    ) -> anyhow::Result<DroneProxy> {
        let plain = bind_proxy(http, threads)?;
        let mut plain_config = data_plane.proxy_config();
        let Some(addr) = https.https else {
            let public_port = match public_port {
                Some(port) => port,
                None => plain.local_addr()?.port(),
            };
            return Ok(DroneProxy {
                plain,
                plain_config,
                https: None,
                scheme: "http",
                public_port,
            });
        };
        let certificate = match (&https.cert, &https.key, acme) {
            (Some(cert), Some(key), _) => Certificate::load(cert, key).context("--cert/--key")?,
            (_, _, Some(acme)) => {
                let files = Refresher::files(acme);
                Certificate::awaiting(&files.cert, &files.key)
            }
            _ => anyhow::bail!("--https needs --cert and --key, or --acme-directory"),
        };
        let listeners = bind_proxy(addr, threads)?
            .with_tls(&certificate)
            .context("TLS settings")?;
        let public_port = match https.public_https_port {
            Some(port) => port,
            None => listeners.local_addr()?.port(),
        };
        plain_config.https_redirect = Some(public_port);
        Ok(DroneProxy {
            plain,
            plain_config,
            https: Some(HttpsListener {
                listeners,
                config: data_plane.proxy_config(),
                certificate,
            }),
            scheme: "https",
            public_port,
        })
    }

    /// Tells whoever started us with port 0 the real addresses (on stdout).
    fn announce(&self) -> anyhow::Result<()> {
        println!("proxy listening on {}", self.plain.local_addr()?);
        if let Some(https) = &self.https {
            println!("https listening on {}", https.listeners.local_addr()?);
        }
        Ok(())
    }

    /// Serves until `shutdown`, each listener draining with its grace.
    async fn serve(self, table: RouteTable, shutdown: CancellationToken) -> anyhow::Result<()> {
        let plain = tokio::spawn(self.plain.serve(
            table.clone(),
            self.plain_config,
            shutdown.clone().cancelled_owned(),
        ));
        if let Some(https) = self.https {
            let watch = tokio::spawn(
                Arc::clone(&https.certificate)
                    .watch(plane_dataplane::tls::CERTIFICATE_CHECK_INTERVAL),
            );
            let served = https
                .listeners
                .serve(table, https.config, shutdown.clone().cancelled_owned())
                .await;
            watch.abort();
            if served.is_err() {
                // The plain listener stops (and drains) with it, rather than run on alone.
                shutdown.cancel();
            }
            let plain = plain.await;
            served.context("HTTPS proxy")?;
            return plain?.context("proxy");
        }
        plain.await?.context("proxy")?;
        Ok(())
    }
}

/// The refresher's set-up when `args` name an ACME CA.
fn acme_config(
    args: &AcmeArgs,
    cluster: &str,
    drone: &DroneId,
    state_dir: &Path,
) -> anyhow::Result<Option<RefresherConfig>> {
    let Some(directory) = &args.acme_directory else {
        return Ok(None);
    };
    let external_account = match (&args.acme_eab_kid, &args.acme_eab_hmac_file) {
        (Some(key_id), Some(file)) => {
            use base64::Engine as _;
            let text = secrets::read_secret(file, "ACME external account HMAC key")?;
            // base64url as CAs give it out, or standard base64; the error never quotes the key.
            let text = text.trim().trim_end_matches('=');
            let engines = [
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
            ];
            let hmac_key = engines
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| anyhow::anyhow!("{} does not hold a base64 key", file.display()))?;
            anyhow::ensure!(
                !hmac_key.is_empty(),
                "{} holds an empty key",
                file.display()
            );
            Some(ExternalAccount {
                key_id: key_id.clone(),
                hmac_key,
            })
        }
        _ => None,
    };
    if let Some(root) = &args.acme_root_ca {
        std::fs::metadata(root).with_context(|| format!("--acme-root-ca {}", root.display()))?;
    }
    Ok(Some(RefresherConfig {
        drone: drone.clone(),
        cluster: cluster.to_owned(),
        acme: AcmeConfig {
            directory: directory.clone(),
            email: args.acme_email.clone(),
            external_account,
            root_ca: args.acme_root_ca.clone(),
        },
        dir: state_dir.join(cluster),
    }))
}

/// Starts what keeps the TLS listener's certificate current and reported in the drone's
/// heartbeats: the ACME refresher, or the watch on operator-provided files. `None` without
/// HTTPS.
fn start_certificate_upkeep(
    proxy: &DroneProxy,
    acme: Option<RefresherConfig>,
    bus: &Bus,
    drone: &mut Drone,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = proxy.https.as_ref()?;
    if let Some(config) = acme {
        let (refresher, status) =
            Refresher::new(config, bus.clone(), Arc::clone(&listener.certificate));
        drone.report_certificate(status);
        return Some(tokio::spawn(refresher.run()));
    }
    let (status, receiver) = tokio::sync::watch::channel(None);
    drone.report_certificate(receiver);
    Some(tokio::spawn(
        plane_agent::certificates::watch_operator_files(Arc::clone(&listener.certificate), status),
    ))
}

fn drone_config(
    id: DroneId,
    cluster: &str,
    proxy: &DroneProxy,
    tuning: &DroneTuning,
) -> anyhow::Result<DroneConfig> {
    anyhow::ensure!(
        tuning.capacity > 0,
        "--capacity: a drone must accept at least one backend"
    );
    Ok(DroneConfig {
        id,
        cluster: cluster.to_ascii_lowercase(),
        capacity: tuning.capacity,
        heartbeat_interval: seconds(tuning.heartbeat_secs, "heartbeat-secs")?,
        usage_interval: seconds(tuning.usage_secs, "usage-secs")?,
        ready_timeout: seconds(tuning.ready_timeout_secs, "ready-timeout-secs")?,
        stop_grace: seconds(tuning.stop_grace_secs, "stop-grace-secs")?,
        proxy_scheme: proxy.scheme.into(),
        proxy_port: proxy.public_port,
        ip: match tuning.ip {
            Some(ip) => Some(ip),
            // The address the proxy listens on, when it is a specific one.
            None => {
                let listening = match &proxy.https {
                    Some(https) => https.listeners.local_addr()?,
                    None => proxy.plain.local_addr()?,
                };
                (!listening.ip().is_unspecified()).then(|| listening.ip())
            }
        },
    })
}

fn check_cluster(cluster: &str) -> anyhow::Result<String> {
    let cluster = cluster.trim_end_matches('.').to_ascii_lowercase();
    let valid = !cluster.is_empty()
        && cluster.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    anyhow::ensure!(valid, "--cluster {cluster:?} is not a DNS domain name");
    Ok(cluster)
}

/// Fires `trigger` on SIGINT/SIGTERM; a second signal exits at once (the backends still die
/// with us: see the process executor).
fn on_signal(trigger: CancellationToken) {
    tokio::spawn(async move {
        match shutdown::signal().await {
            Ok(name) => info!(
                signal = name,
                "shutting down; a second signal exits at once"
            ),
            Err(error) => {
                tracing::error!(%error, "cannot listen for signals; shutting down");
                trigger.cancel();
                return;
            }
        }
        trigger.cancel();
        if let Ok(name) = shutdown::signal().await {
            tracing::warn!(signal = name, "exiting without a graceful shutdown");
            std::process::exit(130);
        }
    });
}

/// How long a starting controller keeps trying to open the cluster state: JetStream may still be
/// electing its leaders when a NATS cluster and Plane start together.
const OPEN_STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the cluster state, retrying while JetStream is not ready yet.
async fn open_controller(bus: Bus, config: ControllerConfig) -> anyhow::Result<Controller> {
    let deadline = tokio::time::Instant::now() + OPEN_STATE_TIMEOUT;
    loop {
        match Controller::new(bus.clone(), config.clone()).await {
            Ok(controller) => return Ok(controller),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %plane_protocol::error_chain(&error), "cannot open the cluster state yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("opening cluster state"),
        }
    }
}

async fn connect(options: plane_bus::NatsOptions) -> anyhow::Result<Bus> {
    let urls = options.urls.clone();
    Bus::connect_with(options)
        .await
        .with_context(|| format!("connecting to NATS at {urls}"))
}

/// The API's set-up: its token, which must be given when it listens beyond loopback.
fn api_config(auth: &ApiServerAuth, addr: SocketAddr) -> anyhow::Result<api::ApiConfig> {
    Ok(api::ApiConfig {
        token: secrets::api_server_token(auth, addr)?,
        ..api::ApiConfig::default()
    })
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let cluster = check_cluster(&args.cluster)?;
    let api_config = api_config(&args.api_auth, args.api)?;
    let api_listener = bind(args.api, "API").await?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => state_dir::default_state_dir()?,
    };
    let drone_id = state_dir::drone_id(None, &state_dir, &cluster)?;
    let acme = acme_config(&args.acme, &cluster, &drone_id, &state_dir)?;
    let proxy = DroneProxy::bind(
        args.http,
        None,
        &args.https,
        acme.as_ref(),
        &args.threads,
        &args.data_plane,
    )?;
    let bus = Bus::in_memory();
    let controller = Controller::new(
        bus.clone(),
        ControllerConfig {
            cluster: cluster.clone(),
            drone_grace: plane_controlplane::limits::DEFAULT_DRONE_GRACE,
            retention: plane_controlplane::limits::DEFAULT_RETENTION,
            key_retention: args.keys.key_retention,
        },
    )
    .await
    .context("opening cluster state")?;
    let controller_shutdown = CancellationToken::new();
    let (dns_addr, dns_task) = start_dns(
        args.dns,
        &args.zone,
        &cluster,
        &controller,
        controller_shutdown.clone(),
    )
    .await?;
    let table = RouteTable::new(&cluster);
    let executor = executor(&args.executor, &cluster, &drone_id).await?;
    let executor_kind = executor.kind();
    let mut drone = Drone::new(
        drone_config(drone_id.clone(), &cluster, &proxy, &args.drone)?,
        bus.clone(),
        table.clone(),
        executor,
    );

    let api_addr = api_listener.local_addr()?;
    let plain_addr = proxy.plain.local_addr()?;
    let (proxy_addr, plain_line) = match &proxy.https {
        Some(https) => (
            https.listeners.local_addr()?,
            format!("\n  plain    answers 308 to https (listening on {plain_addr})"),
        ),
        None => (plain_addr, String::new()),
    };
    println!(
        "Plane dev is running.\n\
         \x20 API      http://{api_addr}\n\
         \x20 DNS      {dns_addr} (UDP and TCP)\n\
         \x20 proxy    {scheme}://{{backend}}.{cluster}:{port}/ (listening on {proxy_addr}){plain_line}\n\
         \x20 drone    {drone_id} ({executor_kind} executor)\n\n\
         Spawn a first backend (in another terminal):\n\
         \x20 cargo run --release -- spawn --wait --command \"sh -c 'exec python3 -m http.server --bind 127.0.0.1 \\$PORT'\"\n\
         Then open the URL it prints. Ctrl-C stops Plane and every backend it started.",
        scheme = proxy.scheme,
        port = proxy.public_port,
    );

    let drone_shutdown = CancellationToken::new();
    on_signal(drone_shutdown.clone());
    // Listening before the drone starts, so that its first heartbeat is heard.
    let listening = controller.listen().await.context("controller")?;
    let controller_task =
        tokio::spawn(listening.run(controller_shutdown.clone().cancelled_owned()));
    let api_task = tokio::spawn(api::serve(
        api_listener,
        controller,
        api_config,
        controller_shutdown.clone().cancelled_owned(),
    ));
    let upkeep = start_certificate_upkeep(&proxy, acme, &bus, &mut drone);
    let metrics =
        serve_drone_metrics(&args.metrics, &args.api_auth, &drone, &controller_shutdown).await?;
    // The controller outlives the drone, to take the reports of the backends it stops.
    let drone_result = run_drone(drone, proxy, table, upkeep, drone_shutdown).await;
    controller_shutdown.cancel();
    drone_result?;
    if let Some(metrics) = metrics {
        metrics.await?.context("metrics server")?;
    }
    controller_task.await?.context("controller")?;
    api_task.await?.context("API server")?;
    dns_task.await?.context("DNS server")?;
    Ok(())
}

/// Runs the drone and its proxy until `shutdown`; the proxy stops once the drone has stopped
/// its backends.
async fn run_drone(
    drone: Drone,
    proxy: DroneProxy,
    table: RouteTable,
    certificate_upkeep: Option<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let proxy_shutdown = CancellationToken::new();
    crate::memory::spawn_heap_trimmer();
    let proxy_task = tokio::spawn(proxy.serve(table, proxy_shutdown.clone()));
    let result = drone.run(shutdown.cancelled_owned()).await;
    if let Some(upkeep) = certificate_upkeep {
        upkeep.abort();
    }
    proxy_shutdown.cancel();
    result.context("drone")?;
    proxy_task.await??;
    Ok(())
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let cluster = check_cluster(&args.cluster)?;
    let api_config = api_config(&args.api_auth, args.api)?;
    let api_listener = bind(args.api, "API").await?;
    let mut nats = secrets::nats_options(&args.nats)?;
    nats.inbox_prefix = Some(Subjects::new(&cluster).controller_inbox_prefix());
    nats.kv_replicas = usize::from(args.kv_replicas);
    nats.name = Some(format!("plane controller ({cluster})"));
    let bus = connect(nats).await?;
    let config = ControllerConfig {
        cluster: cluster.clone(),
        drone_grace: seconds(args.drone_grace_secs, "drone-grace-secs")?,
        retention: seconds(args.retention_secs, "retention-secs")?,
        key_retention: args.keys.key_retention,
    };
    let controller = open_controller(bus, config).await?;
    let shutdown = CancellationToken::new();
    let dns = match args.dns {
        Some(addr) => {
            let (addr, task) =
                start_dns(addr, &args.zone, &cluster, &controller, shutdown.clone()).await?;
            println!("DNS listening on {addr}");
            Some(task)
        }
        None => None,
    };
    // Subscribed to the drones before it says it is up: a drone's first request is heard.
    let listening = controller.listen().await.context("controller")?;
    // On stdout, for whoever started us with port 0 to learn the real address.
    println!("API listening on http://{}", api_listener.local_addr()?);
    info!(%cluster, "controller started");
    on_signal(shutdown.clone());
    let api_task = tokio::spawn(api::serve(
        api_listener,
        controller.clone(),
        api_config,
        shutdown.clone().cancelled_owned(),
    ));
    listening
        .run(shutdown.cancelled_owned())
        .await
        .context("controller")?;
    api_task.await?.context("API server")?;
    if let Some(dns) = dns {
        dns.await?.context("DNS server")?;
    }
    Ok(())
}

pub async fn drone(args: DroneArgs) -> anyhow::Result<()> {
    let cluster = check_cluster(&args.cluster)?;
    // Needed only for what is kept there: a made-up id, the ACME account and certificate.
    let state_dir = || -> anyhow::Result<PathBuf> {
        match &args.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => state_dir::default_state_dir(),
        }
    };
    let id = match &args.id {
        Some(id) => state_dir::drone_id(Some(id), Path::new(""), &cluster)?,
        None => state_dir::drone_id(None, &state_dir()?, &cluster)?,
    };
    let acme = match &args.acme.acme_directory {
        Some(_) => acme_config(&args.acme, &cluster, &id, &state_dir()?)?,
        None => None,
    };
    let proxy = DroneProxy::bind(
        args.http,
        args.public_port,
        &args.https,
        acme.as_ref(),
        &args.threads,
        &args.data_plane,
    )?;
    let mut nats = secrets::nats_options(&args.nats)?;
    nats.inbox_prefix = Some(Subjects::new(&cluster).drone_inbox_prefix(&id));
    nats.name = Some(format!("plane drone {id} ({cluster})"));
    let bus = connect(nats).await?;
    let table = RouteTable::new(&cluster);
    let mut drone = Drone::new(
        drone_config(id.clone(), &cluster, &proxy, &args.drone)?,
        bus.clone(),
        table.clone(),
        executor(&args.executor, &cluster, &id).await?,
    );
    let upkeep = start_certificate_upkeep(&proxy, acme, &bus, &mut drone);
    let shutdown = CancellationToken::new();
    let metrics = serve_drone_metrics(&args.metrics, &args.api_auth, &drone, &shutdown).await?;
    // On stdout, for whoever started us with port 0 to learn the real address.
    proxy.announce()?;
    info!(drone = %id, %cluster, "drone started");
    on_signal(shutdown.clone());
    let result = run_drone(drone, proxy, table, upkeep, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(metrics) = metrics {
        metrics.await?.context("metrics server")?;
    }
    result
}

/// Serves the drone's metrics when `--metrics` asks for them (announced on stdout), behind the
/// API's token, until `shutdown`.
async fn serve_drone_metrics(
    args: &MetricsArgs,
    auth: &ApiServerAuth,
    drone: &Drone,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = args.metrics else {
        return Ok(None);
    };
    let shutdown = shutdown.clone();
    let token = secrets::api_server_token(auth, addr).context("--metrics")?;
    let listener = bind(addr, "metrics").await?;
    println!("metrics listening on {}", listener.local_addr()?);
    let metrics = drone.metrics();
    let app = api::metrics_router(move || metrics.render(), token);
    Ok(Some(tokio::spawn(async move {
        let config = api::ApiConfig::default();
        api::serve_router(listener, app, &config, shutdown.cancelled_owned()).await
    })))
}

/// `plane proxy`: the data plane alone, with static routes, until SIGINT or SIGTERM.
pub async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let table = RouteTable::for_hosts();
    for route in &args.routes {
        table.set_ready(&route.host, route.addr);
    }
    let plain = bind_proxy(args.listen, &args.threads)?;
    // Both listeners serve: `plane proxy` is a plain reverse proxy, not a drone that sends
    // plain HTTP to https.
    let https = match (args.tls_listen, &args.cert, &args.key) {
        (Some(addr), Some(cert), Some(key)) => {
            let certificate = Certificate::load(cert, key).context("--cert/--key")?;
            let listeners = bind_proxy(addr, &args.threads)?
                .with_tls(&certificate)
                .context("TLS settings")?;
            Some(HttpsListener {
                listeners,
                config: args.data_plane.proxy_config(),
                certificate,
            })
        }
        _ => None,
    };
    let proxy = DroneProxy {
        plain,
        plain_config: args.data_plane.proxy_config(),
        https,
        scheme: "http",
        public_port: 0,
    };
    proxy.announce()?;
    info!(
        routes = args.routes.len(),
        threads = proxy.plain.threads(),
        "proxy started"
    );
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    crate::memory::spawn_heap_trimmer();
    proxy.serve(table, shutdown).await
}
