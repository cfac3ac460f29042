//! A shutdown signal that many tasks can wait for, fired by SIGINT/SIGTERM or by the program.

use tokio::sync::watch;

/// Fires the shutdown.
pub struct Trigger(watch::Sender<bool>);

/// Resolves once the shutdown fired. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub async fn wait(mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

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
