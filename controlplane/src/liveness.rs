//! Drone liveness as this controller hears it. Every controller hears every heartbeat (a plain
//! subscription, not a queue group), and keeps what it heard in memory, timed on the monotonic
//! clock; heartbeats are never written to the KV store. Silence only counts while the controller
//! could hear: it is measured from the later of a drone's last heartbeat and the moment this
//! controller's bus connection was last (re)established, so neither a controller restart nor a
//! bus outage is mistaken for silent drones.

use plane_protocol::ids::DroneId;
use plane_protocol::messages::{now_millis, Heartbeat, UnixMillis};
use plane_protocol::records::DroneRecord;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// What this controller heard of drones, and since when it could hear.
pub struct Hearing {
    grace: Duration,
    state: Mutex<HearingState>,
}

struct HearingState {
    /// Since when the bus connection has been up without a break; `None` while it is down (or
    /// before the controller listens), when nobody's silence can be judged.
    since: Option<Instant>,
    drones: HashMap<DroneId, Heard>,
}

/// The last heartbeat of one drone.
#[derive(Clone, Copy, Debug)]
struct Heard {
    at: Instant,
    /// When it arrived, by this controller's wall clock (shown by the API, like the time in
    /// the drone's KV record: one clock for both, whatever the drone's says).
    wall: UnixMillis,
    load: u32,
    /// Backends this controller placed on the drone since that heartbeat, which its load does
    /// not count yet.
    placed: u32,
}

/// A drone's liveness and load, as the scheduler and the API see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroneStatus {
    pub live: bool,
    /// Backends it runs, as last told, plus those placed on it since.
    pub load: u32,
    /// When this controller last heard it (its own wall clock), if it did.
    pub last_heartbeat: Option<UnixMillis>,
}

