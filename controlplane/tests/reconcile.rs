//! Heartbeats against loss decisions and against the cluster state, interleaved on purpose:
//! the controller's loop does not run here; each test calls its steps (handle a heartbeat, find
//! silent drones, declare them lost, apply a report) in the order it means to test, on a single
//! thread with tokio's clock paused, so every interleaving is the same on every run.

mod common;

use common::{drone_id, spec, CLUSTER};
use plane_bus::Bus;
use plane_controlplane::controller::Listening;
use plane_controlplane::{Controller, ControllerConfig};
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{
    now_millis, Ack, BackendState, DroneCommand, Heartbeat, StateReport, TerminationReason,
    UnixMillis,
};
use plane_protocol::records::BackendRecord;
use plane_protocol::subjects::Subjects;
use std::time::Duration;
use tokio::sync::mpsc;

const GRACE: Duration = Duration::from_secs(10);
const PROCESS: UnixMillis = 7;

/// A controller that listens (it can hear) but whose loop the test drives by hand, and a fake
/// drone `d1` that accepts every command and hands it to the test.
struct Harness {
    controller: Controller,
    commands: mpsc::UnboundedReceiver<DroneCommand>,
    _listening: Listening,
}

impl Harness {
    async fn start() -> Harness {
        let bus = Bus::in_memory();
        let controller = Controller::new(
            bus.clone(),
            ControllerConfig {
                cluster: CLUSTER.into(),
                drone_grace: GRACE,
                retention: Duration::from_secs(3600),
                key_retention: plane_controlplane::limits::DEFAULT_KEY_RETENTION,
            },
        )
        .await
        .expect("controller opens its state");
        let listening = controller.listen().await.expect("listens");
        let mut subscription = bus
            .subscribe(&Subjects::new(CLUSTER).drone_commands(&drone_id("d1")))
            .await
            .expect("subscribed");
        let (tx, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = subscription.next().await {
                let _ = tx.send(msg.decode::<DroneCommand>().expect("a command"));
                let _ = bus.respond_json(&msg, &Ack::Accepted).await;
            }
        });
        Harness {
            controller,
            commands,
            _listening: listening,
        }
    }

    /// Lets the tasks the controller started run to completion (no clock moves: it is paused,
    /// and nothing here sleeps).
    async fn settle(&self) {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    fn heartbeat(&self, backends: &[&BackendId]) -> Heartbeat {
        let mut heartbeat = common::heartbeat_message("d1", backends.len() as u32, PROCESS);
        heartbeat.backends = backends.iter().map(|b| (*b).clone()).collect();
        heartbeat
    }

    /// A backend on d1 that its drone reported ready.
    async fn ready_backend(&mut self) -> BackendId {
        self.controller.handle_heartbeat(self.heartbeat(&[]));
        self.settle().await;
        let record = self.controller.spawn(spec()).await.expect("spawned");
        assert!(matches!(
            self.commands.recv().await,
            Some(DroneCommand::Spawn { .. })
        ));
        for (seq, state) in [(1, BackendState::Loading), (2, BackendState::Ready)] {
            let ack = self
                .controller
                .apply_report(&report(&record.id, seq, state))
                .await
                .expect("applied");
            assert_eq!(ack, Ack::Accepted);
        }
        record.record.id
    }

    async fn backend(&self, id: &BackendId) -> BackendRecord {
        self.controller.backend(id).await.expect("exists")
    }

    fn drone_lost(&self) -> bool {
        self.controller
            .view()
            .drone(&drone_id("d1"))
            .expect("recorded")
            .record
            .lost
    }

    fn no_more_commands(&mut self) {
        if let Ok(command) = self.commands.try_recv() {
            panic!("unexpected command {command:?}");
        }
    }
}

fn report(id: &BackendId, seq: u64, state: BackendState) -> StateReport {
    let mut report = common::report(id, "d1", seq, state, None);
    report.drone_started_at = PROCESS;
    report
}

