//! Where each message travels. Everything is scoped by cluster (`plane.{cluster}.…`), and what a
//! drone says or is told travels under its own id (`plane.{cluster}.drone.{id}.…`), so that NATS
//! permissions can be granted per cluster and per drone: a drone's credentials can be limited to
//! its own subjects and its own reply inbox (see the README's NATS permissions).

use crate::ids::{BackendId, DroneId};

/// Queue group of every controller, so that several controllers share the work.
pub const CONTROLLER_QUEUE_GROUP: &str = "plane-controller";

/// Subject and bucket names of one cluster.
#[derive(Clone, Debug)]
pub struct Subjects {
    /// The cluster name as a single subject token / bucket fragment.
    token: String,
}

/// The kinds of message a drone's subjects carry.
const COMMAND: &str = "command";
const HEARTBEAT: &str = "heartbeat";
const STATE: &str = "state";
const RECOVERY: &str = "recovery";
const LOGS: &str = "logs";
const CERTIFICATE: &str = "certificate";
const WAKE: &str = "wake";

impl Subjects {
    /// Dots (and anything else NATS gives a meaning to) in the cluster name become `_`.
    pub fn new(cluster: &str) -> Self {
        let token = cluster
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self { token }
    }

    fn drone_subject(&self, drone: &str, kind: &str) -> String {
        format!("plane.{}.drone.{}.{}", self.token, drone, kind)
    }

