//! Placements per second: spawns answered `201` through the controller's HTTP API, each with its
//! drone chosen and that drone's acknowledgement received, with DRONES fake drones heartbeating
//! every second and acknowledging every command at once (no backend runs).
//!
//! ```text
//! placeload DRONES SECS CLIENTS          # e.g. placeload 100 10 32
//! placeload DRONES SECS CLIENTS KEYS     # connects by key instead, e.g. placeload 100 10 50 1000
//! ```
//!
//! The controller and its API run in this process (one worker thread each for the server side,
//! so that `taskset` can pin it), on the in-memory bus, or on a real nats-server when
//! `PLANE_BENCH_NATS` names one (it must be fresh: the buckets are assumed empty). CLIENTS
//! callers spawn back to back for SECS seconds. Prints placements/s and the spawn latency p50 /
//! p99 as the callers saw it. With KEYS, the callers `POST /v1/connect` instead, each call to
//! one of KEYS keys in turn: the first connect of a key places its backend, the others find it;
//! prints the latency of both kinds apart.

use plane_bench::controller_load::{bench_bus, open_controller, CLUSTER};
use plane_bench::percentile;
use plane_bus::Bus;
use plane_client::ApiClient;
use plane_controlplane::api;
use plane_protocol::ids::DroneId;
use plane_protocol::keys::{BackendKey, ConnectRequest};
use plane_protocol::messages::{now_millis, Ack, ExecutorKind, Heartbeat};
use plane_protocol::spawn_request::{SpawnExecutable, SpawnRequest};
use plane_protocol::subjects::Subjects;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A drone that beats every second and accepts every command.
async fn fake_drone(bus: Bus, id: DroneId) -> Result<(), String> {
    let subjects = Subjects::new(CLUSTER);
    let mut commands = bus
        .subscribe(&subjects.drone_commands(&id))
        .await
        .map_err(|e| e.to_string())?;
    let started_at = now_millis();
    let beat = {
        let (bus, id, subject) = (bus.clone(), id.clone(), subjects.heartbeat(&id));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let heartbeat = Heartbeat {
                    drone: id.clone(),
                    executor: ExecutorKind::Process,
                    capacity: 10_000_000,
                    load: 0,
                    backends: Vec::new(),
                    draining: false,
                    drain_deadline: None,
                    proxy_scheme: "http".into(),
                    proxy_port: 80,
                    ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
                    certificate: None,
                    started_at,
                    at: now_millis(),
                    usage: Default::default(),
                };
                let _ = bus.publish_json(&subject, &heartbeat).await;
            }
        })
    };
    while let Some(msg) = commands.next().await {
        let _ = bus.respond_json(&msg, &Ack::Accepted).await;
    }
    beat.abort();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: placeload DRONES SECS CLIENTS [KEYS] (numbers)";
    let (drones, secs, clients, keys) = match args.as_slice() {
        [drones, secs, clients] => (drones, secs, clients, None),
        [drones, secs, clients, keys] => (drones, secs, clients, Some(keys)),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let keys = keys.map(|k| k.parse::<usize>().ok().filter(|&k| k > 0));
    let (Ok(drones), Ok(secs), Ok(clients), None | Some(Some(_))) = (
        drones.parse::<usize>(),
        secs.parse::<u64>(),
        clients.parse::<usize>(),
        keys,
    ) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let keys = keys.flatten();
    // The server side: one thread (pin the process with taskset); the callers get their own.
    let server = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    match server.block_on(run(drones, Duration::from_secs(secs), clients, keys)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("placeload: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    drones: usize,
    secs: Duration,
    clients: usize,
    keys: Option<usize>,
) -> Result<(), String> {
    let bus = bench_bus().await;
    let controller = open_controller(&bus).await;
    let listening = controller.listen().await.map_err(|e| e.to_string())?;
    tokio::spawn(listening.run(std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let api_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(api::serve(
        listener,
        controller.clone(),
        api::ApiConfig::default(),
        std::future::pending(),
    ));
    for i in 0..drones {
        let id = DroneId::new(format!("drone-{i}")).map_err(|e| e.to_string())?;
        tokio::spawn(fake_drone(bus.clone(), id));
    }
    // Every drone heard before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while controller.drones().iter().filter(|d| d.status.live).count() < drones {
        if Instant::now() > deadline {
            return Err("the drones were not all heard within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The callers run on threads of their own, apart from the server's one.
    let callers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let api = ApiClient::new(&api_url).map_err(|e| e.to_string())?;
    let request = SpawnRequest {
        executable: SpawnExecutable {
            command: vec!["true".into()],
            ..Default::default()
        },
        max_idle_secs: None,
        env: Default::default(),
        require_token: false,
        resources: Default::default(),
        ready_path: None,
    };
    if let Some(keys) = keys {
        let result = connect_load(&callers, api, request, secs, clients, keys).await;
        callers.shutdown_background();
        let (created, found, errors, wall) = result?;
        report_connects(drones, clients, keys, wall, created, found, errors);
        return Ok(());
    }
    let started = Instant::now();
    let stop = started + secs;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, request) = (api.clone(), request.clone());
        tasks.push(callers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < stop {
                let sent = Instant::now();
                match api.spawn(&request).await {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.map_err(|e| e.to_string())?;
        latencies.append(&mut l);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    let placed = latencies.len();
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    println!(
        "{drones} drones, {clients} callers, {wall:.1} s: {placed} placements, {:.0}/s, {errors} errors; latency p50 {p50:.2} ms, p99 {p99:.2} ms",
        placed as f64 / wall
    );
    callers.shutdown_background();
    Ok(())
}

type Latencies = Vec<f64>;

/// CLIENTS callers connecting for SECS, call `j` of caller `i` to key `(i + j * CLIENTS) % KEYS`:
/// the latencies of connects that created a backend and of those that found one, the errors,
/// and the wall time.
async fn connect_load(
    callers: &tokio::runtime::Runtime,
    api: ApiClient,
    spawn: SpawnRequest,
    secs: Duration,
    clients: usize,
    keys: usize,
) -> Result<(Latencies, Latencies, u64, f64), String> {
    let run = now_millis();
    let started = Instant::now();
    let stop = started + secs;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (api, spawn) = (api.clone(), spawn.clone());
        tasks.push(callers.spawn(async move {
            let (mut created, mut found, mut errors) = (Vec::new(), Vec::new(), 0u64);
            let mut j = 0;
            while Instant::now() < stop {
                let key = format!("bench-{run}-{}", (i + j * clients) % keys);
                j += 1;
                let Ok(key) = BackendKey::new(key) else {
                    errors += 1;
                    continue;
                };
                let request = ConnectRequest {
                    key,
                    spawn: spawn.clone(),
                    wake: false,
                };
                let sent = Instant::now();
                match api.connect(&request, None).await {
                    Ok(answer) if answer.created => {
                        created.push(sent.elapsed().as_secs_f64() * 1e3)
                    }
                    Ok(_) => found.push(sent.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            (created, found, errors)
        }));
    }
    let (mut created, mut found, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (mut c, mut f, e) = task.await.map_err(|e| e.to_string())?;
        created.append(&mut c);
        found.append(&mut f);
        errors += e;
    }
    Ok((created, found, errors, started.elapsed().as_secs_f64()))
}

fn report_connects(
    drones: usize,
    clients: usize,
    keys: usize,
    wall: f64,
    mut created: Latencies,
    mut found: Latencies,
    errors: u64,
) {
    let total = created.len() + found.len();
    let mut line = format!(
        "{drones} drones, {clients} callers, {keys} keys, {wall:.1} s: {total} connects, {:.0}/s, {errors} errors",
        total as f64 / wall
    );
    for (kind, latencies) in [("created", &mut created), ("found", &mut found)] {
        if latencies.is_empty() {
            continue;
        }
        let count = latencies.len();
        let p50 = percentile(latencies, 50.0);
        let p99 = percentile(latencies, 99.0);
        line.push_str(&format!(
            "; {kind} {count}: p50 {p50:.2} ms, p99 {p99:.2} ms"
        ));
    }
    println!("{line}");
}
