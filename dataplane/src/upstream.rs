//! A ready backend's address and its keep-alive pool of idle connections.
//!
//! The pool belongs to the backend's route, so it goes when the backend does. It is a stack:
//! the most recently used connection is reused first (warm in every cache, least likely to have
//! been closed by the backend's own idle timeout) and the oldest are the first to expire. Idle
//! connections are not polled; one that the backend closed meanwhile is found when it is taken
//! (its socket reported readable while idle) or, for a request with no body still to stream,
//! by retrying once on a new connection.
//!
//! With several worker threads (`workers.rs`) each connection is registered with the runtime of
//! the thread that dialled it, so a worker takes only its own connections back: one stack,
//! each entry tagged with its worker, searched from the top.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::sockets;

/// Where requests for a ready backend go, and the idle connections to it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
    /// The worker thread whose runtime the connection is registered with.
    worker: usize,
}

thread_local! {
    /// This thread's worker index; 0 for every thread that is not a numbered worker.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`: the connections it pools are its own.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

fn worker() -> usize {
    WORKER.with(Cell::get)
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // Only pushes and pops happen under the lock: a panic cannot leave the Vec inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently pooled connection of this worker that is still usable, if any.
    pub(crate) fn take_idle(&self, idle_timeout: Duration) -> Option<TcpStream> {
        let now = Instant::now();
        let worker = worker();
        loop {
            let idle = {
                let mut idle = self.lock();
                let at = idle.iter().rposition(|i| i.worker == worker)?;
                if now.saturating_duration_since(idle[at].since) >= idle_timeout {
                    // This was this worker's newest: everything pooled before it is older still.
                    idle.drain(..=at);
                    return None;
                }
                idle.remove(at)
            };
            if still_open(&idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Pools a connection whose last exchange ended cleanly, unless `max_idle` are pooled.
    pub(crate) fn put_idle(&self, stream: TcpStream, max_idle: usize) {
        let mut idle = self.lock();
        if idle.len() < max_idle {
            idle.push(Idle {
                stream,
                since: Instant::now(),
                worker: worker(),
            });
        }
    }

    /// Closes pooled connections idle for `idle_timeout` or more.
    pub(crate) fn reap(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let keep_from = idle
                .iter()
                .position(|i| now.saturating_duration_since(i.since) < idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..keep_from).collect()
        };
        drop(expired);
    }

    /// The workers whose connections are pooled now.
    #[cfg(test)]
    pub(crate) fn idle_workers(&self) -> std::collections::BTreeSet<usize> {
        self.lock().iter().map(|idle| idle.worker).collect()
    }

    /// Idle connections pooled now.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// A connection to send a request on: the newest usable pooled one unless `fresh`, else a
    /// new one; with `true` when it came from the pool (a send that fails on it may go again on
    /// a fresh one).
    pub(crate) async fn connection(
        &self,
        fresh: bool,
        config: &crate::ProxyConfig,
    ) -> io::Result<(TcpStream, bool)> {
        if !fresh {
            if let Some(stream) = self.take_idle(config.backend_pool_idle_timeout) {
                return Ok((stream, true));
            }
        }
        Ok((self.dial(config.backend_connect_timeout).await?, false))
    }

    /// A new connection to the backend, tuned like every backend socket.
    pub(crate) async fn dial(&self, connect_timeout: Duration) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        sockets::tune(&stream);
        Ok(stream)
    }
}

/// Whether an idle connection can still carry a request: nothing arrived on it while it was
/// idle. The reactor's cached readiness answers without a system call unless something did
/// arrive (the backend's FIN, or bytes it should not have sent), or the last read before pooling
/// left the flag set; then one non-blocking read decides.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn pools_newest_first_skips_closed_and_expires() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = Upstream::new(listener.local_addr().expect("addr"));
        let timeout = Duration::from_secs(60);
        let a = upstream.dial(timeout).await.expect("dial a");
        let (mut a_far, _) = listener.accept().await.expect("accept a");
        let b = upstream.dial(timeout).await.expect("dial b");
        let (_b_far, _) = listener.accept().await.expect("accept b");
        let b_port = b.local_addr().expect("b addr").port();
        upstream.put_idle(a, 8);
        upstream.put_idle(b, 8);
        assert_eq!(upstream.idle_count(), 2);

        let newest = upstream.take_idle(timeout).expect("b is open");
        assert_eq!(newest.local_addr().expect("addr").port(), b_port);
        upstream.put_idle(newest, 8);

        // `a` is closed by the backend while pooled; it is skipped, never handed out.
        a_far.shutdown().await.expect("close a");
        drop(a_far);
        let _ = upstream.take_idle(timeout).expect("b");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(upstream.take_idle(timeout).is_none(), "a was closed");

        let c = upstream.dial(timeout).await.expect("dial c");
        upstream.put_idle(c, 1);
        let d = upstream.dial(timeout).await.expect("dial d");
        upstream.put_idle(d, 1);
        assert_eq!(upstream.idle_count(), 1, "no more than max_idle are kept");
        upstream.reap(Duration::ZERO);
        assert_eq!(upstream.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_worker_takes_back_only_its_own_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = std::sync::Arc::new(Upstream::new(listener.local_addr().expect("addr")));
        let timeout = Duration::from_secs(60);
        let ours = upstream.dial(timeout).await.expect("dial");
        let (_far, _) = listener.accept().await.expect("accept");
        upstream.put_idle(ours, 8);
        let other = std::sync::Arc::clone(&upstream);
        let taken_elsewhere = std::thread::spawn(move || {
            set_worker(1);
            other.take_idle(timeout).is_some()
        })
        .join()
        .expect("worker 1");
        assert!(!taken_elsewhere, "worker 1 took worker 0's connection");
        assert!(upstream.take_idle(timeout).is_some(), "worker 0 takes it");
    }
}
