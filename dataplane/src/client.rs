//! The client side of a proxied connection: a plain TCP socket, or TLS over one.
//!
//! `exchange.rs` is written once against [`ClientStream`]; what differs is how bytes can move.
//! A plain socket is a file descriptor the proxy reads and writes directly: large bodies and
//! upgraded connections go socket to socket (`splice.rs`), and a closing client is noticed from
//! the socket's readiness alone. A TLS stream has to pass every byte through rustls, so those
//! paths read into a pooled buffer and write through the stream, taking the buffer only while
//! bytes move, as the plain relay does.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::buffer::Buf;
use crate::sockets::write_all;
use crate::splice::{Carry, Flow, PooledBuffer};
use crate::stall::Stall;
use crate::upgrade::{both_ways, Closer, RelayLimits, Relayed};

/// Which side failed while a body moved from the backend to the client.
#[derive(Debug)]
pub(crate) enum BodyFault {
    Backend(io::Error),
    Client(io::Error),
}

/// A client connection the exchange can serve.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + Sized {
    /// The reading half while the writing half is used elsewhere.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half while the reading half is used elsewhere.
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// The host name the client asked for in its TLS handshake (SNI), if any.
    fn server_name(&self) -> Option<&str>;

    /// Whether a connection that opens with the HTTP/2 preface is served as HTTP/2 (h2c): on a
    /// plain listener; over TLS the protocol was chosen in the handshake.
    const PRIOR_KNOWLEDGE_H2: bool;

    /// The plain socket, for a client that turned out to speak prior-knowledge HTTP/2 (h2c);
    /// a TLS client gets back its stream (it chose its protocol in the handshake).
    fn into_plain(self) -> Result<TcpStream, Self>;

    /// Both halves, to read a request body while a response head is written.
    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// Reads what the client sent while the proxy waits on the backend, without waiting:
    /// `Ready(Ok(0))` when the client closed, `Ready(Ok(n))` for bytes read (poll again),
    /// `Pending` when there is nothing (the task is woken when there is). `inbuf` has room.
    fn poll_watch(&mut self, cx: &mut Context<'_>, inbuf: &mut Buf) -> Poll<io::Result<usize>>;

    /// Moves exactly `len` bytes of a response body from `backend` to the client.
    fn carry_body(
        &mut self,
        backend: &TcpStream,
        len: u64,
        progress: Duration,
    ) -> impl Future<Output = Result<(), BodyFault>> + Send;

    /// Relays an upgraded connection both ways until it ends (`upgrade.rs` says how).
    fn relay(
        &mut self,
        backend: &mut TcpStream,
        limits: RelayLimits,
    ) -> impl Future<Output = io::Result<Relayed>> + Send;
}

impl ClientStream for TcpStream {
    const PRIOR_KNOWLEDGE_H2: bool = true;
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn server_name(&self) -> Option<&str> {
        None
    }

    fn into_plain(self) -> Result<TcpStream, Self> {
        Ok(self)
    }

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        TcpStream::split(self)
    }

    fn poll_watch(&mut self, cx: &mut Context<'_>, inbuf: &mut Buf) -> Poll<io::Result<usize>> {
        // Polled by readiness rather than by a read: the socket's own read-ready slot costs no
        // waiter list per wait, and a read happens only when there is something to read.
        loop {
            match self.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => match inbuf.try_read_from(self) {
                    Ok(Some(n)) => return Poll::Ready(Ok(n)),
                    // The readiness is cleared: look again, which registers the waker.
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Err(error)),
                },
            }
        }
    }

    async fn carry_body(
        &mut self,
        backend: &TcpStream,
        len: u64,
        progress: Duration,
    ) -> Result<(), BodyFault> {
        let mut flow = Flow::exactly(backend, self, Carry::Copy, len, progress);
        poll_fn(|cx| flow.poll_flow(cx)).await.map_err(|error| {
            if flow.is_writing() {
                BodyFault::Client(error)
            } else {
                BodyFault::Backend(error)
            }
        })
    }

    async fn relay(&mut self, backend: &mut TcpStream, limits: RelayLimits) -> io::Result<Relayed> {
        crate::upgrade::relay_io(self, backend, limits).await
    }
}