/// The loss is written first, then a heartbeat of the drone (which still runs the backend)
/// lands: the drone is told to stop it, and the drone itself is live again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_heartbeat_after_the_loss_stops_what_was_given_up() {
    let mut h = Harness::start().await;
    let id = h.ready_backend().await;
    tokio::time::advance(GRACE + Duration::from_millis(1)).await;
    assert_eq!(h.controller.silent_drones(), [drone_id("d1")]);
    h.controller.declare_lost_drones().await.expect("declared");
    let ended = h.backend(&id).await;
    assert_eq!(ended.reason, Some(TerminationReason::Lost));
    assert!(h.drone_lost());

    h.controller.handle_heartbeat(h.heartbeat(&[&id]));
    h.settle().await;
    assert_eq!(
        h.commands.recv().await,
        Some(DroneCommand::Terminate {
            backend: id.clone()
        })
    );
    assert!(!h.drone_lost(), "a drone beating again is not lost");
    assert_eq!(h.backend(&id).await.reason, Some(TerminationReason::Lost));
    // Its late report cannot bring the backend back either.
    let ack = h
        .controller
        .apply_report(&report(&id, 3, BackendState::Ready))
        .await
        .expect("answered");
    assert!(matches!(ack, Ack::Rejected { .. }), "{ack:?}");
}

/// The drone is found silent, a heartbeat lands, then the loss would be written: it is judged
/// again at the write, and called off.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_heartbeat_between_the_loss_decision_and_its_write_calls_it_off() {
    let mut h = Harness::start().await;
    let id = h.ready_backend().await;
    tokio::time::advance(GRACE + Duration::from_millis(1)).await;
    let silent = h.controller.silent_drones();
    assert_eq!(silent, [drone_id("d1")]);

    h.controller.handle_heartbeat(h.heartbeat(&[&id]));
    h.controller.declare_lost(&silent).await.expect("judged");
    h.settle().await;
    assert!(!h.drone_lost());
    assert_eq!(h.backend(&id).await.state, BackendState::Ready);
    h.no_more_commands();
}

/// The drone no longer lists a backend it reported before that heartbeat, and has no report
/// about it queued: the cluster ends it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_backend_the_drone_no_longer_runs_is_ended() {
    let mut h = Harness::start().await;
    let id = h.ready_backend().await;
    let reported = h.backend(&id).await.reported_at.expect("reported");
    let mut later = h.heartbeat(&[]);
    later.at = reported + 1;
    h.controller.handle_heartbeat(later);
    h.settle().await;
    let ended = h.backend(&id).await;
    assert_eq!(ended.state, BackendState::Terminated);
    assert_eq!(ended.reason, Some(TerminationReason::Lost));
    assert!(!h.drone_lost());
    h.no_more_commands();
}

/// A heartbeat sent before the drone's report (they travel apart, and the report won the race)
/// does not end the backend; nor does one that lists it because its reports are still queued.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn heartbeats_older_than_a_report_or_listing_queued_reports_end_nothing() {
    let mut h = Harness::start().await;
    let id = h.ready_backend().await;
    let reported = h.backend(&id).await.reported_at.expect("reported");
    let mut older = h.heartbeat(&[]);
    older.at = reported - 1;
    h.controller.handle_heartbeat(older);
    let mut listing = h.heartbeat(&[&id]);
    listing.at = reported + 1_000;
    h.controller.handle_heartbeat(listing);
    h.settle().await;
    assert_eq!(h.backend(&id).await.state, BackendState::Ready);
    h.no_more_commands();
}

/// A heartbeat listing a backend the cluster does not know (its spawn failed everywhere, or it
/// was forgotten) or holds ended has the drone stop it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listed_backend_the_cluster_holds_ended_or_unknown_is_stopped() {
    let mut h = Harness::start().await;
    let id = h.ready_backend().await;
    let ack = h
        .controller
        .apply_report(&common::report(
            &id,
            "d1",
            3,
            BackendState::Terminated,
            Some(TerminationReason::Exited),
        ))
        .await
        .expect("applied");
    assert_eq!(ack, Ack::Accepted);
    let stranger = BackendId::new("never-spawned").expect("valid");
    let mut heartbeat = h.heartbeat(&[&id, &stranger]);
    heartbeat.at = now_millis() + 1;
    h.controller.handle_heartbeat(heartbeat);
    h.settle().await;
    let mut told = vec![h.commands.recv().await, h.commands.recv().await];
    told.sort_by_key(|c| format!("{c:?}"));
    let mut expected = vec![
        Some(DroneCommand::Terminate { backend: id }),
        Some(DroneCommand::Terminate { backend: stranger }),
    ];
    expected.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(told, expected);
}
