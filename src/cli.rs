//! The command line (**contract**: command and flag names are used by scripts and the README).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "plane",
    version,
    about = "Session backends for web applications."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole cluster in this process (controller, drone, in-memory bus).
    Dev(DevArgs),
    /// Run a controller (scheduler and HTTP API) against NATS.
    Controller(ControllerArgs),
    /// Run a drone (agent and proxy) against NATS.
    Drone(DroneArgs),
    /// Run the data plane alone with static routes: a plain reverse proxy (and what the load
    /// benchmarks measure).
    Proxy(ProxyArgs),
    /// Start a backend.
    Spawn(SpawnArgs),
    /// The backend of a key: the live one, or a new one started with the spawn flags
    /// (`PLANE_KEY` tells it its key).
    Connect(ConnectArgs),
    /// Show one backend.
    Status(BackendArgs),
    /// List backends.
    List(ClientArgs),
    /// Stop a backend.
    Terminate(BackendArgs),
    /// Change a running backend's idle timeout; the sweeper uses it at once.
    SetIdle(SetIdleArgs),
    /// Follow a backend's state changes until it is terminated.
    Watch(BackendArgs),
    /// Show a backend's log: its output and Plane's lines about it (the last 1,000 kept).
    Logs(LogsArgs),
    /// List drones.
    Drones(ClientArgs),
    /// Drain a drone: it takes no new backends and keeps those it runs until they are swept
    /// (or the deadline passes, when the rest are terminated).
    Drain(DrainArgs),
}

