//! The records the controller keeps in the cluster's KV buckets. They are also what the API
//! returns, so their field names are part of the API contract.

use crate::ids::{BackendId, DroneId};
use crate::keys::BackendKey;
use crate::messages::{
    BackendSpec, BackendState, ExecutorKind, Heartbeat, PullProgress, StateReport,
    TerminationReason, UnixMillis, Usage,
};
use crate::token::AccessToken;
use serde::{Deserialize, Serialize};

/// One backend, from scheduling to termination (bucket `plane_{cluster}_backends`, key = id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    pub id: BackendId,
    /// Where clients reach it: `{scheme}://{id}.{cluster}[:port]/`.
    pub url: String,
    pub state: BackendState,
    /// Set once `state` is `terminated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TerminationReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Killed for going over its memory limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// How far the pull of its image has come (the last figures seen while loading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullProgress>,
    /// Detail from the drone, e.g. why loading failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub drone: DroneId,
    /// The key it was connected by (`POST /v1/connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<BackendKey>,
    pub max_idle_secs: u64,
    pub spec: BackendSpec,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Sequence number of the last drone report applied (0: none yet).
    #[serde(default)]
    pub last_seq: u64,
    /// Which process of its drone runs it (its start time), once the drone has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drone_started_at: Option<UnixMillis>,
    /// When the drone sent the last report applied, by the drone's clock: a heartbeat the drone
    /// sent later than this that does not list the backend means the drone no longer runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<UnixMillis>,
}

/// A backend as `GET /v1/backends/{id}` shows it: its record and, while it runs, its latest
/// resource use (absent until its drone has sampled it twice, and for executors that do not
/// measure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    #[serde(flatten)]
    pub record: BackendRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The answer to a spawn: the backend's record, and its access token when it requires one.
/// The only answer that ever carries the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnAnswer {
    #[serde(flatten)]
    pub record: BackendRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AccessToken>,
}

impl std::ops::Deref for SpawnAnswer {
    type Target = BackendRecord;

    fn deref(&self) -> &BackendRecord {
        &self.record
    }
}

/// What applying a drone's report to a record did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The record changed; write it.
    Applied,
    /// Seen before (a re-sent report); acknowledge, write nothing.
    Duplicate,
    /// The report cannot apply; tell the drone why so it stops the backend.
    Refused(String),
}

impl BackendRecord {
    pub fn is_terminated(&self) -> bool {
        self.state == BackendState::Terminated
    }

    /// Applies `report` if it is new and comes from the drone this backend was given to.
    pub fn apply(&mut self, report: &StateReport) -> ReportOutcome {
        if report.drone != self.drone {
            return ReportOutcome::Refused(format!(
                "backend {} is assigned to drone {}, not {}",
                self.id, self.drone, report.drone
            ));
        }
        if report.seq <= self.last_seq {
            return ReportOutcome::Duplicate;
        }
        if self.is_terminated() {
            // The controller ended it (e.g. declared its drone lost): the drone must stop it.
            return if report.state == BackendState::Terminated {
                self.last_seq = report.seq;
                ReportOutcome::Duplicate
            } else {
                ReportOutcome::Refused(format!(
                    "backend {} is already terminated ({})",
                    self.id,
                    self.reason.map(|r| r.as_str()).unwrap_or("unknown")
                ))
            };
        }
        self.last_seq = report.seq;
        if report.drone_started_at != 0 {
            self.drone_started_at = Some(report.drone_started_at);
        }
        self.state = report.state;
        self.reason = report.reason;
        self.exit_code = report.exit_code;
        self.oom_killed = report.oom_killed;
        if report.pull.is_some() {
            self.pull = report.pull;
        }
        if report.message.is_some() {
            self.message.clone_from(&report.message);
        }
        self.updated_at = report.at.max(self.updated_at);
        self.reported_at = Some(report.at);
        ReportOutcome::Applied
    }

    /// Ends the backend from the controller's side (its drone is gone).
    pub fn terminate_here(&mut self, reason: TerminationReason, message: String, at: UnixMillis) {
        self.state = BackendState::Terminated;
        self.reason = Some(reason);
        self.message = Some(message);
        self.updated_at = at;
    }
}

/// One drone (bucket `plane_{cluster}_drones`, key = id). Written when the drone first beats,
/// restarts, changes what it offers, or is declared lost or comes back; not on every heartbeat.
/// `load` and `last_heartbeat` are as of that write in the store; the API shows the live values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroneRecord {
    pub id: DroneId,
    pub executor: ExecutorKind,
    pub capacity: u32,
    pub load: u32,
    pub draining: bool,
    /// While draining with a deadline: when what still runs is terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<UnixMillis>,
    pub proxy_scheme: String,
    pub proxy_port: u16,
    /// The address its backends' names resolve to (see [`Heartbeat::ip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    /// The certificate its TLS listener serves (see [`Heartbeat::certificate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<crate::certificates::CertificateStatus>,
    pub last_heartbeat: UnixMillis,
    /// When the drone process started (see [`Heartbeat::started_at`]).
    #[serde(default)]
    pub started_at: UnixMillis,
    /// Set when the drone stopped beating for longer than the grace period.
    #[serde(default)]
    pub lost: bool,
    /// When it was declared lost (the controller's clock); it is forgotten a retention later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_at: Option<UnixMillis>,
}

