use super::*;
use plane_protocol::messages::{BackendSpec, BackendState, Executable, TerminationReason};

fn backend(id: &str, drone: &str, state: BackendState) -> BackendRecord {
    BackendRecord {
        id: BackendId::new(id).expect("valid"),
        url: format!("http://{id}.c/"),
        state,
        reason: None,
        exit_code: None,
        oom_killed: false,
        pull: None,
        message: None,
        drone: DroneId::new(drone).expect("valid"),
        key: None,
        max_idle_secs: 5,
        spec: BackendSpec {
            executable: Executable::process(vec!["x".into()]),
            max_idle_secs: 5,
            env: Default::default(),
            require_token: false,
            resources: Default::default(),
            ready_path: None,
        },
        created_at: 1,
        updated_at: 1,
        last_seq: 0,
        drone_started_at: None,
        reported_at: None,
    }
}

fn entry(record: &BackendRecord, revision: u64) -> KvEntry {
    KvEntry {
        key: record.id.to_string(),
        value: serde_json::to_vec(record).expect("encodes").into(),
        revision,
    }
}

fn id(s: &str) -> BackendId {
    BackendId::new(s).expect("valid")
}

fn ids_of(view: &ClusterView, drone: &str) -> Vec<String> {
    let mut ids: Vec<String> = view
        .live_backends_of(&DroneId::new(drone).expect("valid"))
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn older_revisions_never_replace_newer_ones() {
    let view = ClusterView::default();
    view.put_backend(backend("b1", "d1", BackendState::Ready), 5);
    view.put_backend(backend("b1", "d1", BackendState::Loading), 3);
    view.apply_change(
        Bucket::Backends,
        KvChange::Put(entry(&backend("b1", "d1", BackendState::Starting), 4)),
    );
    let held = view.backend(&id("b1")).expect("held");
    assert_eq!((held.record.state, held.revision), (BackendState::Ready, 5));
    // A delete older than the held write is stale too.
    view.remove_backend(&id("b1"), 4);
    assert!(view.backend(&id("b1")).is_some());
    view.remove_backend(&id("b1"), 6);
    assert!(view.backend(&id("b1")).is_none());
}

#[test]
fn a_deleted_backend_does_not_come_back_from_a_late_write() {
    let view = ClusterView::default();
    view.put_backend(backend("b1", "d1", BackendState::Ready), 2);
    view.remove_backend(&id("b1"), 7);
    // A writer applying its own (earlier) result after the watch delivered the delete.
    view.put_backend(backend("b1", "d1", BackendState::Terminated), 6);
    assert!(view.backend(&id("b1")).is_none());
    // Remembered across one prune, forgotten after the next.
    view.prune_deleted();
    view.put_backend(backend("b1", "d1", BackendState::Terminated), 6);
    assert!(view.backend(&id("b1")).is_none());
    view.prune_deleted();
    view.put_backend(backend("b1", "d1", BackendState::Ready), 8);
    assert!(view.backend(&id("b1")).is_some(), "a newer write is live");
}

#[test]
fn live_backends_are_indexed_by_drone() {
    let view = ClusterView::default();
    view.put_backend(backend("b1", "d1", BackendState::Ready), 1);
    view.put_backend(backend("b2", "d1", BackendState::Scheduled), 2);
    view.put_backend(backend("b3", "d2", BackendState::Ready), 3);
    assert_eq!(ids_of(&view, "d1"), ["b1", "b2"]);
    // Moved to another drone (a spawn falling back), then terminated.
    view.put_backend(backend("b2", "d2", BackendState::Scheduled), 4);
    assert_eq!(ids_of(&view, "d1"), ["b1"]);
    assert_eq!(ids_of(&view, "d2"), ["b2", "b3"]);
    let mut ended = backend("b3", "d2", BackendState::Terminated);
    ended.reason = Some(TerminationReason::Swept);
    view.put_backend(ended, 5);
    assert_eq!(ids_of(&view, "d2"), ["b2"]);
    view.remove_backend(&id("b1"), 6);
    assert!(ids_of(&view, "d1").is_empty());
    assert_eq!(view.backends().len(), 2);
}

#[test]
fn subscribers_see_every_newer_version_and_the_end() {
    let view = ClusterView::default();
    assert!(view.subscribe(&id("b1")).is_none(), "no such backend");
    view.put_backend(backend("b1", "d1", BackendState::Scheduled), 1);
    let (current, mut changes) = view.subscribe(&id("b1")).expect("known");
    assert_eq!(current.state, BackendState::Scheduled);
    view.put_backend(backend("b1", "d1", BackendState::Loading), 2);
    view.put_backend(backend("b1", "d1", BackendState::Loading), 2);
    view.put_backend(backend("b1", "d1", BackendState::Ready), 3);
    assert_eq!(
        changes.try_recv().expect("loading").state,
        BackendState::Loading
    );
    assert_eq!(
        changes.try_recv().expect("ready").state,
        BackendState::Ready
    );
    assert!(
        changes.try_recv().is_err(),
        "a repeated revision is not news"
    );
    view.remove_backend(&id("b1"), 4);
    assert!(matches!(
        changes.try_recv(),
        Err(broadcast::error::TryRecvError::Closed)
    ));
}

#[test]
fn replacing_the_view_tells_subscribers_what_changed_and_drops_what_is_gone() {
    let view = ClusterView::default();
    view.put_backend(backend("b1", "d1", BackendState::Ready), 1);
    view.put_backend(backend("b2", "d1", BackendState::Ready), 2);
    view.put_backend(backend("b3", "d1", BackendState::Ready), 3);
    let (_, mut same) = view.subscribe(&id("b1")).expect("known");
    let (_, mut changed) = view.subscribe(&id("b2")).expect("known");
    let (_, mut gone) = view.subscribe(&id("b3")).expect("known");
    let mut ended = backend("b2", "d1", BackendState::Terminated);
    ended.reason = Some(TerminationReason::Exited);
    view.replace(
        vec![
            entry(&backend("b1", "d1", BackendState::Ready), 1),
            entry(&ended, 9),
        ],
        Vec::new(),
        Vec::new(),
    );
    assert!(same.try_recv().is_err());
    assert_eq!(
        changed.try_recv().expect("the change").state,
        BackendState::Terminated
    );
    assert!(matches!(
        gone.try_recv(),
        Err(broadcast::error::TryRecvError::Closed)
    ));
    assert_eq!(ids_of(&view, "d1"), ["b1"]);
}

#[test]
fn undecodable_entries_are_left_out() {
    let view = ClusterView::default();
    view.apply_entry(
        Bucket::Backends,
        KvEntry {
            key: "b1".into(),
            value: bytes::Bytes::from_static(b"not json"),
            revision: 1,
        },
    );
    assert!(view.backends().is_empty());
}