impl Command {
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            Command::Dev(_) | Command::Controller(_) | Command::Drone(_) | Command::Proxy(_)
        )
    }

    /// Whether the command runs a proxy: its worker threads (`--threads`) do the heavy work,
    /// and the rest (agent, controller, API) is light enough for one thread.
    pub fn serves_proxy(&self) -> bool {
        matches!(
            self,
            Command::Dev(_) | Command::Drone(_) | Command::Proxy(_)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PullArg {
    Always,
    /// The API's own name.
    #[value(name = "if_not_present", alias = "if-not-present")]
    IfNotPresent,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorArg {
    /// Each backend is a local process.
    Process,
    /// Each backend is a Docker container (the local engine, `DOCKER_HOST` or its socket).
    Docker,
}

/// The cluster zone's own names.
#[derive(Args, Debug, Clone)]
pub struct DnsZoneArgs {
    /// The zone's name server, in its NS and SOA records (default: ns.{cluster}).
    #[arg(long, value_name = "NAME")]
    pub dns_ns: Option<String>,
    /// The zone's contact in its SOA record (default: hostmaster@{cluster}).
    #[arg(long, value_name = "ADDR")]
    pub dns_soa_email: Option<String>,
}

/// How a drone runs backends.
#[derive(Args, Debug, Clone)]
pub struct ExecutorArgs {
    #[arg(long, value_enum, default_value = "process")]
    pub executor: ExecutorArg,
    /// Attach each container to this Docker network and forward to its address there, instead
    /// of publishing its port on the drone's loopback (`--executor docker`; for deployments
    /// where the proxy reaches containers over their own network).
    #[arg(long, value_name = "NAME")]
    pub docker_network: Option<String>,
}

/// How many threads serve requests.
#[derive(Args, Debug, Clone)]
pub struct ThreadsArg {
    /// Threads that serve the proxy, each with its own runtime and its own listening socket
    /// (SO_REUSEPORT) on the address; 1 serves on the main thread (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
}

impl ThreadsArg {
    /// The threads asked for, or one per core.
    pub fn count(&self) -> NonZeroUsize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }
}

/// Data plane settings shared by `plane proxy`, `plane drone` and `plane dev`.
#[derive(Args, Debug, Clone)]
pub struct DataPlaneArgs {
    /// Requests and WebSockets in flight to one backend at once; past it, 503 with Retry-After
    /// (default: no limit beyond the proxy's 10,000 connections).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns_per_backend: Option<u64>,
    /// How upgraded (WebSocket) connections move bytes: `copy` (pooled buffers, held only
    /// while bytes move; measured faster on loopback) or `splice` (zero copy through pooled
    /// pipes).
    #[arg(long, value_name = "MODE", default_value = "copy", value_parser = parse_relay)]
    pub upgrade_relay: plane_dataplane::Carry,
}

impl DataPlaneArgs {
    /// The proxy configuration these settings give.
    pub fn proxy_config(&self) -> plane_dataplane::ProxyConfig {
        plane_dataplane::ProxyConfig {
            max_conns_per_backend: self.max_conns_per_backend,
            relay_carry: self.upgrade_relay,
            ..plane_dataplane::ProxyConfig::default()
        }
    }
}

fn parse_relay(value: &str) -> Result<plane_dataplane::Carry, String> {
    match value {
        "copy" => Ok(plane_dataplane::Carry::Copy),
        "splice" => Ok(plane_dataplane::Carry::Splice),
        other => Err(format!("{other:?}: expected copy or splice")),
    }
}

/// HTTPS on a drone (`plane drone`, `plane dev`).
#[derive(Args, Debug, Clone)]
pub struct HttpsArgs {
    /// Where the proxy serves HTTPS (TLS 1.3/1.2, HTTP/1.1 and HTTP/2), with --cert and --key
    /// or --acme-directory. With it, plain HTTP requests are answered 308 to https, and backend
    /// URLs say https.
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// The certificate chain for --https (PEM, leaf first); served anew when the file changes.
    #[arg(long, value_name = "FILE", requires_all = ["https", "key"])]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires_all = ["https", "cert"])]
    pub key: Option<PathBuf>,
    /// The HTTPS port as clients see it, for redirects and backend URLs (default: the
    /// --https listener's).
    #[arg(long, value_name = "PORT", requires = "https")]
    pub public_https_port: Option<u16>,
}

/// The drone's certificate from an ACME CA, instead of --cert/--key: one certificate for
/// `{cluster}` and `*.{cluster}` over DNS-01, shared by the cluster's drones, kept in
/// --state-dir and renewed when a third of its lifetime is left.
#[derive(Args, Debug, Clone)]
pub struct AcmeArgs {
    /// The CA's ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory).
    #[arg(long, value_name = "URL", requires = "https", conflicts_with_all = ["cert", "key"])]
    pub acme_directory: Option<String>,
    /// The ACME account's contact address (the CA may write about expiring certificates).
    #[arg(long, value_name = "ADDR", requires = "acme_directory")]
    pub acme_email: Option<String>,
    /// External account binding: the key id the CA gave (with --acme-eab-hmac-file).
    #[arg(long, value_name = "ID", requires_all = ["acme_directory", "acme_eab_hmac_file"])]
    pub acme_eab_kid: Option<String>,
    /// External account binding: a file holding the HMAC key the CA gave (base64url).
    #[arg(long, value_name = "FILE", requires = "acme_eab_kid")]
    pub acme_eab_hmac_file: Option<PathBuf>,
    /// Trust these roots (PEM) for the CA's own HTTPS instead of the system's (a test CA).
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    pub acme_root_ca: Option<PathBuf>,
}

/// A static route: requests whose `Host` is `HOST` (any port) go to `ADDR`.
#[derive(Clone, Debug)]
pub struct StaticRoute {
    pub host: String,
    pub addr: SocketAddr,
}

impl std::str::FromStr for StaticRoute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected HOST=ADDR"))?;
        let name = plane_dataplane::host_name(host)
            .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
        if name.len() != host.len() {
            return Err(format!("{host:?}: give the host without a port"));
        }
        let addr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP:PORT address: {e}"))?;
        Ok(StaticRoute {
            host: host.to_string(),
            addr,
        })
    }
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Where the proxy listens.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// A route, HOST=IP:PORT (repeatable): requests whose Host is HOST (case-insensitive, any
    /// port) go to that address; any other Host gets 404.
    #[arg(long = "route", value_name = "HOST=ADDR", required = true)]
    pub routes: Vec<StaticRoute>,
    /// Where the proxy also serves HTTPS (TLS 1.3/1.2, HTTP/1.1), with --cert and --key; the
    /// plain listener keeps serving plain HTTP.
    #[arg(long, value_name = "ADDR", requires_all = ["cert", "key"])]
    pub tls_listen: Option<SocketAddr>,
    /// The certificate chain for --tls-listen (PEM, leaf first); served anew when the file
    /// changes.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub api: SocketAddr,
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub http: SocketAddr,
    /// The cluster domain; `*.localhost` resolves to loopback without any DNS set-up.
    #[arg(long, default_value = "plane.localhost")]
    pub cluster: String,
    /// Where the cluster's DNS server listens (UDP and TCP).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9053")]
    pub dns: SocketAddr,
    #[command(flatten)]
    pub zone: DnsZoneArgs,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// Where the drone keeps its id across restarts, so that a restarted `plane dev` finds the
    /// containers it left (default: $XDG_STATE_HOME/plane, else ~/.local/state/plane).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub https: HttpsArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
    #[command(flatten)]
    pub drone: DroneTuning,
    #[command(flatten)]
    pub api_auth: ApiServerAuth,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Who may call the API.
#[derive(Args, Debug, Clone)]
pub struct ApiServerAuth {
    #[command(flatten)]
    pub token: ApiTokenArgs,
    /// Serve the API without a token on an address beyond loopback (refused otherwise).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// The API's bearer token: a file holding it, or `PLANE_API_TOKEN` holding it.
#[derive(Args, Debug, Clone)]
pub struct ApiTokenArgs {
    /// A file holding the API's bearer token (or set PLANE_API_TOKEN to the token itself).
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
}

/// How to reach NATS. Secrets come from files, never from the command line.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("nats_credentials").multiple(false)))]
pub struct NatsArgs {
    /// NATS server URL, or several comma-separated (the nodes of a NATS cluster).
    #[arg(long, env = "PLANE_NATS")]
    pub nats: String,
    /// NATS user name (with --nats-password-file).
    #[arg(
        long,
        value_name = "NAME",
        requires = "nats_password_file",
        group = "nats_credentials"
    )]
    pub nats_user: Option<String>,
    /// A file holding the NATS user's password.
    #[arg(long, value_name = "FILE", requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    /// A file holding a NATS token.
    #[arg(long, value_name = "FILE", group = "nats_credentials")]
    pub nats_token_file: Option<PathBuf>,
    /// A file holding an nkey seed (SU...) whose public key the server knows.
    #[arg(long, value_name = "FILE", group = "nats_credentials")]
    pub nats_nkey_file: Option<PathBuf>,
    /// A NATS .creds file (user JWT and seed), for servers in operator mode.
    #[arg(long, value_name = "FILE", group = "nats_credentials")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) for the server's TLS certificate; turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for servers that verify clients (with --nats-tls-key).
    #[arg(long, value_name = "FILE", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Replicas of the cluster's KV buckets when this controller creates them (3 on a
    /// three-node NATS cluster, so that losing a node loses nothing).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub kv_replicas: u8,
    /// The cluster domain.
    #[arg(long)]
    pub cluster: String,
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub api: SocketAddr,
    /// Serve the cluster's zone as its authoritative DNS server here (UDP and TCP).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<SocketAddr>,
    #[command(flatten)]
    pub zone: DnsZoneArgs,
    /// Seconds without a heartbeat after which a drone and its backends are lost.
    #[arg(long, default_value_t = plane_controlplane::limits::DEFAULT_DRONE_GRACE.as_secs_f64())]
    pub drone_grace_secs: f64,
    /// Seconds after which terminated backends and lost drones are forgotten.
    #[arg(long, default_value_t = plane_controlplane::limits::DEFAULT_RETENTION.as_secs_f64())]
    pub retention_secs: f64,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub api_auth: ApiServerAuth,
}

