//! The controller's behaviour, independent of HTTP: spawning and terminating backends on drones
//! and applying drones' state reports; `drone_health` keeps the picture of the drones themselves
//! true. The API module is a thin translation of these methods.

mod drone_health;

use crate::limits::{
    DRONE_COMMAND_TIMEOUT, LIVENESS_CHECK_INTERVAL, MAX_COLLECT_INTERVAL, UNREPORTED_GRACE_PERIODS,
};
use crate::scheduler::{self, NoDrone};
use crate::state::{Change, ClusterState, StateError};
use plane_bus::{Bus, BusError, KvError, Message, Subscription};
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, BackendState, DroneCommand, ExecutorKind, StateReport,
    TerminationReason,
};
use plane_protocol::records::{BackendRecord, DroneRecord, Liveness, ReportOutcome};
use plane_protocol::subjects::{Subjects, CONTROLLER_QUEUE_GROUP};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How the controller is set up.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The cluster's DNS domain; backends are `{id}.{cluster}`.
    pub cluster: String,
    /// A drone silent for longer than this is lost, and so are its backends.
    pub drone_grace: Duration,
    /// Terminated backends and lost drones are deleted from the cluster state this long after
    /// they ended.
    pub retention: Duration,
}

/// Why an operation on a backend failed; each maps to an HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no backend named {0}")]
    NotFound(BackendId),
    #[error(transparent)]
    NoDrone(#[from] NoDrone),
    #[error("no drone available: {0}")]
    NoDroneAccepted(String),
    #[error("drone {drone} did not answer")]
    DroneUnreachable { drone: DroneId, source: BusError },
    #[error("drone {drone} refused: {error}")]
    DroneRefused { drone: DroneId, error: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// A controller subscribed to its drones, ready to [`Listening::run`].
pub struct Listening {
    controller: Controller,
    heartbeats: Subscription,
    reports: Subscription,
}

impl Listening {
    /// Handles drones' messages and watches their liveness until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        self.controller
            .serve_drones(self.heartbeats, self.reports, shutdown)
            .await
    }
}

/// The controller: cheap to clone, shared by the API handlers and its background loops.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    subjects: Subjects,
    config: ControllerConfig,
    state: ClusterState,
    /// When this controller started listening: it cannot have heard from any drone before.
    listening_since: AtomicU64,
}

