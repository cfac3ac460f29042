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

const CLUSTER: &str = "bench.plane";

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
        proxy_scheme: "http".into(),
        proxy_port: 9090,
        started_at: 1,
        at: now_millis(),
    }
}

fn spec() -> BackendSpec {
    BackendSpec {
        executable: Executable {
            command: vec!["server".into()],
        },
        max_idle_secs: 300,
        env: Default::default(),
    }
}

/// The bus under test: the in-memory bus, or the NATS server `PLANE_BENCH_NATS` names (give each
/// scenario a fresh `nats-server -js`: the scenarios assume empty buckets).
async fn bench_bus() -> Bus {
    match std::env::var("PLANE_BENCH_NATS") {
        Ok(url) => Bus::connect(&url)
            .await
            .expect("connect to PLANE_BENCH_NATS"),
        Err(_) => Bus::in_memory(),
    }
}

async fn start_controller() -> (Bus, Subjects, Controller, tokio::sync::oneshot::Sender<()>) {
    let bus = bench_bus().await;
    let controller = Controller::new(
        bus.clone(),
        ControllerConfig {
            cluster: CLUSTER.into(),
            drone_grace: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
        },
    )
    .await
    .expect("controller opens its state");
    let listening = controller.listen().await.expect("controller listens");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listening.run(async {
        let _ = stopped.await;
    }));
    (bus, Subjects::new(CLUSTER), controller, stop)
}

/// `drones` drones each beating once a second for `window` (after a 2 s warm-up).
pub async fn heartbeat_load(drones: usize, window: Duration) -> LoadResult {
    let (bus, subjects, controller, _stop) = start_controller().await;
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
    assert_eq!(known, drones, "every drone is known after the warm-up");
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    let events = beat_all_once_a_second(Instant::now() + window).await;
    LoadResult {
        events,
        wall: wall0.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

/// `spawns` spawns, one after another, with `live` ready backends in the cluster on 10 drones.
pub async fn spawn_load(live: usize, spawns: u64) -> LoadResult {
    const DRONES: usize = 10;
    let (bus, subjects, controller, _stop) = start_controller().await;
    let ids: Vec<DroneId> = (0..DRONES).map(drone_name).collect();
    let backends = bus
        .kv(&subjects.backends_bucket())
        .await
        .expect("backends bucket");
    let mut per_drone: Vec<Vec<BackendId>> = vec![Vec::new(); DRONES];
    for i in 0..live {
        let id = BackendId::new(format!("live-{i:08}")).expect("valid id");
        let drone = &ids[i % DRONES];
        let now = now_millis();
        let record = BackendRecord {
            url: format!("http://{id}.{CLUSTER}:9090/"),
            id: id.clone(),
            state: BackendState::Ready,
            reason: None,
            exit_code: None,
            message: None,
            drone: drone.clone(),
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
        per_drone[i % DRONES].push(id);
    }
    // Fake drones: acknowledge every command, beat once a second with their backend lists.
    let mut tasks = Vec::new();
    for (i, drone) in ids.iter().enumerate() {
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
        let (bus, subject, drone, list) = (
            bus.clone(),
            subjects.heartbeat(drone),
            drone.clone(),
            per_drone[i].clone(),
        );
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
    loop {
        let live_drones = controller.drones();
        if live_drones.iter().filter(|d| d.status.live).count() == DRONES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        controller.spawn(spec()).await.expect("warm-up spawn");
    }
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    for _ in 0..spawns {
        controller.spawn(spec()).await.expect("spawn");
    }
    let result = LoadResult {
        events: spawns,
        wall: wall0.elapsed(),
        cpu: process_cpu() - cpu0,
    };
    for task in tasks {
        task.abort();
    }
    result
}
