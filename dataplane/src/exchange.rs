//! One client connection, served start to end by one task: read a request head, route it,
//! forward head and body to a pooled backend connection, stream the response back; then the
//! next request (keep-alive), or a byte relay once a WebSocket upgrade is accepted.
//!
//! This is the hot path, shaped like HAProxy's and Pingora's rather than like a generic HTTP
//! library's: no task, channel, header map or allocation per request. Heads are parsed in place
//! (`head.rs`), rewritten straight into one outgoing buffer (`headers.rs`), and written with the
//! first body bytes in one `writev`; bodies are forwarded as they are, with only their framing
//! tracked (`framing.rs`). The buffers belong to the connection and are reused by every request.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::access;
use crate::buffer::Buf;
use crate::client::{BodyFault, ClientStream};
use crate::counting::{ActiveGuard, Refusal};
use crate::drain;
use crate::error::{ProxyError, Side};
use crate::framing::BodyProgress;
use crate::head::{header_slots, Framing, HeadError, RequestHead, ResponseHead};
use crate::headers::{self, Forwarded};
use crate::http2;
use crate::limits::MAX_RESPONSE_HEADER_BYTES;
use crate::route_table::{Route, RouteTable};
use crate::sockets::write_all;
use crate::token_digest::TokenDigest;
use crate::upgrade::{self, RelayLimits};
use crate::upstream::Upstream;
use crate::wake::WakeRefusal;
use crate::ProxyConfig;

/// First size of a connection's client buffer; it grows (to `max_request_header_bytes`) only
/// for a head that does not fit.
const CLIENT_BUFFER_BYTES: usize = 8 * 1024;
/// Size of a connection's backend buffer: response heads and body data pass through it.
const BACKEND_BUFFER_BYTES: usize = 16 * 1024;
/// Bodies of known length with at least this much left after the first read move through a
/// large pooled buffer (`splice.rs`) rather than the connection's own.
const LARGE_BODY_BYTES: u64 = 64 * 1024;

/// The client connection a request came in on.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// `X-Forwarded-For` value, formatted once per connection.
    ip: Box<str>,
    /// The connection's slot under `max_connections`, held until the connection (or the relay
    /// that took it over) ends.
    _permit: OwnedSemaphorePermit,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, permit: OwnedSemaphorePermit) -> Peer {
        Peer {
            addr,
            ip: addr.ip().to_string().into_boxed_str(),
            _permit: permit,
        }
    }
}

/// State shared by every connection of one listener.
pub(crate) struct Proxy {
    pub(crate) table: RouteTable,
    pub(crate) config: ProxyConfig,
    pub(crate) proto: Box<str>,
}

impl Proxy {
    pub(crate) fn new(table: RouteTable, config: ProxyConfig) -> Proxy {
        let proto = config.scheme.as_str().into();
        Proxy {
            table,
            config,
            proto,
        }
    }
}

/// How an exchange left the client connection.
enum Next {
    /// Ready for the next request.
    KeepAlive,
    /// Closed (or to be closed).
    Close,
}

/// A connection's buffers and sockets.
struct Conn<C> {
    client: C,
    peer: Peer,
    /// Bytes from the client: the current head, then body or pipelined requests.
    inbuf: Buf,
    /// Length of the head at the start of `inbuf` not yet consumed (0 once it is).
    pending_head: usize,
    /// Bytes from the backend.
    bbuf: Buf,
    /// Heads being written (to either side).
    out: Vec<u8>,
}

/// Serves one client connection until it closes, fails, upgrades and the relay ends, or the
/// drain cuts it.
pub(crate) async fn serve_connection<C: ClientStream>(
    proxy: Arc<Proxy>,
    client: C,
    peer: Peer,
    mut drain: drain::Watch,
) {
    let conn = Conn {
        client,
        peer,
        inbuf: Buf::with_capacity(CLIENT_BUFFER_BYTES),
        pending_head: 0,
        bbuf: Buf::with_capacity(BACKEND_BUFFER_BYTES),
        out: Vec::with_capacity(1024),
    };
    let mut cut = drain.clone();
    let prior_knowledge_h2 = tokio::select! {
        h2 = run(&proxy, conn, &mut drain) => h2,
        () = cut.cut() => {
            debug!("connection cut by shutdown");
            None
        }
    };
    // A plain connection that opened with the HTTP/2 preface is served as HTTP/2 (h2c).
    if let Some(conn) = prior_knowledge_h2 {
        if let Ok(plain) = conn.client.into_plain() {
            let io = http2::Rewound::new(conn.inbuf.data(), plain);
            // Boxed: inline, the HTTP/2 connection's state would size every connection's task,
            // idle WebSockets included.
            Box::pin(http2::serve(proxy, io, conn.peer, None, drain)).await;
        }
    }
}

