//! Spawn → ready, measured through the API of a `plane dev` it starts itself, split into the
//! phases a spawn goes through, next to the engine's own `docker run -d` of the same image.
//!
//! ```text
//! spawnload docker PLANE IMAGE COUNT CONCURRENCY   # COUNT container spawns, CONCURRENCY at a
//!                                                  # time; then COUNT bare `docker run -d`
//! spawnload process PLANE BACKEND COUNT LIVE       # COUNT process spawns one at a time, with
//!                                                  # LIVE other backends kept running
//! ```
//!
//! Phases (client-side clock, from the event stream, and for containers the drone's own
//! `create_ms`/`start_ms` from its log): schedule = the spawn call; load = to `starting`
//! (pull check, create, start); answer = from `starting` to `ready` (the first answered HTTP
//! request). Prints p50 and p99 of each, in ms. Every backend is terminated at the end.

use plane_bench::percentile;
use plane_client::{ApiClient, BackendEvent};
use plane_protocol::messages::BackendState;
use plane_protocol::spawn_request::{SpawnExecutable, SpawnRequest};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Log = Arc<Mutex<HashMap<String, (f64, f64)>>>;

/// One spawn's phases, in ms.
#[derive(Clone, Copy, Default)]
struct Phases {
    schedule: f64,
    load: f64,
    answer: f64,
    total: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, mut values: Vec<f64>) {
    let p50 = percentile(&mut values, 50.0);
    let p99 = percentile(&mut values, 99.0);
    println!(
        "{name:<28} p50 {p50:>8.1} ms   p99 {p99:>8.1} ms   (n={})",
        values.len()
    );
}

/// Starts `plane dev` on free ports with its own state directory; returns it, its API URL, and
/// the drone's per-container timings as it logs them.
fn start_dev(
    plane: &str,
    executor: &str,
    state: &std::path::Path,
) -> std::io::Result<(Child, String, Log)> {
    let mut dev = Command::new(plane)
        .args([
            "dev",
            "--api",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--executor",
            executor,
            // Room for every live backend the process case holds.
            "--capacity",
            "4096",
        ])
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let log: Log = Arc::default();
    let (api_tx, api_rx) = std::sync::mpsc::channel();
    for pipe in [
        dev.stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        dev.stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        let api_tx = api_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(api) = line.trim().strip_prefix("API      ") {
                    let _ = api_tx.send(api.trim().to_string());
                }
                if line.contains("container started") {
                    let field = |name: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(&format!("{name}=")))
                            .map(|v| v.trim_matches('"').to_string())
                    };
                    let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
                    if let (Some(id), Some(create), Some(start)) =
                        (field("backend"), number("create_ms"), number("start_ms"))
                    {
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id, (create, start));
                    }
                }
            }
        });
    }
    let api = api_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| std::io::Error::other("plane dev printed no API address"))?;
    Ok((dev, api, log))
}

/// One spawn to `ready`; its id and phases.
async fn spawn_once(api: &ApiClient, request: &SpawnRequest) -> Result<(String, Phases), String> {
    let started = Instant::now();
    let answer = api.spawn(request).await.map_err(|e| e.to_string())?;
    let scheduled = started.elapsed();
    let id = answer.record.id.to_string();
    let mut events = api.events(&id).await.map_err(|e| e.to_string())?;
    let mut starting = None;
    while let Some(event) = events.next_event().await {
        let record = match event.map_err(|e| e.to_string())? {
            BackendEvent::State(record) => record,
            BackendEvent::Updated(_) => continue,
        };
        match record.state {
            BackendState::Starting => starting = Some(started.elapsed()),
            BackendState::Ready => {
                let ready = started.elapsed();
                let starting = starting.unwrap_or(ready);
                return Ok((
                    id,
                    Phases {
                        schedule: ms(scheduled),
                        load: ms(starting - scheduled.min(starting)),
                        answer: ms(ready - starting),
                        total: ms(ready),
                    },
                ));
            }
            BackendState::Terminating | BackendState::Terminated => {
                return Err(format!(
                    "{id} ended: {:?} {:?}",
                    record.reason, record.message
                ))
            }
            _ => {}
        }
    }
    Err(format!("{id}: events ended before ready"))
}

