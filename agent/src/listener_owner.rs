//! Who holds a listening TCP port. A `process` backend binds the port the drone picked for it,
//! but between picking and binding any other local process could take that port; the proxy
//! must never forward to such a process. So before a backend is routed, the drone asks the
//! kernel which sockets listen on the port (`sock_diag`) and checks in `/proc` that one belongs
//! to a process of the backend's process group.

use std::collections::HashSet;
use std::fs;
use std::io;

/// Whether a process in process group `pgid` holds a socket listening on TCP `port` (IPv4 or
/// IPv6). Reads `/proc`; blocking.
pub(crate) fn group_listens_on(pgid: i32, port: u16) -> io::Result<bool> {
    let inodes = match crate::sock_diag::listening_inodes(port) {
        Ok(inodes) => inodes,
        // No sock_diag (a kernel without it, a sandbox that forbids netlink): the tables.
        Err(error) => {
            tracing::debug!(%error, "sock_diag unavailable; reading /proc/net/tcp");
            listening_inodes_from_proc(port)?
        }
    };
    if inodes.is_empty() {
        return Ok(false);
    }
    // The group's leader (its pid is the group id) binds the port itself in the common case:
    // look there first, and walk every process (a cost that grows with everything the machine
    // runs) only when it does not.
    if in_group(pgid, pgid) && holds_any(pgid, &inodes) {
        return Ok(true);
    }
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != pgid && in_group(pid, pgid) && holds_any(pid, &inodes) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`crate::sock_diag::listening_inodes`] from `/proc/net/tcp{,6}`: slower, as the kernel
/// formats every socket of the host.
fn listening_inodes_from_proc(port: u16) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => inodes.extend(listening_inodes(&text, port)),
            // No IPv6 on this host.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(inodes)
}

/// Whether process `pid` is in process group `pgid` (processes come and go while we look: an
/// unreadable one is not).
fn in_group(pid: i32, pgid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| process_group(&stat))
        == Some(pgid)
}

/// Whether process `pid` has one of these socket inodes open.
fn holds_any(pid: i32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            socket_inode(&target.to_string_lossy()).is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Inodes of sockets in LISTEN state on `port` in a `/proc/net/tcp{,6}` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Fields 1 (local address), 3 (state) and 9 (inode), without collecting the line.
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let inode = fields.nth(5)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let listening = state == LISTEN && u16::from_str_radix(hex_port, 16).ok()? == port;
            listening.then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// The process group (field 5) of a `/proc/PID/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn process_group(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(table, 8080), [4242]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            listening_inodes_from_proc(port).expect("read /proc"),
            crate::sock_diag::listening_inodes(port).expect("sock_diag"),
            "both ways agree"
        );
        assert!(listening_inodes(table, 8081).is_empty());
        assert_eq!(process_group("12 (a b) c) S 1 77 77 0"), Some(77));
        assert_eq!(socket_inode("socket:[99]"), Some(99));
        assert_eq!(socket_inode("pipe:[99]"), None);
    }

    #[test]
    fn finds_our_own_listener_and_not_a_stranger() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // SAFETY: getpgrp has no preconditions.
        let own_group = unsafe { libc::getpgrp() };
        assert!(group_listens_on(own_group, port).expect("read /proc"));
        assert!(!group_listens_on(own_group + 1_000_000, port).expect("read /proc"));
        drop(listener);
        assert!(!group_listens_on(own_group, port).expect("read /proc"));
    }
}
