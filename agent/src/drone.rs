//! The drone: answers the controller's commands, beats its heart, sweeps idle backends, and on
//! shutdown stops every backend it started before it returns.
//!
//! Nothing here waits on the bus where it matters: the sweeper runs in its own task and only
//! reads the proxy's counts, heartbeats are sent from their own task (and skipped while the
//! connection is down), answers to commands go out from tasks of their own, and state reports
//! queue (see `reporter`). A NATS outage stops nothing but the conversation with the controller.

use crate::executor::{Executor, Exit, LaunchError};
use crate::lifecycle::{self, BackendHandle, Context};
use crate::limits::{
    ENDED_MEMORY, HEARTBEAT_SEND_TIMEOUT, RECOVERY_ANSWER_TIMEOUT, REPORT_FLUSH_TIMEOUT,
    REPORT_RETRY_MAX, REPORT_RETRY_MIN, SWEEP_INTERVAL,
};
use crate::logs::{BackendLog, LogPublisher};
use crate::reporter::{self, BackendReports, Reports};
use crate::sweeper;
use crate::usage::{Sampler, UsageSamples};
use plane_bus::{Bus, BusError, Message};
use plane_dataplane::{RouteTable, TokenDigest};
use plane_protocol::certificates::CertificateStatus;
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, Adoption, BackendSpec, BackendState, DroneCommand, Heartbeat, Recovery,
    RecoveryAnswer, Survivor, SurvivorStatus, TerminationReason, UnixMillis,
};
use plane_protocol::registry::RegistryCredentials;
use plane_protocol::subjects::Subjects;
use plane_protocol::token::AccessToken;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
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
    /// How often each backend's resource use is sampled.
    pub usage_interval: Duration,
    /// How long a backend gets to accept connections.
    pub ready_timeout: Duration,
    /// Between the polite stop signal and the kill.
    pub stop_grace: Duration,
    /// The proxy's scheme and port as clients see them (they make the backends' URLs).
    pub proxy_scheme: String,
    pub proxy_port: u16,
    /// The address clients reach the proxy at, advertised for the cluster's DNS.
    pub ip: Option<std::net::IpAddr>,
}

/// A drone: the agent half (the proxy serving `table` runs beside it).
pub struct Drone {
    config: DroneConfig,
    bus: Bus,
    subjects: Subjects,
    shared: Arc<Shared>,
    /// When this drone process started, told in every heartbeat.
    started_at: UnixMillis,
    /// The certificate its TLS listener serves, told in every heartbeat.
    certificate: watch::Receiver<Option<CertificateStatus>>,
}

/// What a spawn command brings beside the spec, for this drone only.
struct Secrets {
    token: Option<AccessToken>,
    credentials: Option<RegistryCredentials>,
}

/// State shared with the lifecycle tasks.
struct Shared {
    context: Arc<Context>,
    backends: Mutex<HashMap<BackendId, Arc<BackendHandle>>>,
    /// Recently ended backends, so that a re-sent spawn does not start one twice.
    ended: Mutex<HashMap<BackendId, Instant>>,
    /// Every backend's lifecycle task.
    lifecycles: TaskTracker,
    /// Resource use sampled since the last heartbeat.
    usage: UsageSamples,
    /// Every backend's log lines go out through this.
    logs: LogPublisher,
    /// Set while the drone drains.
    drain: Mutex<Option<Drain>>,
    /// Backends stopped for being idle.
    sweeps: AtomicU64,
}

/// The drone's metrics, rendered when scraped (see [`crate::metrics`]).
#[derive(Clone)]
pub struct DroneMetrics {
    shared: Arc<Shared>,
}

impl DroneMetrics {
    /// The metrics text.
    pub fn render(&self) -> String {
        let table = &self.shared.context.table;
        let mut backends: Vec<crate::metrics::BackendTraffic> = self
            .shared
            .backends()
            .keys()
            .map(|id| crate::metrics::BackendTraffic {
                backend: id.clone(),
                route: table.get(id.as_str()),
            })
            .collect();
        backends.sort_by(|a, b| a.backend.cmp(&b.backend));
        crate::metrics::render(
            &backends,
            self.shared.sweeps.load(Ordering::Relaxed),
            table.errors(),
        )
    }
}

/// A drain in progress.
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// When the backends still running are terminated, if ever (told in the heartbeat).
    deadline_at: Option<UnixMillis>,
}

