//! Delivers state reports to the controller, in order, each re-sent until acknowledged. One
//! queue for the whole drone: when the controller is unreachable it is so for every backend, and
//! a single queue keeps each backend's reports in sequence without per-backend tasks.
//!
//! Backends never wait for the queue: a report is queued and the backend goes on. The queue is
//! bounded ([`MAX_QUEUED_REPORTS`]); when a long outage fills it, the oldest report superseded by
//! a later one of the same backend is dropped first (the controller applies any report newer
//! than the last it saw, so the latest state of every backend still arrives, in order). The
//! heartbeat lists every backend with a report still queued: the controller knows that the drone
//! has more to say about it, and does not take its absence from the running set for an end.

use crate::limits::{MAX_QUEUED_REPORTS, REPORT_ACK_TIMEOUT, REPORT_RETRY_MAX, REPORT_RETRY_MIN};
use crate::logs::BackendLog;
use plane_bus::Bus;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendState, PullProgress, StateReport, TerminationReason, UnixMillis,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, warn};

/// The queue, shared by the backends (which push), the delivery task (which pops) and the
/// heartbeat (which lists).
#[derive(Clone)]
pub(crate) struct Reports {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a report is queued or the queue is closed.
    pushed: Notify,
}

#[derive(Default)]
struct Queue {
    reports: VecDeque<StateReport>,
    /// Queued reports per backend.
    per_backend: HashMap<BackendId, usize>,
    /// No more reports will come: the delivery task ends once the queue is empty.
    closed: bool,
}

impl Queue {
    fn push(&mut self, report: StateReport) {
        if self.reports.len() >= MAX_QUEUED_REPORTS {
            self.make_room();
        }
        *self.per_backend.entry(report.backend.clone()).or_default() += 1;
        self.reports.push_back(report);
    }

    /// Drops one report: the oldest that a later report of its backend supersedes, else the
    /// oldest that does not end its backend, else the oldest. The front is never dropped: it may
    /// be in flight.
    fn make_room(&mut self) {
        let superseded = |r: &StateReport| self.per_backend.get(&r.backend).copied() > Some(1);
        let victim = (1..self.reports.len())
            .find(|&i| superseded(&self.reports[i]))
            .or_else(|| {
                (1..self.reports.len()).find(|&i| self.reports[i].state != BackendState::Terminated)
            })
            .or((self.reports.len() > 1).then_some(1));
        if let Some(dropped) = victim.and_then(|i| self.reports.remove(i)) {
            warn!(backend = %dropped.backend, state = %dropped.state, seq = dropped.seq, "report queue full; dropping a report");
            self.forget_one(&dropped.backend);
        }
    }

    fn forget_one(&mut self, backend: &BackendId) {
        if let Some(count) = self.per_backend.get_mut(backend) {
            *count -= 1;
            if *count == 0 {
                self.per_backend.remove(backend);
            }
        }
    }
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under this lock panics.
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, report: StateReport) {
        let mut queue = self.lock();
        if queue.closed {
            warn!(backend = %report.backend, state = %report.state, "report queue closed; state not reported");
            return;
        }
        queue.push(report);
        drop(queue);
        self.shared.pushed.notify_one();
    }

    /// Backends with a report not yet acknowledged.
    pub(crate) fn pending(&self) -> Vec<BackendId> {
        self.lock().per_backend.keys().cloned().collect()
    }

    /// How many reports wait.
    pub(crate) fn len(&self) -> usize {
        self.lock().reports.len()
    }

    /// No more reports will be queued; the delivery task ends once it delivered the rest.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.pushed.notify_one();
    }

    /// The report to deliver next (it stays queued until [`Reports::delivered`]); `None` once
    /// the queue is closed and empty.
    async fn front(&self) -> Option<StateReport> {
        loop {
            let pushed = self.shared.pushed.notified();
            {
                let queue = self.lock();
                if let Some(report) = queue.reports.front() {
                    return Some(report.clone());
                }
                if queue.closed {
                    return None;
                }
            }
            pushed.await;
        }
    }

    /// Removes the front report, delivered (or refused for good).
    fn delivered(&self) {
        let mut queue = self.lock();
        if let Some(report) = queue.reports.pop_front() {
            queue.forget_one(&report.backend);
        }
    }
}

/// Builds the reports of one backend with consecutive sequence numbers.
pub(crate) struct BackendReports {
    reports: Reports,
    /// Where Plane's own lines about the backend go.
    log: Option<BackendLog>,
    backend: BackendId,
    drone: DroneId,
    drone_started_at: UnixMillis,
    seq: u64,
}