/// Serves requests until the connection ends; returns the connection instead if it opened
/// with the HTTP/2 preface (for a TLS client, a request like any other: it is refused).
async fn run<C: ClientStream>(
    proxy: &Proxy,
    mut conn: Conn<C>,
    drain: &mut drain::Watch,
) -> Option<Conn<C>> {
    // Set up once per connection, not per request: the drain notice a waiting connection
    // listens for, and the timer bounding each wait for a head (re-armed, not rebuilt).
    let mut idle_drain = drain.clone();
    let draining = idle_drain.draining();
    let head_timer = tokio::time::sleep(proxy.config.header_read_timeout);
    tokio::pin!(draining, head_timer);
    let mut timer = HeadTimer {
        sleep: head_timer.as_mut(),
        armed: false,
    };
    loop {
        match read_head(proxy, &mut conn, draining.as_mut(), &mut timer).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return None,
            HeadRead::Refused(error) => {
                debug!(%error, peer = %conn.peer.addr, "request refused");
                respond_error(proxy, &mut conn, &error, false).await;
                return None;
            }
        }
        if C::PRIOR_KNOWLEDGE_H2 && conn.inbuf.data().starts_with(http2::PREFACE_REQUEST) {
            return Some(conn);
        }
        let next = match forward(proxy, &mut conn, drain).await {
            Ok(next) => next,
            Err(Failure::Respond { error, keep_alive }) => {
                log_error(&error, conn.peer.addr);
                respond_error(proxy, &mut conn, &error, keep_alive).await
            }
            Err(Failure::Abort(error)) => {
                log_error(&error, conn.peer.addr);
                Next::Close
            }
        };
        match next {
            Next::KeepAlive if !drain.is_draining() => {}
            _ => return None,
        }
    }
}

fn log_error(error: &ProxyError, peer: SocketAddr) {
    match error.side() {
        Side::Client => debug!(%error, %peer, "request refused"),
        Side::Backend | Side::Proxy => warn!(%error, %peer, "request failed"),
    }
}

/// The outcome of waiting for a request head.
enum HeadRead {
    /// `inbuf` starts with a complete head.
    Complete,
    /// The client closed, went quiet between requests, or the proxy is draining.
    Closed,
    /// The head is too large or too slow: answer and close.
    Refused(ProxyError),
}

/// The timer bounding each wait for a head. Re-arming a timer for every request would cost a
/// timer-wheel removal and insertion each time; instead a timer armed for an earlier (so
/// sooner) deadline is left to fire, and only then moved to the current one: at most one
/// extra wake-up per timeout period, and the timeout itself still exact.
struct HeadTimer<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// Set for a deadline no later than the current one, and not yet fired.
    armed: bool,
}

