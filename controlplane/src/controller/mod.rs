//! The controller's behaviour, independent of HTTP: spawning and terminating backends on drones
//! and applying drones' state reports; `drone_health` keeps the picture of the drones themselves
//! true. Reads come from the in-memory [`ClusterView`](crate::view::ClusterView), so no event
//! costs more in a bigger cluster; the API module is a thin translation of these methods.

mod certificates;
mod drain;
mod drone_health;
mod keys;
mod recovery;

use crate::limits::{
    DRONE_COMMAND_TIMEOUT, LIVENESS_CHECK_INTERVAL, LOG_LINES_PER_BACKEND, LOG_STORE_BYTES,
    MAX_COLLECT_INTERVAL, MAX_LOG_RECORD_BYTES, RESYNC_RETRY_INTERVAL, UNREPORTED_GRACE_PERIODS,
};
use crate::liveness::{DroneStatus, Hearing};
use crate::metrics::{ControllerMetrics, SpawnOutcome};
use crate::scheduler::{self, Candidate, NoDrone};
use crate::state::{Change, ClusterState, StateError, Watches};
use crate::usage::UsageBook;
use crate::view::ClusterView;
use plane_bus::{Bus, BusError, KvError, Log, LogConfig, LogReader, Message, Subscription};
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::keys::BackendKey;
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, BackendState, DroneCommand, StateReport, TerminationReason,
};
use plane_protocol::records::{
    BackendRecord, BackendStatus, DroneRecord, DroneState, DroneView, ReportOutcome, SpawnAnswer,
};
use plane_protocol::registry::RegistryCredentials;
use plane_protocol::spawn_request::ValidSpawn;
use plane_protocol::subjects::{Subjects, CONTROLLER_QUEUE_GROUP};
use plane_protocol::token::AccessToken;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a spawn's drone is given beside the spec, and nothing else keeps.
#[derive(Clone, Copy)]
struct Secrets<'a> {
    token: Option<&'a AccessToken>,
    credentials: Option<&'a RegistryCredentials>,
}

/// One backend to schedule.
struct Placement<'a> {
    id: BackendId,
    spec: BackendSpec,
    secrets: Secrets<'a>,
    /// The key it is connected by, if any.
    key: Option<BackendKey>,
    /// Only this drone may take it (a wake on that drone).
    only: Option<&'a DroneId>,
}

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
    /// A key (and the spec a wake runs) is forgotten this long after its last use.
    pub key_retention: Duration,
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
    #[error("backend {0} has ended")]
    Ended(BackendId),
    #[error("no drone named {0}")]
    NoSuchDrone(DroneId),
    #[error("drone {0} is lost (not heard within the grace)")]
    DroneLost(DroneId),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A drone as the API shows it: its record, and its liveness and load as heard now.
#[derive(Clone, Debug)]
pub struct DroneNow {
    pub record: Arc<DroneRecord>,
    pub status: DroneStatus,
}

impl DroneNow {
    /// Where it is: live, draining, drained or lost.
    pub fn state(&self) -> DroneState {
        DroneState::of(self.status.live, self.record.draining, self.status.load)
    }

    /// The API's shape: the record with the load and last heartbeat as heard now.
    pub fn to_view(&self) -> DroneView {
        let mut drone = DroneRecord::clone(&self.record);
        drone.load = self.status.load;
        if let Some(at) = self.status.last_heartbeat {
            drone.last_heartbeat = at;
        }
        let state = self.state();
        DroneView {
            drone,
            live: self.status.live,
            state,
        }
    }
}

/// A controller subscribed to its drones, ready to [`Listening::run`].
pub struct Listening {
    controller: Controller,
    heartbeats: Subscription,
    reports: Subscription,
    recoveries: Subscription,
    certificates: Subscription,
    wakes: Subscription,
    watches: Option<Watches>,
}

impl Listening {
    /// Handles drones' messages, follows the cluster state and judges drones' liveness until
    /// `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        self.controller
            .serve_drones(
                Subscriptions {
                    heartbeats: self.heartbeats,
                    reports: self.reports,
                    recoveries: self.recoveries,
                    certificates: self.certificates,
                    wakes: self.wakes,
                },
                self.watches,
                shutdown,
            )
            .await
    }
}

