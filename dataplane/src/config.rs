//! How a proxy listener behaves: forwarding scheme, waits and limits.
//!
//! Every field has a default from [`crate::limits`], so callers override only what they mean to:
//! `ProxyConfig { starting_wait: Duration::from_secs(5), ..ProxyConfig::default() }`.

use std::time::Duration;

use http::uri::Scheme;

use crate::limits;
use crate::splice::Carry;

/// Settings for [`serve`](crate::serve).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Scheme clients used to reach this listener, sent to backends as `X-Forwarded-Proto`.
    /// Default: `http`.
    pub scheme: Scheme,
    /// How long a request for a starting backend is held before 503. Default:
    /// [`limits::STARTING_WAIT`].
    pub starting_wait: Duration,
    /// `Retry-After` seconds on that 503. Default: [`limits::RETRY_AFTER_SECS`].
    pub retry_after_secs: u32,
    /// Deadline for a complete request head, and so also for an idle keep-alive connection.
    /// Default: [`limits::HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// A request body that delivers nothing for this long fails and the request ends. Default:
    /// [`limits::REQUEST_BODY_IDLE_TIMEOUT`].
    pub request_body_idle_timeout: Duration,
    /// Request heads larger than this get 431. Default: [`limits::MAX_REQUEST_HEADER_BYTES`].
    pub max_request_header_bytes: usize,
    /// Requests with more header fields get 431. Default: [`limits::MAX_REQUEST_HEADERS`].
    pub max_request_headers: usize,
    /// Client connections served at once; more wait to be accepted. Default:
    /// [`limits::MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Deadline for opening a connection to a backend before 502. Default:
    /// [`limits::BACKEND_CONNECT_TIMEOUT`].
    pub backend_connect_timeout: Duration,
    /// Idle pooled backend connections are closed after this. Default:
    /// [`limits::BACKEND_POOL_IDLE_TIMEOUT`].
    pub backend_pool_idle_timeout: Duration,
    /// Idle pooled connections kept per backend. Default: [`limits::BACKEND_POOL_MAX_IDLE`].
    pub backend_pool_max_idle: usize,
    /// Once one side of an upgraded connection has closed, how long the other may still send.
    /// Default: [`limits::UPGRADE_HALF_CLOSE_GRACE`].
    pub upgrade_half_close_grace: Duration,
    /// How upgraded (WebSocket) connections move bytes. Default: [`Carry::Copy`], which
    /// measured faster than splicing on loopback (see `bench/RESULTS.md`).
    pub relay_carry: Carry,
    /// Requests and upgraded connections in flight to one backend at once; more get 503 with
    /// `Retry-After`. Default: `None` (bounded only by `max_connections`).
    pub max_conns_per_backend: Option<u64>,
    /// A write that makes no progress for this long fails and ends its connection. Default:
    /// [`limits::WRITE_PROGRESS_TIMEOUT`].
    pub write_progress_timeout: Duration,
    /// Answer every request with a 308 to the same URL on https, on this port (left out of the
    /// URL when 443), instead of proxying it: the plain listener of a drone that serves HTTPS.
    /// Default: `None`.
    pub https_redirect: Option<u16>,
    /// After shutdown, how long in-flight requests and upgraded connections may still run.
    /// Default: [`limits::SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            scheme: Scheme::HTTP,
            starting_wait: limits::STARTING_WAIT,
            retry_after_secs: limits::RETRY_AFTER_SECS,
            header_read_timeout: limits::HEADER_READ_TIMEOUT,
            request_body_idle_timeout: limits::REQUEST_BODY_IDLE_TIMEOUT,
            max_request_header_bytes: limits::MAX_REQUEST_HEADER_BYTES,
            max_request_headers: limits::MAX_REQUEST_HEADERS,
            max_connections: limits::MAX_CONNECTIONS,
            backend_connect_timeout: limits::BACKEND_CONNECT_TIMEOUT,
            backend_pool_idle_timeout: limits::BACKEND_POOL_IDLE_TIMEOUT,
            backend_pool_max_idle: limits::BACKEND_POOL_MAX_IDLE,
            upgrade_half_close_grace: limits::UPGRADE_HALF_CLOSE_GRACE,
            relay_carry: Carry::Copy,
            max_conns_per_backend: None,
            write_progress_timeout: limits::WRITE_PROGRESS_TIMEOUT,
            https_redirect: None,
            shutdown_grace: limits::SHUTDOWN_GRACE,
        }
    }
}
