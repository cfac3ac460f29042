//! Connecting by key over the in-memory bus, with fake drones: what the end-to-end tests cannot
//! stage: a placement that fails, a claim whose controller died, and the key freed by its
//! backend's end.

mod common;

use common::{report, spec, within, Answer, Cluster, FakeDrone, LONG_GRACE};
use plane_bus::Kv;
use plane_controlplane::controller::ControlError;
use plane_protocol::ids::BackendId;
use plane_protocol::keys::{BackendKey, KeyRecord, ValidConnect};
use plane_protocol::messages::{now_millis, BackendState, DroneCommand, TerminationReason};
use plane_protocol::subjects::Subjects;

fn connect(key: &str) -> ValidConnect {
    ValidConnect {
        key: BackendKey::new(key).expect("valid key"),
        spawn: spec().into(),
        wake: false,
    }
}

async fn keys(cluster: &Cluster) -> Kv {
    cluster
        .bus
        .kv(&Subjects::new(common::CLUSTER).keys_bucket())
        .await
        .expect("keys bucket")
}

async fn key_record(cluster: &Cluster, key: &str) -> Option<KeyRecord> {
    let label = BackendKey::new(key).expect("valid").label(common::CLUSTER);
    keys(cluster)
        .await
        .get_json::<KeyRecord>(&label)
        .await
        .expect("readable")
        .map(|(record, _)| record)
}

#[tokio::test]
async fn a_failed_placement_frees_the_key() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let failed = within("connect", cluster.controller.connect(connect("doc"))).await;
    assert!(
        matches!(failed, Err(ControlError::NoDrone(_))),
        "{failed:?}"
    );
    let record = key_record(&cluster, "doc").await.expect("the key's record");
    assert_eq!(record.backend, None, "{record:?}");

    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let answer = within("connect", cluster.controller.connect(connect("doc")))
        .await
        .expect("placed once a drone is there");
    assert!(answer.created);
    match drone.next().await {
        DroneCommand::Spawn { backend, spec, .. } => {
            assert_eq!(backend, answer.record.id);
            assert_eq!(spec.env.get("PLANE_KEY").map(String::as_str), Some("doc"));
        }
        other => panic!("{other:?}"),
    }
    let record = key_record(&cluster, "doc").await.expect("the key's record");
    assert_eq!(record.backend.as_ref(), Some(&answer.record.id));
    assert!(record.placed);
}

#[tokio::test]
async fn a_claim_whose_controller_died_is_taken_over() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let _drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    // A controller claimed the key a minute ago for a backend it never created, then died.
    let key = BackendKey::new("doc").expect("valid");
    let stale = KeyRecord {
        key: key.clone(),
        backend: Some(BackendId::generate()),
        placed: false,
        spec: spec(),
        credentials: None,
        token: None,
        wake: false,
        claimed_at: now_millis() - 60_000,
        touched_at: now_millis() - 60_000,
    };
    keys(&cluster)
        .await
        .create_json(&key.label(common::CLUSTER), &stale)
        .await
        .expect("written");
    let answer = within("connect", cluster.controller.connect(connect("doc")))
        .await
        .expect("taken over");
    assert!(answer.created);
    assert_ne!(Some(&answer.record.id), stale.backend.as_ref());
}

#[tokio::test]
async fn the_end_of_its_backend_frees_the_key() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let _drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let first = within("connect", cluster.controller.connect(connect("doc")))
        .await
        .expect("connected");
    let again = within("connect", cluster.controller.connect(connect("doc")))
        .await
        .expect("connected");
    assert!(first.created && !again.created);
    assert_eq!(first.record.id, again.record.id);

    let id = &first.record.id;
    for (seq, state) in [BackendState::Loading, BackendState::Terminated]
        .into_iter()
        .enumerate()
    {
        let reason = (state == BackendState::Terminated).then_some(TerminationReason::Swept);
        cluster
            .report(&report(id, "d1", seq as u64 + 1, state, reason))
            .await;
    }
    let record = key_record(&cluster, "doc").await.expect("the key's record");
    assert_eq!(record.backend, None, "freed: {record:?}");

    let next = within("connect", cluster.controller.connect(connect("doc")))
        .await
        .expect("connected");
    assert!(next.created);
    assert_ne!(next.record.id, first.record.id);
}

#[tokio::test]
async fn a_connect_gives_its_drone_the_registry_credentials_and_keeps_them_only_to_wake() {
    use plane_protocol::registry::RegistryCredentials;
    use plane_protocol::spawn_request::ValidSpawn;
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let credentials = RegistryCredentials {
        username: "puller".into(),
        password: "secret".into(),
    };
    for (key, wake) in [("plain", false), ("waking", true)] {
        let connect = ValidConnect {
            key: BackendKey::new(key).expect("valid key"),
            spawn: ValidSpawn {
                spec: spec(),
                credentials: Some(credentials.clone()),
            },
            wake,
        };
        within("connect", cluster.controller.connect(connect))
            .await
            .expect("connected");
        match drone.next().await {
            DroneCommand::Spawn {
                credentials: given, ..
            } => assert_eq!(given.as_ref(), Some(&credentials), "{key}"),
            other => panic!("{other:?}"),
        }
        let record = key_record(&cluster, key).await.expect("the key's record");
        assert_eq!(record.credentials.is_some(), wake, "{key}: {record:?}");
    }
}