/// Reads until `inbuf` holds a whole head (a blank line), within the header read timeout;
/// `draining` ends a wait between requests.
async fn read_head<C: ClientStream>(
    proxy: &Proxy,
    conn: &mut Conn<C>,
    mut draining: Pin<&mut impl Future<Output = ()>>,
    timer: &mut HeadTimer<'_>,
) -> HeadRead {
    let config = &proxy.config;
    let mut deadline = None;
    loop {
        if let Some(end) = head_end(conn.inbuf.data()) {
            // Consumed once answered, whether it is forwarded or refused.
            conn.pending_head = end;
            return HeadRead::Complete;
        }
        if conn.inbuf.is_full() && !conn.inbuf.grow(config.max_request_header_bytes) {
            return HeadRead::Refused(ProxyError::HeadTooLarge);
        }
        let deadline = *deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + config.header_read_timeout);
        if !timer.armed {
            timer.sleep.as_mut().reset(deadline);
            timer.armed = true;
        }
        let idle = conn.inbuf.is_empty();
        let read = tokio::select! {
            biased;
            read = conn.inbuf.read_from(&mut conn.client) => read,
            () = timer.sleep.as_mut() => {
                timer.armed = false;
                if tokio::time::Instant::now() < deadline {
                    // An earlier request's deadline: wait on for this one's.
                    continue;
                }
                // Quiet between requests: the keep-alive connection just ends.
                if conn.inbuf.is_empty() {
                    return HeadRead::Closed;
                }
                return HeadRead::Refused(ProxyError::HeadTimeout);
            }
            // Between requests, a drain closes the connection at once.
            () = draining.as_mut(), if idle => return HeadRead::Closed,
        };
        match read {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
}

/// Where the blank line ending a head is, if it has arrived (`\r\n\r\n`, or the bare-LF
/// `\n\n` that the parser also accepts).
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// Why an exchange ended other than with a forwarded response.
pub(crate) enum Failure {
    /// Answer with the error; `keep_alive` if the connection can take another request after
    /// (nothing of this one is left unread).
    Respond { error: ProxyError, keep_alive: bool },
    /// The response had begun (or the client is gone): close without another word.
    Abort(ProxyError),
}

impl From<HeadError> for Failure {
    fn from(error: HeadError) -> Failure {
        let error = match error {
            HeadError::Malformed(why) => ProxyError::BadRequest(why),
            HeadError::TooManyHeaders => ProxyError::HeadTooLarge,
        };
        Failure::Respond {
            error,
            keep_alive: false,
        }
    }
}

/// What went wrong on either socket while a request was being forwarded.
#[derive(Debug)]
enum Fault {
    /// The backend closed, reset or timed out.
    Backend(io::Error),
    /// The backend sent something that is not a valid response.
    BackendProtocol(&'static str),
    /// The client went away or stopped reading.
    Client(io::Error),
    /// The client's request body stalled.
    ClientBodyIdle,
    /// The client's request body is malformed.
    ClientBody(&'static str),
}

/// Turns a fault into what the client gets, naming the backend. `responded` says whether any
/// of the response has been written to the client (then nothing more can be said).
fn failure(fault: Fault, backend: &str, proxy: &Proxy, responded: bool) -> Failure {
    let error = match fault {
        Fault::Backend(source) => ProxyError::BackendRequest {
            backend: backend.into(),
            source,
        },
        Fault::BackendProtocol(reason) => ProxyError::BackendProtocol {
            backend: backend.into(),
            reason,
        },
        Fault::Client(source) => return Failure::Abort(ProxyError::ClientGone(source)),
        Fault::ClientBodyIdle => ProxyError::RequestBodyTimeout {
            backend: backend.into(),
            waited: proxy.config.request_body_idle_timeout,
        },
        Fault::ClientBody(why) => ProxyError::BadRequest(why),
    };
    if responded {
        Failure::Abort(error)
    } else {
        Failure::Respond {
            error,
            keep_alive: false,
        }
    }
}

async fn forward<C: ClientStream>(
    proxy: &Proxy,
    conn: &mut Conn<C>,
    drain: &mut drain::Watch,
) -> Result<Next, Failure> {
    let config = &proxy.config;
    let Conn {
        client,
        peer,
        inbuf,
        pending_head,
        bbuf,
        out,
    } = conn;

    // The head: parsed, routed, rewritten (synchronously: the parser's header slots never
    // become part of this future, which an idle WebSocket would otherwise carry).
    out.clear();
    let forwarded = Forwarded {
        client_ip: peer.ip.as_bytes(),
        proto: proxy.proto.as_bytes(),
    };
    let sni = client.server_name();
    let request = match prepare_request(proxy, inbuf.data(), out, &forwarded, sni) {
        Err(Failure::Respond {
            error: ProxyError::UnknownBackend { backend },
            keep_alive,
        }) if proxy.table.wakes() => {
            // Maybe asleep: once woken, admitted again against the backend's own route. Rare,
            // and on the heap, so that every connection's future stays small.
            let refuse = move |error| Failure::Respond { error, keep_alive };
            let token = presented_token(inbuf.data());
            Box::pin(wake_route(proxy, &backend, token))
                .await
                .map_err(refuse)?;
            out.clear();
            prepare_request(proxy, inbuf.data(), out, &forwarded, sni)?
        }
        prepared => prepared?,
    };
    let refuse = request.refuse();
    let mut guard = request.guard;
    let upstream = match request.upstream {
        Some(upstream) => upstream,
        None => {
            let label = std::str::from_utf8(&inbuf.data()[request.label.clone()]).unwrap_or("");
            let (ready, upstream) = wait_ready(proxy, label, drain).await.map_err(refuse)?;
            if !Arc::ptr_eq(&ready, guard.route()) {
                // Removed and added again while we waited: count against the live route, under
                // the same limit.
                guard = count(proxy, &ready).map_err(refuse)?;
            }
            upstream
        }
    };
    let Prepared {
        framing,
        keep_alive: client_keep_alive,
        websocket,
        head_request,
        minor,
        head_len,
        ..
    } = request;
    inbuf.consume(head_len);
    *pending_head = 0;

    // The body bytes that came with the head go out with it.
    let mut body = BodyProgress::new(framing);
    let prefix = body.advance(inbuf.data()).map_err(|_| Failure::Respond {
        error: ProxyError::BadRequest("invalid chunked request body"),
        keep_alive: false,
    })?;
    let route = Arc::clone(guard.route());
    let name = route.backend();

    // Sent on a pooled connection when there is one. One the backend closed while it sat in
    // the pool shows as an error before any response byte: the request is sent again on a new
    // connection if all of it is still at hand (no body left to stream from the client).
    let mut use_pool = true;
    let (mut backend, head_read) = loop {
        let (mut backend, reused) = match upstream.connection(!use_pool, config).await {
            Ok(connection) => connection,
            Err(source) => {
                // The backend never saw this request: it must not count as activity.
                guard.cancel();
                return Err(Failure::Respond {
                    error: ProxyError::BackendConnect {
                        backend: name.into(),
                        source,
                    },
                    keep_alive: false,
                });
            }
        };
        let sent = write_all(
            &mut backend,
            out,
            &inbuf.data()[..prefix],
            config.write_progress_timeout,
        )
        .await;
        if let Err(error) = sent {
            if reused {
                use_pool = false;
                continue;
            }
            return Err(failure(Fault::Backend(error), name, proxy, false));
        }
        if !body.is_done() {
            break (backend, false);
        }
        let mut interim = false;
        let client_side = ClientSide::Whole {
            stream: &mut *client,
            inbuf: &mut *inbuf,
        };
        match read_final_head(&mut backend, client_side, bbuf, &mut interim, config).await {
            Ok(()) => break (backend, true),
            Err(Fault::Backend(_)) if reused && bbuf.is_empty() && !interim => {
                use_pool = false;
            }
            Err(fault) => return Err(failure(fault, name, proxy, interim)),
        }
    };
    inbuf.consume(prefix);
    guard.received((out.len() + prefix) as u64);

    // The rest of the request body streams while the backend's response head is awaited: a
    // backend may answer before it has read the body (100 Continue, or an early 413).
    if !head_read {
        let (mut client_read, mut client_write) = client.split();
        let (mut backend_read, mut backend_write) = backend.split();
        let mut interim = false;
        let response = read_final_head(
            &mut backend_read,
            ClientSide::<C>::Writer(&mut client_write),
            bbuf,
            &mut interim,
            config,
        );
        let mut pumped = 0;
        let pump = pump_body(
            &mut client_read,
            &mut backend_write,
            inbuf,
            &mut body,
            config,
            &mut pumped,
        );
        let result = {
            tokio::pin!(response, pump);
            let mut pumping = true;
            loop {
                tokio::select! {
                    biased;
                    result = &mut response => break result,
                    result = &mut pump, if pumping => match result {
                        Ok(()) => pumping = false,
                        // The backend stopped reading: it may still have answered.
                        Err(Fault::Backend(_)) => pumping = false,
                        Err(fault) => break Err(fault),
                    },
                }
            }
        };
        guard.received(pumped);
        if let Err(fault) = result {
            return Err(failure(fault, name, proxy, interim));
        }
    }

    // The final response head is at the start of `bbuf`; it is rewritten into `out`.
    let keep_client = client_keep_alive && body.is_done() && !drain.is_draining();
    out.clear();
    let response = prepare_response(bbuf.data(), out, head_request, websocket, keep_client)
        .map_err(|reason| failure(Fault::BackendProtocol(reason), name, proxy, false))?;
    debug!(backend = %name, peer = %peer.addr, status = response.code, "routed");
    bbuf.consume(response.len);

    if response.code == 101 {
        // What either side sent after its head (the client's early frames were held until now).
        let progress = config.write_progress_timeout;
        write_all(client, out, bbuf.data(), progress)
            .await
            .map_err(|e| failure(Fault::Client(e), name, proxy, true))?;
        guard.sent((out.len() + bbuf.len()) as u64);
        write_all(&mut backend, inbuf.data(), &[], progress)
            .await
            .map_err(|e| failure(Fault::Backend(e), name, proxy, true))?;
        guard.received(inbuf.len() as u64);
        // The relay needs none of the connection's buffers: an idle WebSocket holds none.
        *inbuf = Buf::with_capacity(0);
        *bbuf = Buf::with_capacity(0);
        *out = Vec::new();
        let limits = RelayLimits {
            half_close_grace: config.upgrade_half_close_grace,
            write_progress: config.write_progress_timeout,
            carry: config.relay_carry,
        };
        upgrade::relay(client, &mut backend, guard, peer.addr, limits).await;
        return Ok(Next::Close);
    }

    let resp_framing = response.framing;
    // An HTTP/1.0 request went on as 1.0: its backend connection is not pooled after it.
    let backend_keep_alive = response.backend_keep_alive && minor == 1;
    let close = response.close;

    let mut progress = BodyProgress::new(resp_framing);
    let first = progress.advance(bbuf.data()).map_err(|_| {
        failure(
            Fault::BackendProtocol("invalid chunked body"),
            name,
            proxy,
            false,
        )
    })?;
    let write_progress = config.write_progress_timeout;
    write_all(client, out, &bbuf.data()[..first], write_progress)
        .await
        .map_err(|e| failure(Fault::Client(e), name, proxy, true))?;
    guard.sent((out.len() + first) as u64);
    bbuf.consume(first);
    // A large body of known length moves in few, large reads and writes.
    if let Some(remaining) = progress.remaining_length() {
        if remaining >= LARGE_BODY_BYTES && bbuf.is_empty() {
            client
                .carry_body(&backend, remaining, write_progress)
                .await
                .map_err(|fault| {
                    let fault = match fault {
                        BodyFault::Client(error) => Fault::Client(error),
                        BodyFault::Backend(error) => Fault::Backend(error),
                    };
                    failure(fault, name, proxy, true)
                })?;
            guard.sent(remaining);
            progress = BodyProgress::new(Framing::Empty);
        }
    }
    while !progress.is_done() {
        let read = read_backend(&mut backend, bbuf, Some((&mut *client, &mut *inbuf))).await;
        match read {
            Ok(0) if progress.finish_at_eof() => break,
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "response body cut short");
                return Err(failure(Fault::Backend(eof), name, proxy, true));
            }
            Ok(_) => {}
            Err(fault) => return Err(failure(fault, name, proxy, true)),
        }
        let n = progress.advance(bbuf.data()).map_err(|_| {
            failure(
                Fault::BackendProtocol("invalid chunked body"),
                name,
                proxy,
                true,
            )
        })?;
        write_all(client, &bbuf.data()[..n], &[], write_progress)
            .await
            .map_err(|e| failure(Fault::Client(e), name, proxy, true))?;
        guard.sent(n as u64);
        bbuf.consume(n);
    }
    // The body has ended: the request stops counting.
    drop(guard);
    if backend_keep_alive && body.is_done() && bbuf.is_empty() {
        upstream.put_idle(backend, config.backend_pool_max_idle);
    }
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// A request head, checked, routed and rewritten: what the rest of the exchange needs of it.
pub(crate) struct Prepared {
    /// Counts the request against its route from now on.
    guard: ActiveGuard,
    /// `None` while the backend is starting.
    upstream: Option<Arc<Upstream>>,
    /// Where the route key is in the client buffer (for waiting on a starting backend).
    label: Range<usize>,
    framing: Framing,
    keep_alive: bool,
    websocket: bool,
    head_request: bool,
    minor: u8,
    head_len: usize,
}

impl Prepared {
    /// How to answer a failure before anything was forwarded.
    fn refuse(&self) -> impl Fn(ProxyError) -> Failure + Copy {
        refusal(self.keep_alive, self.framing)
    }
}

/// How to answer a request refused before anything of it was forwarded: the connection can
/// take another request only if the client allows it and nothing of this one is left to read.
fn refusal(keep_alive: bool, framing: Framing) -> impl Fn(ProxyError) -> Failure + Copy {
    let keep_alive = keep_alive && framing == Framing::Empty;
    move |error| Failure::Respond { error, keep_alive }
}

/// What every request passes before it counts, in HTTP/1.1 and HTTP/2 alike: its `host` names
/// a route; a TLS handshake that named another backend (`sni`) does not carry it (421); a
/// backend that requires a token sees it (`/_plane_auth` at `target` turns it into the cookie).
/// Returns the route key and the route. Checked before counting: a refused request is no
/// activity.
pub(crate) fn admit_request<'h, 'b>(
    proxy: &Proxy,
    host: &'h str,
    target: &str,
    fields: impl access::Fields<'b>,
    sni: Option<&str>,
) -> Result<(&'h str, Arc<Route>), ProxyError> {
    let label = proxy.table.route_key(host)?;
    if let Some(named) = sni.and_then(|sni| proxy.table.route_key(sni).ok()) {
        if !named.eq_ignore_ascii_case(label) && proxy.table.lookup(named).is_some() {
            return Err(ProxyError::Misdirected {
                sni: named.to_ascii_lowercase().into(),
                host: label.to_ascii_lowercase().into(),
            });
        }
    }
    let route = proxy.table.lookup(label).ok_or_else(|| unknown(label))?;
    if let Some(token) = route.token() {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == access::AUTH_PATH {
            let secure = proxy.proto.as_ref() == "https";
            return Err(access::exchange_for_cookie(
                query,
                token,
                route.backend(),
                secure,
            ));
        }
        access::admit(fields, token, route.backend())?;
    }
    Ok((label, route))
}

/// Counts a request against `route`, within `max_conns_per_backend`.
pub(crate) fn count(proxy: &Proxy, route: &Arc<Route>) -> Result<ActiveGuard, ProxyError> {
    let limit = proxy.config.max_conns_per_backend.unwrap_or(u64::MAX);
    let guard =
        ActiveGuard::bounded(Arc::clone(route), limit).map_err(|refusal| match refusal {
            Refusal::Closed => stopping(route),
            Refusal::Full => ProxyError::BackendBusy {
                backend: route.backend().into(),
            },
        })?;
    route.traffic().request();
    Ok(guard)
}

/// Parses, checks and routes the request head at the start of `buf`, and writes the head the
/// backend gets into `out`. Synchronous, so the parser's header slots live on the stack only.
pub(crate) fn prepare_request(
    proxy: &Proxy,
    buf: &[u8],
    out: &mut Vec<u8>,
    forwarded: &Forwarded<'_>,
    sni: Option<&str>,
) -> Result<Prepared, Failure> {
    let mut slots = header_slots();
    let head = RequestHead::parse(buf, &mut slots)?
        .ok_or(HeadError::Malformed("invalid line ending in head"))?;
    if head.headers.len() > proxy.config.max_request_headers {
        return Err(HeadError::TooManyHeaders.into());
    }
    let refuse = refusal(head.keep_alive, head.framing);
    if head.method == "CONNECT" {
        return Err(refuse(ProxyError::BadRequest("CONNECT is not supported")));
    }
    let host = head
        .authority()
        .ok_or_else(|| refuse(ProxyError::MissingHost))?;
    let host_str = std::str::from_utf8(host)
        .map_err(|_| refuse(ProxyError::BadRequest("Host is not visible ASCII")))?;
    if let Some(port) = proxy.config.https_redirect {
        return Err(refuse(https_required(host_str, head.target.path, port)?));
    }
    let (label, route) =
        admit_request(proxy, host_str, head.target.path, head.headers, sni).map_err(refuse)?;
    // Counted from the request head on, including while held for a starting backend.
    let guard = count(proxy, &route).map_err(refuse)?;
    let credentials = if route.requires_token() {
        headers::Credentials::Strip
    } else {
        headers::Credentials::Pass
    };
    headers::write_request_head(out, &head, host, forwarded, credentials);
    let start = label.as_ptr() as usize - buf.as_ptr() as usize;
    Ok(Prepared {
        guard,
        upstream: route.upstream(),
        label: start..start + label.len(),
        framing: head.framing,
        keep_alive: head.keep_alive,
        websocket: head.websocket,
        head_request: head.method == "HEAD",
        minor: head.minor,
        head_len: head.len,
    })
}

/// The 308 for a plain request to a proxy that serves HTTPS: the same host and path on https,
/// on `port` (left out when it is 443). The path passed the head parser: no CR, LF or space.
fn https_required(host: &str, path: &str, port: u16) -> Result<ProxyError, Failure> {
    let name = crate::host::host_name(host).map_err(|error| Failure::Respond {
        error: error.into(),
        keep_alive: false,
    })?;
    let path = if path.is_empty() { "/" } else { path };
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    Ok(ProxyError::HttpsRequired {
        location: location.into_boxed_str(),
    })
}

/// A final response head from the backend, checked and rewritten.
pub(crate) struct Answer {
    code: u16,
    pub(crate) framing: Framing,
    /// The backend keeps its connection open after this response.
    backend_keep_alive: bool,
    /// The client connection ends after this response.
    close: bool,
    pub(crate) len: usize,
}

/// Parses the final response head at the start of `buf` and writes the head the client gets
/// into `out`. `keep_client`: the client connection could go on after this response (it
/// asked to, its request was read whole, the proxy is not draining). A 101 is accepted only
/// as the answer to a WebSocket request. Synchronous, like [`prepare_request`].
pub(crate) fn prepare_response(
    buf: &[u8],
    out: &mut Vec<u8>,
    head_request: bool,
    websocket_request: bool,
    keep_client: bool,
) -> Result<Answer, &'static str> {
    let mut slots = header_slots();
    let head = ResponseHead::parse(buf, &mut slots, head_request)
        .map_err(backend_reason)?
        .ok_or("invalid line ending in head")?;
    if head.code == 101 {
        if !websocket_request {
            return Err("101 to a request that did not ask to upgrade");
        }
        if !head.websocket {
            return Err("101 to a protocol other than websocket");
        }
    }
    let close = !keep_client || head.framing == Framing::UntilClose;
    headers::write_response_head(out, &head, close);
    Ok(Answer {
        code: head.code,
        framing: head.framing,
        backend_keep_alive: head.keep_alive,
        close,
        len: head.len,
    })
}

/// If `buf` starts with an interim (1xx, not 101) response head, writes the head the client
/// gets into `out` and returns its length; `None` for a final head.
fn rewrite_interim(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, &'static str> {
    if !is_interim(buf) {
        return Ok(None);
    }
    let mut slots = header_slots();
    let head = ResponseHead::parse(buf, &mut slots, false)
        .map_err(backend_reason)?
        .ok_or("invalid line ending in head")?;
    if head.code >= 200 {
        return Ok(None);
    }
    headers::write_response_head(out, &head, false);
    Ok(Some(head.len))
}

fn backend_reason(error: HeadError) -> &'static str {
    match error {
        HeadError::Malformed(why) => why,
        HeadError::TooManyHeaders => "too many header fields",
    }
}