impl BackendReports {
    pub(crate) fn new(
        reports: Reports,
        backend: BackendId,
        drone: DroneId,
        drone_started_at: UnixMillis,
    ) -> Self {
        BackendReports {
            reports,
            log: None,
            backend,
            drone,
            drone_started_at,
            seq: 0,
        }
    }

    /// Plane's lines about the backend go to `log` too.
    pub(crate) fn with_log(self, log: BackendLog) -> Self {
        BackendReports {
            log: Some(log),
            ..self
        }
    }

    /// Says `text` in the backend's log, as Plane.
    pub(crate) fn say(&self, text: &str) {
        if let Some(log) = &self.log {
            log.plane(text);
        }
    }

    /// The reports of a backend taken over by a new drone process: they go on after the last one
    /// the cluster applied.
    pub(crate) fn resuming(
        reports: Reports,
        backend: BackendId,
        drone: DroneId,
        drone_started_at: UnixMillis,
        last_seq: u64,
    ) -> Self {
        BackendReports {
            seq: last_seq,
            ..BackendReports::new(reports, backend, drone, drone_started_at)
        }
    }

    pub(crate) fn state(&mut self, state: BackendState) {
        self.send(Change::new(state));
    }

    /// How far the image's pull has come, while loading.
    pub(crate) fn pull(&mut self, progress: PullProgress) {
        self.send(Change {
            pull: Some(progress),
            ..Change::new(BackendState::Loading)
        });
    }

    pub(crate) fn terminated(
        &mut self,
        reason: TerminationReason,
        exit_code: Option<i32>,
        oom_killed: bool,
        message: Option<String>,
    ) {
        self.send(Change {
            reason: Some(reason),
            exit_code,
            oom_killed,
            message,
            ..Change::new(BackendState::Terminated)
        });
    }

    fn send(&mut self, change: Change) {
        self.seq += 1;
        self.reports.push(StateReport {
            backend: self.backend.clone(),
            drone: self.drone.clone(),
            seq: self.seq,
            state: change.state,
            reason: change.reason,
            exit_code: change.exit_code,
            oom_killed: change.oom_killed,
            pull: change.pull,
            message: change.message,
            drone_started_at: self.drone_started_at,
            at: now_millis(),
        });
    }
}

/// What one report says.
struct Change {
    state: BackendState,
    reason: Option<TerminationReason>,
    exit_code: Option<i32>,
    oom_killed: bool,
    message: Option<String>,
    pull: Option<PullProgress>,
}

impl Change {
    fn new(state: BackendState) -> Change {
        Change {
            state,
            reason: None,
            exit_code: None,
            oom_killed: false,
            message: None,
            pull: None,
        }
    }
}

/// Starts the delivery task. Backends whose reports the controller refuses (it no longer wants
/// them to run) are sent to `refused`. The task ends once [`Reports::close`] was called and the
/// queue is empty.
pub(crate) fn start(
    bus: Bus,
    subject: String,
    refused: mpsc::UnboundedSender<BackendId>,
) -> (Reports, tokio::task::JoinHandle<()>) {
    let reports = Reports {
        shared: Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            pushed: Notify::new(),
        }),
    };
    let queue = reports.clone();
    let task = tokio::spawn(async move {
        while let Some(report) = queue.front().await {
            deliver(&bus, &subject, &report, &refused).await;
            queue.delivered();
        }
    });
    (reports, task)
}

async fn deliver(
    bus: &Bus,
    subject: &str,
    report: &StateReport,
    refused: &mpsc::UnboundedSender<BackendId>,
) {
    let mut pause = REPORT_RETRY_MIN;
    loop {
        match bus
            .request_json::<_, Ack>(subject, report, REPORT_ACK_TIMEOUT)
            .await
        {
            Ok(Ack::Accepted) => {
                debug!(backend = %report.backend, seq = report.seq, state = %report.state, "report acknowledged");
                return;
            }
            Ok(Ack::Rejected { error }) => {
                warn!(backend = %report.backend, state = %report.state, %error, "controller refused report");
                if report.state != BackendState::Terminated {
                    let _ = refused.send(report.backend.clone());
                }
                return;
            }
            Err(error) => {
                debug!(backend = %report.backend, seq = report.seq, %error, ?pause, "report not acknowledged; re-sending");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REPORT_RETRY_MAX);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let queue = self.queue.get_mut().unwrap_or_else(|p| p.into_inner());
        if !queue.reports.is_empty() {
            error!(
                count = queue.reports.len(),
                "state reports dropped undelivered"
            );
        }
    }
}

#[cfg(test)]
mod tests;
