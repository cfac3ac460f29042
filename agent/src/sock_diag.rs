//! Listening TCP sockets on a port, asked of the kernel over `NETLINK_SOCK_DIAG` with only the
//! LISTEN state requested: the kernel walks its listening hash alone, so the cost does not grow
//! with the host's other sockets. (`/proc/net/tcp` formats every socket of the host, TIME_WAIT
//! ones included: with a few thousand of those, left by readiness probes and proxied requests,
//! one read took 12 ms here.)

use std::collections::HashSet;
use std::io;
use std::mem::size_of;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// `struct inet_diag_msg`, the part of each answer read here.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// The inodes of the TCP sockets (IPv4 and IPv6) listening on `port`.
pub(crate) fn listening_inodes(port: u16) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(family as u8, port, &mut inodes)?;
    }
    Ok(inodes)
}

/// An owned file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn dump(family: u8, port: u16, inodes: &mut HashSet<u64>) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_LISTEN,
            ..Default::default()
        },
    };
    // SAFETY: the buffer is the request, `#[repr(C)]` and fully initialised, read for its size.
    let sent = unsafe {
        libc::send(
            fd.0,
            (&request as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receives into our buffer, at most its length.
        let received = unsafe { libc::recv(fd.0, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if parse(&buffer[..received as usize], port, inodes)? {
            return Ok(());
        }
    }
}

/// Reads one datagram of answers; `true` once the dump is done.
fn parse(mut data: &[u8], port: u16, inodes: &mut HashSet<u64>) -> io::Result<bool> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
    while data.len() >= size_of::<NlMsgHdr>() {
        let header: NlMsgHdr = read(data).ok_or_else(malformed)?;
        let len = header.len as usize;
        if len < size_of::<NlMsgHdr>() || len > data.len() {
            return Err(malformed());
        }
        match header.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code: i32 = read(&data[size_of::<NlMsgHdr>()..]).ok_or_else(malformed)?;
                return Err(io::Error::from_raw_os_error(-code));
            }
            SOCK_DIAG_BY_FAMILY => {
                let msg: InetDiagMsg =
                    read(&data[size_of::<NlMsgHdr>()..len]).ok_or_else(malformed)?;
                if u16::from_be_bytes(msg.id.sport) == port && u32::from(msg.state) == TCP_LISTEN {
                    inodes.insert(u64::from(msg.inode));
                }
            }
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(false)
}

/// A `#[repr(C)]` plain-data value from the front of `data`, if it is long enough.
fn read<T: Copy + Default>(data: &[u8]) -> Option<T> {
    if data.len() < size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: T is plain data (integers and arrays of them, every bit pattern valid) and `data`
    // holds at least size_of::<T>() bytes; the copy does not care about alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (&mut value as *mut T).cast::<u8>(),
            size_of::<T>(),
        );
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_structures_have_their_sizes() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<InetDiagMsg>(), 72);
    }

    #[test]
    fn finds_listeners_on_both_families_and_not_connections() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = v4.local_addr().expect("addr").port();
        let found = listening_inodes(port).expect("sock_diag");
        assert_eq!(found.len(), 1, "{found:?}");
        // A connection to it (and its accepted end) is not a listener.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _accepted = v4.accept().expect("accept");
        assert_eq!(listening_inodes(port).expect("sock_diag"), found);
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let port6 = v6.local_addr().expect("addr").port();
            assert_eq!(listening_inodes(port6).expect("sock_diag").len(), 1);
        }
        drop(v4);
        assert!(listening_inodes(port).expect("sock_diag").is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut inodes = HashSet::new();
        let mut bad = vec![0u8; 16];
        bad[0] = 200; // a length beyond the data
        assert!(parse(&bad, 1, &mut inodes).is_err());
        assert!(!parse(&[1, 2, 3], 1, &mut inodes).expect("too short to hold a message"));
    }
}
