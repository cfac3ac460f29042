//! The controller's Prometheus metrics (`GET /metrics`, text format 0.0.4). Gauges are read from
//! the view when scraped, so they cost nothing in between; counters and the spawn → ready
//! histogram are atomics bumped where the events happen. With several controllers each counts
//! what it did itself (the spawns it answered, the reports it applied), while the gauges are the
//! cluster's and the same on every controller: sum counters across controllers, not gauges.

use plane_protocol::messages::BackendState;
use plane_protocol::records::DroneState;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a spawn this controller answered ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnOutcome {
    /// A drone took it.
    Placed,
    /// No drone could take it (none live, full, draining, or all refused).
    NoDrone,
    /// A drone or the cluster state failed.
    Failed,
}

impl SpawnOutcome {
    const ALL: [SpawnOutcome; 3] = [
        SpawnOutcome::Placed,
        SpawnOutcome::NoDrone,
        SpawnOutcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            SpawnOutcome::Placed => "placed",
            SpawnOutcome::NoDrone => "no_drone",
            SpawnOutcome::Failed => "failed",
        }
    }
}

/// Upper bounds of the spawn → ready buckets, in seconds: a process is ready in milliseconds,
/// a container in a fraction of a second, a pulled image in seconds to minutes.
const READY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the controller counts.
#[derive(Default)]
pub struct ControllerMetrics {
    spawns: [AtomicU64; 3],
    ready: Histogram,
}

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative), plus one past the last bound.
    buckets: [AtomicU64; READY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl ControllerMetrics {
    pub fn spawned(&self, outcome: SpawnOutcome) {
        let index = SpawnOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.spawns[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A backend got ready `took` after its spawn was accepted.
    pub fn ready_after(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = READY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(READY_BUCKETS.len());
        let h = &self.ready;
        h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The metrics in Prometheus' text format, with the cluster's backends and drones counted
    /// by state.
    pub fn render(
        &self,
        backends: impl IntoIterator<Item = BackendState>,
        drones: impl IntoIterator<Item = DroneState>,
    ) -> String {
        let mut by_state = [0u64; BackendState::ALL.len()];
        for state in backends {
            if let Some(i) = BackendState::ALL.iter().position(|s| *s == state) {
                by_state[i] += 1;
            }
        }
        let drone_states = [
            DroneState::Live,
            DroneState::Draining,
            DroneState::Drained,
            DroneState::Lost,
        ];
        let mut drones_by_state = [0u64; 4];
        for state in drones {
            if let Some(i) = drone_states.iter().position(|s| *s == state) {
                drones_by_state[i] += 1;
            }
        }
        let mut out = String::with_capacity(2048);
        let _ = writeln!(
            out,
            "# HELP plane_backends Backends the cluster holds, by state."
        );
        let _ = writeln!(out, "# TYPE plane_backends gauge");
        for (state, count) in BackendState::ALL.iter().zip(by_state) {
            let _ = writeln!(
                out,
                "plane_backends{{state=\"{}\"}} {count}",
                state.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP plane_drones Drones the cluster knows, by state."
        );
        let _ = writeln!(out, "# TYPE plane_drones gauge");
        for (state, count) in drone_states.iter().zip(drones_by_state) {
            let _ = writeln!(out, "plane_drones{{state=\"{}\"}} {count}", state.as_str());
        }
        let _ = writeln!(
            out,
            "# HELP plane_spawns_total Spawns this controller answered, by outcome."
        );
        let _ = writeln!(out, "# TYPE plane_spawns_total counter");
        for (outcome, count) in SpawnOutcome::ALL.iter().zip(&self.spawns) {
            let _ = writeln!(
                out,
                "plane_spawns_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                count.load(Ordering::Relaxed)
            );
        }
        let h = &self.ready;
        let _ = writeln!(
            out,
            "# HELP plane_spawn_ready_seconds From a spawn's acceptance to its backend being ready."
        );
        let _ = writeln!(out, "# TYPE plane_spawn_ready_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in READY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "plane_spawn_ready_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += h.buckets[READY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "plane_spawn_ready_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "plane_spawn_ready_seconds_sum {sum}");
        // The +Inf bucket's count, not `count` read apart: an observation landing in between
        // must not make the count disagree with the buckets.
        let _ = writeln!(out, "plane_spawn_ready_seconds_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let metrics = ControllerMetrics::default();
        metrics.spawned(SpawnOutcome::Placed);
        metrics.spawned(SpawnOutcome::NoDrone);
        metrics.ready_after(Duration::from_millis(20));
        metrics.ready_after(Duration::from_secs(60));
        let text = metrics.render(
            [
                BackendState::Ready,
                BackendState::Ready,
                BackendState::Loading,
            ],
            [DroneState::Live],
        );
        for line in [
            "plane_backends{state=\"ready\"} 2",
            "plane_backends{state=\"loading\"} 1",
            "plane_backends{state=\"terminated\"} 0",
            "plane_drones{state=\"live\"} 1",
            "plane_spawns_total{outcome=\"placed\"} 1",
            "plane_spawns_total{outcome=\"no_drone\"} 1",
            "plane_spawn_ready_seconds_bucket{le=\"0.01\"} 0",
            "plane_spawn_ready_seconds_bucket{le=\"0.025\"} 1",
            "plane_spawn_ready_seconds_bucket{le=\"30\"} 1",
            "plane_spawn_ready_seconds_bucket{le=\"+Inf\"} 2",
            "plane_spawn_ready_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
