//! Forwarding between two TCP sockets without going through the connection's buffers: zero
//! copy (socket → pipe → socket with `splice(2)`, bytes never enter user space) or through a
//! large pooled copy buffer, whichever measured faster for the traffic (see [`Carry`]).
//!
//! Pipes cost two file descriptors each, and the descriptor budget is shared with every client
//! and backend socket (8,000 WebSockets already take 16,000), so a pipe is taken from a small
//! process-wide pool only while bytes move and given back, empty, as soon as the source has
//! nothing more: an idle relay holds no pipe and no buffer. Copy buffers are pooled and held the
//! same way; a splicing flow falls back to one when no pipe can be had (descriptors run out).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::limits::UPGRADE_RELAY_BUFFER_BYTES;
use crate::stall::Stall;

/// Capacity asked of each pipe (the kernel's default is 64 KiB): the most one `splice` moves.
pub(crate) const PIPE_BYTES: usize = 256 * 1024;

/// Idle pipes kept for reuse; more are closed when given back.
const POOL_MAX: usize = 64;

/// A pool of equal copy buffers.
struct BufferPool {
    size: usize,
    max_idle: usize,
    idle: Mutex<Vec<Box<[u8]>>>,
}

impl BufferPool {
    const fn new(size: usize, max_idle: usize) -> BufferPool {
        BufferPool {
            size,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Box<[u8]> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        pooled.unwrap_or_else(|| vec![0; self.size].into_boxed_slice())
    }

    fn give_back(&self, buf: Box<[u8]>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() == self.size && idle.len() < self.max_idle {
            idle.push(buf);
        }
    }
}

/// Buffers for bodies of known length: large, so a big body moves in few system calls (1 MiB
/// responses through the proxy, wrk -c16: 16 KiB buffers 0.63x direct, 128 KiB 0.69x, 512 KiB
/// 0.78-0.82x); few kept idle (2 MiB at most).
static BODY_BUFFERS: BufferPool = BufferPool::new(512 * 1024, 4);

/// Buffers for relays: sized for messages, since a thousand relays may move at once; 1 MiB
/// kept idle at most.
static RELAY_BUFFERS: BufferPool = BufferPool::new(UPGRADE_RELAY_BUFFER_BYTES, 64);

/// A buffer from one of the pools, given back when dropped: for code that moves bytes through
/// a stream it must read and write itself (TLS), held only while bytes move.
pub(crate) struct PooledBuffer {
    buf: Option<Box<[u8]>>,
    pool: &'static BufferPool,
}

impl PooledBuffer {
    /// A large buffer, for a body of known length.
    pub(crate) fn body() -> PooledBuffer {
        Self::from(&BODY_BUFFERS)
    }

    /// A message-sized buffer, for a relay.
    pub(crate) fn relay() -> PooledBuffer {
        Self::from(&RELAY_BUFFERS)
    }

    fn from(pool: &'static BufferPool) -> PooledBuffer {
        PooledBuffer {
            buf: Some(pool.take()),
            pool,
        }
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

/// How a flow carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// Socket → pipe → socket with `splice(2)`; a copy buffer only when no pipe can be had.
    Splice,
    /// `recv` into a pooled buffer, `send` out of it. On loopback this measured faster than
    /// splicing, for large HTTP bodies (1 MiB responses: 1,003 vs 845 req/s) and for WebSocket
    /// messages alike (see `bench/RESULTS.md`).
    Copy,
}

/// A pipe's two ends.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe only means more, smaller splices.
        // SAFETY: F_SETPIPE_SZ on an open pipe descriptor takes an int size.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        Ok(Pipe { read, write })
    }

