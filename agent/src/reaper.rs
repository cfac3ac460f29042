//! The last line against orphans: a tiny process, forked from the drone at start, that kills
//! every backend process group the drone still runs once the drone is gone, however it went
//! (SIGKILL and OOM included).
//!
//! `PR_SET_PDEATHSIG` alone only reaches a backend's first process, not what that process
//! started. The reaper learns each group over a pipe; the kernel closes the pipe when the drone
//! dies, and the reaper then SIGKILLs the groups it knows and exits. It sits in a process group
//! of its own so that whatever kills the drone's group does not take the reaper with it.
//!
//! Between fork and exit the child only makes raw system calls on memory prepared before the
//! fork: no allocation, no lock (another thread of the drone may have held one at fork time).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use tracing::warn;

/// Most process groups the reaper tracks at once (far above any drone's capacity).
const MAX_GROUPS: usize = 65_536;

/// One message on the pipe: `+` or `-`, then a process group id in native byte order.
const RECORD: usize = 5;

/// The drone's end of the pipe to the reaper.
pub(crate) struct Reaper {
    pipe: Mutex<File>,
}

impl Reaper {
    /// Forks the reaper.
    pub(crate) fn start() -> io::Result<Reaper> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read_end, write_end) = (fds[0], fds[1]);
        // Prepared before the fork: the child must not allocate.
        let mut groups: Vec<libc::pid_t> = Vec::with_capacity(MAX_GROUPS);
        // SAFETY: the child runs only `reaper_main`, which makes async-signal-safe system calls
        // and never returns.
        match unsafe { libc::fork() } {
            -1 => {
                let error = io::Error::last_os_error();
                // SAFETY: both fds are ours and open.
                unsafe {
                    libc::close(read_end);
                    libc::close(write_end);
                }
                Err(error)
            }
            0 => reaper_main(read_end, write_end, &mut groups),
            _child => {
                // SAFETY: the read end belongs to the child now; the write end is ours alone.
                unsafe { libc::close(read_end) };
                let pipe = unsafe { File::from_raw_fd(write_end) };
                Ok(Reaper {
                    pipe: Mutex::new(pipe),
                })
            }
        }
    }

    /// From now on, the group dies with the drone.
    pub(crate) fn watch(&self, pgid: libc::pid_t) {
        self.send(b'+', pgid);
    }

    /// The group is gone; its id may be reused and must not be killed later.
    pub(crate) fn forget(&self, pgid: libc::pid_t) {
        self.send(b'-', pgid);
    }

    fn send(&self, op: u8, pgid: libc::pid_t) {
        let mut record = [0u8; RECORD];
        record[0] = op;
        record[1..].copy_from_slice(&pgid.to_ne_bytes());
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        // A write of fewer than PIPE_BUF bytes is atomic, and the reaper reads promptly.
        if let Err(error) = pipe.write_all(&record) {
            warn!(%error, pgid, "cannot reach the reaper; this group may outlive a crashed drone");
        }
    }
}

/// The reaper process. Never returns.
fn reaper_main(read_end: RawFd, write_end: RawFd, groups: &mut Vec<libc::pid_t>) -> ! {
    const PIPE: RawFd = 3;
    // SAFETY (whole function): only async-signal-safe system calls, on memory allocated before
    // the fork; `groups` never grows past the capacity it was given.
    unsafe {
        libc::close(write_end);
        libc::setpgid(0, 0);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(
            libc::PR_SET_NAME,
            c"plane-reaper".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // Hold nothing of the drone's open: its sockets and the backends' output pipes must
        // close when the drone closes them.
        if read_end != PIPE {
            libc::dup2(read_end, PIPE);
        }
        if libc::syscall(
            libc::SYS_close_range,
            PIPE as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            for fd in PIPE + 1..65_536 {
                libc::close(fd);
            }
        }
        for fd in 0..PIPE {
            libc::close(fd);
        }

        let mut buffer = [0u8; RECORD * 256];
        let mut filled = 0usize;
        loop {
            let n = libc::read(
                PIPE,
                buffer[filled..].as_mut_ptr() as *mut libc::c_void,
                buffer.len() - filled,
            );
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break; // The drone is gone (EOF), or the pipe broke: either way, clean up.
            }
            filled += n as usize;
            let whole = filled - filled % RECORD;
            for record in buffer[..whole].chunks_exact(RECORD) {
                let pgid = libc::pid_t::from_ne_bytes([record[1], record[2], record[3], record[4]]);
                match record[0] {
                    b'+' if groups.len() < groups.capacity() => groups.push(pgid),
                    b'-' => {
                        if let Some(i) = groups.iter().position(|&g| g == pgid) {
                            groups.swap_remove(i);
                        }
                    }
                    _ => {}
                }
            }
            buffer.copy_within(whole..filled, 0);
            filled -= whole;
        }
        for &pgid in groups.iter() {
            if pgid > 1 {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}