impl ClientStream for TlsStream<TcpStream> {
    const PRIOR_KNOWLEDGE_H2: bool = false;
    type Reader<'a> = tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>;

    fn server_name(&self) -> Option<&str> {
        self.get_ref().1.server_name()
    }

    fn into_plain(self) -> Result<TcpStream, Self> {
        Err(self)
    }

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }

    fn poll_watch(&mut self, cx: &mut Context<'_>, inbuf: &mut Buf) -> Poll<io::Result<usize>> {
        inbuf.poll_read_from(cx, self)
    }

    async fn carry_body(
        &mut self,
        backend: &TcpStream,
        mut len: u64,
        progress: Duration,
    ) -> Result<(), BodyFault> {
        let mut buf = PooledBuffer::body();
        while len > 0 {
            let want = usize::try_from(len).map_or(buf.len(), |len| len.min(buf.len()));
            backend.readable().await.map_err(BodyFault::Backend)?;
            let n = match backend.try_read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(BodyFault::Backend(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    )))
                }
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(BodyFault::Backend(error)),
            };
            write_all(self, &buf[..n], &[], progress)
                .await
                .map_err(BodyFault::Client)?;
            len -= n as u64;
        }
        Ok(())
    }

    async fn relay(&mut self, backend: &mut TcpStream, limits: RelayLimits) -> io::Result<Relayed> {
        relay_through(self, backend, limits).await
    }
}

/// One direction of a relay through a stream the proxy must read and write itself.
struct Direction {
    /// Taken while bytes are held, given back when they are written.
    buf: Option<PooledBuffer>,
    start: usize,
    end: usize,
    /// The source ended and the destination was shut down.
    done: bool,
    copied: u64,
    stall: Stall,
}

impl Direction {
    fn new(progress: Duration) -> Direction {
        Direction {
            buf: None,
            start: 0,
            end: 0,
            done: false,
            copied: 0,
            stall: Stall::new(progress),
        }
    }

    /// Moves bytes from `from` to `to` until the source has nothing more (`Pending`) or ends
    /// (`Ready(Ok)`, after `to` was shut down for writing).
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.start < self.end {
                let Some(buf) = &self.buf else {
                    unreachable!("bytes are held only in a buffer")
                };
                match Pin::new(&mut *to).poll_write(cx, &buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.copied += n as u64;
                        self.stall.progress();
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        if let Poll::Ready(error) = self.stall.poll_stalled(cx) {
                            return Poll::Ready(Err(error));
                        }
                        return Poll::Pending;
                    }
                }
            }
            // Written: pushed out of the TLS layer before reading more.
            match Pin::new(&mut *to).poll_flush(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    if let Poll::Ready(error) = self.stall.poll_stalled(cx) {
                        return Poll::Ready(Err(error));
                    }
                    return Poll::Pending;
                }
            }
            self.stall.progress();
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let buf = self.buf.get_or_insert_with(PooledBuffer::relay);
            let mut read = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Nothing to move: an idle direction holds no buffer.
                    self.buf = None;
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.buf = None;
                        match Pin::new(&mut *to).poll_shutdown(cx) {
                            // The far side learns of the close; a failed shutdown is its loss.
                            Poll::Ready(_) => {
                                self.done = true;
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    self.start = 0;
                    self.end = n;
                }
            }
        }
    }
}

/// [`crate::upgrade::relay_io`] for a client the proxy reads and writes itself (TLS): the same
/// half-close grace and write-progress limit, one pooled buffer per direction while bytes move.
async fn relay_through<C>(
    client: &mut C,
    backend: &mut TcpStream,
    limits: RelayLimits,
) -> io::Result<Relayed>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut backend_read, mut backend_write) = backend.split();
    let mut up = Direction::new(limits.write_progress);
    let mut down = Direction::new(limits.write_progress);
    let (closed_first, lingered) = both_ways(
        |cx, from| match from {
            Closer::Client => up.poll_move(cx, client, &mut backend_write),
            Closer::Backend => down.poll_move(cx, &mut backend_read, client),
        },
        limits.half_close_grace,
    )
    .await?;
    Ok(Relayed {
        to_backend: up.copied,
        to_client: down.copied,
        closed_first,
        lingered,
    })
}