/// Reads from the backend until `bbuf` starts with a final response head (status 101 or
/// 2xx–5xx), passing interim ones (100 Continue, 103 Early Hints) on to the client;
/// `interim` tells whether any was.
async fn read_final_head<R, C: ClientStream>(
    backend: &mut R,
    mut client: ClientSide<'_, C>,
    bbuf: &mut Buf,
    interim: &mut bool,
    config: &ProxyConfig,
) -> Result<(), Fault>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        while head_end(bbuf.data()).is_none() {
            if bbuf.is_full() && !bbuf.grow(MAX_RESPONSE_HEADER_BYTES) {
                return Err(Fault::BackendProtocol("response head too large"));
            }
            let watch = match &mut client {
                ClientSide::Whole { stream, inbuf } => Some((&mut **stream, &mut **inbuf)),
                ClientSide::Writer(_) => None,
            };
            if read_backend(backend, bbuf, watch).await? == 0 {
                return Err(Fault::Backend(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response head",
                )));
            }
        }
        if !is_interim(bbuf.data()) {
            return Ok(());
        }
        // Rare enough that its own small buffer is fine.
        let mut forwarded = Vec::new();
        let Some(len) =
            rewrite_interim(bbuf.data(), &mut forwarded).map_err(Fault::BackendProtocol)?
        else {
            return Ok(());
        };
        let progress = config.write_progress_timeout;
        match &mut client {
            ClientSide::Whole { stream, .. } => write_all(*stream, &forwarded, &[], progress).await,
            ClientSide::Writer(writer) => write_all(*writer, &forwarded, &[], progress).await,
        }
        .map_err(Fault::Client)?;
        *interim = true;
        bbuf.consume(len);
    }
}

