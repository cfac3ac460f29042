//! The typed JSON messages of the controller–drone protocol. Unknown fields are ignored so that
//! either side can be upgraded first; a message that does not parse is logged and dropped by the
//! receiver (or answered with an error when a reply is expected).

use crate::ids::{BackendId, DroneId};
use crate::registry::RegistryCredentials;
use crate::token::AccessToken;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds since the Unix epoch, as carried on the wire.
pub type UnixMillis = u64;

/// The current wall-clock time in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A backend's lifecycle (**contract**: these names are part of the API).
///
/// `scheduled → loading → starting → ready → terminating → terminated`; any state may jump to
/// `terminating` or `terminated`, and `terminated` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// The controller picked a drone and asked it to run the backend.
    Scheduled,
    /// The drone is preparing the executable (pulling an image, resolving a command).
    Loading,
    /// The executable runs; the drone waits for it to accept connections.
    Starting,
    /// The backend accepts connections and the proxy routes to it.
    Ready,
    /// The backend is being stopped.
    Terminating,
    /// The backend has ended; see [`TerminationReason`].
    Terminated,
}

impl BackendState {
    /// Every state, in lifecycle order.
    pub const ALL: [BackendState; 6] = [
        BackendState::Scheduled,
        BackendState::Loading,
        BackendState::Starting,
        BackendState::Ready,
        BackendState::Terminating,
        BackendState::Terminated,
    ];

    /// Position in the lifecycle; a report never moves a backend backwards.
    pub fn rank(self) -> u8 {
        match self {
            BackendState::Scheduled => 0,
            BackendState::Loading => 1,
            BackendState::Starting => 2,
            BackendState::Ready => 3,
            BackendState::Terminating => 4,
            BackendState::Terminated => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Scheduled => "scheduled",
            BackendState::Loading => "loading",
            BackendState::Starting => "starting",
            BackendState::Ready => "ready",
            BackendState::Terminating => "terminating",
            BackendState::Terminated => "terminated",
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a backend ended (**contract**).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// Idle for longer than its `max_idle_secs`.
    Swept,
    /// Exited by itself with code 0.
    Exited,
    /// Exited with a non-zero code or was killed by a signal.
    Failed,
    /// The image or command could not be started.
    ErrorLoading,
    /// Died before it became ready.
    ErrorStarting,
    /// Did not become ready within the ready timeout.
    TimedOut,
    /// Terminated on request.
    Terminated,
    /// Its drone vanished.
    Lost,
}

impl TerminationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Swept => "swept",
            TerminationReason::Exited => "exited",
            TerminationReason::Failed => "failed",
            TerminationReason::ErrorLoading => "error_loading",
            TerminationReason::ErrorStarting => "error_starting",
            TerminationReason::TimedOut => "timed_out",
            TerminationReason::Terminated => "terminated",
            TerminationReason::Lost => "lost",
        }
    }
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a drone runs backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// A local process per backend.
    #[default]
    Process,
    /// A Docker container per backend.
    Docker,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Process => "process",
            ExecutorKind::Docker => "docker",
        }
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What to run for a backend: a container when `image` is given (its `command`, if any,
/// replaces the image's CMD, as `docker run IMAGE cmd…` does), else the local `command`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executable {
    /// The container image reference (`docker` executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program and arguments, run directly (no shell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// When the drone pulls the image; containers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

impl Executable {
    /// A local process running `command`.
    pub fn process(command: Vec<String>) -> Executable {
        Executable {
            command,
            ..Executable::default()
        }
    }

    /// The executor that can run it.
    pub fn executor(&self) -> ExecutorKind {
        if self.image.is_some() {
            ExecutorKind::Docker
        } else {
            ExecutorKind::Process
        }
    }
}

/// When a drone pulls a backend's image (**contract**: the names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Every time a backend starts.
    Always,
    /// Only when the engine does not have it.
    #[default]
    IfNotPresent,
    /// Never: an image the engine lacks fails the backend (`error_loading`).
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if_not_present",
            PullPolicy::Never => "never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How far the pull of a backend's image has come, while it is `loading` (**contract**: the
/// field names of `"pull"` in records and `updated` events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    pub layers_done: u32,
    pub layers_total: u32,
    pub bytes_done: u64,
    /// Of the layers whose size is known so far.
    pub bytes_total: u64,
}

