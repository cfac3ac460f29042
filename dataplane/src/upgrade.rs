//! Relaying an upgraded (WebSocket) connection: once both sides have switched protocols, bytes
//! are copied both ways without being parsed.
//!
//! Each direction is a [`Pipe`] (one reusable buffer) that, when its reader ends, shuts its
//! writer down so the far side sees the close. Once one direction has ended, the other gets
//! `half_close_grace` to end as well, and then both sockets are closed: a peer that ignores the
//! other side's close (or vanished without one) must not keep the relay, the backend's activity
//! count and the connection slot alive forever. While both directions are open there is
//! deliberately no idle timeout (long-idle WebSockets are legitimate); TCP keepalive on both
//! sockets finds peers that disappeared.
//!
//! The relay starts only after the backend's 101 has reached the client, with whatever either
//! side sent early already passed on; the connection's own buffers are freed before it starts.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::counting::ActiveGuard;
use crate::limits::UPGRADE_RELAY_BUFFER_BYTES;

/// Relays until both directions have closed, one has closed and the other did not follow
/// within `half_close_grace`, or either fails. `guard` keeps the backend counted as active for
/// exactly that long. (Shutdown cuts the relay from outside, with its connection.)
pub(crate) async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    guard: ActiveGuard,
    peer: SocketAddr,
    half_close_grace: Duration,
) {
    let id = guard.route().backend();
    debug!(backend = %id, %peer, "upgraded connection open");
    match relay_io(client, backend, half_close_grace).await {
        Ok(done) => debug!(
            backend = %id,
            %peer,
            to_backend = done.to_backend,
            to_client = done.to_client,
            closed_first = ?done.closed_first,
            other_side_lingered = done.lingered,
            "upgraded connection closed"
        ),
        Err(error) => debug!(
            backend = %id,
            %peer,
            %error,
            "upgraded connection ended with error"
        ),
    }
    drop(guard);
}

/// Which side closed its half of the upgraded connection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closer {
    Client,
    Backend,
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub(crate) to_backend: u64,
    pub(crate) to_client: u64,
    pub(crate) closed_first: Closer,
    /// The other side was still open when the half-close grace ran out.
    pub(crate) lingered: bool,
}

/// Copies bytes both ways until one direction ends (its reader's end is passed on as a shutdown
/// of its writer), then gives the other direction `half_close_grace` to end too.
///
/// # Errors
/// The first I/O error in either direction; it ends both.
///
/// # Cancel safety
/// Dropping the future loses buffered bytes; the caller closes both streams anyway.
pub(crate) async fn relay_io<C, B>(
    client: &mut C,
    backend: &mut B,
    half_close_grace: Duration,
) -> io::Result<Relayed>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let (closed_first, result) = poll_fn(|cx| {
        if let Poll::Ready(result) = up.poll_copy(cx, &mut *client, &mut *backend) {
            return Poll::Ready((Closer::Client, result));
        }
        if let Poll::Ready(result) = down.poll_copy(cx, &mut *backend, &mut *client) {
            return Poll::Ready((Closer::Backend, result));
        }
        Poll::Pending
    })
    .await;
    result?;

    let rest = poll_fn(|cx| match closed_first {
        Closer::Client => down.poll_copy(cx, &mut *backend, &mut *client),
        Closer::Backend => up.poll_copy(cx, &mut *client, &mut *backend),
    });
    let lingered = match tokio::time::timeout(half_close_grace, rest).await {
        Ok(result) => {
            result?;
            false
        }
        Err(_elapsed) => true,
    };
    Ok(Relayed {
        to_backend: up.copied,
        to_client: down.copied,
        closed_first,
        lingered,
    })
}

/// One direction of a relay: a buffer between a reader and a writer.
struct Pipe {
    buf: Box<[u8]>,
    /// `buf[start..end]` is read but not yet written.
    start: usize,
    end: usize,
    /// The reader has ended; once the buffer is written, shut the writer down.
    eof: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    copied: u64,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; UPGRADE_RELAY_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            need_flush: false,
            copied: 0,
        }
    }

    /// Copies from `reader` to `writer` until `reader` ends, then shuts `writer` down. Ready with
    /// the bytes copied, or the first error; must not be polled again after it is ready.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.start < self.end {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.eof {
                // Shutdown flushes first.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
            let mut buf = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    self.start = 0;
                    self.end = n;
                    self.eof = n == 0;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // Nothing more to write for now: push out what a buffering writer holds.
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    /// `(client far end, client near end, backend near end, backend far end)`: the relay runs
    /// between the near ends; the test plays both peers on the far ends.
    fn sockets() -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
        let (client_far, client_near) = duplex(64);
        let (backend_near, backend_far) = duplex(64);
        (client_far, client_near, backend_near, backend_far)
    }

    #[tokio::test(start_paused = true)]
    async fn relays_both_ways_and_ends_at_once_on_a_clean_close() {
        let (mut client, mut client_near, mut backend_near, mut backend) = sockets();
        let relay =
            tokio::spawn(async move { relay_io(&mut client_near, &mut backend_near, GRACE).await });
        // More than the duplex and relay buffers hold at once, in both directions.
        let big = vec![7u8; 100_000];
        let peers = async {
            let to_backend = async {
                client.write_all(&big).await.expect("client write");
                client.shutdown().await.expect("client shutdown");
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.expect("client read");
                back
            };
            let at_backend = async {
                let mut got = vec![0; big.len()];
                backend.read_exact(&mut got).await.expect("backend read");
                assert_eq!(backend.read(&mut [0; 1]).await.expect("eof"), 0);
                backend
                    .write_all(&got[..1000])
                    .await
                    .expect("backend write");
                drop(backend);
                got
            };
            tokio::join!(to_backend, at_backend)
        };
        let started = Instant::now();
        let (back, got) = peers.await;
        assert_eq!(got, big);
        assert_eq!(back, &big[..1000]);
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.to_backend, 100_000);
        assert_eq!(done.to_client, 1000);
        assert_eq!(done.closed_first, Closer::Client);
        assert!(!done.lingered);
        assert!(started.elapsed() < GRACE, "no grace wait when both close");
    }

    #[tokio::test(start_paused = true)]
    async fn client_gone_and_backend_silent_ends_after_the_grace() {
        let (client, mut client_near, mut backend_near, mut backend) = sockets();
        let relay =
            tokio::spawn(async move { relay_io(&mut client_near, &mut backend_near, GRACE).await });
        let started = Instant::now();
        drop(client);
        // The close reaches the backend, which ignores it and keeps its side open.
        assert_eq!(backend.read(&mut [0; 1]).await.expect("eof"), 0);
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.closed_first, Closer::Client);
        assert!(done.lingered);
        assert_eq!(started.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn backend_closed_and_client_silent_ends_after_the_grace() {
        let (mut client, mut client_near, mut backend_near, mut backend) = sockets();
        let relay =
            tokio::spawn(async move { relay_io(&mut client_near, &mut backend_near, GRACE).await });
        let started = Instant::now();
        backend.write_all(b"bye").await.expect("backend write");
        backend.shutdown().await.expect("backend shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("client read");
        assert_eq!(got, b"bye");
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.closed_first, Closer::Backend);
        assert!(done.lingered);
        assert_eq!(started.elapsed(), GRACE);
    }
}