/// The client's side of an exchange, as the response-head reader gets it.
enum ClientSide<'a, C> {
    /// The whole connection: interim responses are written to it, and its closing is noticed
    /// while the backend is awaited (its bytes, pipelined requests, go to `inbuf`).
    Whole {
        stream: &'a mut C,
        inbuf: &'a mut Buf,
    },
    /// Only the writing half (the reading half is streaming the request body).
    Writer(&'a mut (dyn tokio::io::AsyncWrite + Unpin + Send)),
}

/// One read from the backend into `bbuf`. With `watch`, the client connection is watched
/// meanwhile: a client that closes (or resets) while the backend is silent ends the exchange
/// at once instead of when the backend next writes, so an abandoned long poll or event stream
/// stops counting. Bytes the client sends meanwhile (a pipelined request) wait in its buffer.
async fn read_backend<R, C: ClientStream>(
    backend: &mut R,
    bbuf: &mut Buf,
    mut watch: Option<(&mut C, &mut Buf)>,
) -> Result<usize, Fault>
where
    R: tokio::io::AsyncRead + Unpin,
{
    // Polled by hand rather than with `select!`: no waiter list per wait.
    poll_fn(|cx| {
        if let Poll::Ready(read) = bbuf.poll_read_from(cx, backend) {
            return Poll::Ready(read.map_err(Fault::Backend));
        }
        while let Some((client, inbuf)) = &mut watch {
            if inbuf.is_full() {
                // No room for more pipelined bytes: stop watching until the next request.
                watch = None;
                break;
            }
            match client.poll_watch(cx, inbuf) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Fault::Client(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed while the backend was answering",
                    ))))
                }
                // Bytes read (a pipelined request): look again.
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(Fault::Client(error))),
            }
        }
        Poll::Pending
    })
    .await
}