/// Limits a container runs under; each is unlimited when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU: 500 is half a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Most processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Resources {
    pub fn is_unlimited(&self) -> bool {
        *self == Resources::default()
    }
}

/// Everything a drone needs to run one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub executable: Executable,
    /// Seconds with no active connection after which the backend is swept.
    pub max_idle_secs: u64,
    /// Extra environment, on top of Plane's own variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Clients must show the backend's access token (the spawn answer's `token`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_token: bool,
    #[serde(default, skip_serializing_if = "Resources::is_unlimited")]
    pub resources: Resources,
    /// A path that must answer 2xx or 3xx before the backend is ready; without it, any HTTP
    /// answer (containers) or an accepted connection (processes) makes it ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_path: Option<String>,
}

/// Controller → drone, as a request on [`crate::subjects::Subjects::drone_commands`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
// One message decoded per command and dropped right after: the size of the small variant does
// not matter, and boxing the spec would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum DroneCommand {
    /// Run a backend. Idempotent: a backend id the drone already knows is acknowledged again.
    Spawn {
        backend: BackendId,
        spec: BackendSpec,
        /// The token clients must show, when `spec.require_token`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<AccessToken>,
        /// For pulling `spec.executable.image`; only this drone is ever given them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<RegistryCredentials>,
    },
    /// Stop a backend. Idempotent: an unknown or ended backend is acknowledged.
    Terminate { backend: BackendId },
    /// Change a running backend's idle timeout; the sweeper uses it at once. Rejected for a
    /// backend the drone does not run.
    SetIdle {
        backend: BackendId,
        max_idle_secs: u64,
    },
    /// Take no new backends; keep serving those it runs until they are swept, or until
    /// `deadline_secs` from now, when the rest are terminated. Sent again, it replaces the
    /// deadline.
    Drain {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_secs: Option<u64>,
    },
    /// Cancel a drain: take new backends again; nothing is terminated any more.
    Undrain,
}

/// The reply to every request of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Ack {
    Accepted,
    Rejected { error: String },
}

/// Drone → controller: one state change of one backend, re-sent until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    pub backend: BackendId,
    pub drone: DroneId,
    /// Increases by one per report of this backend, so a re-sent or late report is recognised.
    pub seq: u64,
    pub state: BackendState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TerminationReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// It was killed for going over its memory limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// Its image's pull, while loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullProgress>,
    /// A human-readable detail, e.g. why loading failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The reporting drone process's [`Heartbeat::started_at`]: after a drone restarts, the
    /// controller ends exactly the backends of its earlier process.
    #[serde(default)]
    pub drone_started_at: UnixMillis,
    pub at: UnixMillis,
}

/// Drone → controller, once when a drone process starts and before its first heartbeat, on
/// [`crate::subjects::Subjects::recovery`]: the backends of the cluster that outlived their drone
/// process on this drone's engine (containers do; processes die with the drone). The answer says
/// which to adopt and which to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub drone: DroneId,
    /// The new process's [`Heartbeat::started_at`].
    pub started_at: UnixMillis,
    /// What was found, this drone's and other drones' of the cluster on the same engine.
    pub found: Vec<Survivor>,
}

/// A backend found still on the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survivor {
    pub backend: BackendId,
    /// The drone that started it.
    pub drone: DroneId,
    pub status: SurvivorStatus,
}

