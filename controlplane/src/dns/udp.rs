//! DNS over UDP, in batches. hickory-server reads one datagram per `recvfrom`, answers it from a
//! task of its own and writes it with one `sendto`: with every answer a few microseconds of work,
//! the system calls and wake-ups were two thirds of the server's time. Here one `recvmmsg`
//! takes up to [`BATCH`] queries, each is answered inline by the same handler the TCP side
//! uses, and one `sendmmsg` sends the answers back.
//!
//! Answers are cut to what the client takes: its EDNS payload size (which the handler caps at
//! 1232), or 512 bytes without EDNS; whatever does not fit is left out and the answer marked
//! truncated, for the client to ask again over TCP. A datagram that is not a query is dropped; one
//! whose header reads but whose body does not gets FORMERR.

use super::Zone;
use hickory_server::authority::{MessageRequest, MessageResponse};
use hickory_server::proto::op::{Header, MessageType, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::proto::xfer::Protocol;
use hickory_server::proto::ProtoErrorKind;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams taken (and answers sent) per system call.
const BATCH: usize = 64;
/// The largest query read; a longer datagram is not a query this zone answers, and is dropped.
const MAX_QUERY: usize = 4096;
/// The largest UDP answer to a client without EDNS (RFC 1035).
const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// Answers queries on `socket` until an error other than a client's ends it.
pub(super) async fn serve(socket: UdpSocket, zone: Zone) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut inbox = Inbox::new();
    let mut outbox = Outbox::default();
    let answer = Answer::default();
    loop {
        let received = match socket.try_io(Interest::READABLE, || inbox.receive(fd)) {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                socket.readable().await?;
                continue;
            }
            Err(error) if is_fatal(&error) => return Err(error),
            // An ICMP error from an earlier answer's destination, a shortage of buffers, and the
            // like: about one client or one moment, not the socket.
            Err(error) => {
                debug!(%error, "DNS receive failed; going on");
                tokio::task::yield_now().await;
                continue;
            }
        };
        for index in 0..received {
            let Some((query, src)) = inbox.datagram(index) else {
                continue;
            };
            if answer.answer(&zone, query, src).await {
                outbox.push(&answer, src);
            }
        }
        outbox.send(&socket).await?;
        // A flood of queries never leaves the socket unready: give the runtime's other tasks
        // (the API, the proxy in `plane dev`, shutdown) their turn after each batch.
        tokio::task::yield_now().await;
    }
}

/// Whether a socket error means the socket itself is unusable (every other error is about one
/// datagram or a passing shortage, and the server goes on).
fn is_fatal(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL)
    )
}

/// The receive side of a batch: its buffers and the headers `recvmmsg` fills, allocated once.
struct Inbox {
    buffers: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into this Inbox's own
// vectors, and are written anew before every `recvmmsg`: moving the Inbox to another thread
// between calls is safe.
unsafe impl Send for Inbox {}

impl Inbox {
    fn new() -> Self {
        Inbox {
            buffers: vec![0; BATCH * MAX_QUERY],
            // SAFETY: an all-zero sockaddr_storage, iovec and mmsghdr are valid values.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovecs: vec![unsafe { std::mem::zeroed() }; BATCH],
            headers: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Takes the datagrams waiting (up to [`BATCH`]) without blocking; how many.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let buffers = self.buffers.as_mut_ptr();
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                // SAFETY: within `buffers`, which holds BATCH * MAX_QUERY bytes.
                iov_base: unsafe { buffers.add(i * MAX_QUERY) }.cast(),
                iov_len: MAX_QUERY,
            };
            // SAFETY: all-zero is a valid msghdr (no control data, no flags).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            // SAFETY (both): `i` is within the vectors, which hold BATCH entries.
            header.msg_name = unsafe { self.names.as_mut_ptr().add(i) }.cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = unsafe { self.iovecs.as_mut_ptr().add(i) };
            header.msg_iovlen = 1;
            self.headers[i] = libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            };
        }
        // SAFETY: every header points into this Inbox's own vectors, which are neither moved
        // nor resized while the call runs, and describe buffers of the sizes given.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(received as usize)
    }

    /// The `index`th datagram received and who sent it; `None` when it was cut (longer than
    /// [`MAX_QUERY`]) or its sender cannot be answered.
    fn datagram(&self, index: usize) -> Option<(&[u8], SocketAddr)> {
        let header = &self.headers[index];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let src = socket_addr(&self.names[index], header.msg_hdr.msg_namelen)
            .filter(|src| src.port() != 0)?;
        let start = index * MAX_QUERY;
        let len = (header.msg_len as usize).min(MAX_QUERY);
        Some((&self.buffers[start..start + len], src))
    }
}

/// The IPv4 or IPv6 address the kernel wrote into `storage` (`len` bytes of it).
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says it is a sockaddr_in, and it is that long.
            let v4 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says it is a sockaddr_in6, and it is that long.
            let v6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The answers of a batch, waiting to be sent; buffers are reused from batch to batch.
