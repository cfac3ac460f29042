use super::*;
use std::time::Duration;

fn report(backend: &str, seq: u64, state: BackendState) -> StateReport {
    StateReport {
        backend: BackendId::new(backend).expect("valid"),
        drone: DroneId::new("d1").expect("valid"),
        seq,
        state,
        reason: None,
        exit_code: None,
        oom_killed: false,
        pull: None,
        message: None,
        drone_started_at: 1,
        at: 1,
    }
}

fn listed(queue: &Queue) -> Vec<(String, u64)> {
    queue
        .reports
        .iter()
        .map(|r| (r.backend.to_string(), r.seq))
        .collect()
}

#[test]
fn a_full_queue_drops_the_oldest_superseded_report_first() {
    let mut queue = Queue::default();
    queue.push(report("front", 1, BackendState::Loading));
    queue.push(report("a", 1, BackendState::Loading));
    queue.push(report("b", 1, BackendState::Loading));
    queue.push(report("a", 2, BackendState::Ready));
    for i in 0..MAX_QUEUED_REPORTS - 4 {
        queue.push(report(&format!("x{i}"), 1, BackendState::Terminated));
    }
    assert_eq!(queue.reports.len(), MAX_QUEUED_REPORTS);
    // Full: a's loading (superseded by its ready) goes, not b's only report.
    queue.push(report("b", 2, BackendState::Ready));
    assert_eq!(queue.reports.len(), MAX_QUEUED_REPORTS);
    assert_eq!(
        &listed(&queue)[..3],
        [("front".into(), 1), ("b".into(), 1), ("a".into(), 2)]
    );
    // Next, b's loading (now superseded) goes.
    queue.push(report("c", 1, BackendState::Terminated));
    assert_eq!(&listed(&queue)[..2], [("front".into(), 1), ("a".into(), 2)]);
    // Nothing superseded: the oldest report that does not end its backend goes; the front,
    // which may be in flight, never does.
    queue.push(report("d", 1, BackendState::Terminated));
    assert_eq!(listed(&queue)[0], ("front".into(), 1));
    assert!(!listed(&queue).contains(&("a".into(), 2)));
    let last = listed(&queue).last().cloned();
    assert_eq!(last, Some(("d".into(), 1)));
    assert_eq!(
        queue.per_backend.values().sum::<usize>(),
        queue.reports.len()
    );
}

/// Reports queued while no controller answers are delivered once one does, in order, and the
/// backends they concern are listed as pending until then.
#[tokio::test]
async fn reports_wait_for_a_controller_and_arrive_in_order() {
    let bus = Bus::in_memory();
    let (refused_tx, _refused) = mpsc::unbounded_channel();
    let (reports, task) = start(bus.clone(), "reports".into(), refused_tx);
    let mut b1 = BackendReports::new(
        reports.clone(),
        BackendId::new("b1").expect("valid"),
        DroneId::new("d1").expect("valid"),
        1,
    );
    let mut b2 = BackendReports::new(
        reports.clone(),
        BackendId::new("b2").expect("valid"),
        DroneId::new("d1").expect("valid"),
        1,
    );
    b1.state(BackendState::Loading);
    b2.state(BackendState::Loading);
    b1.state(BackendState::Ready);
    b1.terminated(TerminationReason::Swept, None, false, None);
    let mut pending = reports.pending();
    pending.sort();
    assert_eq!(
        pending,
        [
            BackendId::new("b1").expect("valid"),
            BackendId::new("b2").expect("valid")
        ]
    );
    // Nobody listens yet: the reports wait (re-sent with backoff).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reports.len(), 4);
    let mut controller = bus.subscribe("reports").await.expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(10), controller.next())
            .await
            .expect("a report within 10 s")
            .expect("bus open");
        let report: StateReport = msg.decode().expect("a report");
        seen.push((report.backend.to_string(), report.seq, report.state));
        bus.respond_json(&msg, &Ack::Accepted).await.expect("ack");
    }
    assert_eq!(
        seen,
        [
            ("b1".to_string(), 1, BackendState::Loading),
            ("b2".to_string(), 1, BackendState::Loading),
            ("b1".to_string(), 2, BackendState::Ready),
            ("b1".to_string(), 3, BackendState::Terminated),
        ]
    );
    reports.close();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once the queue is closed and empty")
        .expect("no panic");
    assert!(reports.pending().is_empty());
}
