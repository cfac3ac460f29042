//! DNS queries per second against the controller's DNS server, with `dnsperf` (Debian's
//! package): a controller over the in-memory bus whose view holds LIVE ready backends on 100
//! live drones serves the zone on loopback; dnsperf asks for random backends' `A` records for
//! SECS seconds. The server's process is pinned to core 0 and dnsperf to core 1 (`taskset`), so
//! the figure is one core's.
//!
//! ```text
//! taskset -c 0 dnsload LIVE SECS [CLIENTS]     # e.g. dnsload 10000 10
//! ```
//! Prints dnsperf's summary (queries sent, completed, lost, per second, average latency) and the
//! p50/p99 latency of every answer, from dnsperf's `-v` lines.

use plane_bench::controller_load::{event_cluster, live_backend, BENCH_CLUSTER};
use plane_controlplane::dns::{serve, ZoneConfig};
use std::io::Write;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parse = |i: usize, default: usize| {
        args.get(i).map_or(Ok(default), |a| {
            a.parse::<usize>().map_err(|e| format!("{a}: {e}"))
        })
    };
    let (live, secs, clients) = match (parse(1, 10_000), parse(2, 10), parse(3, 4)) {
        (Ok(live), Ok(secs), Ok(clients)) if live >= 10 && secs > 0 && clients > 0 => {
            (live, secs, clients)
        }
        _ => {
            eprintln!("usage: dnsload [LIVE>=10] [SECS] [CLIENTS]");
            return ExitCode::from(2);
        }
    };
    // One worker thread: the server gets the one core it is pinned to.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dnsload: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(live, secs, clients)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dnsload: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(live: usize, secs: usize, clients: usize) -> Result<(), String> {
    // `live` ready backends on 100 live drones, which advertise 127.0.0.1.
    let cluster = event_cluster(live).await;
    let zone = ZoneConfig::new(BENCH_CLUSTER, None, None).map_err(|e| e.to_string())?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = udp.local_addr().map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(udp, tcp, cluster.controller.clone(), zone, async {
        let _ = stopped.await;
    }));
    // Every backend's name, in an order dnsperf walks through.
    let queries = tempfile_path("dnsload-queries");
    {
        let mut file = std::fs::File::create(&queries).map_err(|e| e.to_string())?;
        for i in 0..live {
            writeln!(file, "{}.{BENCH_CLUSTER} A", live_backend(i)).map_err(|e| e.to_string())?;
        }
    }
    println!("{live} live backends; DNS on {addr}; dnsperf for {secs} s, {clients} clients");
    let output = tokio::task::spawn_blocking({
        let queries = queries.clone();
        move || {
            Command::new("taskset")
                .args(["-c", "1", "dnsperf", "-s", "127.0.0.1", "-p"])
                .arg(addr.port().to_string())
                .arg("-d")
                .arg(&queries)
                .args([
                    "-l",
                    &secs.to_string(),
                    "-c",
                    &clients.to_string(),
                    "-q",
                    "500",
                    "-v",
                ])
                .output()
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running dnsperf (Debian's dnsperf package): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `-v`: one line per answer, its latency (seconds) last.
    let mut latencies: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies
            .get(rank.clamp(1, latencies.len().max(1)) - 1)
            .map_or(f64::NAN, |s| s * 1e3)
    };
    for line in text.lines().filter(|l| {
        [
            "Queries sent",
            "Queries completed",
            "Queries lost",
            "Response codes",
            "Queries per second",
            "Average Latency",
            "Latency StdDev",
        ]
        .iter()
        .any(|k| l.trim_start().starts_with(k))
    }) {
        println!("{}", line.trim());
    }
    println!(
        "latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} answers timed)",
        at(50.0),
        at(99.0),
        at(100.0),
        latencies.len()
    );
    let _ = std::fs::remove_file(&queries);
    let _ = stop.send(());
    let _ = server.await;
    if !output.status.success() {
        return Err(format!(
            "dnsperf failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}-{}", std::process::id()))
}
