//! The controller's behaviour, independent of HTTP: spawning and terminating backends on drones,
//! applying drones' state reports and heartbeats, and declaring silent drones lost. The API
//! module is a thin translation of these methods.

use crate::limits::{
    DRONE_COMMAND_TIMEOUT, LIVENESS_CHECK_INTERVAL, MAX_COLLECT_INTERVAL, UNREPORTED_GRACE_PERIODS,
};
use crate::records::{BackendRecord, DroneRecord, Liveness, ReportOutcome};
use crate::scheduler::{self, NoDrone};
use crate::state::{Change, ClusterState, StateError};
use plane_protocol::bus::{Bus, BusError, KvError, Message, Subscription};
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, BackendState, DroneCommand, ExecutorKind, Heartbeat, StateReport,
    TerminationReason, UnixMillis,
};
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
                            warn!(%error, "liveness check failed");
                            // Some lost drone's backends may not be ended yet: look at all again.
                            recheck_lost = true;
                        }
                    }
                }
            }
        }
    }

    async fn on_heartbeat(&self, msg: &Message) {
        let heartbeat: Heartbeat = match msg.decode() {
            Ok(hb) => hb,
            Err(error) => {
                warn!(%error, "dropping malformed heartbeat");
                return;
            }
        };
        let record = DroneRecord::from_heartbeat(&heartbeat, now_millis());
        let previous = self.inner.state.drone(&heartbeat.drone).await;
        if let Err(error) = self.inner.state.put_drone(&record).await {
            warn!(%error, drone = %heartbeat.drone, "could not record heartbeat");
            return;
        }
        match previous {
            Ok(Some(previous)) if previous.lost && previous.started_at == heartbeat.started_at => {
                warn!(drone = %heartbeat.drone, "a lost drone is back; stopping the backends given up on");
                self.stop_abandoned(&heartbeat).await;
            }
            Ok(Some(previous)) if previous.started_at != heartbeat.started_at => {
                warn!(drone = %heartbeat.drone, "drone restarted; its earlier backends are gone");
                if let Err(error) = self
                    .end_backends_of(
                        &heartbeat.drone,
                        Some(heartbeat.started_at),
                        "its drone restarted",
                    )
                    .await
                {
                    warn!(%error, drone = %heartbeat.drone, "could not end a restarted drone's backends");
                }
            }
            Ok(_) => {}
            Err(error) => warn!(%error, drone = %heartbeat.drone, "could not read drone record"),
        }
    }

    /// Tells a drone that came back to stop what it runs that the cluster no longer knows as
    /// running on it (ended while the drone was lost, or never recorded).
    async fn stop_abandoned(&self, heartbeat: &Heartbeat) {
        for backend in &heartbeat.backends {
            let abandoned = match self.inner.state.backend(backend).await {
                Ok(Some(record)) => record.is_terminated() || record.drone != heartbeat.drone,
                Ok(None) => true,
                Err(error) => {
                    warn!(error = %error_chain(&error), %backend, "cannot read backend record");
                    continue;
                }
            };
            if abandoned {
                self.tell_drone_to_stop(&heartbeat.drone, backend).await;
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

    /// Best effort: the drone may be gone again.
    async fn tell_drone_to_stop(&self, drone: &DroneId, backend: &BackendId) {
        let command = DroneCommand::Terminate {
            backend: backend.clone(),
        };
        match self.command_drone(drone, &command).await {
            Ok(Ack::Accepted) => {
                info!(%drone, %backend, "asked drone to stop an abandoned backend")
            }
            Ok(Ack::Rejected { error }) => {
                warn!(%drone, %backend, %error, "drone refused to stop a backend")
            }
            Err(error) => {
                debug!(%drone, %backend, error = %error_chain(&error), "drone did not answer")
            }
        }
    }

    /// Marks the drone's unterminated backends `terminated/lost`. With `except_process`, only
    /// those an earlier process of the drone reported (a restarted drone's new backends, and
    /// those not reported yet, are not affected).
    async fn end_backends_of(
        &self,
        drone: &DroneId,
        except_process: Option<UnixMillis>,
        why: &str,
    ) -> Result<(), StateError> {
        for backend in self.inner.state.backends().await? {
            let earlier_process = match except_process {
                None => true,
                Some(current) => backend.drone_started_at.is_some_and(|p| p != current),
            };
            if &backend.drone == drone && !backend.is_terminated() && earlier_process {
                self.end_here(&backend.id, TerminationReason::Lost, why)
                    .await?;
            }
        }
        Ok(())
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
                    warn!(%error, backend = %report.backend, "could not apply state report");
                    return;
                }
            },
            Err(error) => {
                warn!(%error, "refusing malformed state report");
                Ack::Rejected {
                    error: error_chain(&error),
                }
            }
        };
        if let Err(error) = self.inner.bus.respond_json(&msg, &ack).await {
            debug!(%error, "could not acknowledge state report");
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

    /// Forgets terminated backends and lost drones past retention, and ends backends whose
    /// drone never reported them.
    async fn collect_garbage(&self) -> Result<(), StateError> {
        let now = now_millis();
        let retention = self.inner.config.retention.as_millis() as u64;
        let unreported =
            (self.inner.config.drone_grace * UNREPORTED_GRACE_PERIODS).as_millis() as u64;
        let state = &self.inner.state;
        for backend in state.backends().await? {
            if backend.is_terminated() && now.saturating_sub(backend.updated_at) > retention {
                debug!(backend = %backend.id, "forgetting terminated backend");
                state.delete_backend(&backend.id).await?;
            } else if backend.state == BackendState::Scheduled
                && backend.last_seq == 0
                && now.saturating_sub(backend.created_at) > unreported
            {
                warn!(backend = %backend.id, drone = %backend.drone, "drone never reported backend; ending it");
                self.end_here(
                    &backend.id,
                    TerminationReason::Lost,
                    "its drone never reported it",
                )
                .await?;
            }
        }
        for drone in state.drones().await? {
            if drone.lost && now.saturating_sub(drone.last_heartbeat) > retention {
                debug!(drone = %drone.id, "forgetting lost drone");
                state.delete_drone(&drone.id).await?;
            }
        }
        Ok(())
    }

    /// Marks drones that stopped beating as lost, and their backends `terminated/lost`.
    async fn declare_lost_drones(&self, recheck_lost: bool) -> Result<(), StateError> {
        let liveness = self.liveness();
        let state = &self.inner.state;
        let mut newly_lost = Vec::new();
        for drone in state.drones().await? {
            if drone.lost {
                // A controller that died (or failed) between marking a drone and ending its
                // backends left work behind: the first check after a start, or after a
                // failure, finishes it.
                if recheck_lost {
                    newly_lost.push(drone.id);
                }
                continue;
            }
            if drone.is_live(&liveness) {
                continue;
            }
            let marked = state
                .update_drone(&drone.id, |d| {
                    if d.lost || d.is_live(&liveness) {
                        Change::Keep(false)
                    } else {
                        d.lost = true;
                        Change::Write(true)
                    }
                })
                .await?;
            if marked == Some(true) {
                warn!(drone = %drone.id, "drone stopped beating; declaring it lost");
                newly_lost.push(drone.id);
            }
        }
        for drone in &newly_lost {
            self.end_backends_of(drone, None, "its drone stopped beating")
                .await?;
        }
        Ok(())
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