impl Hearing {
    /// Not listening yet: nothing can be judged until [`Hearing::connected`].
    pub fn new(grace: Duration) -> Self {
        Hearing {
            grace,
            state: Mutex::new(HearingState {
                since: None,
                drones: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HearingState> {
        // Nothing under this lock panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bus connection is up (the controller listens, or reconnected) at `now`.
    pub fn connected(&self, now: Instant) {
        let mut state = self.lock();
        if state.since.is_none() {
            state.since = Some(now);
        }
    }

    /// The bus connection is down: silence from now on is the controller's own.
    pub fn disconnected(&self) {
        self.lock().since = None;
    }

    /// Whether silence can be judged now (the connection is up).
    pub fn can_judge(&self) -> bool {
        self.lock().since.is_some()
    }

    /// Records a heartbeat received at `now`.
    pub fn heard(&self, heartbeat: &Heartbeat, now: Instant) {
        self.lock().drones.insert(
            heartbeat.drone.clone(),
            Heard {
                at: now,
                wall: now_millis(),
                load: heartbeat.load,
                placed: 0,
            },
        );
    }

    /// Counts a backend placed on `drone` until its next heartbeat tells its load.
    pub fn placed(&self, drone: &DroneId) {
        if let Some(heard) = self.lock().drones.get_mut(drone) {
            heard.placed = heard.placed.saturating_add(1);
        }
    }

    /// Forgets a drone (its record was deleted).
    pub fn forget(&self, drone: &DroneId) {
        self.lock().drones.remove(drone);
    }

    /// The drone's status at `now`. A drone not marked lost is live unless it has been silent
    /// for longer than the grace while this controller could hear; while the connection is down
    /// nobody is judged. One this controller never heard from (known from the KV store) counts
    /// as heard when the connection came up.
    pub fn status(&self, drone: &DroneRecord, now: Instant) -> DroneStatus {
        let state = self.lock();
        let heard = state.drones.get(&drone.id);
        let silent_since = match (heard, state.since) {
            (_, None) => None,
            (Some(heard), Some(since)) => Some(heard.at.max(since)),
            (None, Some(since)) => Some(since),
        };
        let silent_too_long =
            silent_since.is_some_and(|since| now.saturating_duration_since(since) > self.grace);
        DroneStatus {
            live: !drone.lost && !silent_too_long,
            load: heard.map_or(drone.load, |h| h.load.saturating_add(h.placed)),
            last_heartbeat: heard.map(|h| h.wall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_protocol::messages::ExecutorKind;

    const GRACE: Duration = Duration::from_secs(10);

    fn drone(id: &str) -> DroneRecord {
        DroneRecord {
            id: DroneId::new(id).expect("valid"),
            executor: ExecutorKind::Process,
            capacity: 10,
            load: 0,
            draining: false,
            drain_deadline: None,
            proxy_scheme: "http".into(),
            proxy_port: 9090,
            ip: None,
            certificate: None,
            last_heartbeat: 0,
            started_at: 1,
            lost: false,
            lost_at: None,
        }
    }

    fn heartbeat(id: &str, load: u32) -> Heartbeat {
        Heartbeat {
            drone: DroneId::new(id).expect("valid"),
            executor: ExecutorKind::Process,
            capacity: 10,
            load,
            backends: Vec::new(),
            draining: false,
            drain_deadline: None,
            proxy_scheme: "http".into(),
            proxy_port: 9090,
            ip: None,
            certificate: None,
            started_at: 1,
            at: 1234,
            usage: Default::default(),
        }
    }

    #[test]
    fn silence_counts_only_while_the_controller_can_hear() {
        let t0 = Instant::now();
        let hearing = Hearing::new(GRACE);
        let d = drone("d");
        // Not listening yet: nothing is judged, however long.
        assert!(hearing.status(&d, t0 + GRACE * 10).live);
        hearing.connected(t0);
        hearing.heard(&heartbeat("d", 2), t0);
        assert!(hearing.status(&d, t0 + GRACE).live);
        assert!(
            !hearing
                .status(&d, t0 + GRACE + Duration::from_millis(1))
                .live
        );
        // An outage: the connection drops right after the heartbeat and comes back much later.
        hearing.disconnected();
        assert!(!hearing.can_judge());
        assert!(hearing.status(&d, t0 + GRACE * 3).live);
        let back = t0 + GRACE * 3;
        hearing.connected(back);
        assert!(
            hearing.status(&d, back + GRACE).live,
            "a full grace after reconnecting"
        );
        assert!(
            !hearing
                .status(&d, back + GRACE + Duration::from_millis(1))
                .live
        );
    }

    #[test]
    fn a_drone_never_heard_counts_from_the_connection() {
        let t0 = Instant::now();
        let hearing = Hearing::new(GRACE);
        hearing.connected(t0);
        let status = hearing.status(&drone("known-from-kv"), t0 + GRACE);
        assert!(status.live);
        assert_eq!(status.last_heartbeat, None);
        assert!(!hearing.status(&drone("known-from-kv"), t0 + GRACE * 2).live);
    }

    #[test]
    fn lost_drones_are_not_live_and_load_counts_placements() {
        let t0 = Instant::now();
        let hearing = Hearing::new(GRACE);
        hearing.connected(t0);
        let mut d = drone("d");
        let before = now_millis();
        hearing.heard(&heartbeat("d", 3), t0);
        hearing.placed(&d.id);
        hearing.placed(&d.id);
        let status = hearing.status(&d, t0);
        assert_eq!(status.load, 5);
        // The controller's clock, not the drone's (`at: 1234` in the heartbeat).
        assert!(
            status.last_heartbeat.is_some_and(|at| at >= before),
            "{status:?}"
        );
        hearing.heard(&heartbeat("d", 4), t0);
        assert_eq!(
            hearing.status(&d, t0).load,
            4,
            "a heartbeat tells the real load"
        );
        d.lost = true;
        assert!(!hearing.status(&d, t0).live);
    }
}
