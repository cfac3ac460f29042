//! Thread per core: the proxy on several threads, each with a runtime of its own and a listening
//! socket of its own on the same address (`SO_REUSEPORT`), so that the kernel spreads new
//! connections across them and a connection then lives on one thread from accept to close.
//! Nothing is stolen or handed between threads on the hot path: a connection's sockets, timers
//! and pooled backend connections (`upstream.rs` keeps one stack per worker) all belong to the
//! thread that accepted it. What the threads share is read-mostly: the route table, the
//! settings, the connection limit.
//!
//! One thread needs none of this: [`Listeners::serve`] then runs on the caller's runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::error;

use crate::error::ProxyError;
use crate::exchange::Proxy;
use crate::http1::{serve_listener, Reaping};
use crate::tls::{Certificate, TlsError};
use crate::upstream;
use crate::{ProxyConfig, RouteTable};

/// Pending connections each listening socket queues before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 4096;

/// The proxy's listening sockets on one address: one per worker thread.
pub struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    /// Set for an HTTPS listener: every connection starts with a handshake.
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("sockets", &self.sockets)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listeners {
    /// Binds `threads` listening sockets to `addr` with `SO_REUSEPORT` (port 0: the first picks
    /// a port, the others join it). Binding happens here, at once, so a busy port is an error
    /// the caller sees before anything starts.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub fn bind(addr: SocketAddr, threads: NonZeroUsize) -> io::Result<Listeners> {
        let mut sockets = Vec::with_capacity(threads.get());
        let mut at = addr;
        for _ in 0..threads.get() {
            let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if threads.get() > 1 {
                socket.set_reuse_port(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&at.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            let listener = std::net::TcpListener::from(socket);
            at = listener.local_addr()?;
            sockets.push(listener);
        }
        Ok(Listeners { sockets, tls: None })
    }

    /// The address bound (with the port chosen, if 0 was asked for).
    ///
    /// # Errors
    /// The socket has no local address (cannot happen for a bound socket).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.sockets.first() {
            Some(socket) => socket.local_addr(),
            None => Err(io::Error::other("no listening socket")),
        }
    }

    /// Makes these listeners HTTPS: each connection is a TLS handshake with `certificate`'s
    /// settings (its current pair, swapped as the files change), then HTTP/1.1; backends are
    /// told `X-Forwarded-Proto: https`.
    ///
    /// # Errors
    /// rustls refuses the settings ([`TlsError::Settings`]).
    pub fn with_tls(mut self, certificate: &Arc<Certificate>) -> Result<Listeners, TlsError> {
        self.tls = Some(TlsAcceptor::from(certificate.server_config()?));
        Ok(self)
    }

    /// Worker threads these listeners serve on.
    pub fn threads(&self) -> usize {
        self.sockets.len()
    }

    /// Serves HTTP/1.1 on every socket as [`serve`](crate::serve) does on one, until `shutdown`
    /// resolves; returns once every worker has drained. With one socket it serves on the
    /// caller's runtime; with more, each gets a thread and a current-thread runtime of its own.
    /// `max_connections` bounds the connections of all threads together.
    ///
    /// # Errors
    /// [`ProxyError::Worker`] if a thread or its runtime cannot start or a worker panicked;
    /// [`ProxyError::Listener`] as from [`serve`](crate::serve).
    ///
    /// # Cancel safety
    /// Dropping the future shuts the workers down (with their grace) in the background.
    pub async fn serve(
        self,
        table: RouteTable,
        mut config: ProxyConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProxyError> {
        if self.tls.is_some() {
            config.scheme = http::uri::Scheme::HTTPS;
        }
        let tls = self.tls;
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let proxy = Arc::new(Proxy::new(table, config));
        let mut sockets = self.sockets.into_iter();
        let Some(first) = sockets.next() else {
            return Err(ProxyError::Listener(io::Error::other(
                "no listening socket",
            )));
        };
        if sockets.len() == 0 {
            let listener =
                tokio::net::TcpListener::from_std(first).map_err(ProxyError::Listener)?;
            return serve_listener(listener, proxy, tls, permits, Reaping::On, shutdown).await;
        }

        // Dropped (with this future) or sent: either way every worker stops.
        let (stop, stopped) = watch::channel(());
        let mut finished = Vec::new();
        for (index, socket) in std::iter::once(first).chain(sockets).enumerate() {
            let (done, finish) = oneshot::channel();
            let worker = Worker {
                index,
                socket,
                proxy: Arc::clone(&proxy),
                tls: tls.clone(),
                permits: Arc::clone(&permits),
                stopped: stopped.clone(),
            };
            thread::Builder::new()
                .name(format!("plane-proxy-{index}"))
                .spawn(move || {
                    let _ = done.send(worker.run());
                })
                .map_err(ProxyError::Worker)?;
            finished.push(finish);
        }
        drop((proxy, stopped));

        shutdown.await;
        let _ = stop.send(());
        let mut result = Ok(());
        for finish in finished {
            let outcome = finish.await.unwrap_or_else(|_| {
                Err(ProxyError::Worker(io::Error::other(
                    "proxy worker thread panicked",
                )))
            });
            if let Err(error) = outcome {
                error!(%error, "proxy worker failed");
                result = result.and(Err(error));
            }
        }
        result
    }
}