/// A 1xx other than 101, judged from the status line alone (the full parse follows).
pub(crate) fn is_interim(buf: &[u8]) -> bool {
    buf.len() > 12 && buf.starts_with(b"HTTP/1.") && buf[9] == b'1' && &buf[9..12] != b"101"
}

/// Streams the rest of the request body from the client to the backend.
async fn pump_body<R, W>(
    client: &mut R,
    backend: &mut W,
    inbuf: &mut Buf,
    body: &mut BodyProgress,
    config: &ProxyConfig,
    pumped: &mut u64,
) -> Result<(), Fault>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    while !body.is_done() {
        if inbuf.is_empty() {
            let read =
                tokio::time::timeout(config.request_body_idle_timeout, inbuf.read_from(client))
                    .await;
            match read {
                Err(_) => return Err(Fault::ClientBodyIdle),
                Ok(Ok(0)) => {
                    return Err(Fault::Client(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the request body",
                    )))
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(Fault::Client(error)),
            }
        }
        let n = body
            .advance(inbuf.data())
            .map_err(|_| Fault::ClientBody("invalid chunked request body"))?;
        write_all(
            backend,
            &inbuf.data()[..n],
            &[],
            config.write_progress_timeout,
        )
        .await
        .map_err(Fault::Backend)?;
        *pumped += n as u64;
        inbuf.consume(n);
    }
    Ok(())
}

