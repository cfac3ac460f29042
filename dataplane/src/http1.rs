//! The HTTP/1.1 listener: accept under a connection limit, serve each connection in its own
//! task (`exchange.rs`), keep the backend pools trimmed, and drain on shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::drain;
use crate::error::ProxyError;
use crate::exchange::{self, Peer, Proxy};
use crate::http2;
use crate::limits::{ACCEPT_ERROR_BACKOFF, BACKEND_POOL_REAP_INTERVAL};
use crate::sockets;
use crate::{ProxyConfig, RouteTable};

/// Serves HTTP/1.1 on `listener`, routing by `Host` through `table`, until `shutdown` resolves;
/// then stops accepting and gives in-flight requests and upgraded connections
/// `config.shutdown_grace` to finish before closing them.
///
/// # Errors
/// [`ProxyError::Listener`] if `listener` has no local address (it is not a bound socket).
/// Accept errors are logged and retried, never returned; only running out of file descriptors
/// (or memory) pauses the loop, the rest (a connection reset before it was accepted) do not.
///
/// # Cancel safety
/// Dropping the future closes every connection it accepted at their next poll.
pub async fn serve(
    listener: TcpListener,
    table: RouteTable,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let proxy = Arc::new(Proxy::new(table, config));
    serve_listener(listener, proxy, None, permits, Reaping::On, shutdown).await
}

/// Whether a listener's loop also keeps the backend pools trimmed (one per table is enough).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaping {
    On,
    Off,
}

/// The accept loop of [`serve`], with what several listeners of one proxy share passed in: the
/// routes and settings, and the connection limit.
pub(crate) async fn serve_listener(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    permits: Arc<Semaphore>,
    reaping: Reaping,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let grace = proxy.config.shutdown_grace;
    let (drain, watch) = drain::channel();
    let reaper = (reaping == Reaping::On).then(|| {
        tokio::spawn(reap_pools(
            proxy.table.clone(),
            proxy.config.backend_pool_idle_timeout,
        ))
    });
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
                    if out_of_resources(&error) {
                        warn!(%local, %error, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        sockets::tune(&stream);
        let peer = Peer::new(peer, permit);
        let proxy = Arc::clone(&proxy);
        match &tls {
            None => tokio::spawn(exchange::serve_connection(
                proxy,
                stream,
                peer,
                watch.clone(),
            )),
            Some(tls) => tokio::spawn(serve_tls(proxy, tls.clone(), stream, peer, watch.clone())),
        };
    }

    info!(%local, "proxy shutting down");
    drop(listener);
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    // Our own handles would keep the drain waiting for ourselves.
    drop((proxy, watch));
    drain.drain(grace).await;
    Ok(())
}

/// Completes a client's TLS handshake within the header read timeout (a client that opens a
/// connection and says nothing is cut as a slow head would be), then serves the connection.
async fn serve_tls(
    proxy: Arc<Proxy>,
    tls: TlsAcceptor,
    stream: TcpStream,
    peer: Peer,
    drain: drain::Watch,
) {
    let mut cut = drain.clone();
    let handshake = tokio::time::timeout(proxy.config.header_read_timeout, tls.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                debug!(%error, peer = %peer.addr, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(peer = %peer.addr, "TLS handshake not completed in time");
                return;
            }
        },
        () = cut.cut() => return,
    };
    let (_, session) = stream.get_ref();
    if session.alpn_protocol() == Some(b"h2") {
        let sni = session.server_name().map(Box::from);
        Box::pin(http2::serve(proxy, stream, peer, sni, drain)).await;
    } else {
        exchange::serve_connection(proxy, stream, peer, drain).await;
    }
}

/// Whether an accept error means the process or system is out of descriptors or memory: the
/// only accept errors that retrying at once cannot fix.
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Closes pooled backend connections that have been idle past the pool's timeout, so an idle
/// backend is not kept holding sockets it has already given up on.
async fn reap_pools(table: RouteTable, idle_timeout: std::time::Duration) {
    let mut tick = tokio::time::interval(BACKEND_POOL_REAP_INTERVAL.min(idle_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        table.for_each_upstream(|upstream| upstream.reap(idle_timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resource_exhaustion_pauses_accepting() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        // ECONNABORTED, EPERM (a firewall), EINTR: accept again at once.
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EINTR] {
            assert!(!out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
    }
}