/// One worker thread's share of the proxy.
struct Worker {
    index: usize,
    socket: std::net::TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    stopped: watch::Receiver<()>,
}

impl Worker {
    fn run(self) -> Result<(), ProxyError> {
        upstream::set_worker(self.index);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::Worker)?;
        let Worker {
            index,
            socket,
            proxy,
            tls,
            permits,
            mut stopped,
        } = self;
        runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(socket).map_err(ProxyError::Listener)?;
            // The first worker keeps the pools of all of them trimmed.
            let reaping = if index == 0 {
                Reaping::On
            } else {
                Reaping::Off
            };
            let shutdown = async move {
                // A send or the sender's drop: both mean stop.
                let _ = stopped.changed().await;
            };
            serve_listener(listener, proxy, tls, permits, reaping, shutdown).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";

    /// A keep-alive backend answering every request head with [`ANSWER`].
    async fn backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            if stream.write_all(ANSWER).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends one GET on `stream` and reads its whole answer.
    async fn get(stream: &mut TcpStream) -> Vec<u8> {
        stream.write_all(GET).await.expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    struct Running {
        addr: SocketAddr,
        table: RouteTable,
        stop: Option<oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<Result<(), ProxyError>>,
    }

    async fn start(threads: usize, config: ProxyConfig) -> Running {
        let backend = backend().await;
        let table = RouteTable::for_hosts();
        table.set_ready("app.test", backend);
        let listeners = Listeners::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            NonZeroUsize::new(threads).expect("threads"),
        )
        .expect("bind");
        assert_eq!(listeners.threads(), threads);
        let addr = listeners.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(listeners.serve(table.clone(), config, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            table,
            stop: Some(stop),
            served,
        }
    }

    impl Running {
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let served = tokio::time::timeout(Duration::from_secs(10), &mut self.served)
                .await
                .expect("workers stop within their grace");
            served.expect("joined").expect("workers end cleanly");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_worker_serves_the_address_and_pools_its_own_backend_connections() {
        let running = start(2, ProxyConfig::default()).await;
        // SO_REUSEPORT spreads connections by their addresses: 64 reach both sockets but with
        // a chance of 2^-63.
        for _ in 0..64 {
            let mut client = TcpStream::connect(running.addr).await.expect("connect");
            assert!(get(&mut client).await.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        let route = running.table.get("app.test").expect("route");
        let upstream = route.upstream().expect("ready");
        // A worker pools its connection just after the client has its answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (upstream.idle_workers() != BTreeSet::from([0, 1]) || route.active() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            upstream.idle_workers(),
            BTreeSet::from([0, 1]),
            "both workers served requests, each from its own pooled connections"
        );
        assert_eq!(route.active(), 0, "every request stopped counting");
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connection_limit_holds_across_workers() {
        let config = ProxyConfig {
            max_connections: 2,
            ..ProxyConfig::default()
        };
        let running = start(2, config).await;
        // Sixteen clients ask at once, each keeping its connection once answered: were the
        // limit per worker, about four would be answered.
        let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = watch::channel(());
        for i in 0..16 {
            let mut client = TcpStream::connect(running.addr).await.expect("connect");
            let answered = answered.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                let answer = get(&mut client).await;
                let _ = answered.send((i, answer));
                let _ = released.changed().await;
            });
        }
        for _ in 0..2 {
            let (_, answer) = answers.recv().await.expect("answered");
            assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        let third = tokio::time::timeout(Duration::from_millis(300), answers.recv()).await;
        assert!(
            third.is_err(),
            "a third connection was served past max_connections = 2"
        );
        // Each answered connection now closes, letting the next ones in.
        release.send(()).expect("clients wait");
        for _ in 2..16 {
            let (_, answer) = tokio::time::timeout(Duration::from_secs(10), answers.recv())
                .await
                .expect("the rest are served as connections close")
                .expect("answered");
            assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        running.stop().await;
    }
}