#[derive(Args, Debug)]
pub struct DroneArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The cluster domain.
    #[arg(long)]
    pub cluster: String,
    /// Where the proxy listens.
    #[arg(long)]
    pub http: SocketAddr,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// This drone's id (default: the one kept in --state-dir, made up the first time).
    #[arg(long)]
    pub id: Option<String>,
    /// Where the drone keeps its id across restarts (default: $XDG_STATE_HOME/plane, else
    /// ~/.local/state/plane).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The proxy's port as clients see it, when a load balancer or NAT changes it.
    #[arg(long)]
    pub public_port: Option<u16>,
    #[command(flatten)]
    pub https: HttpsArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
    #[command(flatten)]
    pub drone: DroneTuning,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// The token `GET /metrics` requires (the API's): `--api-token-file` or `PLANE_API_TOKEN`.
    #[command(flatten)]
    pub api_auth: ApiServerAuth,
}

#[derive(Args, Debug)]
pub struct DroneTuning {
    /// Backends this drone runs at once.
    #[arg(long, default_value_t = plane_agent::limits::DEFAULT_CAPACITY)]
    pub capacity: u32,
    /// Seconds a backend gets to accept connections on its port.
    #[arg(long, default_value_t = plane_agent::limits::DEFAULT_READY_TIMEOUT.as_secs_f64())]
    pub ready_timeout_secs: f64,
    /// Seconds between SIGTERM and SIGKILL when stopping a backend.
    #[arg(long, default_value_t = plane_agent::limits::DEFAULT_STOP_GRACE.as_secs_f64())]
    pub stop_grace_secs: f64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = plane_agent::limits::DEFAULT_HEARTBEAT_INTERVAL.as_secs_f64())]
    pub heartbeat_secs: f64,
    /// The address clients reach this drone's proxy at: what the cluster's DNS answers for its
    /// backends (default: the proxy's listening address, when it is a specific one).
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<std::net::IpAddr>,
    /// Seconds between samples of each backend's CPU and memory use (containers).
    #[arg(long, default_value_t = plane_agent::limits::DEFAULT_USAGE_INTERVAL.as_secs_f64())]
    pub usage_secs: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The Plane API.
    #[arg(long, env = "PLANE_API", default_value = "http://127.0.0.1:9080")]
    pub api: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub token: ApiTokenArgs,
}

