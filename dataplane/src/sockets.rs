//! Socket options and writes that cannot hang: what every client and backend socket gets.

use std::future::Future;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::limits::{TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_TIME, TCP_USER_TIMEOUT};

/// Sets `TCP_NODELAY` (heads and bodies are written whole; do not wait to coalesce), TCP
/// keepalive (a peer that vanished without a FIN or RST is noticed, so neither a keep-alive
/// connection nor an upgraded one stays open, and counted, forever) and `TCP_USER_TIMEOUT` (data
/// left unacknowledged that long ends the connection). Failures only cost those benefits.
pub(crate) fn tune(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "set_nodelay failed");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_TIME);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive.with_interval(TCP_KEEPALIVE_INTERVAL);
    let socket = socket2::SockRef::from(stream);
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        debug!(%error, "setting TCP keepalive failed");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        debug!(%error, "setting TCP_USER_TIMEOUT failed");
    }
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "peer took no data for the write progress timeout",
    )
}

/// Writes all of `first` then `second` (one `writev` when the socket takes both at once),
/// failing if any single write makes no progress for `progress`: a peer that stops reading
/// (a zero window) cannot hold the connection, and what it counts, forever.
pub(crate) async fn write_all<W>(
    writer: &mut W,
    mut first: &[u8],
    mut second: &[u8],
    progress: Duration,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    while !first.is_empty() || !second.is_empty() {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        let slices = if first.is_empty() {
            &slices[1..]
        } else {
            &slices[..]
        };
        // Almost every write completes at once; only one that has to wait gets a timer.
        let n = match poll_now(writer.write_vectored(slices)) {
            Some(written) => written?,
            None => tokio::time::timeout(progress, writer.write_vectored(slices))
                .await
                .map_err(|_| stalled())??,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second = &second[n - from_first..];
    }
    // A TLS stream holds what it could not send yet; a socket holds nothing (ready at once).
    match poll_now(writer.flush()) {
        Some(flushed) => flushed,
        None => tokio::time::timeout(progress, writer.flush())
            .await
            .map_err(|_| stalled())?,
    }
}

/// Polls `future` once: its output if it is ready at once. A write future dropped while
/// pending has written nothing, so it can be polled again later as a new one.
fn poll_now<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Two connected loopback sockets, for tests.
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn sockets_get_nodelay_keepalive_and_user_timeout() {
        let (stream, _far) = tcp_pair().await;
        tune(&stream);
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert!(stream.nodelay().expect("TCP_NODELAY"));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                TCP_KEEPALIVE_TIME
            );
            assert_eq!(
                socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                TCP_KEEPALIVE_INTERVAL
            );
            assert_eq!(
                socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
                Some(TCP_USER_TIMEOUT)
            );
        }
    }

    #[tokio::test]
    async fn writes_both_parts_in_order() {
        let (mut a, mut b) = tcp_pair().await;
        let big = vec![9u8; 300_000];
        let writer = async {
            write_all(&mut a, b"head", &big, Duration::from_secs(10))
                .await
                .expect("write");
            drop(a);
        };
        let reader = async {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read");
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(&got[..4], b"head");
        assert_eq!(got.len(), 4 + big.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_fails_the_write() {
        let (mut a, _b) = tcp_pair().await;
        let big = vec![0u8; 64 << 20];
        let error = write_all(&mut a, &big, &[], Duration::from_secs(5))
            .await
            .expect_err("the far side never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