/// What the controller hears from drones.
struct Subscriptions {
    heartbeats: Subscription,
    reports: Subscription,
    recoveries: Subscription,
    certificates: Subscription,
    wakes: Subscription,
}

/// The controller: cheap to clone, shared by the API handlers and its background loops.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    /// The backends' log lines, as their drones publish them.
    logs: Log,
    subjects: Subjects,
    config: ControllerConfig,
    state: ClusterState,
    hearing: Hearing,
    /// Each backend's latest resource use, from heartbeats.
    usage: UsageBook,
    metrics: ControllerMetrics,
    /// The watches that feed the view, until [`Controller::listen`] takes them.
    watches: Mutex<Option<Watches>>,
}

impl Controller {
    /// Opens the cluster state on `bus` and loads the view of it. Call [`Controller::run`] (or
    /// [`Controller::listen`]) to serve drones and keep the view current.
    pub async fn new(bus: Bus, config: ControllerConfig) -> Result<Self, StateError> {
        let subjects = Subjects::new(&config.cluster);
        let (state, watches) =
            ClusterState::open(&bus, &config.cluster, config.key_retention).await?;
        let logs = bus
            .log(
                &subjects.logs_stream(),
                &LogConfig {
                    subjects: subjects.all_logs(),
                    per_subject: LOG_LINES_PER_BACKEND,
                    max_bytes: LOG_STORE_BYTES,
                    max_age: config.retention,
                    max_message: MAX_LOG_RECORD_BYTES,
                },
            )
            .await?;
        Ok(Controller {
            inner: Arc::new(Inner {
                bus,
                logs,
                subjects,
                hearing: Hearing::new(config.drone_grace),
                usage: UsageBook::default(),
                metrics: ControllerMetrics::default(),
                config,
                state,
                watches: Mutex::new(Some(watches)),
            }),
        })
    }

    /// The controller's metrics in Prometheus' text format.
    pub fn metrics(&self) -> String {
        let backends: Vec<BackendState> = self.view().backends().iter().map(|r| r.state).collect();
        let drones = self
            .drones_now()
            .iter()
            .map(DroneNow::state)
            .collect::<Vec<_>>();
        self.inner.metrics.render(backends, drones)
    }

    /// The bucket of answers to requests with an `Idempotency-Key`.
    pub fn idempotency(&self) -> &plane_bus::Kv {
        self.inner.state.idempotency()
    }

    pub fn cluster(&self) -> &str {
        &self.inner.config.cluster
    }

    /// The view of the cluster this controller works from.
    pub fn view(&self) -> &ClusterView {
        self.inner.state.view()
    }

