//! Every limit and default of the data plane, in one place.
//!
//! [`ProxyConfig`](crate::ProxyConfig) takes its defaults from here, so a reader can see what a
//! proxy started with `ProxyConfig::default()` tolerates without reading the serving code.

use std::time::Duration;

/// Longest backend label (the part of the host before `.{cluster}`): one DNS label.
pub const MAX_LABEL_BYTES: usize = 63;

/// The longest host name a static route (`plane proxy --route HOST=ADDR`) may have: a DNS name
/// is at most 253 bytes.
pub const MAX_HOST_BYTES: usize = 253;

/// Requests whose head (request line and headers) exceeds this get 431.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Requests with more header fields than this get 431; the proxy keeps room for the 5 fields it
/// may add itself (`X-Forwarded-*`, a WebSocket handshake's), so a client may send 95. Heads are
/// parsed into a stack array of this many slots: no allocation per request.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// Backend response heads larger than this are refused (502): backends are not trusted either.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// A client must send a complete request head within this time (slowloris defence).
///
/// hyper starts this timer whenever a connection begins waiting for a request head, which
/// includes the wait between requests on a keep-alive connection: it is therefore also the
/// keep-alive idle timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body that delivers no data for this long fails: the request ends (408 if the
/// backend has not answered yet) and stops counting as activity. Measured between body frames,
/// not over the whole body, so slow but steady uploads are fine.
pub const REQUEST_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Client connections served at once per listener; further connections wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 10_000;

/// How long a request for a backend that is still starting is held before 503.
pub const STARTING_WAIT: Duration = Duration::from_secs(30);

/// `Retry-After` (seconds) sent with the 503 for a backend that did not become ready in time.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Time allowed to open a TCP connection to a backend before 502.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle pooled connections to backends are closed after this.
pub const BACKEND_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle pooled connections kept per backend. Above the concurrency a busy backend sees: a pool
/// that keeps fewer than are in flight closes the surplus as each request ends and dials it
/// again for the next (at 64 keep-alive clients, 32 cost a third of the throughput).
pub const BACKEND_POOL_MAX_IDLE: usize = 256;

/// Once one side of an upgraded (WebSocket) connection has closed its half, the other side gets
/// this long to finish and close too; then both are closed. There is deliberately no idle
/// timeout on an open upgraded connection: long-idle WebSockets are legitimate, and vanished
/// peers are found by TCP keepalive instead.
pub const UPGRADE_HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Copy buffer of a relay direction that is moving bytes (none is held while it is idle).
pub const UPGRADE_RELAY_BUFFER_BYTES: usize = 32 * 1024;

/// A write to a client or backend that makes no progress for this long fails and ends the
/// connection: a peer that stops reading (a zero receive window) cannot hold a connection, and
/// the backend's activity count with it, open forever. Overridable per listener
/// (`ProxyConfig::write_progress_timeout`).
pub const WRITE_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// `TCP_USER_TIMEOUT` on client and backend sockets: data the peer leaves unacknowledged this
/// long (a peer that vanished mid-transfer) ends the connection in the kernel.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle time before the first TCP keepalive probe on client and backend sockets, so a peer that
/// vanished without a FIN or RST (a laptop lid, a NAT timeout) is noticed and its connection,
/// and the activity it counts, ends.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(60);

/// Interval between TCP keepalive probes once they start (the kernel gives up after its probe
/// count, 9 on Linux: about `TCP_KEEPALIVE_TIME` + 90 s in all).
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// After shutdown, in-flight requests and upgraded connections get this long to finish before
/// they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often idle pooled backend connections are checked for expiry.
pub const BACKEND_POOL_REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Pause after an accept error such as EMFILE, so a full file table does not spin the loop.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// HTTP/2: streams one client connection may have open at once (advertised in SETTINGS).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// HTTP/2: streams a client may open and reset before the proxy accepted them; past it the
/// connection is closed (the rapid-reset attack, CVE-2023-44487).
pub const H2_MAX_PENDING_RESETS: usize = 20;

/// HTTP/2: streams the proxy may have to reset for a client's protocol errors before it closes
/// the connection.
pub const H2_MAX_LOCAL_RESETS: usize = 256;

/// HTTP/2: the flow-control window of each stream the client sends on (request bodies,
/// WebSocket frames): large enough that an upload is not a round trip per 64 KiB.
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;

/// HTTP/2: the flow-control window of a whole client connection.
pub const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// HTTP/2: bytes of a response the proxy buffers per stream beyond what the client's window
/// takes; past it the backend is not read until the client catches up.
pub const H2_SEND_BUFFER: usize = 256 * 1024;
