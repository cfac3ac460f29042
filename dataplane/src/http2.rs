//! HTTP/2 from clients: over TLS when ALPN picks `h2`, and as prior-knowledge h2c on a plain
//! listener (a connection that opens with the HTTP/2 preface). Each stream is forwarded on
//! its own task (`h2_exchange.rs`); this module runs the connection: its settings, its
//! defences and its shutdown.
//!
//! The h2 crate's protections are set deliberately rather than left to its defaults, because
//! an HTTP/2 connection multiplies what one client can ask of the proxy: a cap on concurrent
//! streams per connection, on streams reset before they were accepted (rapid reset,
//! CVE-2023-44487) and on streams the proxy itself had to reset, a header list size equal to
//! the HTTP/1.1 head limit (which also bounds CONTINUATION frames), and a bounded send buffer
//! per stream. A graceful shutdown sends GOAWAY and lets open streams finish within the grace.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::drain;
use crate::exchange::{Peer, Proxy};
use crate::h2_exchange::{self, Connection};
use crate::limits::{
    H2_CONNECTION_WINDOW, H2_MAX_CONCURRENT_STREAMS, H2_MAX_LOCAL_RESETS, H2_MAX_PENDING_RESETS,
    H2_SEND_BUFFER, H2_STREAM_WINDOW,
};

/// The first part of what a prior-knowledge HTTP/2 client sends (RFC 9113 §3.4), which reads
/// like an HTTP/1.1 head (`PRI * HTTP/2.0` and a blank
/// line): what the HTTP/1.1 reader sees before it hands the connection over.
pub(crate) const PREFACE_REQUEST: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

fn builder(proxy: &Proxy) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    let header_bytes = u32::try_from(proxy.config.max_request_header_bytes).unwrap_or(u32::MAX);
    builder
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
        .max_header_list_size(header_bytes)
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buffer_size(H2_SEND_BUFFER)
        .enable_connect_protocol();
    builder
}

/// Serves an HTTP/2 connection until the client closes it, it fails, or the drain ends it
/// (GOAWAY at the start of the drain, cut at its end). `peer`'s connection slot is held
/// until then; `sni` is what the TLS handshake asked for.
pub(crate) async fn serve<IO>(
    proxy: Arc<Proxy>,
    io: IO,
    peer: Peer,
    sni: Option<Box<str>>,
    drain: drain::Watch,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut cut = drain.clone();
    let handshake = builder(&proxy).handshake::<_, Bytes>(io);
    let timeout = proxy.config.header_read_timeout;
    let mut conn = tokio::select! {
        done = tokio::time::timeout(timeout, handshake) => match done {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                debug!(%error, peer = %peer.addr, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                debug!(peer = %peer.addr, "HTTP/2 preface not received in time");
                return;
            }
        },
        () = cut.cut() => return,
    };
    // An HTTP/2 connection with no stream open goes after this long, as an idle HTTP/1.1
    // keep-alive connection does: it must not hold its connection slot forever.
    let idle_limit = proxy.config.header_read_timeout;
    let connection = Arc::new(Connection {
        proxy,
        client_ip: peer.addr.ip().to_string().into_boxed_str(),
        sni,
    });
    let mut draining = drain.clone();
    let mut shutting_down = false;
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                    h2_exchange::accept(&connection, request, respond, drain.clone());
                }
                Some(Err(error)) => {
                    debug!(%error, peer = %peer.addr, "HTTP/2 connection failed");
                    break;
                }
                None => break,
            },
            () = draining.draining(), if !shutting_down => {
                // GOAWAY: no new streams; the open ones finish within the grace.
                shutting_down = true;
                conn.graceful_shutdown();
            }
            () = &mut idle, if !shutting_down => {
                // Every stream task holds the connection's state: more than this task's
                // reference means streams are open, so look again a period later.
                if Arc::strong_count(&connection) > 1 {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                } else {
                    shutting_down = true;
                    conn.graceful_shutdown();
                }
            }
            () = cut.cut() => break,
        }
    }
    drop(peer);
}

/// A connection whose first bytes were already read (the preface, found by the HTTP/1.1
/// reader): they are read again before the rest.
pub(crate) struct Rewound<IO> {
    read: Box<[u8]>,
    at: usize,
    io: IO,
}

impl<IO> Rewound<IO> {
    pub(crate) fn new(read: &[u8], io: IO) -> Rewound<IO> {
        Rewound {
            read: read.into(),
            at: 0,
            io,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.read.len() {
            let n = (self.read.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_rewound_stream_reads_its_first_bytes_again() {
        let rest: &[u8] = b" world";
        let mut rewound = Rewound::new(b"hello", rest);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"hello world");
    }
}
