//! Where a new backend goes: a live drone that is not draining, runs the wanted executor and has
//! room, preferring the least loaded. The result is an ordered list so that the caller can fall
//! back to the next drone when one does not acknowledge in time.

use plane_protocol::messages::ExecutorKind;
use plane_protocol::records::{DroneRecord, Liveness};
use rand::seq::SliceRandom;

/// Why no drone can take a backend; the text is shown to API users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoDrone {
    #[error("no drone available: no drone has registered in this cluster")]
    NoneRegistered,
    #[error("no drone available: none of the {known} known drones is live")]
    NoneLive { known: usize },
    #[error("no drone available: every live drone is draining, full or runs another executor")]
    NoneWithRoom,
}

/// Drones that can take a backend now, best first: lowest load/capacity ratio, ties shuffled so
/// that simultaneous spawns spread out.
pub fn candidates(
    drones: &[DroneRecord],
    executor: ExecutorKind,
    liveness: &Liveness,
) -> Result<Vec<DroneRecord>, NoDrone> {
    if drones.is_empty() {
        return Err(NoDrone::NoneRegistered);
    }
    let live: Vec<&DroneRecord> = drones.iter().filter(|d| d.is_live(liveness)).collect();
    if live.is_empty() {
        return Err(NoDrone::NoneLive {
            known: drones.len(),
        });
    }
    let mut usable: Vec<DroneRecord> = live
        .into_iter()
        .filter(|d| !d.draining && d.executor == executor && d.load < d.capacity)
        .cloned()
        .collect();
    if usable.is_empty() {
        return Err(NoDrone::NoneWithRoom);
    }
    usable.shuffle(&mut rand::thread_rng());
    // Stable sort keeps the shuffled order among equally loaded drones. Compare load/capacity
    // as cross products to stay in integers.
    usable.sort_by(|a, b| {
        (u64::from(a.load) * u64::from(b.capacity))
            .cmp(&(u64::from(b.load) * u64::from(a.capacity)))
    });
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_protocol::ids::DroneId;
    use plane_protocol::messages::UnixMillis;

    fn at(now: UnixMillis, grace_ms: u64) -> Liveness {
        Liveness {
            now,
            grace_ms,
            listening_since: 0,
        }
    }

    fn drone(id: &str, load: u32, capacity: u32, last_heartbeat: UnixMillis) -> DroneRecord {
        DroneRecord {
            id: DroneId::new(id).expect("valid"),
            executor: ExecutorKind::Process,
            capacity,
            load,
            draining: false,
            proxy_scheme: "http".into(),
            proxy_port: 9090,
            last_heartbeat,
            started_at: 0,
            lost: false,
        }
    }

    #[test]
    fn least_loaded_first() {
        let drones = [
            drone("a", 5, 10, 100),
            drone("b", 1, 10, 100),
            drone("c", 3, 4, 100),
        ];
        let order: Vec<String> = candidates(&drones, ExecutorKind::Process, &at(100, 10))
            .expect("candidates")
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn skips_stale_full_draining_and_other_executors() {
        let mut draining = drone("d", 0, 10, 100);
        draining.draining = true;
        let mut docker = drone("e", 0, 10, 100);
        docker.executor = ExecutorKind::Docker;
        let drones = [
            drone("stale", 0, 10, 0),
            drone("full", 10, 10, 100),
            draining,
            docker,
            drone("ok", 9, 10, 100),
        ];
        let order = candidates(&drones, ExecutorKind::Process, &at(100, 10)).expect("one usable");
        assert_eq!(order.len(), 1);
        assert_eq!(order[0].id.as_str(), "ok");
    }

    #[test]
    fn says_why_nothing_fits() {
        assert_eq!(
            candidates(&[], ExecutorKind::Process, &at(0, 10)),
            Err(NoDrone::NoneRegistered)
        );
        assert_eq!(
            candidates(&[drone("a", 0, 1, 0)], ExecutorKind::Process, &at(100, 10)),
            Err(NoDrone::NoneLive { known: 1 })
        );
        assert_eq!(
            candidates(
                &[drone("a", 1, 1, 100)],
                ExecutorKind::Process,
                &at(100, 10)
            ),
            Err(NoDrone::NoneWithRoom)
        );
    }

    #[test]
    fn silence_before_the_controller_listened_does_not_count() {
        let just_restarted = Liveness {
            now: 100,
            grace_ms: 10,
            listening_since: 95,
        };
        let old_heartbeat = drone("a", 0, 1, 0);
        let order = candidates(
            std::slice::from_ref(&old_heartbeat),
            ExecutorKind::Process,
            &just_restarted,
        );
        assert!(order.is_ok(), "{order:?}");
        let later = Liveness {
            now: 106,
            ..just_restarted
        };
        assert_eq!(
            candidates(&[old_heartbeat], ExecutorKind::Process, &later),
            Err(NoDrone::NoneLive { known: 1 })
        );
    }
}
