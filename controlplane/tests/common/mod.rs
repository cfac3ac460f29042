//! A controller on an in-memory bus, with fake drones: heartbeats published by the test and
//! command subscribers that answer as told and record what they were sent.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use plane_bus::{Bus, BusError};
use plane_controlplane::{Controller, ControllerConfig};
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, BackendState, DroneCommand, Executable, ExecutorKind, Heartbeat,
    StateReport, TerminationReason, UnixMillis,
};
use plane_protocol::records::{BackendRecord, DroneRecord};
use plane_protocol::subjects::Subjects;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub const CLUSTER: &str = "plane.test";

/// Upper bound for any single step of a test; far above what a healthy run needs.
pub const STEP: Duration = Duration::from_secs(10);

/// A grace long enough that no drone is lost during a test unless the test wants it.
pub const LONG_GRACE: Duration = Duration::from_secs(60);

pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `check` until it returns `Some`, failing the test after [`STEP`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn drone_id(id: &str) -> DroneId {
    DroneId::new(id).expect("valid drone id")
}

pub fn spec() -> BackendSpec {
    BackendSpec {
        executable: Executable::process(vec!["my-server".into(), "--flag".into()]),
        max_idle_secs: 30,
        env: BTreeMap::from([("K".to_string(), "V".to_string())]),
        require_token: false,
        resources: Default::default(),
        ready_path: None,
    }
}

/// A heartbeat of drone `drone` as a drone sends it.
pub fn heartbeat_message(drone: &str, load: u32, started_at: UnixMillis) -> Heartbeat {
    Heartbeat {
        drone: drone_id(drone),
        executor: ExecutorKind::Process,
        capacity: 10,
        load,
        backends: Vec::new(),
        draining: false,
        drain_deadline: None,
        proxy_scheme: "http".into(),
        proxy_port: 9090,
        ip: None,
        certificate: None,
        started_at,
        at: now_millis(),
        usage: Default::default(),
    }
}

/// A running controller; dropping it shuts the controller down.
pub struct Cluster {
    pub bus: Bus,
    pub subjects: Subjects,
    pub controller: Controller,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Cluster {
    pub async fn start(drone_grace: Duration) -> Cluster {
        Self::start_with_retention(drone_grace, plane_controlplane::limits::DEFAULT_RETENTION).await
    }

    pub async fn start_with_retention(drone_grace: Duration, retention: Duration) -> Cluster {
        let bus = Bus::in_memory();
        let config = ControllerConfig {
            cluster: CLUSTER.to_string(),
            drone_grace,
            retention,
            key_retention: plane_controlplane::limits::DEFAULT_KEY_RETENTION,
        };
        let controller = within("controller start", Controller::new(bus.clone(), config))
            .await
            .expect("controller opens its state");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let running = controller.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = running.run(shutdown).await {
                panic!("controller stopped: {error}");
            }
        });
        let cluster = Cluster {
            bus,
            subjects: Subjects::new(CLUSTER),
            controller,
            shutdown: Some(shutdown),
        };
        cluster.wait_until_listening().await;
        cluster
    }

    /// `run` subscribes in its own task and says nothing when it is done; a report for an
    /// unknown backend (refused without effect) is answered only once it is. Reports are
    /// subscribed after heartbeats, so heartbeats are heard from then on too.
    async fn wait_until_listening(&self) {
        let probe = report(
            &BackendId::new("readiness-probe").expect("valid id"),
            "probe",
            1,
            BackendState::Loading,
            None,
        );
        eventually("the controller to listen to drones", || async {
            match self
                .bus
                .request_json::<_, Ack>(
                    &self.subjects.state_reports(&drone_id("probe")),
                    &probe,
                    STEP,
                )
                .await
            {
                Ok(_) => Some(()),
                Err(BusError::NoResponders { .. }) => None,
                Err(error) => panic!("probing the controller: {error}"),
            }
        })
        .await;
    }

    /// Publishes a heartbeat and waits until the controller has recorded it.
    pub async fn heartbeat(&self, drone: &str, load: u32, started_at: UnixMillis) {
        self.heartbeat_listing(drone, load, started_at, &[]).await
    }

    /// [`Cluster::heartbeat`] of a drone running `executor`.
    pub async fn heartbeat_of(&self, drone: &str, executor: ExecutorKind) {
        let mut heartbeat = heartbeat_message(drone, 0, 1);
        heartbeat.executor = executor;
        self.beat(heartbeat, |d| d.executor == executor).await;
    }

    /// [`Cluster::heartbeat`] of a drone that runs (or still reports on) `backends`.
    pub async fn heartbeat_listing(
        &self,
        drone: &str,
        load: u32,
        started_at: UnixMillis,
        backends: &[&BackendId],
    ) {
        let mut heartbeat = heartbeat_message(drone, load, started_at);
        heartbeat.backends = backends.iter().map(|b| (*b).clone()).collect();
        self.beat(heartbeat, |d| d.load == load && d.started_at == started_at)
            .await;
    }

    /// Publishes `heartbeat` and waits until the controller's record of its drone is at least
    /// that recent and passes `recorded`.
    async fn beat(&self, heartbeat: Heartbeat, recorded: impl Fn(&DroneRecord) -> bool) {
        let sent = now_millis();
        within(
            "publish heartbeat",
            self.bus
                .publish_json(&self.subjects.heartbeat(&heartbeat.drone), &heartbeat),
        )
        .await
        .expect("heartbeat published");
        let drone = heartbeat.drone.to_string();
        self.wait_for_drone(&drone, |d| d.last_heartbeat >= sent && recorded(d))
            .await;
    }

    pub async fn wait_for_drone(
        &self,
        drone: &str,
        ok: impl Fn(&DroneRecord) -> bool,
    ) -> DroneRecord {
        let id = drone_id(drone);
        eventually(&format!("drone {drone} to be recorded as expected"), || {
            let found = self
                .controller
                .drones()
                .iter()
                .find(|d| d.record.id == id)
                .map(|d| d.to_view().drone)
                .filter(|d| ok(d));
            async move { found }
        })
        .await
    }

    pub async fn wait_for_backend(
        &self,
        id: &BackendId,
        ok: impl Fn(&BackendRecord) -> bool,
    ) -> BackendRecord {
        eventually(&format!("backend {id} to reach the expected state"), || {
            let (controller, ok) = (&self.controller, &ok);
            async move {
                let record = controller.backend(id).await.expect("backend exists");
                ok(&record).then_some(record)
            }
        })
        .await
    }

    /// Sends a state report as a drone does and returns the controller's answer.
    pub async fn report(&self, report: &StateReport) -> Ack {
        within(
            "state report",
            self.bus.request_json::<_, Ack>(
                &self.subjects.state_reports(&report.drone),
                report,
                Duration::from_secs(5),
            ),
        )
        .await
        .expect("the controller answers reports")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The `started_at` of the drone process `one_backend`'s heartbeats announce.
pub const FIRST_PROCESS: UnixMillis = 1;

/// A report from the drone process [`FIRST_PROCESS`].
pub fn report(
    backend: &BackendId,
    drone: &str,
    seq: u64,
    state: BackendState,
    reason: Option<TerminationReason>,
) -> StateReport {
    StateReport {
        backend: backend.clone(),
        drone: drone_id(drone),
        seq,
        state,
        reason,
        exit_code: None,
        oom_killed: false,
        pull: None,
        message: None,
        drone_started_at: FIRST_PROCESS,
        at: now_millis(),
    }
}

/// How a fake drone answers commands.
#[derive(Clone)]
pub enum Answer {
    Accept,
    Reject(&'static str),
}

/// A fake drone's command subscriber; dropping it unsubscribes.
pub struct FakeDrone {
    pub commands: mpsc::UnboundedReceiver<DroneCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDrone {
    /// Subscribes to the drone's commands; the subscription is in place when this returns.
    pub async fn start(cluster: &Cluster, drone: &str, answer: Answer) -> FakeDrone {
        let bus = cluster.bus.clone();
        let mut subscription = within(
            "subscribe",
            bus.subscribe(&cluster.subjects.drone_commands(&drone_id(drone))),
        )
        .await
        .expect("subscribed");
        let (tx, commands) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(msg) = subscription.next().await {
                let command: DroneCommand = msg.decode().expect("the controller sends commands");
                let _ = tx.send(command);
                let ack = match &answer {
                    Answer::Accept => Ack::Accepted,
                    Answer::Reject(error) => Ack::Rejected {
                        error: error.to_string(),
                    },
                };
                if let Err(BusError::Closed) = bus.respond_json(&msg, &ack).await {
                    return;
                }
            }
        });
        FakeDrone { commands, task }
    }

    /// The next command it was sent.
    pub async fn next(&mut self) -> DroneCommand {
        within("a drone command", self.commands.recv())
            .await
            .expect("the fake drone is running")
    }

    /// Fails if a command arrived that the test did not take.
    pub fn assert_no_more(&mut self) {
        if let Ok(command) = self.commands.try_recv() {
            panic!("unexpected command {command:?}");
        }
    }
}

impl Drop for FakeDrone {
    fn drop(&mut self) {
        self.task.abort();
    }
}
