//! The controller over the in-memory bus, with fake drones: scheduling and its fallbacks, state
//! reports, drone liveness and restarts, and termination.

mod common;

use common::{drone_id, eventually, report, spec, within, Answer, Cluster, FakeDrone, LONG_GRACE};
use plane_controlplane::controller::ControlError;
use plane_controlplane::scheduler::NoDrone;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{
    now_millis, Ack, BackendState, DroneCommand, TerminationReason, UnixMillis,
};
use std::time::Duration;

#[tokio::test]
async fn spawn_with_no_drone_says_none_registered() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let result = within("spawn", cluster.controller.spawn(spec())).await;
    assert!(
        matches!(result, Err(ControlError::NoDrone(NoDrone::NoneRegistered))),
        "{result:?}"
    );
    let backends = cluster.controller.backends();
    assert!(backends.is_empty(), "{backends:?}");
}

#[tokio::test]
async fn spawn_schedules_on_a_drone_that_accepts() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;

    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert_eq!(record.state, BackendState::Scheduled);
    assert_eq!(record.drone, drone_id("d1"));
    assert_eq!(record.spec, spec());
    assert_eq!(record.max_idle_secs, 30);
    assert_eq!(record.last_seq, 0);
    assert_eq!(record.url, format!("http://{}.plane.test:9090/", record.id));
    assert_eq!(
        drone.next().await,
        DroneCommand::Spawn {
            backend: record.id.clone(),
            spec: spec(),
            token: None,
            credentials: None,
        }
    );
    drone.assert_no_more();
    let stored = cluster
        .controller
        .backend(&record.id)
        .await
        .expect("stored");
    assert_eq!(stored, record.record);
}

#[tokio::test]
async fn a_refusing_drone_is_skipped_for_the_next() {
    let cluster = Cluster::start(LONG_GRACE).await;
    // The least loaded drone is tried first.
    cluster.heartbeat("first", 0, 1).await;
    cluster.heartbeat("second", 5, 1).await;
    let mut first = FakeDrone::start(&cluster, "first", Answer::Reject("full")).await;
    let mut second = FakeDrone::start(&cluster, "second", Answer::Accept).await;

    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned on the second drone");
    assert_eq!(record.drone, drone_id("second"));
    assert_eq!(record.url, format!("http://{}.plane.test:9090/", record.id));
    let asked_first = first.next().await;
    let asked_second = second.next().await;
    assert_eq!(asked_first, asked_second, "both were asked for one backend");
    assert!(
        matches!(&asked_second, DroneCommand::Spawn { backend, .. } if *backend == record.id),
        "{asked_second:?}"
    );
    first.assert_no_more();
    second.assert_no_more();
}

#[tokio::test]
async fn a_drone_nobody_answers_for_is_skipped_for_the_next() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("silent", 0, 1).await;
    cluster.heartbeat("second", 5, 1).await;
    let mut second = FakeDrone::start(&cluster, "second", Answer::Accept).await;

    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned on the second drone");
    assert_eq!(record.drone, drone_id("second"));
    assert!(matches!(second.next().await, DroneCommand::Spawn { .. }));
}

#[tokio::test]
async fn when_every_drone_refuses_no_record_is_left() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("refuser", 0, 1).await;
    cluster.heartbeat("silent", 5, 1).await;
    let mut refuser = FakeDrone::start(&cluster, "refuser", Answer::Reject("disk full")).await;

    let result = within("spawn", cluster.controller.spawn(spec())).await;
    let Err(ControlError::NoDroneAccepted(why)) = result else {
        panic!("expected NoDroneAccepted, got {result:?}");
    };
    assert!(
        why.contains("refuser") && why.contains("disk full"),
        "{why}"
    );
    assert!(why.contains("silent"), "{why}");

    let DroneCommand::Spawn { backend, .. } = refuser.next().await else {
        panic!("expected a spawn command");
    };
    assert!(matches!(
        cluster.controller.backend(&backend).await,
        Err(ControlError::NotFound(_))
    ));
    let backends = cluster.controller.backends();
    assert!(backends.is_empty(), "{backends:?}");
}

/// A cluster with one accepting drone `d1` and one backend scheduled on it.
async fn one_backend(grace: Duration) -> (Cluster, FakeDrone, BackendId) {
    let cluster = Cluster::start(grace).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert!(matches!(drone.next().await, DroneCommand::Spawn { .. }));
    (cluster, drone, record.record.id)
}

