//! The `process` executor against real child processes: launch errors, exit codes, stopping a
//! whole process group (politely, then by force), the environment a backend sees, and the
//! listener check. Processes are found in `/proc` by a marker variable unique to each test, so
//! tests running in parallel never see each other's children.

use plane_agent::executor::{Executor, Launch, LaunchError, Running};
use plane_agent::process::ProcessExecutor;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{BackendSpec, Executable};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Upper bound for any single step of a test; far above what a healthy run needs.
const STEP: Duration = Duration::from_secs(10);

const MARKER: &str = "PLANE_TEST_MARKER";

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A value no other test (or test run) uses.
fn unique_marker() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "plane-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn launch(command: &[&str], marker: &str, port: u16) -> Launch {
    Launch {
        backend: BackendId::new("test-backend").expect("valid id"),
        spec: BackendSpec {
            executable: Executable::process(command.iter().map(|s| s.to_string()).collect()),
            max_idle_secs: 60,
            env: BTreeMap::new(),
            require_token: false,
            resources: Default::default(),
            ready_path: None,
        },
        env: vec![
            ("PORT".to_string(), port.to_string()),
            ("PLANE_BACKEND_ID".to_string(), "test-backend".to_string()),
            (MARKER.to_string(), marker.to_string()),
        ],
        port,
        credentials: None,
        pull_progress: None,
        token: None,
        log: plane_agent::logs::BackendLog::nowhere(
            BackendId::new("test-backend").expect("valid id"),
        ),
    }
}

