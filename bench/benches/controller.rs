//! Controller cost per event, measured as process CPU time (getrusage) over a paced load on the
//! in-memory bus (or a real nats-server, `PLANE_BENCH_NATS=nats://...`): (1) heartbeats of
//! 1,000 drones, each beating once a second, and (2) spawns one after another, each in a cluster
//! with 100 and with 10,000 live backends (held by 10 more drones that beat with their lists). The fake drones run in this process and
//! cost the same before and after a controller change; the figures are for comparing runs.
//!
//! `cargo bench -p plane-bench --bench controller` (`PLANE_BENCH_SECS` sets the heartbeat
//! window, default 10 s).

use plane_bench::controller_load::{heartbeat_load, spawn_load};

fn main() {
    let secs: u64 = std::env::var("PLANE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // `cargo bench` passes `--bench`; an argument (`heartbeats/100`, `heartbeats/10000`,
    // `spawn/100`, `spawn/10000`) runs that scenario alone.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name == f);
    for live in [100usize, 10_000] {
        if wanted(&format!("heartbeats/{live}")) {
            let window = std::time::Duration::from_secs(secs);
            let r = runtime.block_on(heartbeat_load(1_000, live, window));
            println!(
                "heartbeats/1000_drones/{live}_live_backends: {} heartbeats in {:.1} s, process CPU {:.1} us per heartbeat ({:.1}% of one core)",
                r.events, r.wall.as_secs_f64(), r.cpu_per_event_us(), r.core_share() * 100.0
            );
        }
    }
    for live in [100usize, 10_000] {
        if wanted(&format!("spawn/{live}")) {
            let r = runtime.block_on(spawn_load(live, 500));
            println!(
                "spawn/{live}_live_backends: {} spawns, process CPU {:.1} us per spawn, wall {:.1} us per spawn",
                r.events, r.cpu_per_event_us(), r.wall.as_secs_f64() * 1e6 / r.events as f64
            );
        }
    }
}
