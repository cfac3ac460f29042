use super::*;
use std::os::unix::process::ExitStatusExt;

const TIMEOUT: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

/// A value no other process on the machine has in its environment.
fn unique_marker(test: &str) -> String {
    format!("{test}-{}-{:?}", std::process::id(), Instant::now())
}

#[test]
fn drop_kills_the_whole_process_group() {
    let marker = unique_marker("drop-kills-group");
    let mut command = sh("sleep 100 & sleep 100 & echo started; wait");
    command.env("PLANE_TEST_MARKER", &marker);
    let child = ChildGuard::spawn("sleepers", command).unwrap();
    child.wait_for_output("started", TIMEOUT).unwrap();
    // sh and both sleeps. A process in the middle of exec has no readable environment for a
    // moment, so look again until all three show.
    let deadline = Instant::now() + TIMEOUT;
    let pids = loop {
        let pids = processes_with_env("PLANE_TEST_MARKER", &marker);
        if pids.len() == 3 || Instant::now() > deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(pids.len(), 3, "expected sh and two sleeps, found {pids:?}");
    assert!(pids.contains(&child.pid()));

    drop(child);
    // Drop returns only once every member of the group is dead (a zombie at worst).
    for pid in &pids {
        assert!(!process_alive(*pid), "pid {pid} survived the guard");
    }
    assert_eq!(
        processes_with_env("PLANE_TEST_MARKER", &marker),
        Vec::<u32>::new()
    );
}

#[test]
fn wait_for_output_returns_the_line_from_either_stream() {
    let child = ChildGuard::spawn(
        "printer",
        sh("echo one; echo 'two: stderr' >&2; echo three; sleep 100"),
    )
    .unwrap();
    assert_eq!(
        child.wait_for_output("two", TIMEOUT).unwrap(),
        "two: stderr"
    );
    assert_eq!(child.wait_for_output("thr", TIMEOUT).unwrap(), "three");
    // Already printed lines are found again.
    assert_eq!(child.wait_for_output("one", TIMEOUT).unwrap(), "one");
    let output = child.output_so_far();
    assert!(
        output.contains("one\n") && output.contains("three\n"),
        "{output:?}"
    );
}

#[test]
fn wait_for_output_wakes_on_a_later_line() {
    let child = ChildGuard::spawn("late", sh("sleep 0.2; echo ready now; sleep 100")).unwrap();
    let started = Instant::now();
    assert_eq!(
        child.wait_for_output("ready", TIMEOUT).unwrap(),
        "ready now"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn wait_for_output_fails_on_timeout_and_on_closed_output() {
    let child = ChildGuard::spawn("quiet", sh("echo something else; sleep 100")).unwrap();
    let error = child
        .wait_for_output("never", Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("did not print") && error.contains("something else"),
        "{error}"
    );

    let child = ChildGuard::spawn("short", sh("echo bye")).unwrap();
    let error = child
        .wait_for_output("never", TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("closed its output") && error.contains("bye"),
        "{error}"
    );
}

#[test]
fn wait_exit_reports_code_and_signal() {
    let child = ChildGuard::spawn("exit3", sh("exit 3")).unwrap();
    assert_eq!(child.wait_exit(TIMEOUT).unwrap().code(), Some(3));
    assert!(
        child.signal(libc::SIGTERM).is_err(),
        "signalling a reaped child must fail"
    );

    let child = ChildGuard::spawn("sleeper", sh("echo up; exec sleep 100")).unwrap();
    child.wait_for_output("up", TIMEOUT).unwrap();
    assert!(child.wait_exit(Duration::from_millis(100)).is_err());
    assert!(process_alive(child.pid()));
    child.signal(libc::SIGTERM).unwrap();
    assert_eq!(
        child.wait_exit(TIMEOUT).unwrap().signal(),
        Some(libc::SIGTERM)
    );
    assert!(!process_alive(child.pid()));
}

#[test]
fn line_containing_finds_whole_lines() {
    assert_eq!(line_containing("a\nbcd\ne", "c"), Some("bcd"));
    assert_eq!(line_containing("abc", "b"), Some("abc"));
    assert_eq!(line_containing("a\nb\n", "b"), Some("b"));
    assert_eq!(line_containing("a\n", "x"), None);
}

#[test]
fn process_alive_for_self_and_nonsense() {
    assert!(process_alive(std::process::id()));
    assert!(!process_alive(u32::MAX));
    assert!(matches!(process_state(std::process::id()), Some('R' | 'S')));
}

#[test]
fn group_members_are_found_through_proc() {
    let child = ChildGuard::spawn("group", sh("sleep 100 & echo started; wait")).unwrap();
    child.wait_for_output("started", TIMEOUT).unwrap();
    let pgid = libc::pid_t::try_from(child.pid()).unwrap();
    assert_eq!(live_group_members(pgid).len(), 2);
    drop(child);
    assert!(live_group_members(pgid).is_empty());
}