#[derive(Default)]
struct Outbox {
    answers: Vec<Vec<u8>>,
    destinations: Vec<SockAddr>,
    /// How many of `answers` (and `destinations`) this batch uses.
    len: usize,
}

impl Outbox {
    fn push(&mut self, answer: &Answer, to: SocketAddr) {
        if self.len == self.answers.len() {
            self.answers.push(Vec::with_capacity(512));
            self.destinations.push(SockAddr::from(to));
        } else {
            self.destinations[self.len] = SockAddr::from(to);
        }
        // The answer's buffer trades places with an empty one: its bytes are not copied.
        let buffer = &mut self.answers[self.len];
        buffer.clear();
        std::mem::swap(&mut *answer.bytes(), buffer);
        self.len += 1;
    }

    /// Sends every answer of the batch (waiting while the socket's buffer is full), then
    /// empties it. An answer the kernel refuses for its destination is dropped.
    async fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        let mut sent = 0;
        while sent < self.len {
            match socket.try_io(Interest::WRITABLE, || self.send_from(fd, sent)) {
                Ok(count) => sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    socket.writable().await?
                }
                Err(error) if is_fatal(&error) => return Err(error),
                // The first answer of the call could not go (an unreachable or forbidden
                // destination): dropped, and the others go on.
                Err(error) => {
                    debug!(%error, "a DNS answer was not sent");
                    sent += 1;
                }
            }
        }
        self.len = 0;
        Ok(())
    }

    /// One `sendmmsg` of the answers from `first` on; how many went out.
    fn send_from(&mut self, fd: RawFd, first: usize) -> io::Result<usize> {
        let count = (self.len - first).min(BATCH);
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: all-zero is a valid mmsghdr.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            let answer = &self.answers[first + i];
            let to = &self.destinations[first + i];
            iovecs[i] = libc::iovec {
                // sendmmsg only reads the buffer.
                iov_base: answer.as_ptr() as *mut libc::c_void,
                iov_len: answer.len(),
            };
            headers[i].msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            headers[i].msg_hdr.msg_namelen = to.len();
            // SAFETY: `i` is within `iovecs`, which holds BATCH entries.
            headers[i].msg_hdr.msg_iov = unsafe { iovecs.as_mut_ptr().add(i) };
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point to `iovecs`, the answers and the addresses, all alive and
        // unmoved for the duration of the call, with the lengths given.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Where the handler writes an answer: the wire bytes, cut to the client's size. One per
/// loop, reused; the handler API wants an owned, cloneable response handle.
#[derive(Clone, Default)]
struct Answer {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Answer {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // Nothing panics while it is held.
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers `query` from `src` into this buffer; `false` when there is nothing to send.
    async fn answer(&self, zone: &Zone, query: &[u8], src: SocketAddr) -> bool {
        let mut decoder = BinDecoder::new(query);
        match MessageRequest::read(&mut decoder) {
            // Answering answers would make us a reflector.
            Ok(message) if message.message_type() == MessageType::Response => false,
            Ok(message) => {
                self.bytes().clear();
                let request = Request::new(message, src, Protocol::Udp);
                zone.handle_request(&request, self.clone()).await;
                !self.bytes().is_empty()
            }
            Err(error) => match *error.kind {
                ProtoErrorKind::FormError { header, .. }
                    if header.message_type() == MessageType::Query =>
                {
                    let mut response = Header::response_from_request(&header);
                    response.set_response_code(ResponseCode::FormErr);
                    let mut bytes = self.bytes();
                    bytes.clear();
                    response.emit(&mut BinEncoder::new(&mut bytes)).is_ok()
                }
                _ => false,
            },
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Answer {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> io::Result<ResponseInfo> {
        let max_size = response
            .get_edns()
            .as_ref()
            .map_or(CLASSIC_UDP_PAYLOAD, |edns| edns.max_payload());
        let id = response.header().id();
        let mut bytes = self.bytes();
        bytes.clear();
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        match response.destructive_emit(&mut encoder) {
            Ok(info) => Ok(info),
            Err(error) => {
                debug!(%error, "DNS answer could not be encoded; answering SERVFAIL");
                let mut failed = Header::new();
                failed.set_id(id);
                failed.set_message_type(MessageType::Response);
                failed.set_response_code(ResponseCode::ServFail);
                bytes.clear();
                failed
                    .emit(&mut BinEncoder::new(&mut bytes))
                    .map_err(io::Error::other)?;
                Ok(failed.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_about_one_client_do_not_end_the_server() {
        for client in [libc::ECONNREFUSED, libc::EACCES, libc::EPERM, libc::ENOBUFS] {
            assert!(!is_fatal(&io::Error::from_raw_os_error(client)));
        }
        assert!(is_fatal(&io::Error::from_raw_os_error(libc::EBADF)));
    }
}
