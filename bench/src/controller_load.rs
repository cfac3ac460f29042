//! Paced loads on a controller over the in-memory bus, measured in process CPU time: the code
//! behind `benches/controller.rs`, kept here so that it compiles (and is checked) with the rest.

use plane_bus::Bus;
use plane_controlplane::{Controller, ControllerConfig};
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::messages::{
    now_millis, Ack, BackendSpec, BackendState, DroneCommand, Executable, ExecutorKind, Heartbeat,
};
use plane_protocol::records::BackendRecord;
use plane_protocol::subjects::Subjects;
use std::time::{Duration, Instant};

/// The cluster every controller bench runs.
pub const CLUSTER: &str = "bench.plane";

/// What one load measured.
pub struct LoadResult {
    pub events: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

impl LoadResult {
    pub fn cpu_per_event_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64
    }

    pub fn core_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn drone_name(i: usize) -> DroneId {
    DroneId::new(format!("drone-{i}")).expect("valid drone id")
}

fn heartbeat(drone: &DroneId, backends: Vec<BackendId>) -> Heartbeat {
    Heartbeat {
        drone: drone.clone(),
        executor: ExecutorKind::Process,
        capacity: 1_000_000,
        load: backends.len() as u32,
        backends,
        draining: false,
        drain_deadline: None,
        proxy_scheme: "http".into(),
        proxy_port: 9090,
        // What the DNS server answers for their backends (bench: dnsload).
        ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        certificate: None,
        started_at: 1,
        at: now_millis(),
        usage: Default::default(),
    }
}

/// `total` backends spread evenly over `drones`.
fn spread(total: usize, drones: usize) -> Vec<usize> {
    (0..drones)
        .map(|i| total / drones + usize::from(i < total % drones))
        .collect()
}

/// What a spawn asks for in these benches.
pub fn spec() -> BackendSpec {
    BackendSpec {
        executable: Executable::process(vec!["server".into()]),
        max_idle_secs: 300,
        env: Default::default(),
        require_token: false,
        resources: Default::default(),
        ready_path: None,
    }
}

/// The bus under test: the in-memory bus, or the NATS server `PLANE_BENCH_NATS` names (give each
/// scenario a fresh `nats-server -js`: the scenarios assume empty buckets).
pub async fn bench_bus() -> Bus {
    match std::env::var("PLANE_BENCH_NATS") {
        Ok(url) => Bus::connect(&url)
            .await
            .expect("connect to PLANE_BENCH_NATS"),
        Err(_) => Bus::in_memory(),
    }
}

/// A controller of the bench cluster on `bus` (not listening yet).
pub async fn open_controller(bus: &Bus) -> Controller {
    Controller::new(
        bus.clone(),
        ControllerConfig {
            cluster: CLUSTER.into(),
            drone_grace: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
            key_retention: plane_controlplane::limits::DEFAULT_KEY_RETENTION,
        },
    )
    .await
    .expect("controller opens its state")
}

async fn start_controller() -> (Bus, Subjects, Controller, tokio::sync::oneshot::Sender<()>) {
    let bus = bench_bus().await;
    let controller = open_controller(&bus).await;
    let listening = controller.listen().await.expect("controller listens");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listening.run(async {
        let _ = stopped.await;
    }));
    (bus, Subjects::new(CLUSTER), controller, stop)
}

/// Drones that hold the cluster's live backends: each acknowledges every command and beats once
/// a second listing its backends, as a real drone does. Aborted on drop.
struct Holders {
    ids: Vec<DroneId>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Holders {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Ready backends on holder drones, `counts[i]` of them on `holder-{i}`, written to the
/// cluster's KV.
async fn hold(bus: &Bus, subjects: &Subjects, counts: &[usize]) -> Holders {
    let drones = counts.len();
    let ids: Vec<DroneId> = (0..drones)
        .map(|i| DroneId::new(format!("holder-{i}")).expect("valid drone id"))
        .collect();
    let backends = bus
        .kv(&subjects.backends_bucket())
        .await
        .expect("backends bucket");
    let mut per_drone: Vec<Vec<BackendId>> = vec![Vec::new(); drones];
    let owners = counts
        .iter()
        .enumerate()
        .flat_map(|(drone, &count)| std::iter::repeat_n(drone, count));
    for (i, owner) in owners.enumerate() {
        let id = BackendId::new(format!("live-{i:08}")).expect("valid id");
        let drone = &ids[owner];
        let now = now_millis();
        let record = BackendRecord {
            url: format!("http://{id}.{CLUSTER}:9090/"),
            id: id.clone(),
            state: BackendState::Ready,
            reason: None,
            exit_code: None,
            oom_killed: false,
            pull: None,
            message: None,
            drone: drone.clone(),
            key: None,
            max_idle_secs: 300,
            spec: spec(),
            created_at: now,
            updated_at: now,
            last_seq: 3,
            drone_started_at: Some(1),
            reported_at: Some(now),
        };
        backends
            .create_json(id.as_str(), &record)
            .await
            .expect("preload");
        per_drone[owner].push(id);
    }
    let mut tasks = Vec::new();
    for (drone, list) in ids.iter().zip(per_drone) {
        let mut commands = bus
            .subscribe(&subjects.drone_commands(drone))
            .await
            .expect("subscribe");
        let responder = bus.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = commands.next().await {
                let _: Result<DroneCommand, _> = msg.decode();
                let _ = responder.respond_json(&msg, &Ack::Accepted).await;
            }
        }));
        let (bus, subject, drone) = (bus.clone(), subjects.heartbeat(drone), drone.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let _ = bus
                    .publish_json(&subject, &heartbeat(&drone, list.clone()))
                    .await;
            }
        }));
    }
    Holders { ids, tasks }
}