impl Shared {
    fn backends(&self) -> MutexGuard<'_, HashMap<BackendId, Arc<BackendHandle>>> {
        // A panic while holding this lock would be a bug in this module; keep serving anyway.
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> MutexGuard<'_, HashMap<BackendId, Instant>> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drain(&self) -> Option<Drain> {
        *self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_drain(&self, drain: Option<Drain>) {
        *self.drain.lock().unwrap_or_else(|p| p.into_inner()) = drain;
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
        table.set_waker(crate::wake::KeyWaker::new(
            bus.clone(),
            &subjects,
            &config.id,
            table.clone(),
        ));
        let logs = LogPublisher::start(bus.clone());
        let context = Context {
            executor,
            table,
            cluster: config.cluster.clone(),
            ready_timeout: config.ready_timeout,
            stop_grace: config.stop_grace,
        };
        Drone {
            started_at: now_millis(),
            certificate: watch::channel(None).1,
            config,
            bus,
            subjects,
            shared: Arc::new(Shared {
                context: Arc::new(context),
                backends: Mutex::new(HashMap::new()),
                ended: Mutex::new(HashMap::new()),
                lifecycles: TaskTracker::new(),
                usage: UsageSamples::default(),
                logs,
                drain: Mutex::new(None),
                sweeps: AtomicU64::new(0),
            }),
        }
    }

