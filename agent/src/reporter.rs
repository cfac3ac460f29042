//! Delivers state reports to the controller, in order, each re-sent until acknowledged. One
//! queue for the whole drone: when the controller is unreachable it is so for every backend, and
//! a single queue keeps each backend's reports in sequence without per-backend tasks.

use crate::limits::{REPORT_ACK_TIMEOUT, REPORT_RETRY_MAX, REPORT_RETRY_MIN};
use plane_bus::Bus;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendState, StateReport, TerminationReason, UnixMillis,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The sending side, cloned into every backend's lifecycle.
#[derive(Clone)]
pub(crate) struct Reports {
    queue: mpsc::UnboundedSender<StateReport>,
}

/// Builds the reports of one backend with consecutive sequence numbers.
pub(crate) struct BackendReports {
    reports: Reports,
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
            backend,
            drone,
            drone_started_at,
            seq: 0,
        }
    }

    pub(crate) fn state(&mut self, state: BackendState) {
        self.send(state, None, None, None);
    }

    pub(crate) fn terminated(
        &mut self,
        reason: TerminationReason,
        exit_code: Option<i32>,
        message: Option<String>,
    ) {
        self.send(BackendState::Terminated, Some(reason), exit_code, message);
    }

    fn send(
        &mut self,
        state: BackendState,
        reason: Option<TerminationReason>,
        exit_code: Option<i32>,
        message: Option<String>,
    ) {
        self.seq += 1;
        let report = StateReport {
            backend: self.backend.clone(),
            drone: self.drone.clone(),
            seq: self.seq,
            state,
            reason,
            exit_code,
            message,
            drone_started_at: self.drone_started_at,
            at: now_millis(),
        };
        if self.reports.queue.send(report).is_err() {
            warn!(backend = %self.backend, %state, "report queue closed; state not reported");
        }
    }
}

/// Starts the delivery task. Backends whose reports the controller refuses (it no longer wants
/// them to run) are sent to `refused`. The task ends when every [`Reports`] is dropped and the
/// queue is empty.
pub(crate) fn start(
    bus: Bus,
    subject: String,
    refused: mpsc::UnboundedSender<BackendId>,
) -> (Reports, tokio::task::JoinHandle<()>) {
    let (queue, mut pending) = mpsc::unbounded_channel::<StateReport>();
    let task = tokio::spawn(async move {
        while let Some(report) = pending.recv().await {
            deliver(&bus, &subject, &report, &refused).await;
        }
    });
    (Reports { queue }, task)
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
