//! Relaying an upgraded (WebSocket) connection: once both sides have switched protocols, bytes
//! are copied both ways without being parsed.
//!
//! Today this is `tokio::io::copy_bidirectional` over hyper's `Upgraded` (one buffer per
//! direction). The seam for zero copy is [`relay`]: when both `Upgraded` downcast to
//! `TokioIo<TcpStream>` (plain TCP on both ends), flush the parts' `read_buf` and `splice(2)`
//! through a pipe instead; TLS client sides keep the copy.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::counting::ActiveGuard;
use crate::drain;

/// Completes both upgrades and relays until both directions have closed (or the proxy's shutdown
/// grace is over). `guard` keeps the backend counted as active for exactly that long.
pub(crate) async fn relay(
    client: OnUpgrade,
    backend: OnUpgrade,
    guard: ActiveGuard,
    mut drain: drain::Watch,
) {
    let id = guard.route().backend();
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            debug!(backend = %id, %error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    debug!(backend = %id, "upgraded connection open");
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => match result {
            Ok((to_backend, to_client)) => {
                debug!(backend = %id, to_backend, to_client, "upgraded connection closed");
            }
            Err(error) => debug!(backend = %id, %error, "upgraded connection ended with error"),
        },
        () = drain.cut() => debug!(backend = %id, "upgraded connection cut by shutdown"),
    }
    drop(guard);
}
