//! One HTTP/2 stream, forwarded to its backend as an HTTP/1.1 exchange over the same pooled
//! keep-alive connections `exchange.rs` uses, with the same routing, access tokens, counting
//! and limits: the request head rewritten (`headers.rs`), its DATA frames sent as the body
//! (chunked when the length is not known), the response head turned into HTTP/2 fields and
//! its body, chunked or not, into DATA frames that respect the client's flow control. A
//! WebSocket comes as an extended CONNECT (RFC 8441) and goes to the backend as an HTTP/1.1
//! upgrade; once the backend answers 101 the stream carries the relayed bytes.
//!
//! The stream counts against its backend from its head until its response ends (or the
//! WebSocket closes); a client that resets the stream stops it at once.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::access;
use crate::counting::ActiveGuard;
use crate::drain;
use crate::error::ProxyError;
use crate::exchange::{admit_request, count, head_end, is_interim, wait_ready, wake_route, Proxy};
use crate::framing::BodyProgress;
use crate::head::{header_slots, Framing, ResponseHead};
use crate::headers::{self, Credentials, Forwarded, H2Request};
use crate::limits::MAX_RESPONSE_HEADER_BYTES;
use crate::sockets::write_all;
use crate::token_digest::TokenDigest;
use crate::upstream::Upstream;

/// Bytes read from a backend at a time for a body.
const READ_BYTES: usize = 8 * 1024;
/// Room first given to a response head (grown when a head needs more): most heads, and the
/// whole of a small response, fit, and a buffer this size comes from the allocator's
/// per-thread cache, where 8 KiB would take its slow path once per stream.
const HEAD_READ_BYTES: usize = 1024;

/// What the streams of one HTTP/2 connection share.
pub(crate) struct Connection {
    pub(crate) proxy: Arc<Proxy>,
    /// `X-Forwarded-For` value.
    pub(crate) client_ip: Box<str>,
    /// The host name the TLS handshake asked for, if any.
    pub(crate) sni: Option<Box<str>>,
}

/// Why a stream ended before its response did.
enum Failure {
    /// Nothing of the response was sent: answer with the error.
    Respond(ProxyError),
    /// The response had begun, or the client is gone: reset the stream.
    Reset(ProxyError),
}

/// A stream's request, admitted and rewritten for its backend: all its task needs of it.
/// Built before the task is spawned, so the parsed request (header map, URI, extensions) is
/// never part of the task, which the allocator then serves from its per-thread cache.
struct Admitted {
    body: RecvStream,
    /// The HTTP/1.1 head the backend gets.
    head: Vec<u8>,
    guard: ActiveGuard,
    /// Where the backend listens, or, for one still starting, the route key to wait on.
    upstream: Result<Arc<Upstream>, Box<str>>,
    has_body: bool,
    chunked: bool,
    websocket: bool,
    head_request: bool,
}

/// Takes a stream the connection accepted: refused at once (answered without a task) or
/// forwarded on a task of its own, which holds `connection` until the stream ends.
pub(crate) fn accept(
    connection: &Arc<Connection>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    drain: drain::Watch,
) {
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    match admit(connection, &parts, &mut body) {
        Ok(admitted) => {
            tokio::spawn(serve_stream(
                Arc::clone(connection),
                admitted,
                respond,
                drain,
            ));
        }
        Err(ProxyError::UnknownBackend { backend }) if connection.proxy.table.wakes() => {
            // Maybe asleep: woken on a task of its own, then admitted again against the
            // backend's own route.
            let connection = Arc::clone(connection);
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let token = access::presented_at(&parts.headers, target).map(TokenDigest::of);
            tokio::spawn(async move {
                let woken = wake_route(&connection.proxy, &backend, token).await;
                match woken.and_then(|()| admit(&connection, &parts, &mut body)) {
                    Ok(admitted) => serve_stream(connection, admitted, respond, drain).await,
                    Err(error) => answer_error(&connection.proxy, &mut respond, &error),
                }
            });
        }
        Err(error) => answer_error(&connection.proxy, &mut respond, &error),
    }
}

