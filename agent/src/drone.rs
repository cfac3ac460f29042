//! The drone: answers the controller's commands, beats its heart, sweeps idle backends, and on
//! shutdown stops every backend it started before it returns.
//!
//! Nothing here waits on the bus where it matters: the sweeper runs in its own task and only
//! reads the proxy's counts, heartbeats are sent from their own task (and skipped while the
//! connection is down), answers to commands go out from tasks of their own, and state reports
//! queue (see `reporter`). A NATS outage stops nothing but the conversation with the controller.

use crate::executor::Executor;
use crate::lifecycle::{self, BackendHandle, Context};
use crate::limits::{ENDED_MEMORY, HEARTBEAT_SEND_TIMEOUT, REPORT_FLUSH_TIMEOUT, SWEEP_INTERVAL};
use crate::reporter::{self, BackendReports, Reports};
use crate::sweeper;
use plane_bus::{Bus, BusError, Message};
use plane_dataplane::RouteTable;
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, DroneCommand, Heartbeat, TerminationReason, UnixMillis,
};
use plane_protocol::registry::RegistryCredentials;
use plane_protocol::subjects::Subjects;
use plane_protocol::token::AccessToken;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How a drone is set up.
#[derive(Clone, Debug)]
pub struct DroneConfig {
    pub id: DroneId,
    /// The cluster's DNS domain.
    pub cluster: String,
    /// Backends it runs at once.
    pub capacity: u32,
    pub heartbeat_interval: Duration,
    /// How long a backend gets to accept connections.
    pub ready_timeout: Duration,
    /// Between the polite stop signal and the kill.
    pub stop_grace: Duration,
    /// The proxy's scheme and port as clients see them (they make the backends' URLs).
    pub proxy_scheme: String,
    pub proxy_port: u16,
}

/// A drone: the agent half (the proxy serving `table` runs beside it).
pub struct Drone {
    config: DroneConfig,
    bus: Bus,
    subjects: Subjects,
    shared: Arc<Shared>,
    /// When this drone process started, told in every heartbeat.
    started_at: UnixMillis,
}

/// What a spawn command brings beside the spec, for this drone only.
struct Secrets {
    token: Option<AccessToken>,
    credentials: Option<RegistryCredentials>,
}

/// State shared with the lifecycle tasks.
struct Shared {
    context: Context,
    backends: Mutex<HashMap<BackendId, Arc<BackendHandle>>>,
    /// Recently ended backends, so that a re-sent spawn does not start one twice.
    ended: Mutex<HashMap<BackendId, Instant>>,
    /// Every backend's lifecycle task.
    lifecycles: TaskTracker,
}

impl Shared {
    fn backends(&self) -> MutexGuard<'_, HashMap<BackendId, Arc<BackendHandle>>> {
        // A panic while holding this lock would be a bug in this module; keep serving anyway.
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> MutexGuard<'_, HashMap<BackendId, Instant>> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drone {
    pub fn new(
        config: DroneConfig,
        bus: Bus,
        table: RouteTable,
        executor: Arc<dyn Executor>,
    ) -> Self {
        let subjects = Subjects::new(&config.cluster);
        let context = Context {
            executor,
            table,
            cluster: config.cluster.clone(),
            ready_timeout: config.ready_timeout,
            stop_grace: config.stop_grace,
        };
        Drone {
            started_at: now_millis(),
            config,
            bus,
            subjects,
            shared: Arc::new(Shared {
                context,
                backends: Mutex::new(HashMap::new()),
                ended: Mutex::new(HashMap::new()),
                lifecycles: TaskTracker::new(),
            }),
        }
    }

