//! The `process` executor: each backend is a local command, run directly (no shell), in its
//! own process group so that stopping it reaches everything it started.
//!
//! A drone killed outright (SIGKILL, OOM) takes its backends with it, twice over: each backend's
//! first process has `PR_SET_PDEATHSIG` (the signal follows the death of the thread that forked,
//! so children are started from one long-lived thread that lives as long as the executor), and
//! the [`Reaper`] kills each backend's whole process group. A process that leaves its group
//! (`setsid`) escapes both; that takes cgroups, which the `docker` executor has.

use crate::executor::{Executor, Exit, Launch, LaunchError, Running};
use crate::limits::MAX_LOG_LINE_BYTES;
use crate::logs::BackendLog;
use crate::readiness::ReadyCheck;
use crate::reaper::Reaper;
use futures::future::BoxFuture;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{ExecutorKind, LogSource};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

type SpawnReply = oneshot::Sender<std::io::Result<tokio::process::Child>>;

/// Runs backends as local processes listening on `127.0.0.1:$PORT`.
pub struct ProcessExecutor {
    spawner: std_mpsc::Sender<(std::process::Command, SpawnReply)>,
    reaper: Arc<Reaper>,
}

impl ProcessExecutor {
    /// Forks the reaper and starts the spawner thread; must be called within a tokio runtime,
    /// which the thread uses to register the children it starts.
    pub fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let reaper = Arc::new(Reaper::start()?);
        let (tx, rx) = std_mpsc::channel::<(std::process::Command, SpawnReply)>();
        let spawner_reaper = reaper.clone();
        std::thread::Builder::new()
            .name("plane-spawner".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (command, reply) in rx {
                    let mut command = tokio::process::Command::from(command);
                    // Should the launching task be gone, the child must not outlive its handle.
                    command.kill_on_drop(true);
                    let child = command.spawn();
                    if let Some(pid) = child.as_ref().ok().and_then(|c| c.id()) {
                        // At once, before the backend can start processes of its own.
                        spawner_reaper.watch(pid as libc::pid_t);
                    }
                    let _ = reply.send(child);
                }
            })?;
        Ok(ProcessExecutor {
            spawner: tx,
            reaper,
        })
    }

    fn command(launch: &Launch) -> Result<std::process::Command, LaunchError> {
        let argv = &launch.spec.executable.command;
        let program = argv.first().ok_or(LaunchError::EmptyCommand)?;
        let mut command = std::process::Command::new(program);
        command
            .args(&argv[1..])
            // A backend sees Plane's variables and its own, not the drone's secrets; PATH is
            // kept so that the command and what it starts can be found.
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| (std::ffi::OsString::from("PATH"), p)))
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let drone = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates or locks.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The drone may have died between fork and prctl: then our parent is no longer
                // the drone (but init or a subreaper), and no death signal will ever come.
                if libc::getppid() != drone {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        Ok(command)
    }
}

impl Executor for ProcessExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Process
    }

    /// A port free on loopback a moment ago. The backend binds it itself; a race with another
    /// process shows up as a backend that never becomes ready (or fails the listener check).
    fn port(&self) -> std::io::Result<u16> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        Ok(listener.local_addr()?.port())
    }

    fn default_ready_check(&self) -> ReadyCheck {
        ReadyCheck::Accepts
    }

    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Running>, LaunchError>> {
        Box::pin(async move {
            let command = Self::command(&launch)?;
            let program = launch.spec.executable.command[0].clone();
            let (reply, answer) = oneshot::channel();
            self.spawner
                .send((command, reply))
                .map_err(|_| LaunchError::ShuttingDown)?;
            let mut child = answer
                .await
                .map_err(|_| LaunchError::ShuttingDown)?
                .map_err(|source| LaunchError::Spawn { program, source })?;
            let Some(pid) = child.id() else {
                return Err(LaunchError::ShuttingDown);
            };
            if let Some(out) = child.stdout.take() {
                tokio::spawn(forward_output(launch.log.clone(), LogSource::Stdout, out));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(forward_output(launch.log.clone(), LogSource::Stderr, err));
            }
            info!(backend = %launch.backend, pid, port = launch.port, "process started");
            Ok(Box::new(ProcessBackend {
                backend: launch.backend,
                child,
                pgid: pid as libc::pid_t,
                reaper: self.reaper.clone(),
                address: SocketAddr::from((Ipv4Addr::LOCALHOST, launch.port)),
                exit: None,
            }) as Box<dyn Running>)
        })
    }
}

/// One running backend process and its process group.
struct ProcessBackend {
    backend: BackendId,
    child: tokio::process::Child,
    pgid: libc::pid_t,
    reaper: Arc<Reaper>,
    address: SocketAddr,
    exit: Option<Exit>,
}

impl ProcessBackend {
    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: killpg has no memory-safety preconditions. ESRCH (group already empty) is fine.
        let rc = unsafe { libc::killpg(self.pgid, signal) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ESRCH) {
                warn!(backend = %self.backend, pgid = self.pgid, %error, "killpg failed");
            }
        }
    }

    /// Records the leader's exit and kills whatever it left behind in its group.
    fn reaped(&mut self, status: std::io::Result<ExitStatus>) -> Exit {
        let exit = match status {
            Ok(status) => Exit {
                code: status.code(),
                signal: status.signal(),
                oom_killed: false,
            },
            Err(error) => {
                warn!(backend = %self.backend, %error, "waiting for backend process failed");
                Exit::UNKNOWN
            }
        };
        self.signal_group(libc::SIGKILL);
        self.reaper.forget(self.pgid);
        debug!(backend = %self.backend, exit = %exit.describe(), "process ended");
        self.exit = Some(exit);
        exit
    }
}

impl Running for ProcessBackend {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn verify_listener(&self) -> BoxFuture<'_, Result<(), String>> {
        let (pgid, port) = (self.pgid, self.address.port());
        Box::pin(async move {
            let owned = tokio::task::spawn_blocking(move || {
                crate::listener_owner::group_listens_on(pgid, port)
            })
            .await
            .map_err(|e| format!("checking who listens on port {port}: {e}"))?
            .map_err(|e| format!("checking who listens on port {port}: {e}"))?;
            if owned {
                Ok(())
            } else {
                Err(format!(
                    "port {port} is held by a process outside the backend's process group"
                ))
            }
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            if let Some(exit) = self.exit {
                return exit;
            }
            let status = self.child.wait().await;
            self.reaped(status)
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            if let Some(exit) = self.exit {
                return exit;
            }
            self.signal_group(libc::SIGTERM);
            let status = match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    warn!(backend = %self.backend, ?grace, "backend ignored SIGTERM; killing it");
                    self.signal_group(libc::SIGKILL);
                    self.child.wait().await
                }
            };
            self.reaped(status)
        })
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal_group(libc::SIGKILL);
            self.reaper.forget(self.pgid);
        }
    }
}

/// Sends a backend's output to its log line by line (an overlong line in parts).
async fn forward_output(log: BackendLog, source: LogSource, output: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) => log.output(source, &line),
            Err(error) => {
                debug!(?source, %error, "output closed");
                return;
            }
        }
    }
}