/// Routes and checks the request and writes the head its backend gets; counts the stream
/// against that backend.
/// Takes `body` only when it succeeds.
fn admit(
    connection: &Connection,
    parts: &http::request::Parts,
    body: &mut Option<RecvStream>,
) -> Result<Admitted, ProxyError> {
    let proxy = &connection.proxy;
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .ok_or(ProxyError::MissingHost)?;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (label, route) = admit_request(
        proxy,
        authority,
        target,
        &parts.headers,
        connection.sni.as_deref(),
    )?;
    let websocket = parts.method == http::Method::CONNECT
        && parts
            .extensions
            .get::<h2::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if parts.method == http::Method::CONNECT && !websocket {
        return Err(ProxyError::BadRequest(
            "CONNECT is supported only as an extended CONNECT with :protocol websocket",
        ));
    }
    let guard = count(proxy, &route)?;
    let upstream = route.upstream().ok_or_else(|| Box::from(label));
    let body = body
        .take()
        .ok_or(ProxyError::BadRequest("the request body was taken"))?;

    let has_body = !body.is_end_stream() && !websocket;
    let chunked = has_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let key = websocket.then(websocket_key);
    let mut head = Vec::with_capacity(1024);
    let credentials = if route.requires_token() {
        Credentials::Strip
    } else {
        Credentials::Pass
    };
    headers::write_h2_request_head(
        &mut head,
        &H2Request {
            parts,
            authority,
            chunked,
            websocket_key: key.as_deref(),
        },
        &Forwarded {
            client_ip: connection.client_ip.as_bytes(),
            proto: proxy.proto.as_bytes(),
        },
        credentials,
    );
    Ok(Admitted {
        body,
        head,
        guard,
        upstream,
        has_body,
        chunked,
        websocket,
        head_request: parts.method == http::Method::HEAD,
    })
}