    /// Serves the controller until `shutdown` resolves, then stops every backend, waits for
    /// them to end and delivers their last reports (bounded by the stop grace and
    /// [`REPORT_FLUSH_TIMEOUT`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        let mut commands = self
            .bus
            .subscribe(&self.subjects.drone_commands(&self.config.id))
            .await?;
        let (refused_tx, mut refused) = mpsc::unbounded_channel();
        let (reports, reporter) = reporter::start(
            self.bus.clone(),
            self.subjects.state_reports(&self.config.id),
            refused_tx,
        );
        let sweeper = tokio::spawn(sweep_forever(self.shared.clone()));
        let heartbeat = tokio::spawn(self.heartbeat_forever(reports.clone()));
        info!(drone = %self.config.id, cluster = %self.config.cluster, executor = %self.shared.context.executor.kind(), "drone running");
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                msg = commands.next() => {
                    let Some(msg) = msg else { break Err(BusError::Closed) };
                    self.on_command(msg, &reports);
                }
                Some(backend) = refused.recv() => {
                    if let Some(handle) = self.shared.backends().get(&backend) {
                        warn!(backend = %backend, "controller no longer knows this backend; stopping it");
                        handle.request_stop(TerminationReason::Terminated);
                    }
                }
            }
        };
        sweeper.abort();
        self.stop_all().await;
        heartbeat.abort();
        reports.close();
        if tokio::time::timeout(REPORT_FLUSH_TIMEOUT, reporter)
            .await
            .is_err()
        {
            warn!(
                pending = reports.len(),
                "controller unreachable; some final state reports were not delivered"
            );
        }
        info!(drone = %self.config.id, "drone stopped");
        result
    }

    /// Beats every heartbeat interval, listing the backends it runs and those it still has
    /// reports queued for. Skips beats while the bus is disconnected: they would only pile up
    /// and arrive stale.
    fn heartbeat_forever(&self, reports: Reports) -> impl Future<Output = ()> + Send + 'static {
        let (bus, subject, shared) = (
            self.bus.clone(),
            self.subjects.heartbeat(&self.config.id),
            self.shared.clone(),
        );
        let (config, started_at) = (self.config.clone(), self.started_at);
        async move {
            let mut tick = tokio::time::interval(config.heartbeat_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !bus.is_connected() {
                    continue;
                }
                let running: Vec<BackendId> = shared.backends().keys().cloned().collect();
                let load = running.len() as u32;
                let mut backends = running;
                backends.extend(reports.pending());
                backends.sort();
                backends.dedup();
                let heartbeat = Heartbeat {
                    drone: config.id.clone(),
                    executor: shared.context.executor.kind(),
                    capacity: config.capacity,
                    load,
                    backends,
                    draining: false,
                    proxy_scheme: config.proxy_scheme.clone(),
                    proxy_port: config.proxy_port,
                    started_at,
                    at: now_millis(),
                };
                match tokio::time::timeout(
                    HEARTBEAT_SEND_TIMEOUT,
                    bus.publish_json(&subject, &heartbeat),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => warn!(error = %error_chain(&error), "heartbeat not sent"),
                    Err(_) => warn!("heartbeat not sent: the bus is not taking messages"),
                }
            }
        }
    }

    /// Acts on a command at once; the answer goes out from a task of its own.
    fn on_command(&self, msg: Message, reports: &Reports) {
        let ack = match msg.decode::<DroneCommand>() {
            Ok(DroneCommand::Spawn {
                backend,
                spec,
                token,
                credentials,
            }) => self.spawn(backend, spec, Secrets { token, credentials }, reports),
            Ok(DroneCommand::Terminate { backend }) => {
                if let Some(handle) = self.shared.backends().get(&backend) {
                    handle.request_stop(TerminationReason::Terminated);
                }
                Ack::Accepted
            }
            Err(error) => {
                warn!(error = %error_chain(&error), "refusing malformed command");
                Ack::Rejected {
                    error: error_chain(&error),
                }
            }
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(error) = bus.respond_json(&msg, &ack).await {
                debug!(error = %error_chain(&error), "could not answer command");
            }
        });
    }

    /// Starts a backend's lifecycle unless it is known already (then the spawn is a re-send).
    fn spawn(
        &self,
        backend: BackendId,
        spec: BackendSpec,
        secrets: Secrets,
        reports: &Reports,
    ) -> Ack {
        let Secrets { token, credentials } = secrets;
        let needs = spec.executable.executor();
        let runs = self.shared.context.executor.kind();
        if needs != runs {
            return Ack::Rejected {
                error: format!(
                    "backend {backend} needs the {needs} executor; drone {} runs {runs}",
                    self.config.id
                ),
            };
        }
        if spec.require_token != token.is_some() {
            return Ack::Rejected {
                error: format!(
                    "backend {backend}: require_token is {} but {} token came with it",
                    spec.require_token,
                    if token.is_some() { "a" } else { "no" }
                ),
            };
        }
        let mut backends = self.shared.backends();
        if backends.contains_key(&backend) {
            return Ack::Accepted;
        }
        {
            let mut ended = self.shared.ended();
            ended.retain(|_, at| at.elapsed() < ENDED_MEMORY);
            if ended.contains_key(&backend) {
                return Ack::Accepted;
            }
        }
        if backends.len() >= self.config.capacity as usize {
            return Ack::Rejected {
                error: format!(
                    "drone {} is full ({} backends)",
                    self.config.id,
                    backends.len()
                ),
            };
        }
        let (handle, stop) = BackendHandle::new(spec.max_idle_secs);
        backends.insert(backend.clone(), handle.clone());
        drop(backends);
        // Before the acknowledgement: from the moment the spawn call returns, requests for the
        // backend are held until it is ready instead of answered 404.
        self.shared
            .context
            .table
            .insert_starting_with(backend.as_str(), token.as_ref().map(AccessToken::as_str));
        let shared = self.shared.clone();
        let reports = BackendReports::new(
            reports.clone(),
            backend.clone(),
            self.config.id.clone(),
            self.started_at,
        );
        info!(backend = %backend, image = ?spec.executable.image, command = ?spec.executable.command, "spawning backend");
        self.shared.lifecycles.spawn(async move {
            lifecycle::run(
                &shared.context,
                backend.clone(),
                spec,
                credentials,
                handle,
                stop,
                reports,
            )
            .await;
            shared.backends().remove(&backend);
            shared.ended().insert(backend, Instant::now());
        });
        Ack::Accepted
    }

    /// Stops every backend and waits until all have ended.
    async fn stop_all(&self) {
        let count = {
            let backends = self.shared.backends();
            for handle in backends.values() {
                handle.request_stop(TerminationReason::Terminated);
            }
            backends.len()
        };
        if count > 0 {
            info!(count, "stopping every backend");
        }
        // Commands no longer arrive, so no lifecycle starts after this.
        self.shared.lifecycles.close();
        self.shared.lifecycles.wait().await;
    }
}

/// Sweeps idle backends every [`SWEEP_INTERVAL`], whatever the bus does.
async fn sweep_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweeper::sweep(&shared.backends(), Instant::now());
    }
}