/// The environment of a process, as given to `execve`; `None` if unreadable or a zombie.
fn environ(pid: u32) -> Option<HashMap<String, String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (k, v) = entry.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// Live (non-zombie) processes whose environment carries `marker`, with their environments.
fn marked(marker: &str) -> Vec<(u32, HashMap<String, String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        panic!("/proc is not readable; these tests need Linux procfs");
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let env = environ(pid)?;
            (env.get(MARKER).map(String::as_str) == Some(marker)).then_some((pid, env))
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits until `ok` holds for the processes carrying `marker`.
async fn wait_for_marked(
    marker: &str,
    what: &str,
    ok: impl Fn(&[(u32, HashMap<String, String>)]) -> bool,
) -> Vec<(u32, HashMap<String, String>)> {
    let deadline = Instant::now() + STEP;
    loop {
        let found = marked(marker);
        if ok(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; marked processes: {:?}",
            found
                .iter()
                .map(|(pid, _)| (*pid, comm(*pid)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until two `sleep` processes of the test run (the shell may or may not exec the last).
async fn wait_for_two_sleeps(marker: &str) {
    wait_for_marked(marker, "both sleeps to start", |found| {
        found
            .iter()
            .filter(|(pid, _)| comm(*pid) == "sleep")
            .count()
            == 2
    })
    .await;
}

async fn wait_for_none(marker: &str, what: &str) {
    wait_for_marked(marker, what, |found| found.is_empty()).await;
}

async fn start(executor: &ProcessExecutor, launch: Launch) -> Box<dyn Running> {
    match within("launch", executor.launch(launch)).await {
        Ok(running) => running,
        Err(e) => panic!("launch failed: {e}"),
    }
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let executor = ProcessExecutor::new().expect("executor");
    let launch = launch(
        &["/nonexistent/plane-test-no-such-program"],
        &unique_marker(),
        free_port(),
    );
    match within("launch", executor.launch(launch)).await {
        Err(LaunchError::Spawn { program, source }) => {
            assert_eq!(program, "/nonexistent/plane-test-no-such-program");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        Err(other) => panic!("expected a spawn error, got {other}"),
        Ok(_) => panic!("a missing program launched"),
    }
}

#[tokio::test]
async fn an_empty_command_is_refused() {
    let executor = ProcessExecutor::new().expect("executor");
    let launch = launch(&[], &unique_marker(), free_port());
    assert!(matches!(
        within("launch", executor.launch(launch)).await,
        Err(LaunchError::EmptyCommand)
    ));
}

#[tokio::test]
async fn wait_reports_the_exit_code() {
    let executor = ProcessExecutor::new().expect("executor");
    let mut running = start(
        &executor,
        launch(&["sh", "-c", "exit 3"], &unique_marker(), free_port()),
    )
    .await;
    let exit = within("wait", running.wait()).await;
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.signal, None);
    assert!(!exit.success());
    // Waiting again (or stopping) after the exit gives the same answer at once.
    assert_eq!(within("second wait", running.wait()).await, exit);
    assert_eq!(
        within("stop after exit", running.stop(Duration::from_secs(5))).await,
        exit
    );
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    let mut running = start(
        &executor,
        launch(&["sh", "-c", "sleep 100 & sleep 100"], &marker, free_port()),
    )
    .await;
    wait_for_two_sleeps(&marker).await;
    let exit = within("stop", running.stop(Duration::from_secs(5))).await;
    assert_eq!(exit.code, None, "{}", exit.describe());
    assert_eq!(exit.signal, Some(libc::SIGTERM), "{}", exit.describe());
    // The background sleep is not the leader: only killing the group reaches it.
    wait_for_none(&marker, "every process of the group to end").await;
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    // The ignored SIGTERM is inherited by the sleep, which exists only once the trap is set.
    let mut running = start(
        &executor,
        launch(
            &["sh", "-c", "trap '' TERM; sleep 100 & sleep 100"],
            &marker,
            free_port(),
        ),
    )
    .await;
    wait_for_two_sleeps(&marker).await;
    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let exit = within("stop", running.stop(grace)).await;
    let took = started.elapsed();
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{}", exit.describe());
    assert!(took >= grace, "killed after {took:?}, before the grace");
    assert!(
        took < grace + Duration::from_secs(2),
        "stop took {took:?} for a grace of {grace:?}"
    );
    wait_for_none(&marker, "every process of the group to end").await;
}

#[tokio::test]
async fn the_backend_sees_only_its_launch_environment_and_path() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    let port = free_port();
    let mut spec = launch(&["sleep", "100"], &marker, port);
    spec.env.push(("WITH_SPACES".into(), "a b=c".into()));
    let mut expected: HashMap<String, String> = spec.env.iter().cloned().collect();
    expected.insert(
        "PATH".into(),
        std::env::var("PATH").expect("the test runs with a PATH"),
    );
    // Otherwise a leak could not show: the test process must have something else to leak.
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !expected.contains_key(k))
        .collect();
    assert!(
        !ours.is_empty(),
        "the test process has no variable that could leak"
    );

    let mut running = start(&executor, spec).await;
    let found = wait_for_marked(&marker, "the backend to start", |found| found.len() == 1).await;
    assert_eq!(found[0].1, expected, "the test process has {ours:?}");
    within("stop", running.stop(Duration::from_secs(5))).await;
    wait_for_none(&marker, "the backend to end").await;
}

#[tokio::test]
async fn dropping_a_running_backend_kills_its_group() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    let running = start(
        &executor,
        launch(&["sh", "-c", "sleep 100 & sleep 100"], &marker, free_port()),
    )
    .await;
    wait_for_two_sleeps(&marker).await;
    drop(running);
    wait_for_none(&marker, "a dropped backend's group to end").await;
}

#[tokio::test]
async fn verify_listener_accepts_the_backend_itself() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    let port = free_port();
    let script = "import os, socket, time\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
                  s.listen()\n\
                  time.sleep(100)\n";
    let mut running = start(&executor, launch(&["python3", "-c", script], &marker, port)).await;
    assert_eq!(running.address(), ([127, 0, 0, 1], port).into());
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(running.address())
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the backend never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let verdict = within("verify", running.verify_listener()).await;
    assert_eq!(verdict, Ok(()));
    within("stop", running.stop(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn verify_listener_refuses_a_port_held_by_another_process() {
    let executor = ProcessExecutor::new().expect("executor");
    let marker = unique_marker();
    // The test process, not the backend, listens on the backend's port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("local address").port();
    let mut running = start(&executor, launch(&["sleep", "100"], &marker, port)).await;
    let verdict = within("verify", running.verify_listener()).await;
    let problem = verdict.expect_err("a foreign listener was accepted");
    assert!(problem.contains(&port.to_string()), "{problem}");
    within("stop", running.stop(Duration::from_secs(5))).await;
    drop(squatter);
}

#[tokio::test]
async fn verify_listener_refuses_when_nobody_listens() {
    let executor = ProcessExecutor::new().expect("executor");
    let mut running = start(
        &executor,
        launch(&["sleep", "100"], &unique_marker(), free_port()),
    )
    .await;
    assert!(within("verify", running.verify_listener()).await.is_err());
    within("stop", running.stop(Duration::from_secs(5))).await;
}