/// Serves one admitted stream until its response (or relay) ends, it fails, or the drain cuts
/// it.
async fn serve_stream(
    connection: Arc<Connection>,
    admitted: Admitted,
    mut respond: SendResponse<Bytes>,
    mut drain: drain::Watch,
) {
    let mut cut = drain.clone();
    let outcome = tokio::select! {
        outcome = exchange(&connection.proxy, admitted, &mut respond, &mut drain) => outcome,
        () = cut.cut() => return,
    };
    match outcome {
        Ok(()) => {}
        Err(Failure::Respond(error)) => answer_error(&connection.proxy, &mut respond, &error),
        Err(Failure::Reset(error)) => {
            log(&error);
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// Answers the stream with `error` (its status, a one-line text body and its fields).
fn answer_error(proxy: &Proxy, respond: &mut SendResponse<Bytes>, error: &ProxyError) {
    log(error);
    proxy.table.errors().count(error.status().as_u16());
    let body = Bytes::from(format!("{error}\n"));
    let mut response = Response::new(());
    *response.status_mut() = error.status();
    let fields = response.headers_mut();
    fields.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in error.answer_fields(proxy.config.retry_after_secs) {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            fields.append(name, value);
        }
    }
    if let Ok(mut stream) = respond.send_response(response, false) {
        let _ = stream.send_data(body, true);
    }
}

fn log(error: &ProxyError) {
    match error.side() {
        crate::Side::Client => debug!(%error, "HTTP/2 request refused"),
        _ => warn!(%error, "HTTP/2 request failed"),
    }
}

/// The exchange with the backend; `respond` is used by the caller to answer a failure before
/// the response head was sent, and taken by the response when it is.
async fn exchange(
    proxy: &Proxy,
    admitted: Admitted,
    respond: &mut SendResponse<Bytes>,
    drain: &mut drain::Watch,
) -> Result<(), Failure> {
    let Admitted {
        mut body,
        head,
        mut guard,
        upstream,
        has_body,
        chunked,
        websocket,
        head_request,
    } = admitted;
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(label) => {
            // Rare, and a large future: on the heap, so every stream's task is not as large.
            let (ready, upstream) = Box::pin(wait_ready(proxy, &label, drain))
                .await
                .map_err(Failure::Respond)?;
            if !Arc::ptr_eq(&ready, guard.route()) {
                guard = count(proxy, &ready).map_err(Failure::Respond)?;
            }
            upstream
        }
    };

    let config = &proxy.config;
    // A pooled connection the backend closed meanwhile fails before any answer: the request
    // goes again on a new one when nothing of its body has been sent.
    let mut use_pool = true;
    let (mut backend, mut bbuf) = loop {
        let (mut backend, reused) = match upstream.connection(!use_pool, config).await {
            Ok(connection) => connection,
            Err(source) => {
                let backend = guard.route().backend().into();
                // The backend never saw this request: it must not count as activity.
                guard.cancel();
                return Err(Failure::Respond(ProxyError::BackendConnect {
                    backend,
                    source,
                }));
            }
        };
        if let Err(source) =
            write_all(&mut backend, &head, &[], config.write_progress_timeout).await
        {
            if reused {
                use_pool = false;
                continue;
            }
            return Err(Failure::Respond(ProxyError::BackendRequest {
                backend: guard.route().backend().into(),
                source,
            }));
        }
        let mut bbuf = BytesMut::with_capacity(HEAD_READ_BYTES);
        if has_body {
            break (backend, bbuf);
        }
        match read_response_head(&mut backend, &mut bbuf, respond).await {
            Ok(()) => break (backend, bbuf),
            Err(Fault::Backend(_)) if reused && bbuf.is_empty() => use_pool = false,
            Err(fault) => return Err(fault.into_failure(guard.route().backend(), false)),
        }
    };
    guard.received(head.len() as u64);
    drop(head);
    let body_done = if has_body {
        let mut uploaded = 0;
        // Uploads are fewer, and their future large: on the heap.
        let done = Box::pin(upload(
            &mut backend,
            &mut bbuf,
            respond,
            &mut body,
            chunked,
            config,
            &mut uploaded,
        ))
        .await;
        guard.received(uploaded);
        done.map_err(|fault| fault.into_failure(guard.route().backend(), false))?
    } else {
        true
    };

    // The final response head is at the start of `bbuf`.
    let answer = final_answer(&bbuf, head_request, websocket)
        .map_err(|fault| fault.into_failure(guard.route().backend(), false))?;
    let FinalAnswer {
        response,
        framing,
        keep_alive,
        switching,
        len,
    } = answer;
    bbuf.advance(len);
    debug!(backend = %guard.route().backend(), status = response.status().as_u16(), "routed (HTTP/2)");

    if switching {
        let stream = respond
            .send_response(response, false)
            .map_err(|e| Failure::Reset(client_gone(e)))?;
        Box::pin(relay(body, stream, backend, bbuf, guard, config)).await;
        return Ok(());
    }
    // What is left of an upload the backend answered before reading is not wanted: dropping
    // the stream's receiving half gives its flow-control window back to the connection.
    drop(body);
    let empty = matches!(framing, Framing::Empty | Framing::Length(0));
    let mut stream = respond
        .send_response(response, empty)
        .map_err(|e| Failure::Reset(client_gone(e)))?;
    if empty {
        finish(backend, bbuf, &upstream, keep_alive && body_done, config);
        drop(guard);
        return Ok(());
    }
    let mut sent = 0;
    let result = send_body(
        &mut backend,
        &mut bbuf,
        &mut stream,
        framing,
        config,
        &mut sent,
    )
    .await;
    guard.sent(sent);
    result.map_err(|fault| fault.into_failure(guard.route().backend(), true))?;
    drop(guard);
    finish(backend, bbuf, &upstream, keep_alive && body_done, config);
    Ok(())
}

/// Sends the request body while waiting for the response head (a backend may answer before it
/// has read it all); says whether the whole body was sent.
async fn upload(
    backend: &mut TcpStream,
    bbuf: &mut BytesMut,
    respond: &mut SendResponse<Bytes>,
    body: &mut RecvStream,
    chunked: bool,
    config: &crate::ProxyConfig,
    uploaded: &mut u64,
) -> Result<bool, Fault> {
    let (mut backend_read, mut backend_write) = backend.split();
    let response = read_response_head(&mut backend_read, bbuf, respond);
    let pump = pump_request(body, &mut backend_write, chunked, config, uploaded);
    tokio::pin!(response, pump);
    let mut pumping = true;
    let mut body_done = false;
    loop {
        tokio::select! {
            biased;
            result = &mut response => return result.map(|()| body_done),
            result = &mut pump, if pumping => match result {
                Ok(()) => { pumping = false; body_done = true; }
                // The backend stopped reading: it may still have answered.
                Err(Fault::Backend(_)) => pumping = false,
                Err(fault) => return Err(fault),
            },
        }
    }
}

/// Pools the backend connection if the exchange left it clean.
fn finish(
    backend: TcpStream,
    bbuf: BytesMut,
    upstream: &Upstream,
    reusable: bool,
    config: &crate::ProxyConfig,
) {
    if reusable && bbuf.is_empty() {
        upstream.put_idle(backend, config.backend_pool_max_idle);
    }
}

/// What went wrong on either side once the backend was asked.
enum Fault {
    Backend(io::Error),
    Protocol(&'static str),
    Client(io::Error),
    /// The client's request body delivered nothing for this long.
    ClientBodyIdle(Duration),
}

impl Fault {
    fn into_failure(self, backend: &str, responded: bool) -> Failure {
        let error = match self {
            Fault::Backend(source) => ProxyError::BackendRequest {
                backend: backend.into(),
                source,
            },
            Fault::Protocol(reason) => ProxyError::BackendProtocol {
                backend: backend.into(),
                reason,
            },
            Fault::Client(source) => return Failure::Reset(ProxyError::ClientGone(source)),
            Fault::ClientBodyIdle(waited) => ProxyError::RequestBodyTimeout {
                backend: backend.into(),
                waited,
            },
        };
        if responded {
            Failure::Reset(error)
        } else {
            Failure::Respond(error)
        }
    }
}

fn client_gone(error: h2::Error) -> ProxyError {
    ProxyError::ClientGone(io::Error::other(error))
}

/// Reads until `bbuf` starts with a final response head, passing 1xx ones (not 101) to the
/// client; a client that resets the stream meanwhile ends the wait.
async fn read_response_head<R>(
    backend: &mut R,
    bbuf: &mut BytesMut,
    respond: &mut SendResponse<Bytes>,
) -> Result<(), Fault>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        while head_end(bbuf).is_none() {
            if bbuf.len() >= MAX_RESPONSE_HEADER_BYTES {
                return Err(Fault::Protocol("response head too large"));
            }
            bbuf.reserve(HEAD_READ_BYTES);
            let read = tokio::select! {
                read = backend.read_buf(bbuf) => read.map_err(Fault::Backend)?,
                reason = poll_fn(|cx| respond.poll_reset(cx)) => {
                    let reason = reason.map(|r| r.to_string()).unwrap_or_else(|e| e.to_string());
                    return Err(Fault::Client(io::Error::other(format!("stream reset: {reason}"))));
                }
            };
            if read == 0 {
                return Err(Fault::Backend(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response head",
                )));
            }
        }
        if !is_interim(bbuf) {
            return Ok(());
        }
        let (response, len) = interim_answer(bbuf)?;
        if let Some(response) = response {
            // Best effort: an interim answer the client cannot take changes nothing.
            let _ = respond.send_informational(response);
        }
        bbuf.advance(len);
    }
}