/// Waits until every holder is known and live.
async fn holders_live(controller: &Controller, holders: &Holders) {
    loop {
        let live = controller
            .drones()
            .iter()
            .filter(|d| d.status.live && holders.ids.contains(&d.record.id))
            .count();
        if live == holders.ids.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `drones` drones each beating once a second for `window` (after a 2 s warm-up), in a cluster
/// with `live` ready backends held by 10 other drones (which beat too, listing them).
pub async fn heartbeat_load(drones: usize, live: usize, window: Duration) -> LoadResult {
    let (bus, subjects, controller, _stop) = start_controller().await;
    let holders = hold(&bus, &subjects, &spread(live, 10)).await;
    holders_live(&controller, &holders).await;
    let ids: Vec<DroneId> = (0..drones).map(drone_name).collect();
    let beat_all_once_a_second = |until: Instant| {
        let (bus, ids, subjects) = (bus.clone(), ids.clone(), subjects.clone());
        async move {
            // One tick every 10 ms sends a hundredth of the drones.
            let per_tick = ids.len().div_ceil(100);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0usize;
            let mut sent = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                for _ in 0..per_tick {
                    let drone = &ids[next % ids.len()];
                    next += 1;
                    let hb = heartbeat(drone, Vec::new());
                    bus.publish_json(&subjects.heartbeat(drone), &hb)
                        .await
                        .expect("publish");
                    sent += 1;
                }
            }
            sent
        }
    };
    beat_all_once_a_second(Instant::now() + Duration::from_secs(2)).await;
    let known = controller.drones().len();
    assert_eq!(known, drones + 10, "every drone is known after the warm-up");
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    let events = beat_all_once_a_second(Instant::now() + window).await;
    LoadResult {
        events,
        wall: wall0.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

/// `spawns` spawns, one after another, with `live` ready backends in the cluster on 10 drones
/// (which take the new ones too).
pub async fn spawn_load(live: usize, spawns: u64) -> LoadResult {
    let (bus, subjects, controller, _stop) = start_controller().await;
    let holders = hold(&bus, &subjects, &spread(live, 10)).await;
    holders_live(&controller, &holders).await;
    for _ in 0..20 {
        controller.spawn(spec()).await.expect("warm-up spawn");
    }
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    for _ in 0..spawns {
        controller.spawn(spec()).await.expect("spawn");
    }
    LoadResult {
        events: spawns,
        wall: wall0.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

/// A running controller over the in-memory bus and 100 drones beating once a second, with
/// `live` ready backends: 10 on `holder-0` (the drone whose heartbeat is measured), the rest
/// spread over the 99 others.
pub struct EventCluster {
    pub controller: Controller,
    heartbeat: Heartbeat,
    backends: plane_bus::Kv,
    _holders: Holders,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl EventCluster {
    /// Deletes a backend's record, so that a run of spawns leaves the cluster its size.
    pub async fn forget(&self, id: &BackendId) {
        self.backends.delete(id.as_str()).await.expect("deleted");
    }

    /// A heartbeat of `holder-0`, listing its 10 backends as its drone would.
    pub fn heartbeat(&self) -> Heartbeat {
        let mut heartbeat = self.heartbeat.clone();
        heartbeat.at = now_millis();
        heartbeat
    }
}

/// The id of the `i`th backend an [`event_cluster`] holds.
pub fn live_backend(i: usize) -> BackendId {
    BackendId::new(format!("live-{i:08}")).expect("valid id")
}

/// The cluster domain of these loads.
pub const BENCH_CLUSTER: &str = CLUSTER;

pub async fn event_cluster(live: usize) -> EventCluster {
    assert!(live >= 10, "holder-0 holds 10 backends");
    let (bus, subjects, controller, stop) = start_controller().await;
    let mut counts = vec![10];
    counts.extend(spread(live - 10, 99));
    let holders = hold(&bus, &subjects, &counts).await;
    holders_live(&controller, &holders).await;
    let listed: Vec<BackendId> = controller
        .view()
        .live_backends_of(&holders.ids[0])
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(listed.len(), 10);
    EventCluster {
        heartbeat: heartbeat(&holders.ids[0], listed),
        backends: bus
            .kv(&subjects.backends_bucket())
            .await
            .expect("backends bucket"),
        controller,
        _holders: holders,
        _stop: stop,
    }
}
