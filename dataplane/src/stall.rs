//! Noticing a write that makes no progress: the timer behind `WRITE_PROGRESS_TIMEOUT` for code
//! that polls by hand (the relays), armed only while a write is actually waiting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A write-progress deadline: armed when a write first has to wait, cleared by progress.
pub(crate) struct Stall {
    limit: Duration,
    /// Allocated the first time a write has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Call while a write is waiting: ready with an error once it has waited `limit`.
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer took no data for the write progress timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write went through: the next wait starts a new deadline.
    pub(crate) fn progress(&mut self) {
        self.armed = false;
    }
}