/// A backend's final response head, parsed and turned into what the client gets.
struct FinalAnswer {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
    /// A WebSocket's 101: the stream now carries the relay.
    switching: bool,
    len: usize,
}

/// Parses the final response head at the start of `buf`. Synchronous, so the parser's header
/// slots never become part of the stream's future (which `tokio::spawn` moves, and an open
/// WebSocket keeps).
fn final_answer(buf: &[u8], head_request: bool, websocket: bool) -> Result<FinalAnswer, Fault> {
    let mut slots = header_slots();
    let head = ResponseHead::parse(buf, &mut slots, head_request)
        .map_err(|_| Fault::Protocol("invalid response head"))?
        .ok_or(Fault::Protocol("invalid line ending in head"))?;
    if head.code == 101 && !(websocket && head.websocket) {
        return Err(Fault::Protocol(
            "101 to a request that did not ask to upgrade",
        ));
    }
    if websocket && head.code != 101 && head.code < 300 {
        return Err(Fault::Protocol("a WebSocket request answered without 101"));
    }
    Ok(FinalAnswer {
        response: headers::h2_response(&head).map_err(Fault::Protocol)?,
        framing: head.framing,
        keep_alive: head.keep_alive,
        switching: head.code == 101,
        len: head.len,
    })
}

/// Parses the interim (1xx) head at the start of `buf`: what the client gets, if it can be
/// said in HTTP/2, and the head's length.
fn interim_answer(buf: &[u8]) -> Result<(Option<Response<()>>, usize), Fault> {
    let mut slots = header_slots();
    let head = ResponseHead::parse(buf, &mut slots, false)
        .map_err(|_| Fault::Protocol("invalid interim response"))?
        .ok_or(Fault::Protocol("invalid line ending in head"))?;
    Ok((headers::h2_response(&head).ok(), head.len))
}