/// Writes the proxy's own response for `error`; the connection stays open only if
/// `keep_alive` (and the response was written).
async fn respond_error<C: ClientStream>(
    proxy: &Proxy,
    conn: &mut Conn<C>,
    error: &ProxyError,
    keep_alive: bool,
) -> Next {
    let status = error.status();
    proxy.table.errors().count(status.as_u16());
    let owned = error.answer_fields(proxy.config.retry_after_secs);
    let fields: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    conn.out.clear();
    headers::write_error_response(&mut conn.out, status, error, &fields, !keep_alive);
    let written = write_all(
        &mut conn.client,
        &conn.out,
        &[],
        proxy.config.write_progress_timeout,
    )
    .await;
    if keep_alive && written.is_ok() {
        conn.inbuf.consume(conn.pending_head);
        conn.pending_head = 0;
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// The digest of the token the request head at the start of `buf` shows, if any: parsed again
/// on the rare path of a request for a name nothing routes.
fn presented_token(buf: &[u8]) -> Option<TokenDigest> {
    let mut slots = header_slots();
    let head = RequestHead::parse(buf, &mut slots).ok()??;
    access::presented_at(head.headers, head.target.path).map(TokenDigest::of)
}

/// Asks the table's waker for a route for `label`, for a request showing `token` (see
/// [`crate::wake`]).
pub(crate) async fn wake_route(
    proxy: &Proxy,
    label: &str,
    token: Option<TokenDigest>,
) -> Result<(), ProxyError> {
    match proxy.table.wake(label, token).await {
        Ok(()) => Ok(()),
        Err(WakeRefusal::Unknown) => Err(unknown(label)),
        Err(WakeRefusal::TokenRequired) => Err(ProxyError::TokenRequired {
            backend: label.into(),
        }),
        Err(WakeRefusal::TokenRefused) => Err(ProxyError::TokenRefused {
            backend: label.into(),
        }),
        Err(WakeRefusal::Unavailable(reason)) => Err(ProxyError::NotWoken {
            name: label.into(),
            reason: reason.into(),
        }),
    }
}

/// Holds a request until the backend is ready, removed, `starting_wait` passes, or the proxy
/// starts draining (a held request must not outlast the shutdown grace; the client gets the
/// same 503 with `Retry-After` and can retry against the next proxy).
pub(crate) async fn wait_ready(
    proxy: &Proxy,
    label: &str,
    drain: &mut drain::Watch,
) -> Result<(Arc<Route>, Arc<Upstream>), ProxyError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + proxy.config.starting_wait);
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut changes = proxy.table.subscribe();
    debug!(backend = %label, "holding request for starting backend");
    loop {
        let route = proxy.table.lookup(label).ok_or_else(|| unknown(label))?;
        if let Some(upstream) = route.upstream() {
            return Ok((route, upstream));
        }
        let changed = tokio::select! {
            changed = tokio::time::timeout_at(deadline, changes.changed()) => {
                matches!(changed, Ok(Ok(())))
            }
            () = drain.draining() => false,
        };
        if !changed {
            return Err(ProxyError::StillStarting {
                backend: route.backend().into(),
                waited: started.elapsed(),
            });
        }
    }
}

fn stopping(route: &Route) -> ProxyError {
    ProxyError::BackendStopping {
        backend: route.backend().into(),
    }
}

fn unknown(label: &str) -> ProxyError {
    ProxyError::UnknownBackend {
        backend: label.to_ascii_lowercase().into_boxed_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn interim_responses_are_1xx_but_101() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(is_interim(b"HTTP/1.1 103 Early Hints\r\n\r\n"));
        assert!(!is_interim(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n\r\n"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every connection's task is as large as its largest state, the relay an idle WebSocket
    /// sits in included; what is rare (HTTP/2) is boxed so it does not size them all.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (client, _far) = crate::sockets::tcp_pair().await;
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.acquire_owned().await.expect("permit");
        let peer = Peer::new(client.peer_addr().expect("addr"), permit);
        let proxy = Arc::new(Proxy::new(RouteTable::new("c"), ProxyConfig::default()));
        let (_drain, watch) = drain::channel();
        let future = serve_connection(proxy, client, peer, watch);
        let size = std::mem::size_of_val(&future);
        // 2,960 bytes when written; 3,792 with HTTP/2 inline.
        assert!(size <= 3072, "a connection's task holds {size} bytes");
    }
}
