//! What every executor (`process`, later `docker`) offers the lifecycle: start a backend, learn
//! its address, wait for its exit, stop it. The lifecycle never knows which one it drives.

use crate::logs::BackendLog;
use crate::readiness::ReadyCheck;
use futures::future::BoxFuture;
use plane_dataplane::TokenDigest;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{BackendSpec, ExecutorKind, PullProgress, Survivor};
use plane_protocol::registry::RegistryCredentials;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a backend could not be started (it ends `terminated/error_loading`).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program:?}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the command is empty")]
    EmptyCommand,
    #[error("no free port for the backend")]
    NoPort(std::io::Error),
    #[error("the executor is shutting down")]
    ShuttingDown,
    #[error("no image to run")]
    NoImage,
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("the container did not start: {message}")]
    Start { message: String },
    #[error("cannot take over the container: {message}")]
    Adopt { message: String },
    #[error("it ended before it was taken over ({})", exit.describe())]
    Ended { exit: Exit },
}

/// Where an executor tells how far a pull has come (the lifecycle reports it).
pub type PullSink = tokio::sync::watch::Sender<Option<PullProgress>>;

/// Everything needed to start one backend.
#[derive(Debug)]
pub struct Launch {
    pub backend: BackendId,
    pub spec: BackendSpec,
    /// The complete environment Plane gives it (`PORT`, `PLANE_*`, then the spec's `env`).
    pub env: Vec<(String, String)>,
    /// The port it must listen on (also in `env` as `PORT`).
    pub port: u16,
    /// For pulling the image (containers only).
    pub credentials: Option<RegistryCredentials>,
    /// Pull progress goes here, when someone listens.
    pub pull_progress: Option<PullSink>,
    /// What requests must show, kept with a backend that may outlive the drone process (a
    /// container), so that a restarted drone routes it as securely as before.
    pub token: Option<TokenDigest>,
    /// Where its output goes, line by line.
    pub log: BackendLog,
}

/// A survivor taken over by a new drone process.
pub struct Adopted {
    pub running: Box<dyn Running>,
    /// The digest of its access token, as it was kept with it.
    pub token: Option<TokenDigest>,
}

/// How a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The kernel killed it for going over its memory limit.
    pub oom_killed: bool,
}

impl Exit {
    /// An end nothing more is known of.
    pub const UNKNOWN: Exit = Exit {
        code: None,
        signal: None,
        oom_killed: false,
    };

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A short human description, e.g. `exit code 3` or `killed by signal 9`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) if self.oom_killed => {
                format!("exit code {code}, killed for going over its memory limit")
            }
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended".to_string(),
        }
    }
}

/// A backend's cumulative counters, read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageReading {
    /// CPU time it has used since it started.
    pub cpu: Duration,
    /// Memory in use, page cache left out.
    pub memory_bytes: u64,
}

/// A way of running backends.
pub trait Executor: Send + Sync + 'static {
    fn kind(&self) -> ExecutorKind;

    /// The port a new backend is told to listen on (`PORT`).
    fn port(&self) -> std::io::Result<u16>;

    /// What proves a started backend ready when its spawn names no `ready_path`.
    fn default_ready_check(&self) -> ReadyCheck;

    /// What makes a started backend ready: its `ready_path` answering 2xx/3xx, else
    /// [`Executor::default_ready_check`].
    fn ready_check(&self, spec: &BackendSpec) -> ReadyCheck {
        match &spec.ready_path {
            Some(path) => ReadyCheck::Succeeds(path.clone()),
            None => self.default_ready_check(),
        }
    }

    /// Starts the backend. An error means it could not be loaded at all.
    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Running>, LaunchError>>;

    /// The cluster's backends that outlived their drone process on this machine (any drone's:
    /// a lost drone's are removed by whichever drone starts next). None for executors whose
    /// backends die with the drone.
    fn survivors(&self) -> BoxFuture<'_, Result<Vec<Survivor>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Takes over a running survivor of this drone that the cluster still wants; its output
    /// from now on goes to `log`.
    fn adopt(
        &self,
        survivor: &Survivor,
        log: BackendLog,
    ) -> BoxFuture<'_, Result<Adopted, LaunchError>> {
        let _ = log;
        let backend = survivor.backend.clone();
        Box::pin(async move {
            Err(LaunchError::Adopt {
                message: format!("{backend}: this executor has no survivors"),
            })
        })
    }

    /// Reads the counters of those of `backends` it can (the others are left out). None for
    /// executors that do not measure their backends.
    fn read_usage(
        &self,
        backends: Vec<BackendId>,
    ) -> BoxFuture<'_, Vec<(BackendId, UsageReading)>> {
        let _ = backends;
        Box::pin(async { Vec::new() })
    }

    /// Stops (within `grace`) and removes a survivor nobody wants.
    fn discard(&self, survivor: &Survivor, grace: Duration) -> BoxFuture<'_, ()> {
        let _ = (survivor, grace);
        Box::pin(async {})
    }
}

/// A started backend. Dropping it kills whatever is left of it.
pub trait Running: Send {
    /// Where the proxy reaches it.
    fn address(&self) -> SocketAddr;

    /// Checks that what accepts connections at [`Running::address`] is this backend and not
    /// some other process; the proxy must only ever forward to backends Plane started.
    fn verify_listener(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Resolves when it has exited by itself. Cancel safe.
    fn wait(&mut self) -> BoxFuture<'_, Exit>;

    /// Stops it (a polite signal, then a kill after `grace`) and resolves once nothing of it is
    /// left running.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit>;
}
