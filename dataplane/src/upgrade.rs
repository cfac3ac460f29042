//! Relaying an upgraded (WebSocket) connection: once both sides have switched protocols, bytes
//! are moved both ways without being parsed, socket to socket with `splice(2)` (`splice.rs`).
//!
//! Each direction is a [`Flow`] that, when its source ends, shuts its destination down so the
//! far side sees the close. Once one direction has ended, the other gets `half_close_grace` to
//! end as well, and then both sockets are closed: a peer that ignores the other side's close
//! (or vanished without one) must not keep the relay, the backend's activity count and the
//! connection slot alive forever. While both directions are open there is deliberately no idle
//! timeout (long-idle WebSockets are legitimate); TCP keepalive on both sockets finds peers that
//! disappeared, and a peer that stops reading is cut after the write progress timeout.
//!
//! A TLS client cannot be spliced: its relay (`client.rs`) moves bytes through rustls with a
//! pooled buffer per direction, under the same limits.
//!
//! The relay starts only after the backend's 101 has reached the client, with whatever either
//! side sent early already passed on; the connection's own buffers are freed before it starts,
//! and an idle relay holds no pipe either.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use crate::client::ClientStream;
use crate::counting::ActiveGuard;
use crate::splice::{Carry, Flow};

/// How long a relay may run, and how long its writes may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayLimits {
    /// How long one direction may go on after the other has closed.
    pub(crate) half_close_grace: Duration,
    /// A write that makes no progress for this long ends the relay.
    pub(crate) write_progress: Duration,
    /// How bytes are moved.
    pub(crate) carry: Carry,
}

/// Relays until both directions have closed, one has closed and the other did not follow
/// within the grace, either fails, or a write stalls. `guard` keeps the backend counted as
/// active for exactly that long. (Shutdown cuts the relay from outside, with its connection.)
pub(crate) async fn relay<C: ClientStream>(
    client: &mut C,
    backend: &mut TcpStream,
    mut guard: ActiveGuard,
    peer: SocketAddr,
    limits: RelayLimits,
) {
    let route = std::sync::Arc::clone(guard.route());
    let id = route.backend();
    debug!(backend = %id, %peer, "upgraded connection open");
    match client.relay(backend, limits).await {
        Ok(done) => {
            guard.received(done.to_backend);
            guard.sent(done.to_client);
            debug!(
            backend = %id,
            %peer,
            to_backend = done.to_backend,
            to_client = done.to_client,
            closed_first = ?done.closed_first,
            other_side_lingered = done.lingered,
            "upgraded connection closed"
            )
        }
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

/// Runs the two directions of a relay, `poll(cx, from)` moving the bytes that `from` sends,
/// until one ends; then the other gets `grace` to end too. Returns which side closed first and
/// whether the other was still open when the grace ran out. The first error ends both.
pub(crate) async fn both_ways(
    mut poll: impl FnMut(&mut Context<'_>, Closer) -> Poll<io::Result<()>>,
    grace: Duration,
) -> io::Result<(Closer, bool)> {
    let (first, result) = poll_fn(|cx| {
        for side in [Closer::Client, Closer::Backend] {
            if let Poll::Ready(result) = poll(cx, side) {
                return Poll::Ready((side, result));
            }
        }
        Poll::Pending
    })
    .await;
    result?;
    let other = match first {
        Closer::Client => Closer::Backend,
        Closer::Backend => Closer::Client,
    };
    match tokio::time::timeout(grace, poll_fn(|cx| poll(cx, other))).await {
        Ok(result) => result.map(|()| (first, false)),
        Err(_elapsed) => Ok((first, true)),
    }
}

/// Moves bytes both ways until one direction ends (passed on as a shutdown of its
/// destination), then gives the other direction the half-close grace to end too.
///
/// # Errors
/// The first I/O error (or write stall) in either direction; it ends both.
///
/// # Cancel safety
/// Dropping the future loses bytes in flight; the caller closes both sockets anyway.
pub(crate) async fn relay_io(
    client: &TcpStream,
    backend: &TcpStream,
    limits: RelayLimits,
) -> io::Result<Relayed> {
    let mut up = Flow::until_end(client, backend, limits.carry, limits.write_progress);
    let mut down = Flow::until_end(backend, client, limits.carry, limits.write_progress);
    let (closed_first, lingered) = both_ways(
        |cx, from| match from {
            Closer::Client => up.poll_flow(cx),
            Closer::Backend => down.poll_flow(cx),
        },
        limits.half_close_grace,
    )
    .await?;
    Ok(Relayed {
        to_backend: up.copied(),
        to_client: down.copied(),
        closed_first,
        lingered,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    const LIMITS: RelayLimits = RelayLimits {
        half_close_grace: Duration::from_millis(300),
        write_progress: Duration::from_secs(10),
        carry: Carry::Splice,
    };

    /// `(client far end, client near end, backend near end, backend far end)`: the relay runs
    /// between the near ends; the test plays both peers on the far ends.
    async fn sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let (client_far, client_near) = crate::sockets::tcp_pair().await;
        let (backend_near, backend_far) = crate::sockets::tcp_pair().await;
        (client_far, client_near, backend_near, backend_far)
    }

    #[tokio::test]
    async fn relays_both_ways_and_ends_at_once_on_a_clean_close() {
        let (mut client, client_near, backend_near, mut backend) = sockets().await;
        let relay =
            tokio::spawn(async move { relay_io(&client_near, &backend_near, LIMITS).await });
        // More than a pipe and the socket buffers hold at once, in both directions.
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
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
        assert!(got == big, "every byte arrived in order");
        assert_eq!(back, &big[..1000]);
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.to_backend, big.len() as u64);
        assert_eq!(done.to_client, 1000);
        assert_eq!(done.closed_first, Closer::Client);
        assert!(!done.lingered);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn client_gone_and_backend_silent_ends_after_the_grace() {
        let (client, client_near, backend_near, mut backend) = sockets().await;
        let relay =
            tokio::spawn(async move { relay_io(&client_near, &backend_near, LIMITS).await });
        drop(client);
        // The close reaches the backend, which ignores it and keeps its side open.
        assert_eq!(backend.read(&mut [0; 1]).await.expect("eof"), 0);
        let started = Instant::now();
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.closed_first, Closer::Client);
        assert!(done.lingered);
        assert!(started.elapsed() <= LIMITS.half_close_grace + Duration::from_millis(200));
    }

    #[tokio::test]
    async fn backend_closed_and_client_silent_ends_after_the_grace() {
        let (mut client, client_near, backend_near, mut backend) = sockets().await;
        let relay =
            tokio::spawn(async move { relay_io(&client_near, &backend_near, LIMITS).await });
        backend.write_all(b"bye").await.expect("backend write");
        backend.shutdown().await.expect("backend shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("client read");
        assert_eq!(got, b"bye");
        let done = relay.await.expect("relay task").expect("relay");
        assert_eq!(done.closed_first, Closer::Backend);
        assert!(done.lingered);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_ends_the_relay() {
        let (_client, client_near, backend_near, mut backend) = sockets().await;
        let limits = RelayLimits {
            write_progress: Duration::from_millis(300),
            carry: Carry::Copy,
            ..LIMITS
        };
        let relay =
            tokio::spawn(async move { relay_io(&client_near, &backend_near, limits).await });
        // The backend keeps sending; the client never reads, so its window closes.
        let flood = tokio::spawn(async move {
            let chunk = vec![0u8; 1 << 20];
            while backend.write_all(&chunk).await.is_ok() {}
        });
        let error = relay.await.expect("relay task").expect_err("stalled");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        flood.abort();
    }
}