/// Streams the request's DATA frames to the backend (as chunks when `chunked`, with the
/// client's trailers after the last), giving the client back flow-control window as they go.
async fn pump_request<W>(
    body: &mut RecvStream,
    backend: &mut W,
    chunked: bool,
    config: &crate::ProxyConfig,
    uploaded: &mut u64,
) -> Result<(), Fault>
where
    W: AsyncWrite + Unpin,
{
    let progress = config.write_progress_timeout;
    loop {
        let data = match tokio::time::timeout(config.request_body_idle_timeout, body.data()).await {
            Err(_) => return Err(Fault::ClientBodyIdle(config.request_body_idle_timeout)),
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(Fault::Client(io::Error::other(error))),
            Ok(Some(Ok(data))) => data,
        };
        let n = data.len();
        if n == 0 {
            continue;
        }
        if chunked {
            let size = format!("{n:x}\r\n");
            write_all(backend, size.as_bytes(), &data, progress).await
        } else {
            write_all(backend, &data, &[], progress).await
        }
        .map_err(Fault::Backend)?;
        if chunked {
            write_all(backend, b"\r\n", &[], progress)
                .await
                .map_err(Fault::Backend)?;
        }
        *uploaded += n as u64;
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        let trailers = body
            .trailers()
            .await
            .map_err(|e| Fault::Client(io::Error::other(e)))?;
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        write_all(backend, &end, &[], progress)
            .await
            .map_err(Fault::Backend)?;
    }
    Ok(())
}

/// Sends `data` (not empty) as DATA frames as the client's window allows, the last one ending
/// the stream when `end`; a window that stays shut past the write progress timeout fails the
/// stream.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    progress: Duration,
) -> Result<(), Fault> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let capacity = match stream.capacity() {
            0 => tokio::time::timeout(progress, poll_fn(|cx| stream.poll_capacity(cx)))
                .await
                .map_err(|_| {
                    Fault::Client(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client window stayed shut for the write progress timeout",
                    ))
                })?
                .ok_or_else(|| Fault::Client(io::Error::other("stream closed")))?
                .map_err(|e| Fault::Client(io::Error::other(e)))?,
            capacity => capacity,
        };
        let part = data.split_to(capacity.min(data.len()));
        stream
            .send_data(part, end && data.is_empty())
            .map_err(|e| Fault::Client(io::Error::other(e)))?;
    }
    Ok(())
}

/// Streams the response body from the backend as DATA frames (chunk framing removed, trailers
/// sent as HTTP/2 trailers), watching for the client resetting the stream.
async fn send_body(
    backend: &mut TcpStream,
    bbuf: &mut BytesMut,
    stream: &mut SendStream<Bytes>,
    framing: Framing,
    config: &crate::ProxyConfig,
    sent: &mut u64,
) -> Result<(), Fault> {
    let progress_timeout = config.write_progress_timeout;
    let mut progress = BodyProgress::new(framing);
    let mut trailers = Vec::new();
    while !progress.is_done() {
        if bbuf.is_empty() {
            bbuf.reserve(READ_BYTES);
            let read = tokio::select! {
                read = backend.read_buf(bbuf) => read.map_err(Fault::Backend)?,
                reason = poll_fn(|cx| stream.poll_reset(cx)) => {
                    let reason = reason.map(|r| r.to_string()).unwrap_or_else(|e| e.to_string());
                    return Err(Fault::Client(io::Error::other(format!("stream reset: {reason}"))));
                }
            };
            if read == 0 {
                if progress.finish_at_eof() {
                    break;
                }
                return Err(Fault::Backend(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "response body cut short",
                )));
            }
        }
        let in_trailers = progress.in_trailers();
        let (consumed, data) = progress
            .decode(bbuf)
            .map_err(|_| Fault::Protocol("invalid chunked body"))?;
        if in_trailers {
            if trailers.len() + consumed > crate::framing::MAX_TRAILER_BYTES {
                return Err(Fault::Protocol("trailers too large"));
            }
            trailers.extend_from_slice(&bbuf[..consumed]);
        }
        if data.is_empty() {
            bbuf.advance(consumed);
        } else {
            bbuf.advance(data.start);
            let payload = bbuf.split_to(data.len()).freeze();
            bbuf.advance(consumed - data.end);
            // The last bytes of a body of known length end the stream in the same frame.
            let last = progress.is_done() && trailers.is_empty();
            let n = payload.len() as u64;
            send_data(stream, payload, last, progress_timeout).await?;
            *sent += n;
            if last {
                return Ok(());
            }
        }
    }
    let trailers = headers::h2_trailers(&trailers);
    if trailers.is_empty() {
        stream.send_data(Bytes::new(), true)
    } else {
        stream.send_trailers(trailers)
    }
    .map_err(|e| Fault::Client(io::Error::other(e)))
}

