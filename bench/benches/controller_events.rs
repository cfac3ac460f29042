//! The controller's cost per event, event by event (criterion): handling one heartbeat, and one
//! spawn from scheduling to the drone's acknowledgement, in a cluster with 100 and with 10,000
//! live backends. The heartbeat is that of a drone running 10 of them, listing them as a drone
//! does; the others run on 99 other drones. Both costs must not grow with the cluster.
//!
//! `cargo bench -p plane-bench --bench controller_events`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use plane_bench::controller_load::{event_cluster, EventCluster};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: [usize; 2] = [100, 10_000];

fn heartbeat(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("controller/heartbeat");
    for live in SIZES {
        let cluster: EventCluster = runtime.block_on(event_cluster(live));
        let _guard = runtime.enter();
        group.bench_with_input(BenchmarkId::from_parameter(live), &live, |b, _| {
            b.iter(|| {
                cluster
                    .controller
                    .handle_heartbeat(black_box(cluster.heartbeat()))
            })
        });
    }
    group.finish();
}

fn spawn(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("controller/spawn");
    for live in SIZES {
        let cluster: EventCluster = runtime.block_on(event_cluster(live));
        let cluster = &cluster;
        group.bench_with_input(BenchmarkId::from_parameter(live), &live, |b, _| {
            // Only the spawn is timed; each spawned record is deleted after, untimed, so that
            // the cluster keeps its size however many iterations criterion runs.
            b.to_async(&runtime).iter_custom(|iters| async move {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let record = cluster
                        .controller
                        .spawn(plane_bench::controller_load::spec())
                        .await
                        .expect("spawned");
                    spent += started.elapsed();
                    cluster.forget(&record.id).await;
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, heartbeat, spawn);
criterion_main!(benches);