impl DroneRecord {
    pub fn from_heartbeat(hb: &Heartbeat, received_at: UnixMillis) -> Self {
        DroneRecord {
            id: hb.drone.clone(),
            executor: hb.executor,
            capacity: hb.capacity,
            load: hb.load,
            draining: hb.draining,
            drain_deadline: hb.drain_deadline,
            proxy_scheme: hb.proxy_scheme.clone(),
            proxy_port: hb.proxy_port,
            ip: hb.ip,
            certificate: hb.certificate.clone(),
            last_heartbeat: received_at,
            started_at: hb.started_at,
            lost: false,
            lost_at: None,
        }
    }

    /// The URL of a backend on this drone.
    pub fn backend_url(&self, backend: &BackendId, cluster: &str) -> String {
        self.url_of(backend.as_str(), cluster)
    }

    /// The URL of `{label}.{cluster}` through this drone's proxy (a backend's or a key's).
    pub fn url_of(&self, label: &str, cluster: &str) -> String {
        let default_port = match self.proxy_scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        if self.proxy_port == default_port {
            format!("{}://{}.{}/", self.proxy_scheme, label, cluster)
        } else {
            format!(
                "{}://{}.{}:{}/",
                self.proxy_scheme, label, cluster, self.proxy_port
            )
        }
    }
}

/// A drone as the API shows it: its record and whether it is live now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroneView {
    #[serde(flatten)]
    pub drone: DroneRecord,
    pub live: bool,
    /// Where it is (**contract**): `live`, `draining`, `drained` (draining and empty) or
    /// `lost` (not heard within the grace).
    pub state: DroneState,
}

/// A drone's state as the API shows it (**contract**).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroneState {
    Live,
    Draining,
    Drained,
    Lost,
}

impl DroneState {
    /// The state of a drone heard (`live`) or not, draining or not, running `load` backends.
    pub fn of(live: bool, draining: bool, load: u32) -> DroneState {
        match (live, draining, load) {
            (false, _, _) => DroneState::Lost,
            (true, true, 0) => DroneState::Drained,
            (true, true, _) => DroneState::Draining,
            (true, false, _) => DroneState::Live,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DroneState::Live => "live",
            DroneState::Draining => "draining",
            DroneState::Drained => "drained",
            DroneState::Lost => "lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Executable;

    fn record() -> BackendRecord {
        BackendRecord {
            id: BackendId::new("b1").expect("valid"),
            url: "http://b1.c/".into(),
            state: BackendState::Scheduled,
            reason: None,
            exit_code: None,
            oom_killed: false,
            pull: None,
            message: None,
            drone: DroneId::new("d1").expect("valid"),
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

    fn report(seq: u64, state: BackendState, drone: &str) -> StateReport {
        StateReport {
            backend: BackendId::new("b1").expect("valid"),
            drone: DroneId::new(drone).expect("valid"),
            seq,
            state,
            reason: None,
            exit_code: None,
            oom_killed: false,
            pull: None,
            message: None,
            drone_started_at: 7,
            at: 10,
        }
    }

    #[test]
    fn reports_apply_once_and_in_order() {
        let mut r = record();
        assert_eq!(
            r.apply(&report(1, BackendState::Loading, "d1")),
            ReportOutcome::Applied
        );
        assert_eq!(
            r.apply(&report(1, BackendState::Loading, "d1")),
            ReportOutcome::Duplicate
        );
        assert_eq!(
            r.apply(&report(2, BackendState::Ready, "d1")),
            ReportOutcome::Applied
        );
        assert_eq!(r.state, BackendState::Ready);
        assert_eq!(r.last_seq, 2);
    }

    #[test]
    fn reports_from_another_drone_are_refused() {
        let mut r = record();
        assert!(matches!(
            r.apply(&report(1, BackendState::Loading, "d2")),
            ReportOutcome::Refused(_)
        ));
        assert_eq!(r.state, BackendState::Scheduled);
    }

    #[test]
    fn a_lost_backend_refuses_life_but_accepts_its_end() {
        let mut r = record();
        r.terminate_here(TerminationReason::Lost, "drone lost".into(), 5);
        assert!(matches!(
            r.apply(&report(1, BackendState::Ready, "d1")),
            ReportOutcome::Refused(_)
        ));
        let mut end = report(2, BackendState::Terminated, "d1");
        end.reason = Some(TerminationReason::Swept);
        assert_eq!(r.apply(&end), ReportOutcome::Duplicate);
        assert_eq!(r.reason, Some(TerminationReason::Lost));
    }

    #[test]
    fn a_draining_drone_is_drained_once_empty() {
        assert_eq!(DroneState::of(true, false, 3), DroneState::Live);
        assert_eq!(DroneState::of(true, true, 3), DroneState::Draining);
        assert_eq!(DroneState::of(true, true, 0), DroneState::Drained);
        assert_eq!(DroneState::of(false, true, 0), DroneState::Lost);
        let json = serde_json::to_string(&DroneState::Drained).expect("serialises");
        assert_eq!(json, "\"drained\"");
    }

    #[test]
    fn urls_omit_default_ports() {
        let mut d = DroneRecord {
            id: DroneId::new("d1").expect("valid"),
            executor: ExecutorKind::Process,
            capacity: 1,
            load: 0,
            draining: false,
            drain_deadline: None,
            proxy_scheme: "http".into(),
            proxy_port: 80,
            ip: None,
            certificate: None,
            last_heartbeat: 0,
            started_at: 0,
            lost: false,
            lost_at: None,
        };
        let b = BackendId::new("b1").expect("valid");
        assert_eq!(d.backend_url(&b, "c.dev"), "http://b1.c.dev/");
        d.proxy_port = 9090;
        assert_eq!(d.backend_url(&b, "c.dev"), "http://b1.c.dev:9090/");
    }
}