    /// Listens to drones and follows the cluster state until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        self.listen().await?.run(shutdown).await
    }

    /// Subscribes to the drones' subjects: once this returns, no heartbeat or report is missed.
    /// [`Listening::run`] then handles them. Every controller hears every heartbeat; each state
    /// report goes to one controller of the queue group.
    pub async fn listen(&self) -> Result<Listening, BusError> {
        let bus = &self.inner.bus;
        let heartbeats = bus.subscribe(&self.inner.subjects.all_heartbeats()).await?;
        let reports = bus
            .queue_subscribe(
                &self.inner.subjects.all_state_reports(),
                CONTROLLER_QUEUE_GROUP,
            )
            .await?;
        let recoveries = bus
            .queue_subscribe(
                &self.inner.subjects.all_recoveries(),
                CONTROLLER_QUEUE_GROUP,
            )
            .await?;
        let certificates = bus
            .queue_subscribe(
                &self.inner.subjects.all_certificates(),
                CONTROLLER_QUEUE_GROUP,
            )
            .await?;
        let wakes = bus
            .queue_subscribe(&self.inner.subjects.all_wakes(), CONTROLLER_QUEUE_GROUP)
            .await?;
        if bus.is_connected() {
            self.inner.hearing.connected(Instant::now());
        }
        let watches = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(Listening {
            controller: self.clone(),
            heartbeats,
            reports,
            recoveries,
            certificates,
            wakes,
            watches,
        })
    }

    async fn serve_drones(
        &self,
        subscriptions: Subscriptions,
        mut watches: Option<Watches>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BusError> {
        let Subscriptions {
            mut heartbeats,
            mut reports,
            mut recoveries,
            mut certificates,
            mut wakes,
        } = subscriptions;
        let config = &self.inner.config;
        let collect_every = (config.retention / 2)
            .min(config.drone_grace * UNREPORTED_GRACE_PERIODS / 2)
            .min(MAX_COLLECT_INTERVAL);
        let mut collect = tokio::time::interval(collect_every);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness = tokio::time::interval(LIVENESS_CHECK_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(RESYNC_RETRY_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connection = self.inner.bus.connection();
        let mut follows_connection = true;
        tokio::pin!(shutdown);
        info!(cluster = %self.cluster(), "controller listening to drones");
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                msg = heartbeats.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    self.on_heartbeat(&msg);
                }
                msg = reports.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_report(msg).await });
                }
                msg = recoveries.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_recovery(msg).await });
                }
                msg = certificates.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_certificate_request(msg).await });
                }
                msg = wakes.next() => {
                    let Some(msg) = msg else { return Err(BusError::Closed) };
                    let this = self.clone();
                    tokio::spawn(async move { this.on_wake(msg).await });
                }
                change = next_change(&mut watches) => match change {
                    Some((bucket, change)) => self.inner.state.follow(bucket, change),
                    None => {
                        warn!("cluster state watch ended; reloading the view");
                        watches = None;
                        resync.reset_immediately();
                    }
                },
                _ = resync.tick(), if watches.is_none() => {
                    match self.inner.state.resync().await {
                        Ok(fresh) => {
                            info!("cluster view reloaded");
                            watches = Some(fresh);
                        }
                        Err(error) => warn!(error = %error_chain(&error), "reloading the cluster view failed; retrying"),
                    }
                }
                changed = connection.changed(), if follows_connection => {
                    if changed.is_err() {
                        // In memory: the bus is always connected.
                        follows_connection = false;
                    } else if *connection.borrow_and_update() {
                        info!("bus connection back; drones' silence counts from now");
                        self.inner.hearing.connected(Instant::now());
                    } else {
                        warn!("bus connection lost; no drone is judged until it is back");
                        self.inner.hearing.disconnected();
                    }
                }
                _ = collect.tick() => {
                    if let Err(error) = self.collect_garbage().await {
                        warn!(error = %error_chain(&error), "cleaning up cluster state failed");
                    }
                }
                _ = liveness.tick() => {
                    if let Err(error) = self.declare_lost_drones().await {
                        warn!(error = %error_chain(&error), "liveness check failed");
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
            Ok(report) if !self.sent_by(&msg, &report.drone) => {
                warn!(subject = %msg.subject, drone = %report.drone, "refusing a report sent under another drone's subject");
                Ack::Rejected {
                    error: format!(
                        "a report of drone {} must come in under its own subject",
                        report.drone
                    ),
                }
            }
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
        let mut ready_after = None;
        let mut ended_keyed = None;
        let outcome = self
            .inner
            .state
            .update_backend(&report.backend, |record| {
                // Each compare-and-set attempt decides anew.
                ready_after = None;
                ended_keyed = None;
                let was_ready = record.state.rank() >= BackendState::Ready.rank();
                match record.apply(report) {
                    ReportOutcome::Applied => {
                        if !was_ready && record.state == BackendState::Ready {
                            let took = now_millis().saturating_sub(record.created_at);
                            ready_after = Some(Duration::from_millis(took));
                        }
                        if record.is_terminated() && record.key.is_some() {
                            ended_keyed = Some(record.clone());
                        }
                        Change::Write(ReportOutcome::Applied)
                    }
                    other => Change::Keep(other),
                }
            })
            .await;
        if let (Ok(Some(ReportOutcome::Applied)), Some(took)) = (&outcome, ready_after) {
            self.inner.metrics.ready_after(took);
        }
        if let (Ok(Some(ReportOutcome::Applied)), Some(ended)) = (&outcome, &ended_keyed) {
            self.release_key(ended).await;
        }
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

    /// Terminates a backend in the cluster state only (its drone cannot be told, or no longer
    /// runs it).
    async fn end_here(
        &self,
        id: &BackendId,
        reason: TerminationReason,
        message: &str,
    ) -> Result<Option<BackendRecord>, StateError> {
        let ended = self
            .inner
            .state
            .update_backend(id, |record| {
                if record.is_terminated() {
                    return Change::Keep(record.clone());
                }
                record.terminate_here(reason, message.to_string(), now_millis());
                Change::Write(record.clone())
            })
            .await?;
        if let Some(ended) = &ended {
            self.release_key(ended).await;
        }
        Ok(ended)
    }

    /// Every drone with its liveness and load as heard now.
    fn drones_now(&self) -> Vec<DroneNow> {
        let now = Instant::now();
        self.view()
            .drones()
            .into_iter()
            .map(|held| DroneNow {
                status: self.inner.hearing.status(&held.record, now),
                record: held.record,
            })
            .collect()
    }

    /// Schedules a backend: picks drones best first and gives it to the first that accepts.
    /// A backend that requires a token gets a new one, given to its drone and in the answer,
    /// and kept nowhere else.
    /// Registry credentials go to the drone that runs it, and are kept nowhere either.
    pub async fn spawn(&self, spawn: impl Into<ValidSpawn>) -> Result<SpawnAnswer, ControlError> {
        let ValidSpawn { spec, credentials } = spawn.into();
        let token = spec.require_token.then(AccessToken::generate);
        let secrets = Secrets {
            token: token.as_ref(),
            credentials: credentials.as_ref(),
        };
        let record = self
            .place(Placement {
                id: BackendId::generate(),
                spec,
                secrets,
                key: None,
                only: None,
            })
            .await?;
        Ok(SpawnAnswer { record, token })
    }

    /// Schedules a backend, counting the outcome.
    async fn place(&self, placement: Placement<'_>) -> Result<BackendRecord, ControlError> {
        let scheduled = self.schedule(placement).await;
        self.inner.metrics.spawned(match &scheduled {
            Ok(_) => SpawnOutcome::Placed,
            Err(ControlError::NoDrone(_) | ControlError::NoDroneAccepted(_)) => {
                SpawnOutcome::NoDrone
            }
            Err(_) => SpawnOutcome::Failed,
        });
        scheduled
    }

    async fn schedule(&self, placement: Placement<'_>) -> Result<BackendRecord, ControlError> {
        let Placement {
            id,
            spec,
            secrets,
            key,
            only,
        } = placement;
        let state = &self.inner.state;
        let now = now_millis();
        let drones: Vec<Candidate> = self
            .drones_now()
            .into_iter()
            .filter(|d| only.is_none_or(|only| d.record.id == *only))
            .map(|d| Candidate {
                drone: d.record,
                status: d.status,
            })
            .collect();
        if let (Some(only), true) = (only, drones.is_empty()) {
            return Err(ControlError::NoSuchDrone(only.clone()));
        }
        let order = scheduler::candidates(drones, spec.executable.executor())?;
        let first = &order[0].drone;
        let record = BackendRecord {
            url: first.backend_url(&id, self.cluster()),
            id: id.clone(),
            state: BackendState::Scheduled,
            reason: None,
            exit_code: None,
            oom_killed: false,
            pull: None,
            message: None,
            drone: first.id.clone(),
            key,
            max_idle_secs: spec.max_idle_secs,
            spec: spec.clone(),
            created_at: now,
            updated_at: now,
            last_seq: 0,
            drone_started_at: None,
            reported_at: None,
        };
        state.create_backend(record).await?;
        let mut failures = Vec::new();
        for (i, candidate) in order.iter().enumerate() {
            let drone = &candidate.drone;
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
            self.inner.hearing.placed(&drone.id);
            let command = DroneCommand::Spawn {
                backend: id.clone(),
                spec: spec.clone(),
                token: secrets.token.cloned(),
                credentials: secrets.credentials.cloned(),
            };
            // A drone that did not answer may be between two NATS servers (its node died);
            // a spawn is idempotent by backend id, so asking once more is safe.
            let mut answer = self.command_drone(&drone.id, &command).await;
            if let Err(error @ BusError::Timeout { .. }) = &answer {
                debug!(backend = %id, drone = %drone.id, error = %error_chain(error), "no acknowledgement; asking again");
                answer = self.command_drone(&drone.id, &command).await;
            }
            match answer {
                Ok(Ack::Accepted) => {
                    info!(backend = %id, drone = %drone.id, "backend scheduled");
                    return self.backend(&id).await;
                }
                Ok(Ack::Rejected { error }) => {
                    warn!(backend = %id, drone = %drone.id, %error, "drone refused backend");
                    failures.push(format!("drone {} refused: {error}", drone.id));
                }
                Err(error) => {
                    let error = error_chain(&error);
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
            .map(|held| BackendRecord::clone(&held.record))
            .ok_or_else(|| ControlError::NotFound(id.clone()))
    }

    /// The backend's current record, with its latest resource use while it runs.
    pub async fn backend_status(&self, id: &BackendId) -> Result<BackendStatus, ControlError> {
        let record = self.backend(id).await?;
        let usage = (!record.is_terminated())
            .then(|| self.inner.usage.of(id))
            .flatten();
        Ok(BackendStatus { record, usage })
    }

    /// The backend's kept log lines, oldest first, then (with `follow`) each new one. Only its
    /// own drone's lines: a drone can publish under its own subjects only, so no other drone
    /// can write into this backend's log.
    pub async fn logs(
        &self,
        record: &BackendRecord,
        follow: bool,
    ) -> Result<LogReader, ControlError> {
        let subject = self.inner.subjects.backend_logs(&record.drone, &record.id);
        let reader = self
            .inner
            .logs
            .read(&subject, follow)
            .await
            .map_err(StateError::from)?;
        Ok(reader)
    }

    /// Every backend, oldest first.
    pub fn backends(&self) -> Vec<Arc<BackendRecord>> {
        let mut all = self.view().backends();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Every drone with whether it is live now and its load, by id.
    pub fn drones(&self) -> Vec<DroneNow> {
        let mut all = self.drones_now();
        all.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        all
    }

    /// Changes a running backend's idle timeout: its drone's sweeper uses it at once, then the
    /// record says so (and event streams send it as `updated`).
    pub async fn set_idle(
        &self,
        id: &BackendId,
        max_idle_secs: u64,
    ) -> Result<BackendRecord, ControlError> {
        let record = self.backend(id).await?;
        if record.is_terminated() {
            return Err(ControlError::Ended(id.clone()));
        }
        let command = DroneCommand::SetIdle {
            backend: id.clone(),
            max_idle_secs,
        };
        match self.command_drone(&record.drone, &command).await {
            Ok(Ack::Accepted) => {}
            Ok(Ack::Rejected { error }) => {
                // It ended while we asked: say that rather than the drone's words.
                let now = self.backend(id).await?;
                if now.is_terminated() {
                    return Err(ControlError::Ended(id.clone()));
                }
                return Err(ControlError::DroneRefused {
                    drone: record.drone,
                    error,
                });
            }
            Err(source) => {
                return Err(ControlError::DroneUnreachable {
                    drone: record.drone,
                    source,
                })
            }
        }
        self.inner
            .state
            .update_backend(id, |record| {
                if record.max_idle_secs == max_idle_secs {
                    return Change::Keep(());
                }
                record.max_idle_secs = max_idle_secs;
                record.spec.max_idle_secs = max_idle_secs;
                record.updated_at = now_millis();
                Change::Write(())
            })
            .await?;
        info!(backend = %id, max_idle_secs, "idle timeout changed");
        self.backend(id).await
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
                    .view()
                    .drone(&record.drone)
                    .is_some_and(|d| d.record.lost);
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

/// The next change of the watches, or never while there are none.
async fn next_change(
    watches: &mut Option<Watches>,
) -> Option<(crate::view::Bucket, plane_bus::KvChange)> {
    match watches {
        Some(watches) => watches.next().await,
        None => std::future::pending().await,
    }
}