/// Where a found backend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SurvivorStatus {
    /// Created, never started (its drone died between the two).
    Created,
    Running,
    /// It ended while no drone process watched it.
    Exited {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom_killed: bool,
    },
}

/// Controller → drone: what to do with each [`Survivor`] (those not named are removed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryAnswer {
    /// Still wanted on this drone: adopt the running ones, report how the others ended.
    #[serde(default)]
    pub adopt: Vec<Adoption>,
    /// Another drone's, and that drone is live: leave them to it.
    #[serde(default)]
    pub leave: Vec<BackendId>,
}

/// A found backend the cluster still holds live on the drone that found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub backend: BackendId,
    pub spec: BackendSpec,
    /// Its state in the cluster (whether it had been ready).
    pub state: BackendState,
    /// The last report applied: the adopting process's reports go on from here.
    pub last_seq: u64,
}

/// A backend's resource use as its drone last sampled it (**contract**: shown as `"usage"` by
/// `GET /v1/backends/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU over the last sampling interval, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in use, page cache left out.
    pub memory_bytes: u64,
    /// When it was sampled, by the drone's clock.
    pub at: UnixMillis,
}

/// Which output a log line came from (**contract**).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    Stdout,
    Stderr,
    /// Plane's own line about the backend (a pull error, how it ended).
    Plane,
}

/// One line of a backend's log, as its drone publishes it on
/// [`crate::subjects::Subjects::backend_logs`]. The line is data: never interpreted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: UnixMillis,
    pub stream: LogSource,
    pub line: String,
}

/// A kept log line as `GET /v1/backends/{id}/logs` sends it (**contract**: `event: log`, data
/// `{"seq", "at", "stream", "line"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its position in the cluster's log: increasing.
    pub seq: u64,
    #[serde(flatten)]
    pub line: LogLine,
}

/// Drone → controller, published periodically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub drone: DroneId,
    pub executor: ExecutorKind,
    /// How many backends the drone accepts at once.
    pub capacity: u32,
    /// How many backends it runs now.
    pub load: u32,
    /// The backends it runs now, so that a controller that gave up on some (declared them
    /// lost) can have them stopped when the drone comes back.
    #[serde(default)]
    pub backends: Vec<BackendId>,
    #[serde(default)]
    pub draining: bool,
    /// While draining with a deadline: when the backends still running are terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<UnixMillis>,
    /// Scheme of the drone's proxy as seen by clients (`http` or `https`).
    pub proxy_scheme: String,
    /// Port of the drone's proxy as seen by clients.
    pub proxy_port: u16,
    /// The address clients reach the drone's proxy at: what the cluster's DNS answers for its
    /// backends (`plane drone --ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    /// The certificate its TLS listener serves, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<crate::certificates::CertificateStatus>,
    /// When this drone process started: a new value under a known drone id means the drone
    /// restarted, and whatever it ran before is gone.
    #[serde(default)]
    pub started_at: UnixMillis,
    pub at: UnixMillis,
    /// Resource use sampled since the previous heartbeat, per backend (each sample is sent once).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<BackendId, Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_and_ignores_unknown_fields() {
        let cmd = DroneCommand::Terminate {
            backend: BackendId::new("abc").expect("valid id"),
        };
        let json = serde_json::to_string(&cmd).expect("serialises");
        assert_eq!(json, r#"{"command":"terminate","backend":"abc"}"#);
        let back: DroneCommand =
            serde_json::from_str(r#"{"command":"terminate","backend":"abc","future":1}"#)
                .expect("unknown fields are ignored");
        assert_eq!(back, cmd);
    }

    #[test]
    fn states_serialise_to_contract_names() {
        let json = serde_json::to_string(&TerminationReason::ErrorLoading).expect("serialises");
        assert_eq!(json, "\"error_loading\"");
        assert_eq!(BackendState::Terminated.as_str(), "terminated");
        assert!(BackendState::Ready.rank() < BackendState::Terminating.rank());
    }
}
