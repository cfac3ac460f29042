//! The bodies the proxy streams: responses counted until they end ([`ProxyBody`]), and client
//! request bodies that fail when they stall ([`RequestBody`]).
//!
//! Both wrap hyper's `Incoming` without boxing it, so a request costs no allocation here; the
//! only one is the idle timer of a request body that actually has to wait for the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::counting::ActiveGuard;

/// The body of every response the proxy sends: a backend's body, counted until it ends or is
/// dropped, or a small body of the proxy's own.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Upstream {
        body: Incoming,
        /// Dropped at the end of the body (or with it): the request stops counting.
        guard: Option<ActiveGuard>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, guard: ActiveGuard) -> ProxyBody {
        let guard = (!body.is_end_stream()).then_some(guard);
        ProxyBody {
            kind: Kind::Upstream { body, guard },
        }
    }

    pub(crate) fn full(data: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(data)),
        }
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Upstream { body, guard } => {
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) || body.is_end_stream() {
                    guard.take();
                }
                Poll::Ready(frame)
            }
            Kind::Full(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// Why a client's request body failed on its way to the backend.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client sent nothing for the whole idle timeout (a stalled or slowloris upload).
    #[error("request body idle for {0:?}")]
    Idle(Duration),
    /// Reading the body from the client failed (it closed or sent a malformed body).
    #[error("reading the request body failed")]
    Client(#[source] hyper::Error),
}

/// A client's request body on its way to the backend, failing with
/// [`RequestBodyError::Idle`] when no frame arrives for `idle_timeout`.
///
/// Without it, a client that announces a body and stops sending would keep the backend counted
/// as active, and a pooled backend connection busy, for as long as it keeps the socket open.
///
/// The timer is created on the first wait for data (a body that never waits, like the empty body
/// of a `GET`, never allocates one) and reset, not recreated, on every later wait.
pub struct RequestBody<B = Incoming> {
    body: B,
    idle_timeout: Duration,
    /// The idle timer; `armed` says whether it runs for the current wait.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    timed_out: bool,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(body: B, idle_timeout: Duration) -> RequestBody<B> {
        RequestBody {
            body,
            idle_timeout,
            timer: None,
            armed: false,
            timed_out: false,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(RequestBodyError::Idle(this.idle_timeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(RequestBodyError::Client)));
        }
        let deadline = Instant::now() + this.idle_timeout;
        let timer = match &mut this.timer {
            Some(timer) => {
                if !this.armed {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => this
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.armed = true;
        ready!(timer.as_mut().poll(cx));
        this.timed_out = true;
        Poll::Ready(Some(Err(RequestBodyError::Idle(this.idle_timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// A body whose frames are handed in through a channel; dropping the sender ends it.
    struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    async fn next(
        body: &mut RequestBody<Chunks>,
    ) -> Option<Result<Frame<Bytes>, RequestBodyError>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn steady_body_passes_and_stalled_body_fails() {
        let timeout = Duration::from_secs(30);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = RequestBody::new(Chunks(rx), timeout);

        // Frames 20 s apart: each gap is under the timeout, their sum is not.
        for chunk in [&b"a"[..], b"b", b"c"] {
            let sender = tx.clone();
            let send = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                sender.send(Bytes::from_static(chunk)).await
            });
            let frame = next(&mut body).await.expect("a frame").expect("no error");
            assert_eq!(frame.into_data().expect("data"), chunk);
            send.await.expect("send task").expect("send");
        }

        let stalled = Instant::now();
        let error = next(&mut body).await.expect("an error").expect_err("idle");
        assert!(matches!(error, RequestBodyError::Idle(t) if t == timeout));
        assert_eq!(stalled.elapsed(), timeout);
        // Polled again (hyper does not, but nothing should), it stays failed.
        assert!(matches!(
            next(&mut body).await,
            Some(Err(RequestBodyError::Idle(_)))
        ));

        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_body_needs_no_timer() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        let mut body = RequestBody::new(Chunks(rx), Duration::from_secs(1));
        assert!(next(&mut body).await.is_none());
        assert!(body.timer.is_none());
    }
}