    /// An empty pipe from the pool, or a new one.
    pub(crate) fn take() -> io::Result<Pipe> {
        let pooled = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Gives an empty pipe back for reuse. A pipe that may still hold bytes must be dropped
    /// instead (closed), never pooled.
    pub(crate) fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// Idle pipes in the pool now.
#[cfg(test)]
pub(crate) fn pooled() -> usize {
    POOL.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors borrowed for the call; null offsets mean "current
    // position", as sockets and pipes require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What carries a flow's bytes between a read and the writes that pass them on.
enum Carrier {
    Pipe(Pipe),
    /// A pooled copy buffer: `buf[start..end]` is read and not yet written.
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// One direction between two TCP sockets: reads from `from`, writes to `to`, and when `from`
/// ends, shuts `to` down for writing so the far side sees the close.
pub(crate) struct Flow<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    carry: Carry,
    carrier: Option<Carrier>,
    /// Bytes in the pipe, not yet written.
    held: usize,
    /// Bytes still to move; `u64::MAX` for "until `from` ends".
    remaining: u64,
    eof: bool,
    copied: u64,
    stall: Stall,
}

impl<'a> Flow<'a> {
    /// A flow until `from` ends, shutting `to` down after it; writes fail after `progress`
    /// without any.
    pub(crate) fn until_end(
        from: &'a TcpStream,
        to: &'a TcpStream,
        carry: Carry,
        progress: Duration,
    ) -> Flow<'a> {
        Flow::new(from, to, carry, u64::MAX, progress)
    }

    /// A flow of exactly `len` bytes (an HTTP body of known length); `to` stays open.
    pub(crate) fn exactly(
        from: &'a TcpStream,
        to: &'a TcpStream,
        carry: Carry,
        len: u64,
        progress: Duration,
    ) -> Flow<'a> {
        Flow::new(from, to, carry, len, progress)
    }

    fn new(
        from: &'a TcpStream,
        to: &'a TcpStream,
        carry: Carry,
        remaining: u64,
        progress: Duration,
    ) -> Flow<'a> {
        Flow {
            from,
            to,
            carry,
            carrier: None,
            held: 0,
            remaining,
            eof: false,
            copied: 0,
            stall: Stall::new(progress),
        }
    }

    pub(crate) fn copied(&self) -> u64 {
        self.copied
    }

    fn until_eof(&self) -> bool {
        self.remaining == u64::MAX
    }

