//! A restarted drone's recovery over the in-memory bus: what it found is adopted, left to
//! another live drone, or (answered by omission) removed, and what nothing survived of is ended.

mod common;

use common::{
    drone_id, eventually, report, spec, within, Answer, Cluster, FakeDrone, FIRST_PROCESS,
    LONG_GRACE,
};
use plane_bus::BusError;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{
    now_millis, Ack, BackendState, DroneCommand, Recovery, RecoveryAnswer, Survivor,
    SurvivorStatus, TerminationReason,
};
use std::time::Duration;

/// Schedules a backend on `d1` (which accepts) and returns its id.
async fn scheduled(cluster: &Cluster, drone: &mut FakeDrone) -> BackendId {
    let answer = within("spawn", cluster.controller.spawn(spec()))
        .await
        .expect("spawned");
    assert!(matches!(drone.next().await, DroneCommand::Spawn { .. }));
    answer.record.id
}

/// Sends the first process's reports of `id`, one per state, and waits until applied.
async fn reported(cluster: &Cluster, id: &BackendId, states: &[BackendState]) {
    for (i, state) in states.iter().enumerate() {
        let reason = (*state == BackendState::Terminated).then_some(TerminationReason::Exited);
        let ack = cluster
            .report(&report(id, "d1", i as u64 + 1, *state, reason))
            .await;
        assert_eq!(ack, Ack::Accepted);
    }
}

fn found(backend: &BackendId, drone: &str, status: SurvivorStatus) -> Survivor {
    Survivor {
        backend: backend.clone(),
        drone: drone_id(drone),
        status,
    }
}

async fn ask(
    cluster: &Cluster,
    under: &str,
    recovery: &Recovery,
) -> Result<RecoveryAnswer, BusError> {
    cluster
        .bus
        .request_json::<_, RecoveryAnswer>(
            &cluster.subjects.recovery(&drone_id(under)),
            recovery,
            Duration::from_secs(2),
        )
        .await
}

#[tokio::test]
async fn a_restarted_drone_adopts_what_is_still_live_and_nothing_else() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, FIRST_PROCESS).await;
    cluster.heartbeat("d2", 0, FIRST_PROCESS).await;
    let mut d1 = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let kept = scheduled(&cluster, &mut d1).await;
    let vanished = scheduled(&cluster, &mut d1).await;
    let ended = scheduled(&cluster, &mut d1).await;
    let unreported = scheduled(&cluster, &mut d1).await;
    use BackendState::*;
    reported(&cluster, &kept, &[Loading, Starting, Ready]).await;
    reported(&cluster, &vanished, &[Loading]).await;
    reported(&cluster, &ended, &[Loading, Terminated]).await;
    let others = BackendId::generate();
    let unknown = BackendId::generate();
    let lost_drones = BackendId::generate();

    let restarted_at = now_millis() + 1;
    let recovery = Recovery {
        drone: drone_id("d1"),
        started_at: restarted_at,
        found: vec![
            found(&kept, "d1", SurvivorStatus::Running),
            found(
                &ended,
                "d1",
                SurvivorStatus::Exited {
                    exit_code: Some(0),
                    oom_killed: false,
                },
            ),
            found(&unknown, "d1", SurvivorStatus::Running),
            // Another drone's, live (d2 beats) or never heard of (gone long ago).
            found(&others, "d2", SurvivorStatus::Running),
            found(&lost_drones, "d9", SurvivorStatus::Created),
        ],
    };
    let answer = within("recovery", ask(&cluster, "d1", &recovery))
        .await
        .expect("answered");

    assert_eq!(answer.leave, vec![others]);
    let [adopted] = answer.adopt.as_slice() else {
        panic!("one adoption expected: {answer:?}");
    };
    assert_eq!(adopted.backend, kept);
    assert_eq!(adopted.state, Ready);
    assert_eq!(adopted.last_seq, 3);
    assert_eq!(adopted.spec, spec());
    // Nothing survived of `vanished`: ended here. The one never reported is the never-reported
    // collection's business, not the restart's.
    let lost = cluster
        .wait_for_backend(&vanished, |b| b.is_terminated())
        .await;
    assert_eq!(lost.reason, Some(TerminationReason::Lost));
    assert!(lost
        .message
        .as_deref()
        .unwrap_or_default()
        .contains("restarted"));
    let record = cluster.controller.backend(&unreported).await.expect("kept");
    assert_eq!(record.state, Scheduled);

    // The new process's first heartbeat lists what it took over: it is not ended as the
    // earlier process's, and its reports go on from the last applied one.
    cluster
        .heartbeat_listing("d1", 1, restarted_at, &[&kept])
        .await;
    let mut resumed = report(&kept, "d1", adopted.last_seq + 1, Ready, None);
    resumed.drone_started_at = restarted_at;
    assert_eq!(cluster.report(&resumed).await, Ack::Accepted);
    let record = cluster
        .wait_for_backend(&kept, |b| b.drone_started_at == Some(restarted_at))
        .await;
    assert_eq!(record.state, Ready, "{record:?}");
    assert_eq!(record.last_seq, 4);
    // Heartbeats go on listing it; it stays.
    cluster
        .heartbeat_listing("d1", 1, restarted_at, &[&kept])
        .await;
    let record = cluster.controller.backend(&kept).await.expect("kept");
    assert!(!record.is_terminated(), "{record:?}");
}

#[tokio::test]
async fn a_recovery_under_another_drones_subject_or_garbled_gets_no_answer() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, FIRST_PROCESS).await;
    let mut d1 = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let victim = scheduled(&cluster, &mut d1).await;
    reported(&cluster, &victim, &[BackendState::Loading]).await;
    // "d1" claims a restart under d2's subject: not believed, so nothing of d1's is ended.
    let recovery = Recovery {
        drone: drone_id("d1"),
        started_at: now_millis() + 1,
        found: vec![found(&BackendId::generate(), "d1", SurvivorStatus::Running)],
    };
    let answer = ask(&cluster, "d2", &recovery).await;
    assert!(
        matches!(answer, Err(BusError::Timeout { .. })),
        "{answer:?}"
    );
    let garbled = cluster
        .bus
        .request(
            &cluster.subjects.recovery(&drone_id("d1")),
            bytes::Bytes::from_static(b"{\"drone\": 7"),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(garbled, Err(BusError::Timeout { .. })),
        "{garbled:?}"
    );
    // The controller carries on: the same request under d1's own subject is answered.
    let answer = within("recovery", ask(&cluster, "d1", &recovery))
        .await
        .expect("answered");
    assert!(answer.adopt.is_empty() && answer.leave.is_empty());
    let lost = eventually("the victim to end", || async {
        let record = cluster.controller.backend(&victim).await.expect("exists");
        record.is_terminated().then_some(record)
    })
    .await;
    assert_eq!(lost.reason, Some(TerminationReason::Lost));
}
