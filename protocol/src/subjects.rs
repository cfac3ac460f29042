//! Where each message travels. Everything is scoped by cluster (`plane.{cluster}.…`) so that NATS
//! permissions can be granted per cluster and per drone.

use crate::ids::DroneId;

/// Queue group of every controller, so that several controllers share the work.
pub const CONTROLLER_QUEUE_GROUP: &str = "plane-controller";

/// Subject and bucket names of one cluster.
#[derive(Clone, Debug)]
pub struct Subjects {
    /// The cluster name as a single subject token / bucket fragment.
    token: String,
}

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

    /// Requests to one drone: [`crate::messages::DroneCommand`] → [`crate::messages::Ack`].
    pub fn drone_commands(&self, drone: &DroneId) -> String {
        format!("plane.{}.drone.{}.command", self.token, drone)
    }

    /// Requests to any controller: [`crate::messages::StateReport`] → [`crate::messages::Ack`].
    pub fn state_reports(&self) -> String {
        format!("plane.{}.controller.state", self.token)
    }

    /// Published to any controller: [`crate::messages::Heartbeat`].
    pub fn heartbeats(&self) -> String {
        format!("plane.{}.controller.heartbeat", self.token)
    }

    /// KV bucket of backend records, keyed by backend id.
    pub fn backends_bucket(&self) -> String {
        format!("plane_{}_backends", self.token)
    }

    /// KV bucket of drone records, keyed by drone id.
    pub fn drones_bucket(&self) -> String {
        format!("plane_{}_drones", self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dots_are_encoded() {
        let s = Subjects::new("plane.localhost");
        let drone = DroneId::new("d1").expect("valid id");
        assert_eq!(
            s.drone_commands(&drone),
            "plane.plane_localhost.drone.d1.command"
        );
        assert_eq!(s.backends_bucket(), "plane_plane_localhost_backends");
    }
}
