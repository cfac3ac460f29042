//! Child processes that cannot outlive the test: each runs in its own process group, which is
//! SIGKILLed and reaped on drop, and its output is captured so a test can wait for a line (and
//! see everything the child printed when it fails).

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long dropping a [`ChildGuard`] waits for the members of its killed group to die.
pub const GROUP_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often that wait looks at /proc: other processes' deaths offer no event to wait on.
const GROUP_EXIT_POLL: Duration = Duration::from_millis(5);

/// A running child process and its process group, killed and reaped when dropped.
pub struct ChildGuard {
    name: String,
    pid: u32,
    shared: Arc<Shared>,
    waiter: Option<JoinHandle<()>>,
}

/// What the reader and waiter threads tell the test, behind one lock so a waiting test wakes on
/// any change.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Everything printed so far on stdout and stderr, interleaved by line.
    output: String,
    /// Output streams not yet at end of file.
    open_streams: usize,
    /// Set once the child has been reaped; from then on its pid may belong to someone else.
    exit: Option<std::io::Result<ExitStatus>>,
}

impl ChildGuard {
    /// Spawns `command` in a new process group with stdin closed and stdout and stderr captured
    /// (and echoed to the test's stderr prefixed with `[name]`).
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {name}: {command:?}"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open_streams: 2,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        // `spawn` with piped stdout and stderr always provides both handles.
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(name, stdout, &shared);
        spawn_reader(name, stderr, &shared);
        let pid = child.id();
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || wait_and_reap(child, &shared))
        };
        Ok(ChildGuard {
            name: name.to_owned(),
            pid,
            shared,
            waiter: Some(waiter),
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the child has printed so far (stdout and stderr, interleaved by line).
    pub fn output_so_far(&self) -> String {
        self.shared.lock().output.clone()
    }

    /// Waits until the child prints a line containing `needle` (already printed counts) and
    /// returns that line. Fails when the timeout passes or the child closes its output first;
    /// the error includes the output so far.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(line) = line_containing(&state.output, needle) {
                return Ok(line.to_owned());
            }
            if state.open_streams == 0 {
                bail!(
                    "{} closed its output without printing {needle:?}; it printed:\n{}",
                    self.name,
                    state.output
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}; it printed:\n{}",
                    self.name,
                    state.output
                );
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// Sends `signal` to the child (not to the rest of its group). Fails once the child has been
    /// reaped, since its pid may then name another process.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // Hold the lock: the waiter reaps under it, so the pid cannot be recycled meanwhile.
        let state = self.shared.lock();
        if let Some(exit) = &state.exit {
            bail!(
                "{} already exited ({exit:?}); not sending signal {signal}",
                self.name
            );
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to {}", self.name));
        }
        drop(state);
        Ok(())
    }

    /// Waits for the child to exit and returns its status, once everything it printed has been
    /// captured (its output streams closed; should another process of its group hold them open,
    /// until `timeout`). Other members of its process group may still be running (drop the
    /// guard to kill them).
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let output_complete = state.open_streams == 0 || Instant::now() >= deadline;
            match &state.exit {
                Some(Ok(status)) if output_complete => return Ok(*status),
                Some(Err(error)) => bail!("waiting for {}: {error}", self.name),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}; it printed:\n{}",
                    self.name,
                    state.output
                );
            }
            state = self.shared.wait(state, deadline - now);
        }
    }
}

impl Drop for ChildGuard {
    /// Kills the whole process group, reaps the child and waits (up to [`GROUP_EXIT_TIMEOUT`])
    /// until no other member of the group is alive, so a test may check right after the drop
    /// that nothing survived.
    fn drop(&mut self) {
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        // SAFETY: killpg has no memory-safety preconditions. The group id stays reserved while
        // any member lives, so this cannot hit an unrelated process group.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        // SIGKILL takes effect when each member next runs; grandchildren are not ours to wait for,
        // so watch /proc until they are gone (zombies count as gone).
        let deadline = Instant::now() + GROUP_EXIT_TIMEOUT;
        while !live_group_members(pgid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(GROUP_EXIT_POLL);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking reader thread cannot leave the state inconsistent: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

fn spawn_reader(name: &str, stream: impl Read + Send + 'static, shared: &Arc<Shared>) {
    let prefix = format!("[{name}] ");
    let shared = shared.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut text = String::from_utf8_lossy(&line).into_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            // Through `eprint!` (not `std::io::stderr()`) so the test harness captures it and
            // shows it only for failing tests.
            eprint!("{prefix}{text}");
            let mut state = shared.lock();
            state.output.push_str(&text);
            shared.changed.notify_all();
        }
        shared.lock().open_streams -= 1;
        shared.changed.notify_all();
    });
}

/// Waits for the child to exit without reaping it (it stays a zombie, so its pid cannot be
/// reused), then reaps it under the lock that [`ChildGuard::signal`] holds.
fn wait_and_reap(mut child: Child, shared: &Shared) {
    // SAFETY: siginfo_t is plain old data, for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let mut state = shared.lock();
    state.exit = Some(child.wait());
    shared.changed.notify_all();
}

/// The whole line of `output` that contains `needle`, without its newline.
fn line_containing<'a>(output: &'a str, needle: &str) -> Option<&'a str> {
    let at = output.find(needle)?;
    let start = output[..at].rfind('\n').map_or(0, |newline| newline + 1);
    let end = output[at..]
        .find('\n')
        .map_or(output.len(), |newline| at + newline);
    Some(&output[start..end])
}

/// Whether a process with this pid exists and has not exited. A zombie (exited, not yet reaped)
/// counts as dead.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks existence and permission.
    let exists = unsafe { libc::kill(pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !matches!(process_state(pid), Some('Z' | 'X') | None)
}

/// The fields of `/proc/PID/stat` this module needs.
struct ProcStat {
    /// `R`, `S`, `D`, `Z`, ...
    state: char,
    /// Process group id.
    pgrp: libc::pid_t,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself contain spaces or parentheses; the fields after
    // it are `state ppid pgrp ...`.
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, pgrp })
}

fn process_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|stat| stat.state)
}

/// Pids in /proc, in no particular order.
fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// Members of process group `pgid` that have not exited (zombies excluded).
fn live_group_members(pgid: libc::pid_t) -> Vec<u32> {
    all_pids()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|stat| stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X'))
        })
        .collect()
}

/// Pids of the live processes whose environment (as given at exec) contains `KEY=VALUE`, e.g.
/// every backend started with `PLANE_BACKEND_ID=...`. Processes whose environment is not
/// readable (other users') are skipped.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{key}={value}").into_bytes();
    let mut pids: Vec<u32> = all_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|&byte| byte == 0).any(|var| var == wanted))
        })
        .filter(|&pid| process_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests;
