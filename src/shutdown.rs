//! The signals that stop Plane's servers; what they stop is a `CancellationToken` (tokio-util).

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}