impl Controller {
    /// Opens the cluster state on `bus`. Call [`Controller::run`] to start serving drones.
    pub async fn new(bus: Bus, config: ControllerConfig) -> Result<Self, StateError> {
        let subjects = Subjects::new(&config.cluster);
        let state = ClusterState::open(&bus, &subjects).await?;
        Ok(Controller {
            inner: Arc::new(Inner {
                bus,
                subjects,
                config,
                state,
                listening_since: AtomicU64::new(u64::MAX),
            }),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.inner.config.cluster
    }

    pub fn state(&self) -> &ClusterState {
        &self.inner.state
    }

    /// How drone liveness is judged now.
    fn liveness(&self) -> Liveness {
        Liveness {
            now: now_millis(),
            grace_ms: self.inner.config.drone_grace.as_millis() as u64,
            listening_since: self.inner.listening_since.load(Ordering::Relaxed),
        }
    }

    /// Listens to drones (heartbeats, state reports) and watches their liveness until
    /// `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        self.listen().await?.run(shutdown).await
    }

    /// Subscribes to the drones' subjects: once this returns, no heartbeat or report is missed.
    /// [`Listening::run`] then handles them.
    pub async fn listen(&self) -> Result<Listening, BusError> {
        let bus = &self.inner.bus;
        let heartbeats = bus
            .queue_subscribe(&self.inner.subjects.heartbeats(), CONTROLLER_QUEUE_GROUP)
            .await?;
        let reports = bus
            .queue_subscribe(&self.inner.subjects.state_reports(), CONTROLLER_QUEUE_GROUP)
            .await?;
        self.inner
            .listening_since
            .store(now_millis(), Ordering::Relaxed);
        Ok(Listening {
            controller: self.clone(),
            heartbeats,
            reports,
        })
    }

    async fn serve_drones(
        &self,
        mut heartbeats: Subscription,
        mut reports: Subscription,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BusError> {
        let config = &self.inner.config;
        let collect_every = (config.retention / 2)
            .min(config.drone_grace * UNREPORTED_GRACE_PERIODS / 2)
            .min(MAX_COLLECT_INTERVAL);
        let mut collect = tokio::time::interval(collect_every);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness = tokio::time::interval(LIVENESS_CHECK_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recheck_lost = true;
        tokio::pin!(shutdown);
        info!(cluster = %self.cluster(), "controller listening to drones");
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                msg = heartbeats.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_heartbeat(&msg).await });
                }
                msg = reports.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_report(msg).await });
                }
                _ = collect.tick() => {
                    if let Err(error) = self.collect_garbage().await {
                        warn!(error = %error_chain(&error), "cleaning up cluster state failed");
                    }
                }
                _ = liveness.tick() => {
                    match self.declare_lost_drones(recheck_lost).await {
                        Ok(()) => recheck_lost = false,
                        Err(error) => {
                            warn!(error = %error_chain(&error), "liveness check failed");
                            // Some lost drone's backends may not be ended yet: look at all again.
                            recheck_lost = true;
                        }
                    }
                }
            }
        }
    }

    /// Sends `command` to `drone` and waits (bounded) for its acknowledgement.
    async fn command_drone(
        &self,
        drone: &DroneId,
        command: &DroneCommand,
    ) -> Result<Ack, BusError> {
        let subject = self.inner.subjects.drone_commands(drone);
        self.inner
            .bus
            .request_json::<_, Ack>(&subject, command, DRONE_COMMAND_TIMEOUT)
            .await
    }

    async fn on_report(&self, msg: Message) {
        let ack = match msg.decode::<StateReport>() {
            Ok(report) => match self.apply_report(&report).await {
                Ok(ack) => ack,
                // A record this controller cannot read will not become readable by retrying:
                // refuse, so the drone's queue moves on.
                Err(error @ StateError::Kv(KvError::Decode { .. })) => {
                    warn!(error = %error_chain(&error), backend = %report.backend, "refusing report for an unreadable record");
                    Ack::Rejected {
                        error: error_chain(&error),
                    }
                }
                Err(error) => {
                    // Not acknowledged: the drone re-sends, and the write is retried then.
                    warn!(error = %error_chain(&error), backend = %report.backend, "could not apply state report");
                    return;
                }
            },
            Err(error) => {
                warn!(error = %error_chain(&error), "refusing malformed state report");
                Ack::Rejected {
                    error: error_chain(&error),
                }
            }
        };
        if let Err(error) = self.inner.bus.respond_json(&msg, &ack).await {
            debug!(error = %error_chain(&error), "could not acknowledge state report");
        }
    }

    /// Applies one drone report to the backend's record. Idempotent: a report seen before is
    /// acknowledged again without effect. An error means the state store failed: the report
    /// must not be acknowledged, so that the drone sends it again.
    pub async fn apply_report(&self, report: &StateReport) -> Result<Ack, StateError> {
        let outcome = self
            .inner
            .state
            .update_backend(&report.backend, |record| match record.apply(report) {
                ReportOutcome::Applied => Change::Write(ReportOutcome::Applied),
                other => Change::Keep(other),
            })
            .await;
        Ok(match outcome? {
            Some(ReportOutcome::Applied) => {
                info!(backend = %report.backend, drone = %report.drone, state = %report.state,
                    reason = ?report.reason, exit_code = ?report.exit_code, "backend state");
                Ack::Accepted
            }
            Some(ReportOutcome::Duplicate) => Ack::Accepted,
            Some(ReportOutcome::Refused(error)) => {
                warn!(backend = %report.backend, %error, "refusing state report");
                Ack::Rejected { error }
            }
            None => Ack::Rejected {
                error: format!("no backend named {}", report.backend),
            },
        })
    }

    /// Terminates a backend in the cluster state only (its drone cannot be told).
    async fn end_here(
        &self,
        id: &BackendId,
        reason: TerminationReason,
        message: &str,
    ) -> Result<Option<BackendRecord>, StateError> {
        self.inner
            .state
            .update_backend(id, |record| {
                if record.is_terminated() {
                    return Change::Keep(record.clone());
                }
                record.terminate_here(reason, message.to_string(), now_millis());
                Change::Write(record.clone())
            })
            .await
    }

    /// Schedules a backend: picks drones best first and gives it to the first that accepts.
    pub async fn spawn(&self, spec: BackendSpec) -> Result<BackendRecord, ControlError> {
        let state = &self.inner.state;
        let now = now_millis();
        let drones = state.drones().await?;
        let order = scheduler::candidates(&drones, ExecutorKind::Process, &self.liveness())?;
        let id = BackendId::generate();
        let first = &order[0];
        let record = BackendRecord {
            url: first.backend_url(&id, self.cluster()),
            id: id.clone(),
            state: BackendState::Scheduled,
            reason: None,
            exit_code: None,
            message: None,
            drone: first.id.clone(),
            max_idle_secs: spec.max_idle_secs,
            spec: spec.clone(),
            created_at: now,
            updated_at: now,
            last_seq: 0,
            drone_started_at: None,
        };
        state.create_backend(&record).await?;
        let mut failures = Vec::new();
        for (i, drone) in order.iter().enumerate() {
            if i > 0 {
                let cluster = self.cluster().to_string();
                let moved = state
                    .update_backend(&id, |r| {
                        if r.last_seq > 0 {
                            // The previous drone did take it after all.
                            return Change::Keep(false);
                        }
                        r.drone = drone.id.clone();
                        r.url = drone.backend_url(&r.id, &cluster);
                        r.updated_at = now_millis();
                        Change::Write(true)
                    })
                    .await?;
                if moved != Some(true) {
                    return self.backend(&id).await;
                }
            }
            let command = DroneCommand::Spawn {
                backend: id.clone(),
                spec: spec.clone(),
            };
            match self.command_drone(&drone.id, &command).await {
                Ok(Ack::Accepted) => {
                    info!(backend = %id, drone = %drone.id, "backend scheduled");
                    return self.backend(&id).await;
                }
                Ok(Ack::Rejected { error }) => {
                    warn!(backend = %id, drone = %drone.id, %error, "drone refused backend");
                    failures.push(format!("drone {} refused: {error}", drone.id));
                }
                Err(error) => {
                    warn!(backend = %id, drone = %drone.id, %error, "drone did not acknowledge");
                    failures.push(format!("drone {} did not acknowledge: {error}", drone.id));
                }
            }
        }
        // Nobody took it. A drone that accepts late has its reports refused and stops it.
        state.delete_backend(&id).await?;
        Err(ControlError::NoDroneAccepted(failures.join("; ")))
    }

    /// The backend's current record.
    pub async fn backend(&self, id: &BackendId) -> Result<BackendRecord, ControlError> {
        self.inner
            .state
            .backend(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.clone()))
    }

    /// Every backend, oldest first.
    pub async fn backends(&self) -> Result<Vec<BackendRecord>, ControlError> {
        let mut all = self.inner.state.backends().await?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    /// Every drone with whether it is live now, by id.
    pub async fn drones(&self) -> Result<Vec<(DroneRecord, bool)>, ControlError> {
        let liveness = self.liveness();
        let mut all: Vec<_> = self
            .inner
            .state
            .drones()
            .await?
            .into_iter()
            .map(|d| {
                let live = d.is_live(&liveness);
                (d, live)
            })
            .collect();
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(all)
    }

    /// Asks the backend's drone to stop it. Idempotent: a terminated backend is returned as is.
    pub async fn terminate(&self, id: &BackendId) -> Result<BackendRecord, ControlError> {
        let record = self.backend(id).await?;
        if record.is_terminated() {
            if record.reason == Some(TerminationReason::Lost) {
                // Declared lost, but its drone may be back and still running it.
                self.tell_drone_to_stop(&record.drone, id).await;
            }
            return Ok(record);
        }
        let command = DroneCommand::Terminate {
            backend: id.clone(),
        };
        match self.command_drone(&record.drone, &command).await {
            Ok(Ack::Accepted) => self.backend(id).await,
            Ok(Ack::Rejected { error }) => Err(ControlError::DroneRefused {
                drone: record.drone,
                error,
            }),
            Err(source) => {
                let drone_lost = self
                    .inner
                    .state
                    .drones()
                    .await?
                    .iter()
                    .any(|d| d.id == record.drone && d.lost);
                if drone_lost {
                    self.end_here(id, TerminationReason::Lost, "its drone stopped beating")
                        .await?;
                    return self.backend(id).await;
                }
                Err(ControlError::DroneUnreachable {
                    drone: record.drone,
                    source,
                })
            }
        }
    }
}
