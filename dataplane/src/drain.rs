//! Graceful shutdown: tell every connection and relay to finish, wait for them, then cut them.
//!
//! Phases move one way: *running* → *draining* (stop accepting, finish in-flight requests,
//! let upgraded connections run) → *cut* (grace over: everything still open is closed). Each
//! task holds a [`Watch`], whose drop is how [`Drain`] learns that the task has ended.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Cut,
}

/// The listener's side: starts the drain and waits for the tasks.
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    done: mpsc::Receiver<()>,
}

/// A task's side: learns the phase; its drop marks the task as ended.
#[derive(Clone)]
pub(crate) struct Watch {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

pub(crate) fn channel() -> (Drain, Watch) {
    let (phase, phase_rx) = watch::channel(Phase::Running);
    let (alive, done) = mpsc::channel(1);
    (
        Drain { phase, done },
        Watch {
            phase: phase_rx,
            _alive: alive,
        },
    )
}

impl Drain {
    /// Asks every task to finish and waits up to `grace` for the last [`Watch`] to drop; then cuts
    /// the rest and waits (briefly) for them to go.
    pub(crate) async fn drain(mut self, grace: Duration) {
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.done.recv()).await.is_ok() {
            debug!("all connections finished");
            return;
        }
        warn!(
            ?grace,
            "connections still open after the shutdown grace; closing them"
        );
        self.phase.send_replace(Phase::Cut);
        // Cut tasks return at their next poll; this only bounds a task stuck in a blocking call.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.done.recv()).await;
    }
}

impl Watch {
    /// Resolves once shutdown has begun (or the listener is gone).
    pub(crate) async fn draining(&mut self) {
        let _ = self.phase.wait_for(|phase| *phase >= Phase::Draining).await;
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Resolves once the grace is over (or the listener is gone).
    pub(crate) async fn cut(&mut self) {
        let _ = self.phase.wait_for(|phase| *phase >= Phase::Cut).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_then_cuts_them() {
        let (drain, watch) = channel();
        let mut quick = watch.clone();
        let mut stubborn = watch;
        let quick = tokio::spawn(async move { quick.draining().await });
        let stubborn = tokio::spawn(async move { stubborn.cut().await });
        let started = tokio::time::Instant::now();
        drain.drain(Duration::from_secs(10)).await;
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "waited the grace"
        );
        assert!(quick.await.is_ok());
        assert!(stubborn.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_tasks_end() {
        let (drain, mut watch) = channel();
        let task = tokio::spawn(async move { watch.draining().await });
        let started = tokio::time::Instant::now();
        drain.drain(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(task.await.is_ok());
    }
}
