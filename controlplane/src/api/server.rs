//! Serving the API: HTTP/1.1 connections with a cap on how many are open, a bound on how long
//! a request's headers may take to arrive (slowloris) and on their size, and a graceful
//! shutdown that ends event streams and lets other requests finish.

use super::{router_with, ApiConfig};
use crate::controller::Controller;
use crate::limits::{API_SHUTDOWN_TIMEOUT, MAX_API_HEADER_BYTES};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    controller: Controller,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = Arc::new(watch::Sender::new(false));
    let limits = config.clone();
    let app = router_with(controller, config, closing.clone());
    serve_bounded(listener, app, &limits, closing, shutdown).await
}

/// Serves `app` (e.g. [`super::metrics_router`]) on `listener` with the API's bounds from
/// `config` (its connection cap and header timeout) until `shutdown` resolves.
pub async fn serve_router(
    listener: TcpListener,
    app: axum::Router,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = Arc::new(watch::Sender::new(false));
    serve_bounded(listener, app, config, closing, shutdown).await
}

async fn serve_bounded(
    listener: TcpListener,
    app: axum::Router,
    config: &ApiConfig,
    closing: Arc<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max_connections = config.max_connections;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_API_HEADER_BYTES);
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (one server-sent event each) go out at once instead of waiting on the
        // client's delayed ACK (Nagle): without this every event after the first came ~40 ms late.
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = max_connections, "API connection limit reached; closing a new connection");
            continue;
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%peer, %error, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    closing.send_replace(true);
    if tokio::time::timeout(API_SHUTDOWN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("API requests still running at shutdown were cut off");
    }
    Ok(())
}