    /// What serves the drone's metrics, for as long as the drone runs (and after: it then
    /// lists no backends).
    pub fn metrics(&self) -> DroneMetrics {
        DroneMetrics {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Tells the cluster about the certificate in `status` (the TLS listener's) from the next
    /// heartbeat on.
    pub fn report_certificate(&mut self, status: watch::Receiver<Option<CertificateStatus>>) {
        self.certificate = status;
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
        tokio::pin!(shutdown);
        // Before the first heartbeat: what the drone then lists includes what it took over, so
        // the controller ends none of it.
        let shut_down_early = tokio::select! {
            () = &mut shutdown => true,
            () = self.recover(&reports) => false,
        };
        let sweeper = tokio::spawn(sweep_forever(self.shared.clone()));
        let sampler = tokio::spawn(sample_usage_forever(
            self.shared.clone(),
            self.config.usage_interval,
        ));
        let heartbeat = tokio::spawn(self.heartbeat_forever(reports.clone()));
        info!(drone = %self.config.id, cluster = %self.config.cluster, executor = %self.shared.context.executor.kind(), "drone running");
        let result = loop {
            if shut_down_early {
                break Ok(());
            }
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
        sampler.abort();
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
        let certificate = self.certificate.clone();
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
                let drain = shared.drain();
                let heartbeat = Heartbeat {
                    drone: config.id.clone(),
                    executor: shared.context.executor.kind(),
                    capacity: config.capacity,
                    load,
                    backends,
                    draining: drain.is_some(),
                    drain_deadline: drain.and_then(|d| d.deadline_at),
                    proxy_scheme: config.proxy_scheme.clone(),
                    proxy_port: config.proxy_port,
                    ip: config.ip,
                    certificate: certificate.borrow().clone(),
                    started_at,
                    at: now_millis(),
                    usage: shared.usage.take(),
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

    /// Takes over what earlier drone processes left on this machine (containers outlive them), as
    /// the cluster says: running backends it still wants on this drone are adopted (routed again
    /// once they answer, their idle clock started afresh), those that ended meanwhile have their
    /// end reported, and everything else of the cluster's (unknown, ended, given up on, or a
    /// lost drone's) is stopped and removed. Another live drone's are left alone. Waits for a
    /// controller as long as it takes: nothing found is touched before the cluster has spoken.
    async fn recover(&self, reports: &Reports) {
        let executor = &self.shared.context.executor;
        let mut pause = REPORT_RETRY_MIN;
        let found = loop {
            match executor.survivors().await {
                Ok(found) => break found,
                // Not knowing what is there, nothing can be decided: ask the engine again.
                Err(error) => {
                    warn!(%error, ?pause, "cannot list what earlier drone processes left; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(REPORT_RETRY_MAX);
                }
            }
        };
        if found.is_empty() {
            return;
        }
        info!(
            count = found.len(),
            "found backends that outlived their drone process; asking the cluster about them"
        );
        let recovery = Recovery {
            drone: self.config.id.clone(),
            started_at: self.started_at,
            found,
        };
        let answer = self.ask_about(&recovery).await;
        for survivor in recovery.found {
            let adoption = answer
                .adopt
                .iter()
                .find(|a| a.backend == survivor.backend && survivor.drone == self.config.id);
            if let Some(adoption) = adoption {
                self.take_back(survivor, adoption, reports).await;
            } else if answer.leave.contains(&survivor.backend) {
                debug!(backend = %survivor.backend, drone = %survivor.drone, "another live drone's; left alone");
            } else {
                info!(backend = %survivor.backend, drone = %survivor.drone, status = ?survivor.status, "no longer wanted; removing it");
                self.discard(survivor);
            }
        }
    }

    /// Asks the controllers about what was found, until one answers.
    async fn ask_about(&self, recovery: &Recovery) -> RecoveryAnswer {
        let subject = self.subjects.recovery(&self.config.id);
        let mut pause = REPORT_RETRY_MIN;
        loop {
            match self
                .bus
                .request_json::<_, RecoveryAnswer>(&subject, recovery, RECOVERY_ANSWER_TIMEOUT)
                .await
            {
                Ok(answer) => return answer,
                Err(error) => {
                    warn!(error = %error_chain(&error), ?pause, "no controller answered about the backends found; asking again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(REPORT_RETRY_MAX);
                }
            }
        }
    }

    /// Takes back one of this drone's survivors that the cluster still wants.
    async fn take_back(&self, survivor: Survivor, adoption: &Adoption, reports: &Reports) {
        let backend = survivor.backend.clone();
        let log = self.log_of(&backend);
        let mut reports = BackendReports::resuming(
            reports.clone(),
            backend.clone(),
            self.config.id.clone(),
            self.started_at,
            adoption.last_seq,
        )
        .with_log(log.clone());
        let was_ready = adoption.state == BackendState::Ready;
        // Its earlier process was stopping it: the new one finishes the job.
        let stopping = adoption.state == BackendState::Terminating;
        let adopted = match survivor.status {
            SurvivorStatus::Running => self.shared.context.executor.adopt(&survivor, log).await,
            SurvivorStatus::Created => Err(LaunchError::Adopt {
                message: "its drone restarted before starting it".to_string(),
            }),
            SurvivorStatus::Exited {
                exit_code,
                oom_killed,
            } => Err(LaunchError::Ended {
                exit: Exit {
                    code: exit_code,
                    signal: None,
                    oom_killed,
                },
            }),
        };
        let adopted = match adopted {
            Ok(adopted) if adoption.spec.require_token && adopted.token.is_none() => Err((
                TerminationReason::Lost,
                Exit::UNKNOWN,
                "its access token was not kept with it".to_string(),
            )),
            Ok(adopted) => Ok(adopted),
            Err(LaunchError::Ended { exit }) => {
                let reason = match (was_ready, exit.success()) {
                    _ if stopping => TerminationReason::Terminated,
                    (false, _) => TerminationReason::ErrorStarting,
                    (true, true) => TerminationReason::Exited,
                    (true, false) => TerminationReason::Failed,
                };
                let message = format!("ended while its drone was down ({})", exit.describe());
                Err((reason, exit, message))
            }
            Err(error) => Err((TerminationReason::Lost, Exit::UNKNOWN, error_chain(&error))),
        };
        let adopted = match adopted {
            Ok(adopted) => adopted,
            Err((reason, exit, message)) => {
                info!(%backend, %reason, %message, "a backend found after a restart has ended");
                reports.say(&format!(
                    "terminated after its drone restarted: {reason} ({message})"
                ));
                reports.terminated(reason, exit.code, exit.oom_killed, Some(message));
                self.shared.ended().insert(backend, Instant::now());
                self.discard(survivor);
                return;
            }
        };
        let spec = adoption.spec.clone();
        let (handle, stop) = BackendHandle::new(spec.max_idle_secs);
        if stopping {
            handle.request_stop(TerminationReason::Terminated);
        }
        self.shared
            .backends()
            .insert(backend.clone(), handle.clone());
        self.shared
            .context
            .table
            .insert_starting_with(backend.as_str(), adopted.token);
        self.alias_key(&backend, &spec);
        info!(%backend, was_ready, stopping, "backend taken over");
        let ctx = self.shared.context.clone();
        let id = backend.clone();
        self.track(backend, async move {
            let taken = lifecycle::TakenOver {
                spec,
                was_ready,
                running: adopted.running,
            };
            lifecycle::run_adopted(&ctx, id, taken, handle, stop, reports).await;
        });
    }

    /// Routes the host of the key a backend was connected by to it too (`k-{label}`), so that
    /// its key's URL reaches it without a wake.
    fn alias_key(&self, backend: &BackendId, spec: &plane_protocol::messages::BackendSpec) {
        if let Some(alias) = crate::wake::key_host_label(spec, &self.config.cluster) {
            self.shared.context.table.alias(&alias, backend.as_str());
        }
    }

    /// Runs a backend's lifecycle among the drone's; once it is over, the backend is forgotten
    /// (and remembered as ended, so that a late re-sent spawn does not start it again).
    fn track(&self, backend: BackendId, lifecycle: impl Future<Output = ()> + Send + 'static) {
        let shared = self.shared.clone();
        self.shared.lifecycles.spawn(async move {
            lifecycle.await;
            shared.backends().remove(&backend);
            shared.ended().insert(backend, Instant::now());
        });
    }

    /// Where a backend's log lines go.
    fn log_of(&self, backend: &BackendId) -> BackendLog {
        BackendLog::new(
            self.shared.logs.clone(),
            self.subjects.backend_logs(&self.config.id, backend),
            backend.clone(),
        )
    }

    /// Stops and removes a survivor in the background (a drone shutting down waits for it).
    fn discard(&self, survivor: Survivor) {
        let shared = self.shared.clone();
        let grace = self.config.stop_grace;
        self.shared.lifecycles.spawn(async move {
            shared.context.executor.discard(&survivor, grace).await;
        });
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
            Ok(DroneCommand::Drain { deadline_secs }) => {
                self.shared.set_drain(Some(Drain {
                    deadline_at: deadline_secs
                        .map(|secs| now_millis().saturating_add(secs.saturating_mul(1000))),
                }));
                info!(drone = %self.config.id, ?deadline_secs, running = self.shared.backends().len(), "draining: no new backends");
                Ack::Accepted
            }
            Ok(DroneCommand::Undrain) => {
                if self.shared.drain().is_some() {
                    info!(drone = %self.config.id, "drain cancelled: taking backends again");
                }
                self.shared.set_drain(None);
                Ack::Accepted
            }
            Ok(DroneCommand::SetIdle {
                backend,
                max_idle_secs,
            }) => match self.shared.backends().get(&backend) {
                Some(handle) => {
                    handle.set_max_idle(max_idle_secs);
                    info!(%backend, max_idle_secs, "idle timeout changed");
                    Ack::Accepted
                }
                None => Ack::Rejected {
                    error: format!("backend {backend} does not run on this drone"),
                },
            },
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
        // After the re-send checks: a spawn this drone already took is acknowledged again.
        if self.shared.drain().is_some() {
            return Ack::Rejected {
                error: format!("drone {} is draining", self.config.id),
            };
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
        let token_digest = token
            .as_ref()
            .map(|t| TokenDigest::of(t.as_str().as_bytes()));
        // Before the acknowledgement: from the moment the spawn call returns, requests for the
        // backend are held until it is ready instead of answered 404.
        self.shared
            .context
            .table
            .insert_starting_with(backend.as_str(), token_digest);
        self.alias_key(&backend, &spec);
        let log = self.log_of(&backend);
        let reports = BackendReports::new(
            reports.clone(),
            backend.clone(),
            self.config.id.clone(),
            self.started_at,
        )
        .with_log(log.clone());
        info!(backend = %backend, image = ?spec.executable.image, command = ?spec.executable.command, "spawning backend");
        let ctx = self.shared.context.clone();
        let id = backend.clone();
        self.track(backend, async move {
            let secrets = lifecycle::Secrets {
                credentials,
                token: token_digest,
                log,
            };
            lifecycle::run(&ctx, id, spec, secrets, handle, stop, reports).await;
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

/// Samples the backends' resource use every `interval`.
async fn sample_usage_forever(shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = Sampler::default();
    loop {
        tick.tick().await;
        let backends: Vec<BackendId> = shared.backends().keys().cloned().collect();
        sampler
            .sample(shared.context.executor.as_ref(), backends, &shared.usage)
            .await;
    }
}

/// Sweeps idle backends every [`SWEEP_INTERVAL`], whatever the bus does.
async fn sweep_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let swept = sweeper::sweep(&shared.backends(), now);
        shared.sweeps.fetch_add(swept, Ordering::Relaxed);
        let overdue = shared
            .drain()
            .and_then(|drain| drain.deadline_at)
            .is_some_and(|deadline| now_millis() >= deadline);
        if overdue {
            for (id, handle) in shared.backends().iter() {
                if handle.request_stop(TerminationReason::Terminated) {
                    info!(backend = %id, "drain deadline passed; terminating");
                }
            }
        }
    }
}