    /// Moves bytes until the flow is complete (all of an exact length, or `from` ended and `to`
    /// was shut down). An exact flow whose source ends early fails with `UnexpectedEof`.
    pub(crate) fn poll_flow(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Pass on what was read.
            while self.held > 0 || self.buffered() > 0 {
                match self.to.poll_write_ready(cx) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        // The peer is not taking bytes: that may last only so long.
                        if let Poll::Ready(error) = self.stall.poll_stalled(cx) {
                            return Poll::Ready(Err(error));
                        }
                        return Poll::Pending;
                    }
                }
                let to_fd = self.to.as_raw_fd();
                let written = match &mut self.carrier {
                    Some(Carrier::Pipe(pipe)) => {
                        let (pipe_fd, held) = (pipe.read.as_raw_fd(), self.held);
                        self.to
                            .try_io(Interest::WRITABLE, || splice(pipe_fd, to_fd, held))
                    }
                    Some(Carrier::Buffer { buf, start, end }) => {
                        let bytes = &buf[*start..*end];
                        self.to.try_io(Interest::WRITABLE, || {
                            // SAFETY: writing from a live buffer to an open socket.
                            let n = unsafe {
                                libc::send(
                                    to_fd,
                                    bytes.as_ptr().cast(),
                                    bytes.len(),
                                    libc::MSG_NOSIGNAL,
                                )
                            };
                            if n < 0 {
                                Err(io::Error::last_os_error())
                            } else {
                                Ok(n as usize)
                            }
                        })
                    }
                    None => unreachable!("bytes are held only in a carrier"),
                };
                match written {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.stall.progress();
                        self.copied += n as u64;
                        match &mut self.carrier {
                            Some(Carrier::Buffer { start, .. }) => *start += n,
                            _ => self.held -= n,
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            self.stall.progress();
            if self.eof {
                self.release();
                if self.until_eof() {
                    let _ = socket2::SockRef::from(self.to).shutdown(std::net::Shutdown::Write);
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body cut short",
                )));
            }
            if self.remaining == 0 {
                self.release();
                return Poll::Ready(Ok(()));
            }
            // Empty: read more, or give the carrier back while there is nothing to read.
            match self.from.poll_read_ready(cx) {
                Poll::Pending => {
                    self.release();
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            }
            // At most what a pipe holds, or the whole copy buffer.
            let most = match self.carry {
                Carry::Splice => PIPE_BYTES,
                Carry::Copy => self.buffers().size,
            };
            let want = usize::try_from(self.remaining).map_or(most, |r| r.min(most));
            if self.carrier.is_none() {
                let pipe = match self.carry {
                    Carry::Splice => Pipe::take().ok(),
                    Carry::Copy => None,
                };
                self.carrier = Some(match pipe {
                    Some(pipe) => Carrier::Pipe(pipe),
                    None => Carrier::Buffer {
                        buf: self.buffers().take(),
                        start: 0,
                        end: 0,
                    },
                });
            }
            let from_fd = self.from.as_raw_fd();
            let read = match &mut self.carrier {
                Some(Carrier::Pipe(pipe)) => {
                    let pipe_fd = pipe.write.as_raw_fd();
                    self.from
                        .try_io(Interest::READABLE, || splice(from_fd, pipe_fd, want))
                }
                Some(Carrier::Buffer { buf, start, end }) => {
                    *start = 0;
                    *end = 0;
                    let len = want.min(buf.len());
                    let ptr = buf.as_mut_ptr();
                    let mut short = None;
                    let read = self.from.try_io(Interest::READABLE, || {
                        // SAFETY: reading into a live buffer of at least `len` bytes.
                        let n = unsafe { libc::recv(from_fd, ptr.cast(), len, 0) };
                        if n < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        let n = n as usize;
                        if n > 0 && n < len {
                            // A stream socket that gave less than asked has nothing more now:
                            // saying "would block" makes the reactor forget the readiness
                            // (unless an event came since), sparing a read that would only
                            // fail with EAGAIN. tokio's own reads do the same.
                            short = Some(n);
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(n)
                    });
                    match (read, short) {
                        (Err(_), Some(n)) => Ok(n),
                        (read, _) => read,
                    }
                }
                None => unreachable!("a carrier was just taken"),
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    if !self.until_eof() {
                        self.remaining -= n as u64;
                    }
                    match &mut self.carrier {
                        Some(Carrier::Buffer { end, .. }) => *end = n,
                        _ => self.held = n,
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Whether the flow holds bytes it is trying to write: an error now is the destination's.
    pub(crate) fn is_writing(&self) -> bool {
        self.held > 0 || self.buffered() > 0
    }

    /// The pool this flow's copy buffers come from.
    fn buffers(&self) -> &'static BufferPool {
        if self.until_eof() {
            &RELAY_BUFFERS
        } else {
            &BODY_BUFFERS
        }
    }

    fn buffered(&self) -> usize {
        match &self.carrier {
            Some(Carrier::Buffer { start, end, .. }) => end - start,
            _ => 0,
        }
    }

    /// Gives the (empty) carrier back: an idle flow holds no pipe and no buffer.
    fn release(&mut self) {
        debug_assert!(self.held == 0 && self.buffered() == 0);
        match self.carrier.take() {
            Some(Carrier::Pipe(pipe)) => pipe.give_back(),
            Some(Carrier::Buffer { buf, .. }) => self.buffers().give_back(buf),
            None => {}
        }
    }
}

impl Drop for Flow<'_> {
    fn drop(&mut self) {
        // A pipe that may still hold bytes is closed, never pooled.
        if self.held == 0 && self.buffered() == 0 {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_exact_lengths_and_until_the_end_and_pools_its_pipe() {
        let (mut src, from) = crate::sockets::tcp_pair().await;
        let (to, mut dst) = crate::sockets::tcp_pair().await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                src.write_all(&data).await.expect("write");
                src.shutdown().await.expect("shutdown");
                src
            })
        };
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dst.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut exact = Flow::exactly(&from, &to, Carry::Copy, 1_000_000, Duration::from_secs(10));
        poll_fn(|cx| exact.poll_flow(cx)).await.expect("exact flow");
        assert_eq!(exact.copied(), 1_000_000);
        drop(exact);
        let mut rest = Flow::until_end(&from, &to, Carry::Splice, Duration::from_secs(10));
        poll_fn(|cx| rest.poll_flow(cx))
            .await
            .expect("flow to the end");
        assert_eq!(rest.copied(), 2_000_000);
        drop(rest);
        let _src = writer.await.expect("writer");
        assert_eq!(
            reader.await.expect("reader"),
            data,
            "every byte, in order, then the close"
        );
        assert!(pooled() >= 1, "the pipe went back to the pool");
    }

    #[tokio::test]
    async fn an_exact_flow_cut_short_fails() {
        let (mut src, from) = crate::sockets::tcp_pair().await;
        let (to, _dst) = crate::sockets::tcp_pair().await;
        src.write_all(b"short").await.expect("write");
        drop(src);
        let mut flow = Flow::exactly(&from, &to, Carry::Splice, 100, Duration::from_secs(10));
        let error = poll_fn(|cx| flow.poll_flow(cx))
            .await
            .expect_err("cut short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