#[tokio::test]
async fn state_reports_apply_in_order_and_only_once() {
    let (cluster, _drone, id) = one_backend(LONG_GRACE).await;
    let steps = [
        (1, BackendState::Loading),
        (2, BackendState::Starting),
        (3, BackendState::Ready),
    ];
    for (seq, state) in steps {
        let ack = cluster.report(&report(&id, "d1", seq, state, None)).await;
        assert_eq!(ack, Ack::Accepted, "report {seq}");
        let record = cluster.controller.backend(&id).await.expect("exists");
        assert_eq!((record.state, record.last_seq), (state, seq));
    }

    // A re-sent report and a late one are acknowledged, so the drone stops re-sending, but
    // change nothing.
    for (seq, state) in [(3, BackendState::Ready), (2, BackendState::Terminating)] {
        let ack = cluster.report(&report(&id, "d1", seq, state, None)).await;
        assert_eq!(ack, Ack::Accepted, "duplicate {seq}");
        let record = cluster.controller.backend(&id).await.expect("exists");
        assert_eq!((record.state, record.last_seq), (BackendState::Ready, 3));
    }

    let mut end = report(&id, "d1", 4, BackendState::Terminated, None);
    end.reason = Some(TerminationReason::Failed);
    end.exit_code = Some(3);
    end.message = Some("exit code 3".into());
    assert_eq!(cluster.report(&end).await, Ack::Accepted);
    let record = cluster.controller.backend(&id).await.expect("exists");
    assert_eq!(record.state, BackendState::Terminated);
    assert_eq!(record.reason, Some(TerminationReason::Failed));
    assert_eq!(record.exit_code, Some(3));
    assert_eq!(record.message.as_deref(), Some("exit code 3"));
}