/// Relays an accepted WebSocket: the stream's DATA frames to the backend and the backend's bytes
/// back as DATA frames, until both directions have ended (one ending gives the other the
/// half-close grace) or either fails. `guard` counts the backend as active meanwhile.
async fn relay(
    mut body: RecvStream,
    mut stream: SendStream<Bytes>,
    mut backend: TcpStream,
    early: BytesMut,
    mut guard: ActiveGuard,
    config: &crate::ProxyConfig,
) {
    let progress = config.write_progress_timeout;
    let (mut backend_read, mut backend_write) = backend.split();
    let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
    // In a block: the two directions (and their borrows of the byte counts) end with it.
    let outcome = {
        let up = async {
            while let Some(data) = body.data().await {
                let data = data.map_err(io::Error::other)?;
                let n = data.len();
                write_all(&mut backend_write, &data, &[], progress).await?;
                up_bytes += n as u64;
                let _ = body.flow_control().release_capacity(n);
            }
            backend_write.shutdown().await
        };
        let down = async {
            if !early.is_empty() {
                let n = early.len() as u64;
                send_data(&mut stream, early.freeze(), false, progress)
                    .await
                    .map_err(fault_io)?;
                down_bytes += n;
            }
            let mut buf = BytesMut::new();
            loop {
                buf.reserve(READ_BYTES);
                if backend_read.read_buf(&mut buf).await? == 0 {
                    stream
                        .send_data(Bytes::new(), true)
                        .map_err(io::Error::other)?;
                    return Ok::<(), io::Error>(());
                }
                let data = buf.split().freeze();
                let n = data.len() as u64;
                send_data(&mut stream, data, false, progress)
                    .await
                    .map_err(fault_io)?;
                down_bytes += n;
            }
        };
        tokio::pin!(up, down);
        let (first, rest) = tokio::select! {
            result = &mut up => (result, false),
            result = &mut down => (result, true),
        };
        match first {
            Err(error) => Err(error),
            Ok(()) => {
                let rest = async {
                    if rest {
                        (&mut up).await
                    } else {
                        (&mut down).await
                    }
                };
                match tokio::time::timeout(config.upgrade_half_close_grace, rest).await {
                    Ok(result) => result,
                    Err(_) => Ok(()),
                }
            }
        }
    };
    if let Err(error) = outcome {
        debug!(backend = %guard.route().backend(), %error, "HTTP/2 WebSocket ended with error");
    }
    guard.received(up_bytes);
    guard.sent(down_bytes);
    drop(guard);
}

fn fault_io(fault: Fault) -> io::Error {
    match fault {
        Fault::Backend(error) | Fault::Client(error) => error,
        Fault::Protocol(reason) => io::Error::other(reason),
        Fault::ClientBodyIdle(_) => io::Error::new(io::ErrorKind::TimedOut, "client idle"),
    }
}

/// A `Sec-WebSocket-Key`: 16 random bytes, base64.
fn websocket_key() -> String {
    let mut nonce = [0u8; 16];
    // The OS random source failing is not something to work around; a fixed key would still
    // be a valid handshake.
    let _ = getrandom::getrandom(&mut nonce);
    base64(&nonce)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(websocket_key().len(), 24);
    }
}