    /// Requests to one drone: [`crate::messages::DroneCommand`] → [`crate::messages::Ack`].
    pub fn drone_commands(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), COMMAND)
    }

    /// Published by one drone: [`crate::messages::Heartbeat`].
    pub fn heartbeat(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), HEARTBEAT)
    }

    /// Every drone's heartbeats (what controllers subscribe to).
    pub fn all_heartbeats(&self) -> String {
        self.drone_subject("*", HEARTBEAT)
    }

    /// Requests from one drone to any controller: [`crate::messages::StateReport`] →
    /// [`crate::messages::Ack`].
    pub fn state_reports(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), STATE)
    }

    /// Every drone's state reports (what controllers subscribe to, as a queue group).
    pub fn all_state_reports(&self) -> String {
        self.drone_subject("*", STATE)
    }

    /// Requests from one drone, once when it starts, to any controller:
    /// [`crate::messages::Recovery`] → [`crate::messages::RecoveryAnswer`].
    pub fn recovery(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), RECOVERY)
    }

    /// Every drone's recovery requests (controllers subscribe as a queue group).
    pub fn all_recoveries(&self) -> String {
        self.drone_subject("*", RECOVERY)
    }

    /// Requests from one drone to any controller about the cluster's certificate:
    /// [`crate::certificates::CertificateRequest`] → [`crate::certificates::CertificateAnswer`].
    pub fn certificate(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), CERTIFICATE)
    }

    /// Every drone's certificate requests (controllers subscribe as a queue group).
    pub fn all_certificates(&self) -> String {
        self.drone_subject("*", CERTIFICATE)
    }

    /// Requests from one drone to any controller to wake a key on it:
    /// [`crate::keys::WakeRequest`] → [`crate::keys::WakeAnswer`].
    pub fn wake(&self, drone: &DroneId) -> String {
        self.drone_subject(drone.as_str(), WAKE)
    }

    /// Every drone's wake requests (controllers subscribe as a queue group).
    pub fn all_wakes(&self) -> String {
        self.drone_subject("*", WAKE)
    }

    /// Where a drone publishes the log lines of one of its backends
    /// ([`crate::messages::LogLine`]); kept by the log [`Subjects::logs_stream`].
    pub fn backend_logs(&self, drone: &DroneId, backend: &BackendId) -> String {
        format!("{}.{}", self.drone_subject(drone.as_str(), LOGS), backend)
    }

    /// Every backend's log lines: the subjects the log keeps.
    pub fn all_logs(&self) -> String {
        format!("{}.*", self.drone_subject("*", LOGS))
    }

    /// The log (JetStream stream) that keeps the backends' log lines.
    pub fn logs_stream(&self) -> String {
        format!("plane_{}_logs", self.token)
    }

    /// The drone a drone subject of this cluster belongs to: a message's sender, as far as NATS
    /// permissions vouch for it. `None` for any other subject.
    pub fn drone_of<'s>(&self, subject: &'s str) -> Option<&'s str> {
        let rest = subject
            .strip_prefix("plane.")?
            .strip_prefix(self.token.as_str())?
            .strip_prefix(".drone.")?;
        let (drone, kind) = rest.split_once('.')?;
        matches!(
            kind,
            COMMAND | HEARTBEAT | STATE | RECOVERY | CERTIFICATE | WAKE
        )
        .then_some(drone)
    }

    /// Where answers to a drone's own requests arrive (its NATS inbox prefix).
    pub fn drone_inbox_prefix(&self, drone: &DroneId) -> String {
        format!("_INBOX.plane.{}.drone.{}", self.token, drone)
    }

    /// Where answers to controllers' requests arrive.
    pub fn controller_inbox_prefix(&self) -> String {
        format!("_INBOX.plane.{}.controller", self.token)
    }

    /// KV bucket of backend records, keyed by backend id.
    pub fn backends_bucket(&self) -> String {
        format!("plane_{}_backends", self.token)
    }

    /// KV bucket of drone records, keyed by drone id.
    pub fn drones_bucket(&self) -> String {
        format!("plane_{}_drones", self.token)
    }

    /// KV bucket of the cluster's certificate and its order lock (with the DNS-01 values).
    pub fn acme_bucket(&self) -> String {
        format!("plane_{}_acme", self.token)
    }

    /// KV bucket of keys ([`crate::keys::KeyRecord`]), keyed by the key's label; controllers
    /// only.
    pub fn keys_bucket(&self) -> String {
        format!("plane_{}_keys", self.token)
    }

    /// KV bucket of the answers given to requests with an `Idempotency-Key`; controllers only.
    pub fn idempotency_bucket(&self) -> String {
        format!("plane_{}_idempotency", self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dots_are_encoded_and_drones_speak_under_their_id() {
        let s = Subjects::new("plane.localhost");
        let drone = DroneId::new("d1").expect("valid id");
        assert_eq!(
            s.drone_commands(&drone),
            "plane.plane_localhost.drone.d1.command"
        );
        assert_eq!(
            s.heartbeat(&drone),
            "plane.plane_localhost.drone.d1.heartbeat"
        );
        assert_eq!(
            s.state_reports(&drone),
            "plane.plane_localhost.drone.d1.state"
        );
        assert_eq!(
            s.all_heartbeats(),
            "plane.plane_localhost.drone.*.heartbeat"
        );
        assert_eq!(s.all_state_reports(), "plane.plane_localhost.drone.*.state");
        assert_eq!(
            s.recovery(&drone),
            "plane.plane_localhost.drone.d1.recovery"
        );
        assert_eq!(
            s.drone_inbox_prefix(&drone),
            "_INBOX.plane.plane_localhost.drone.d1"
        );
        assert_eq!(s.backends_bucket(), "plane_plane_localhost_backends");
        let backend = BackendId::new("b1").expect("valid id");
        assert_eq!(
            s.backend_logs(&drone, &backend),
            "plane.plane_localhost.drone.d1.logs.b1"
        );
        assert_eq!(s.all_logs(), "plane.plane_localhost.drone.*.logs.*");
        assert_eq!(s.logs_stream(), "plane_plane_localhost_logs");
    }

    #[test]
    fn the_sender_is_read_from_the_subject() {
        let s = Subjects::new("plane.localhost");
        let drone = DroneId::new("d-7").expect("valid id");
        assert_eq!(s.drone_of(&s.heartbeat(&drone)), Some("d-7"));
        assert_eq!(s.drone_of(&s.state_reports(&drone)), Some("d-7"));
        assert_eq!(s.drone_of(&s.recovery(&drone)), Some("d-7"));
        assert_eq!(s.drone_of(&s.certificate(&drone)), Some("d-7"));
        assert_eq!(
            s.certificate(&drone),
            "plane.plane_localhost.drone.d-7.certificate"
        );
        assert_eq!(s.acme_bucket(), "plane_plane_localhost_acme");
        assert_eq!(s.keys_bucket(), "plane_plane_localhost_keys");
        assert_eq!(s.idempotency_bucket(), "plane_plane_localhost_idempotency");
        assert_eq!(s.drone_of("plane.other.drone.d-7.heartbeat"), None);
        assert_eq!(s.drone_of("plane.plane_localhost.drone.d-7.other"), None);
        assert_eq!(s.drone_of("plane.plane_localhost.controller.state"), None);
    }
}