#[tokio::test]
async fn reports_from_another_drone_or_for_unknown_backends_are_rejected() {
    let (cluster, _drone, id) = one_backend(LONG_GRACE).await;

    let ack = cluster
        .report(&report(&id, "intruder", 1, BackendState::Ready, None))
        .await;
    let Ack::Rejected { error } = ack else {
        panic!("a report from another drone was accepted");
    };
    assert!(error.contains("intruder"), "{error}");
    let record = cluster.controller.backend(&id).await.expect("exists");
    assert_eq!(
        (record.state, record.last_seq),
        (BackendState::Scheduled, 0)
    );

    let unknown = BackendId::new("no-such-backend").expect("valid id");
    let ack = cluster
        .report(&report(&unknown, "d1", 1, BackendState::Ready, None))
        .await;
    let Ack::Rejected { error } = ack else {
        panic!("a report for an unknown backend was accepted");
    };
    assert!(error.contains("no-such-backend"), "{error}");
    assert!(matches!(
        cluster.controller.backend(&unknown).await,
        Err(ControlError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_malformed_report_is_rejected_and_the_controller_carries_on() {
    let (cluster, _drone, id) = one_backend(LONG_GRACE).await;
    let answer = within(
        "malformed report",
        cluster.bus.request(
            &cluster.subjects.state_reports(&drone_id("d1")),
            bytes::Bytes::from_static(b"{\"not\": \"a report\"}"),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("answered");
    let ack: Ack = serde_json::from_slice(&answer).expect("an Ack");
    assert!(matches!(ack, Ack::Rejected { .. }), "{ack:?}");

    within(
        "malformed heartbeat",
        cluster.bus.publish(
            &cluster.subjects.heartbeat(&drone_id("d1")),
            bytes::Bytes::from_static(b"nope"),
        ),
    )
    .await
    .expect("published");
    assert_eq!(
        cluster
            .report(&report(&id, "d1", 1, BackendState::Loading, None))
            .await,
        Ack::Accepted
    );
    cluster.heartbeat("d1", 3, 1).await;
}

#[tokio::test]
async fn a_drone_that_stops_beating_is_lost_and_so_are_its_backends() {
    let grace = Duration::from_millis(500);
    let (cluster, _drone, id) = one_backend(grace).await;
    let ended = cluster.wait_for_backend(&id, |b| b.is_terminated()).await;
    assert_eq!(ended.reason, Some(TerminationReason::Lost));
    assert!(ended.message.is_some());

    let drone = cluster.wait_for_drone("d1", |d| d.lost).await;
    assert!(drone.lost);
    let drones = cluster.controller.drones();
    assert_eq!(drones.len(), 1);
    assert!(!drones[0].status.live, "a lost drone is shown live");
    assert!(
        matches!(
            within("spawn", cluster.controller.spawn(spec())).await,
            Err(ControlError::NoDrone(NoDrone::NoneLive { known: 1 }))
        ),
        "a lost drone was given a backend"
    );
    // Its late reports cannot bring the backend back.
    let ack = cluster
        .report(&report(&id, "d1", 1, BackendState::Ready, None))
        .await;
    assert!(matches!(ack, Ack::Rejected { .. }), "{ack:?}");
}

#[tokio::test]
async fn a_drone_that_keeps_beating_is_not_lost() {
    // Beats come every grace/5; a grace this long still holds on a heavily loaded machine.
    let grace = Duration::from_millis(1500);
    let (cluster, _drone, id) = one_backend(grace).await;
    // Beat for several graces; each beat lands well within the grace of the previous one.
    let until = std::time::Instant::now() + grace * 3;
    while std::time::Instant::now() < until {
        cluster.heartbeat("d1", 1, 1).await;
        tokio::time::sleep(grace / 5).await;
        let record = cluster.controller.backend(&id).await.expect("exists");
        assert!(!record.is_terminated(), "{record:?}");
    }
    let drone = cluster.controller.view().drone(&drone_id("d1"));
    assert!(!drone.expect("recorded").record.lost);
}

/// Waits until the wall clock is past `millis`, so that what follows happens strictly later.
async fn clock_past(millis: UnixMillis) -> UnixMillis {
    eventually("the clock to move on", || async {
        let now = now_millis();
        (now > millis).then_some(now)
    })
    .await
}

#[tokio::test]
async fn a_restarted_drone_loses_its_earlier_backends() {
    let (cluster, _drone, before) = one_backend(LONG_GRACE).await;
    let loading = report(&before, "d1", 1, BackendState::Loading, None);
    assert_eq!(cluster.report(&loading).await, Ack::Accepted);
    let created = cluster.controller.backend(&before).await.expect("exists");
    let restarted_at = clock_past(created.created_at).await;
    cluster.heartbeat("d1", 0, restarted_at).await;

    let ended = cluster
        .wait_for_backend(&before, |b| b.is_terminated())
        .await;
    assert_eq!(ended.reason, Some(TerminationReason::Lost));
    let message = ended.message.as_deref().unwrap_or_default();
    assert!(message.contains("restarted"), "{ended:?}");
    // The drone itself is live (it is beating), not lost.
    let drone = cluster.controller.view().drone(&drone_id("d1"));
    assert!(!drone.expect("recorded").record.lost);
    // Its late report about the old backend is refused, so it stops whatever is left of it.
    let ack = cluster
        .report(&report(&before, "d1", 2, BackendState::Ready, None))
        .await;
    assert!(matches!(ack, Ack::Rejected { .. }), "{ack:?}");
}

#[tokio::test]
async fn a_backend_taken_by_the_restarted_drone_before_its_first_heartbeat_survives() {
    let (cluster, _drone, before) = one_backend(LONG_GRACE).await;
    let loading = report(&before, "d1", 1, BackendState::Loading, None);
    assert_eq!(cluster.report(&loading).await, Ack::Accepted);
    let created = cluster.controller.backend(&before).await.expect("exists");
    // The drone restarts; the controller still holds its old record (live), so `after` goes
    // to the new process, which accepts it; its first heartbeat arrives a moment later.
    let restarted_at = clock_past(created.created_at).await;
    let after = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert!(after.created_at >= restarted_at);
    // The new process reports it before its first heartbeat is handled.
    let mut loading = report(&after.id, "d1", 1, BackendState::Loading, None);
    loading.drone_started_at = restarted_at;
    assert_eq!(cluster.report(&loading).await, Ack::Accepted);
    clock_past(after.created_at).await;
    cluster
        .heartbeat_listing("d1", 1, restarted_at, &[&after.id])
        .await;

    cluster
        .wait_for_backend(&before, |b| b.is_terminated())
        .await;
    let kept = cluster.controller.backend(&after.id).await.expect("exists");
    assert_eq!(
        kept.state,
        BackendState::Loading,
        "restarted at {restarted_at}: {kept:?}"
    );
}

#[tokio::test]
async fn terminate_asks_the_backends_own_drone() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("home", 0, 1).await;
    cluster.heartbeat("other", 5, 1).await;
    let mut home = FakeDrone::start(&cluster, "home", Answer::Accept).await;
    let mut other = FakeDrone::start(&cluster, "other", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert_eq!(record.drone, drone_id("home"));
    assert!(matches!(home.next().await, DroneCommand::Spawn { .. }));

    let answered = within("terminate", cluster.controller.terminate(&record.id))
        .await
        .expect("terminate accepted");
    // Until the drone reports, the record is as it was.
    assert_eq!(answered.state, BackendState::Scheduled);
    assert_eq!(
        home.next().await,
        DroneCommand::Terminate {
            backend: record.id.clone()
        }
    );
    other.assert_no_more();

    let end = report(
        &record.id,
        "home",
        1,
        BackendState::Terminated,
        Some(TerminationReason::Terminated),
    );
    assert_eq!(cluster.report(&end).await, Ack::Accepted);
    // Terminating a terminated backend returns it without bothering the drone.
    let again = within("terminate again", cluster.controller.terminate(&record.id))
        .await
        .expect("idempotent");
    assert_eq!(again.state, BackendState::Terminated);
    assert_eq!(again.reason, Some(TerminationReason::Terminated));
    home.assert_no_more();
    other.assert_no_more();
}

#[tokio::test]
async fn terminate_reports_a_refusing_drone_and_an_unknown_backend() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let accepting = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    drop(accepting);
    let _refusing = FakeDrone::start(&cluster, "d1", Answer::Reject("busy")).await;
    let result = within("terminate", cluster.controller.terminate(&record.id)).await;
    assert!(
        matches!(&result, Err(ControlError::DroneRefused { drone, error }) if drone.as_str() == "d1" && error == "busy"),
        "{result:?}"
    );

    let unknown = BackendId::new("no-such-backend").expect("valid id");
    assert!(matches!(
        within("terminate unknown", cluster.controller.terminate(&unknown)).await,
        Err(ControlError::NotFound(_))
    ));
}

#[tokio::test]
async fn terminating_on_a_lost_drone_ends_the_backend_here() {
    let (cluster, drone, id) = one_backend(Duration::from_millis(500)).await;
    drop(drone);
    cluster.wait_for_drone("d1", |d| d.lost).await;
    let record = within("terminate", cluster.controller.terminate(&id))
        .await
        .expect("a lost drone's backend can be terminated");
    assert_eq!(record.state, BackendState::Terminated);
    assert_eq!(record.reason, Some(TerminationReason::Lost));
}

/// Terminated backends and lost drones are forgotten after the retention period.
#[tokio::test]
async fn terminated_backends_and_lost_drones_are_forgotten() {
    let grace = Duration::from_millis(300);
    let cluster = Cluster::start_with_retention(grace, Duration::from_millis(400)).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert!(matches!(drone.next().await, DroneCommand::Spawn { .. }));
    let end = report(
        &record.id,
        "d1",
        1,
        BackendState::Terminated,
        Some(TerminationReason::Exited),
    );
    assert_eq!(cluster.report(&end).await, Ack::Accepted);
    // Still there right after it ended...
    assert!(cluster.controller.backend(&record.id).await.is_ok());
    // ...and gone once retention has passed; the silent drone goes the same way.
    eventually("the terminated backend to be forgotten", || async {
        matches!(
            cluster.controller.backend(&record.id).await,
            Err(ControlError::NotFound(_))
        )
        .then_some(())
    })
    .await;
    eventually("the lost drone to be forgotten", || async {
        let drones = cluster.controller.drones();
        drones.is_empty().then_some(())
    })
    .await;
}

/// A backend its drone accepted but never reported on (the drone vanished right after, or a
/// controller died while placing it) does not stay `scheduled` forever.
#[tokio::test]
async fn a_backend_never_reported_is_ended() {
    let grace = Duration::from_millis(200);
    let cluster = Cluster::start(grace).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    // Keep the drone live, so that only the missing report can end the backend.
    let beating = {
        let cluster_bus = cluster.bus.clone();
        let subject = cluster.subjects.heartbeat(&drone_id("d1"));
        tokio::spawn(async move {
            loop {
                let heartbeat = common::heartbeat_message("d1", 0, 1);
                let _ = cluster_bus.publish_json(&subject, &heartbeat).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    cluster.heartbeat("d1", 0, 1).await;
    let record = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert!(matches!(drone.next().await, DroneCommand::Spawn { .. }));
    let ended = cluster
        .wait_for_backend(&record.id, |b| b.is_terminated())
        .await;
    beating.abort();
    assert_eq!(ended.reason, Some(TerminationReason::Lost), "{ended:?}");
    let message = ended.message.unwrap_or_default();
    assert!(message.contains("never reported"), "{message}");
}

/// A drone's credentials let it speak only under its own subjects: what arrives under one
/// drone's subject claiming to be another is not believed.
#[tokio::test]
async fn messages_under_another_drones_subject_are_refused() {
    let (cluster, _drone, id) = one_backend(LONG_GRACE).await;
    let report = report(&id, "d1", 1, BackendState::Loading, None);
    let answer = within(
        "report",
        cluster.bus.request_json::<_, Ack>(
            &cluster.subjects.state_reports(&drone_id("intruder")),
            &report,
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("answered");
    assert!(matches!(answer, Ack::Rejected { .. }), "{answer:?}");
    assert_eq!(
        cluster
            .controller
            .backend(&id)
            .await
            .expect("exists")
            .last_seq,
        0,
        "the report was not applied"
    );
    // A heartbeat for d2 sent under d1's subject does not make d2 known.
    let heartbeat = common::heartbeat_message("d2", 0, 1);
    within(
        "publish",
        cluster
            .bus
            .publish_json(&cluster.subjects.heartbeat(&drone_id("d1")), &heartbeat),
    )
    .await
    .expect("published");
    // The same heartbeat under its own subject is heard: once it is, the first was not.
    cluster.heartbeat("d3", 0, 1).await;
    assert!(cluster.controller.view().drone(&drone_id("d2")).is_none());
}
