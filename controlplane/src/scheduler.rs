//! Where a new backend goes: a live drone that is not draining, runs the wanted executor and has
//! room. The first choice is the less loaded of two picked at random (power of two choices: close
//! to the least loaded, without every controller and every spawn between two heartbeats herding
//! onto the same drone); the rest follow least loaded first, so that the caller can fall back to
//! the next drone when one does not acknowledge in time.

use crate::liveness::DroneStatus;
use plane_protocol::messages::ExecutorKind;
use plane_protocol::records::DroneRecord;
use rand::seq::SliceRandom;
use std::sync::Arc;

/// Why no drone can take a backend; the text is shown to API users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoDrone {
    #[error("no drone available: no drone has registered in this cluster")]
    NoneRegistered,
    #[error("no drone available: none of the {known} known drones is live")]
    NoneLive { known: usize },
    #[error("no drone available: none of the {live} live drones runs the {executor} executor")]
    NoneRunsExecutor { executor: ExecutorKind, live: usize },
    #[error("no drone available: every live {executor} drone is draining")]
    AllDraining { executor: ExecutorKind },
    #[error("no drone available: every live {executor} drone is full")]
    AllFull { executor: ExecutorKind },
}

/// A drone as the scheduler weighs it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub drone: Arc<DroneRecord>,
    pub status: DroneStatus,
}

impl Candidate {
    /// Compares load/capacity ratios as cross products, in integers.
    fn lighter_than(&self, other: &Candidate) -> std::cmp::Ordering {
        (u64::from(self.status.load) * u64::from(other.drone.capacity))
            .cmp(&(u64::from(other.status.load) * u64::from(self.drone.capacity)))
    }
}

/// Drones that can take a backend now, in the order to try them.
pub fn candidates(
    drones: Vec<Candidate>,
    executor: ExecutorKind,
) -> Result<Vec<Candidate>, NoDrone> {
    if drones.is_empty() {
        return Err(NoDrone::NoneRegistered);
    }
    let known = drones.len();
    let live: Vec<Candidate> = drones.into_iter().filter(|d| d.status.live).collect();
    if live.is_empty() {
        return Err(NoDrone::NoneLive { known });
    }
    let live_count = live.len();
    let running: Vec<Candidate> = live
        .into_iter()
        .filter(|d| d.drone.executor == executor)
        .collect();
    if running.is_empty() {
        return Err(NoDrone::NoneRunsExecutor {
            executor,
            live: live_count,
        });
    }
    let open: Vec<Candidate> = running.into_iter().filter(|d| !d.drone.draining).collect();
    if open.is_empty() {
        return Err(NoDrone::AllDraining { executor });
    }
    let mut usable: Vec<Candidate> = open
        .into_iter()
        .filter(|d| d.status.load < d.drone.capacity)
        .collect();
    if usable.is_empty() {
        return Err(NoDrone::AllFull { executor });
    }
    usable.shuffle(&mut rand::thread_rng());
    if usable.len() >= 2 && usable[1].lighter_than(&usable[0]).is_lt() {
        usable.swap(0, 1);
    }
    // The rest, least loaded first; the stable sort keeps the shuffled order among equals.
    if usable.len() > 2 {
        usable[1..].sort_by(Candidate::lighter_than);
    }
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_protocol::ids::DroneId;

    fn drone(id: &str, load: u32, capacity: u32, live: bool) -> Candidate {
        Candidate {
            drone: Arc::new(DroneRecord {
                id: DroneId::new(id).expect("valid"),
                executor: ExecutorKind::Process,
                capacity,
                load,
                draining: false,
                drain_deadline: None,
                proxy_scheme: "http".into(),
                proxy_port: 9090,
                ip: None,
                certificate: None,
                last_heartbeat: 0,
                started_at: 0,
                lost: false,
                lost_at: None,
            }),
            status: DroneStatus {
                live,
                load,
                last_heartbeat: None,
            },
        }
    }

    fn order(drones: Vec<Candidate>) -> Vec<String> {
        candidates(drones, ExecutorKind::Process)
            .expect("candidates")
            .into_iter()
            .map(|d| d.drone.id.to_string())
            .collect()
    }

    #[test]
    fn the_first_is_the_lighter_of_two_and_the_rest_least_loaded_first() {
        let drones = || {
            vec![
                drone("a", 5, 10, true),
                drone("b", 1, 10, true),
                drone("c", 3, 4, true),
                drone("d", 2, 10, true),
            ]
        };
        let ratio = |id: &str| match id {
            "a" => 0.5,
            "b" => 0.1,
            "c" => 0.75,
            _ => 0.2,
        };
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = order(drones());
            assert_eq!(order.len(), 4);
            // c (3/4) is the heaviest: it loses whichever pair it is drawn in.
            assert_ne!(order[0], "c", "{order:?}");
            firsts.insert(order[0].clone());
            assert!(
                order[1..].windows(2).all(|w| ratio(&w[0]) <= ratio(&w[1])),
                "{order:?}"
            );
        }
        // Not always the global minimum: that is what spreads simultaneous spawns.
        assert!(firsts.len() > 1, "{firsts:?}");
        assert!(firsts.contains("b"));
    }

    #[test]
    fn skips_silent_full_draining_and_other_executors() {
        let mut draining = drone("d", 0, 10, true);
        Arc::make_mut(&mut draining.drone).draining = true;
        let mut docker = drone("e", 0, 10, true);
        Arc::make_mut(&mut docker.drone).executor = ExecutorKind::Docker;
        let drones = vec![
            drone("silent", 0, 10, false),
            drone("full", 10, 10, true),
            draining,
            docker,
            drone("ok", 9, 10, true),
        ];
        assert_eq!(order(drones), ["ok"]);
    }

    #[test]
    fn says_why_nothing_fits() {
        assert_eq!(
            candidates(vec![], ExecutorKind::Process).map(|_| ()),
            Err(NoDrone::NoneRegistered)
        );
        assert_eq!(
            candidates(vec![drone("a", 0, 1, false)], ExecutorKind::Process).map(|_| ()),
            Err(NoDrone::NoneLive { known: 1 })
        );
        assert_eq!(
            candidates(vec![drone("a", 1, 1, true)], ExecutorKind::Process).map(|_| ()),
            Err(NoDrone::AllFull {
                executor: ExecutorKind::Process
            })
        );
        let mut draining = drone("d", 0, 1, true);
        Arc::make_mut(&mut draining.drone).draining = true;
        assert_eq!(
            candidates(
                vec![draining, drone("silent", 0, 1, false)],
                ExecutorKind::Process
            )
            .map(|_| ()),
            Err(NoDrone::AllDraining {
                executor: ExecutorKind::Process
            })
        );
        let refused = candidates(
            vec![drone("a", 0, 1, true), drone("b", 0, 1, true)],
            ExecutorKind::Docker,
        )
        .map(|_| ())
        .expect_err("no docker drone");
        assert_eq!(
            refused.to_string(),
            "no drone available: none of the 2 live drones runs the docker executor"
        );
    }
}
