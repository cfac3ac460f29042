//! The HTTP/1.1 listener: accept with a connection limit, serve each connection with hyper under
//! the header limits, and drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::drain;
use crate::error::ProxyError;
use crate::limits::{ACCEPT_ERROR_BACKOFF, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_TIME};
use crate::proxy::{Never, Peer, Proxy};
use crate::{ProxyConfig, RouteTable};

/// Serves HTTP/1.1 on `listener`, routing by `Host` through `table`, until `shutdown` resolves;
/// then stops accepting and gives in-flight requests and upgraded connections
/// `config.shutdown_grace` to finish before closing them.
///
/// # Errors
/// [`ProxyError::Listener`] if `listener` has no local address (it is not a bound socket).
/// Accept errors (e.g. out of file descriptors) are logged and retried, never returned.
///
/// # Cancel safety
/// Dropping the future closes every connection it accepted at their next poll.
pub async fn serve(
    listener: TcpListener,
    table: RouteTable,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let grace = config.shutdown_grace;
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let builder = connection_builder(&config);
    let (drain, watch) = drain::channel();
    let proxy = Arc::new(Proxy::new(table, config, watch.clone()));
    info!(%local, "proxy listening");

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; stop rather than spin if it were
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%local, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            Arc::clone(&proxy),
            builder.clone(),
            watch.clone(),
            permit,
        ));
    }

    info!(%local, "proxy shutting down");
    drop(listener);
    // Our own handles would keep the drain waiting for ourselves.
    drop((proxy, watch));
    drain.drain(grace).await;
    Ok(())
}

fn connection_builder(config: &ProxyConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_request_header_bytes)
        .max_headers(config.max_request_headers)
        // The read buffer must hold a whole head, and hyper refuses less than 8 KiB.
        .max_buf_size(config.max_request_header_bytes.max(8 * 1024) + 8 * 1024);
    builder
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: http1::Builder,
    mut drain: drain::Watch,
    permit: OwnedSemaphorePermit,
) {
    tune_client_socket(&stream, peer);
    // The permit lives in the `Peer`, which an upgraded connection's relay keeps after this task
    // ends: a WebSocket holds its connection slot until it closes.
    let peer = Arc::new(Peer::new(peer, permit));
    let service = {
        let peer = Arc::clone(&peer);
        service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            let peer = Arc::clone(&peer);
            async move { Ok::<_, Never>(proxy.handle(req, &peer).await) }
        })
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.draining() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = drain.cut() => return,
            }
        }
    };
    if let Err(error) = result {
        // Client timeouts, resets and malformed requests: expected on the open internet.
        debug!(peer = %peer.addr, %error, "client connection ended with error");
    }
}

/// Sets `TCP_NODELAY` (responses are written whole; do not wait to coalesce) and TCP keepalive
/// (a client that vanished without a FIN or RST is noticed, so neither a keep-alive connection
/// nor an upgraded one stays open, and counted, forever). Failures only cost those benefits.
fn tune_client_socket(stream: &TcpStream, peer: SocketAddr) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "set_nodelay failed");
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
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!(%peer, %error, "setting TCP keepalive failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_sockets_get_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(TcpStream::connect(addr), listener.accept())
        })
        .await
        .expect("connect in time");
        let _client = client.expect("connect");
        let (stream, peer) = accepted.expect("accept");

        tune_client_socket(&stream, peer);
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
        }
    }
}