#[derive(Args, Debug)]
pub struct BackendArgs {
    /// The backend's id.
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The drone's id (see `plane drones`).
    pub drone: String,
    /// Terminate what still runs this many seconds from now.
    #[arg(long, value_name = "SECS", conflicts_with = "cancel")]
    pub deadline: Option<u64>,
    /// Return once the drone is drained (runs nothing any more).
    #[arg(long, conflicts_with = "cancel")]
    pub wait: bool,
    /// Cancel the drain: the drone takes backends again.
    #[arg(long)]
    pub cancel: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct SetIdleArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Seconds without connections before it is swept (1 to a week).
    pub max_idle_secs: u64,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Go on printing new lines until the backend has ended.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct SpawnArgs {
    /// The command to run, split like a shell would (quotes work; no variables or globs); with
    /// `--image`, it replaces the image's CMD.
    #[arg(long, required_unless_present = "image")]
    pub command: Option<String>,
    /// Run the backend as a container of this image (a drone with `--executor docker`).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Memory limit of the container, e.g. `256M`, `1G` (K, M, G are powers of 1024).
    #[arg(long, value_name = "SIZE", requires = "image")]
    pub memory: Option<String>,
    /// CPU limit of the container in cores, e.g. `0.5`.
    #[arg(long, value_name = "CORES", requires = "image")]
    pub cpus: Option<f64>,
    /// Most processes and threads in the container.
    #[arg(long, value_name = "N", requires = "image")]
    pub pids: Option<u64>,
    /// When the drone pulls the image (default: if_not_present).
    #[arg(long, value_enum, requires = "image")]
    pub pull: Option<PullArg>,
    /// Registry user for pulling the image.
    #[arg(long, value_name = "USER", requires_all = ["image", "registry_password_file"])]
    pub registry_user: Option<String>,
    /// File holding the registry password (read here; never put on the command line).
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<std::path::PathBuf>,
    /// The backend is ready only once this path answers 2xx or 3xx.
    #[arg(long, value_name = "PATH")]
    pub ready_path: Option<String>,
    /// Seconds without connections before the backend is swept.
    #[arg(long)]
    pub idle: Option<u64>,
    /// Extra environment, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Return once the backend is ready (or fail if it ends first).
    #[arg(long)]
    pub wait: bool,
    /// Clients must show the backend's access token (printed here, and never again):
    /// `Authorization: Bearer TOKEN`, or the cookie set by `/_plane_auth?token=TOKEN`.
    #[arg(long)]
    pub require_token: bool,
    /// Sent as `Idempotency-Key`: running the same command again with it (within ten minutes)
    /// prints the first answer instead of starting another backend.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The drone's Prometheus metrics.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve the drone's metrics (`GET /metrics`) here: `PORT` (on 127.0.0.1) or `ADDR:PORT`;
    /// beyond loopback only with the API token (or `--insecure-no-auth`).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
}

/// `PORT` means 127.0.0.1:PORT.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|e| format!("{text:?}: expected PORT or ADDR:PORT ({e})"))
}

/// How keys (`plane connect`) are kept.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// How long a key and the spec a wake runs are kept after the key's last use, e.g. `7d`,
    /// `12h`, `30m`, `90s` (a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub key_retention: std::time::Duration,
}

/// `7d`, `12h`, `30m`, `90s` or a number of seconds; more than zero.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 7d"))?;
    let duration = std::time::Duration::try_from_secs_f64(value * scale)
        .map_err(|e| format!("{text:?}: {e}"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The key, any text (e.g. `doc-42`).
    pub key: String,
    /// Keep the key's spec so that a request to its URL (`key_url`) starts a backend again.
    #[arg(long)]
    pub wake: bool,
    #[command(flatten)]
    pub spawn: SpawnArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn metrics_addresses_default_to_loopback() {
        assert_eq!(
            parse_metrics_addr("9100"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9100"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        assert!(parse_metrics_addr("nine").is_err());
    }

    #[test]
    fn durations_take_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("-1d").is_err());
    }
}