/// A bare `docker run -d` of the image, published on loopback, until an HTTP request through
/// the published port is answered: the engine's own start, for comparison.
fn docker_run(image: &str) -> Result<f64, String> {
    let started = Instant::now();
    let output = Command::new("docker")
        .args(["run", "-d", "-p", "127.0.0.1::8080", image])
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let container = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let port = Command::new("docker")
        .args(["port", &container, "8080/tcp"])
        .output()
        .map_err(|e| e.to_string())?;
    let port = String::from_utf8_lossy(&port.stdout);
    let addr = port.lines().next().unwrap_or_default().trim().to_string();
    let mut answered = None;
    let mut pause = Duration::from_millis(20);
    while started.elapsed() < Duration::from_secs(30) {
        if answers(&addr) {
            answered = Some(started.elapsed());
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    answered
        .map(ms)
        .ok_or_else(|| format!("{container} never answered on {addr}"))
}

fn answers(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: spawnload docker PLANE IMAGE COUNT CONCURRENCY\n       spawnload process PLANE BACKEND COUNT LIVE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, plane, what, count, n] = args.as_slice() else {
        return usage();
    };
    let (Ok(count), Ok(n)) = (count.parse::<usize>(), n.parse::<usize>()) else {
        return usage();
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spawnload: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(kind, plane, what, count, n)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spawnload: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(kind: &str, plane: &str, what: &str, count: usize, n: usize) -> Result<(), String> {
    let state = std::env::temp_dir().join(format!("spawnload-{}", std::process::id()));
    let executor = match kind {
        "docker" | "process" => kind,
        _ => return Err(format!("unknown kind {kind}")),
    };
    let (mut dev, api_url, log) = start_dev(plane, executor, &state).map_err(|e| e.to_string())?;
    let api = ApiClient::new(&api_url).map_err(|e| e.to_string())?;
    // The API answers before the drone's first heartbeat has landed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api
        .drones()
        .await
        .is_ok_and(|drones| drones.iter().any(|d| d.live))
    {
        if Instant::now() > deadline {
            return Err("no live drone within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = |command: Vec<String>, image: Option<String>| SpawnRequest {
        executable: SpawnExecutable {
            image,
            command,
            pull_policy: None,
            credentials: None,
        },
        max_idle_secs: Some(3600),
        env: Default::default(),
        require_token: false,
        resources: Default::default(),
        ready_path: None,
    };
    let mut all_ids = Vec::new();
    let mut phases = Vec::new();
    let result = async {
        match kind {
            "docker" => {
                let request = request(Vec::new(), Some(what.to_string()));
                // One first spawn outside the figures: the engine's caches, Plane's pools.
                let (id, _) = spawn_once(&api, &request).await?;
                all_ids.push(id);
                let started = Instant::now();
                for batch in (0..count).collect::<Vec<_>>().chunks(n.max(1)) {
                    let spawns = batch.iter().map(|_| spawn_once(&api, &request));
                    for outcome in futures::future::join_all(spawns).await {
                        let (id, p) = outcome?;
                        all_ids.push(id.clone());
                        phases.push((id, p));
                    }
                }
                println!(
                    "{count} container spawns, {n} at a time, all ready in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            _ => {
                let command: Vec<String> = what.split_whitespace().map(str::to_string).collect();
                let request = request(command, None);
                for _ in 0..n {
                    let (id, _) = spawn_once(&api, &request).await?;
                    all_ids.push(id);
                }
                for _ in 0..count {
                    let (id, p) = spawn_once(&api, &request).await?;
                    all_ids.push(id.clone());
                    phases.push((id, p));
                    // Keep the live count at `n`: end this one before the next.
                    let _ = api
                        .terminate(all_ids.pop().as_deref().unwrap_or_default())
                        .await;
                }
                println!("{count} process spawns, one at a time, with {n} other backends live");
            }
        }
        Ok::<(), String>(())
    }
    .await;
    for id in &all_ids {
        let _ = api.terminate(id).await;
    }
    result?;
    let pick = |f: fn(&Phases) -> f64| phases.iter().map(|(_, p)| f(p)).collect::<Vec<_>>();
    report("schedule (spawn call)", pick(|p| p.schedule));
    if kind == "docker" {
        let timings = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (mut create, mut start) = (Vec::new(), Vec::new());
        for (id, _) in &phases {
            if let Some((c, s)) = timings.get(id) {
                create.push(*c);
                start.push(*s);
            }
        }
        report("  create (drone)", create);
        report("  start (drone)", start);
    }
    report("load (to starting)", pick(|p| p.load));
    report("first answer (to ready)", pick(|p| p.answer));
    report("spawn -> ready", pick(|p| p.total));
    // Every backend ended (containers stopped and removed), then Plane stopped as Ctrl-C does.
    for id in &all_ids {
        if let Ok(mut events) = api.events(id).await {
            while let Some(Ok(event)) = events.next().await {
                if event.state == BackendState::Terminated {
                    break;
                }
            }
        }
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(dev.id() as libc::pid_t, libc::SIGTERM) };
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&state);
    if kind == "docker" {
        let mut bare = Vec::new();
        for _ in 0..count {
            bare.push(docker_run(what)?);
        }
        report("bare docker run -d -> answer", bare);
    }
    Ok(())
}
