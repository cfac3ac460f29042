//! The per-request routing path (`backend_label` + `RouteTable::lookup`) with small and large
//! tables, for hits, misses and hosts outside the cluster; and counting a request against its
//! route.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plane_bench::route;
use plane_dataplane::RouteTable;

const CLUSTER: &str = "plane.localhost";

fn table_with(routes: usize) -> (RouteTable, Vec<String>) {
    let table = RouteTable::new(CLUSTER);
    let names: Vec<String> = (0..routes).map(|i| format!("backend-{i:08x}")).collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    table.set_ready_many(names.iter().map(|name| (name.as_str(), addr)));
    assert_eq!(table.len(), routes);
    (table, names)
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    for routes in [10, 100_000] {
        let (table, names) = table_with(routes);
        // Mixed case and a port, as browsers send it: exercises the lowercasing path.
        let hit = format!(
            "{}.Plane.Localhost:9090",
            names[routes / 2].to_ascii_uppercase()
        );
        let miss = "backend-ffffffff.plane.localhost:9090".to_owned();
        let outside = "backend-00000001.example.com".to_owned();
        assert!(route(&table, &hit).is_some());
        assert!(route(&table, &miss).is_none());

        for (name, host) in [("hit", &hit), ("miss", &miss), ("outside", &outside)] {
            group.bench_with_input(BenchmarkId::new(name, routes), host, |b, host| {
                b.iter(|| route(&table, black_box(host)))
            });
        }
    }
    group.finish();
}

/// Counting one request against its route: the guard taken at the request head and dropped at
/// the end of the response (an atomic add, and a timestamp and an atomic sub on release).
fn counting(c: &mut Criterion) {
    let (table, names) = table_with(10);
    let route = table.lookup(&names[0]).expect("routed");
    let mut group = c.benchmark_group("counting");
    group.throughput(Throughput::Elements(1));
    group.bench_function("track_and_release", |b| {
        b.iter(|| drop(black_box(route.track())))
    });
    group.finish();
}

criterion_group!(benches, routing, counting);
criterion_main!(benches);
