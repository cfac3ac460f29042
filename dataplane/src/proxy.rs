//! The request path, independent of the client protocol: route by host, hold for a starting
//! backend, rewrite headers, forward over the pooled HTTP/1.1 client, count until the body ends.
//!
//! `http1.rs` feeds it requests today; an HTTP/2 front end will feed it the same
//! `Request<Incoming>` with the host taken from `:authority`.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use crate::body::{ProxyBody, RequestBody, RequestBodyError};
use crate::drain;
use crate::error::{ProxyError, Side};
use crate::headers;
use crate::limits::{TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_TIME};
use crate::route_table::{Route, RouteTable, Upstream};
use crate::upgrade;
use crate::ProxyConfig;

/// The client connection a request came in on.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// `X-Forwarded-For` value, formatted once per connection.
    pub(crate) ip: HeaderValue,
    /// The connection's slot under `max_connections`. Whoever holds the `Peer` holds the slot:
    /// the connection task, and after an upgrade the relay that took the socket over.
    _permit: OwnedSemaphorePermit,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, permit: OwnedSemaphorePermit) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip,
            _permit: permit,
        }
    }
}

/// State shared by every connection of one listener.
pub(crate) struct Proxy {
    table: RouteTable,
    client: Client<HttpConnector, RequestBody>,
    config: ProxyConfig,
    proto: HeaderValue,
    retry_after: HeaderValue,
    drain: drain::Watch,
}

impl Proxy {
    pub(crate) fn new(table: RouteTable, config: ProxyConfig, drain: drain::Watch) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A backend host that vanishes must not leave an upgraded connection open forever.
        connector.set_keepalive(Some(TCP_KEEPALIVE_TIME));
        connector.set_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL));
        connector.set_connect_timeout(Some(config.backend_connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.backend_pool_idle_timeout)
            .pool_max_idle_per_host(config.backend_pool_max_idle)
            // Every request already carries the client's Host; never invent one from the address.
            .set_host(false)
            .build(connector);
        let proto = HeaderValue::from_str(config.scheme.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("http"));
        let retry_after = HeaderValue::from(config.retry_after_secs);
        Proxy {
            table,
            client,
            config,
            proto,
            retry_after,
            drain,
        }
    }

    /// Answers one request: the backend's response, or an error response saying who failed.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: &Arc<Peer>,
    ) -> Response<ProxyBody> {
        match self.forward(req, peer).await {
            Ok(response) => response,
            Err(error) => {
                match error.side() {
                    Side::Client => debug!(%error, peer = %peer.addr, "request refused"),
                    Side::Backend | Side::Proxy => {
                        warn!(%error, peer = %peer.addr, "request failed")
                    }
                }
                self.error_response(&error)
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: &Arc<Peer>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not supported"));
        }
        // Two Hosts could route by one and reach the backend claiming the other (RFC 9112 §3.2:
        // a request with more than one is answered 400).
        let mut hosts = req.headers().get_all(HOST).iter();
        let header_host = hosts.next().cloned();
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Host header"));
        }
        // An absolute-form URI's authority overrides Host (RFC 9112 §3.2.2); the backend then
        // gets it as Host too.
        let host = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?,
            None => header_host.ok_or(ProxyError::MissingHost)?,
        };
        let host_str = host
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host is not visible ASCII"))?;
        let label = self.table.route_key(host_str)?;
        let route = self.table.lookup(label).ok_or_else(|| unknown(label))?;
        // Counted from the request head on, including while held for a starting backend.
        let mut guard = route.track().ok_or_else(|| stopping(&route))?;

        let upstream = match route.upstream() {
            Some(upstream) => upstream,
            None => {
                let (ready, upstream) = self.wait_ready(label, peer).await?;
                if !Arc::ptr_eq(&ready, guard.route()) {
                    // Removed and added again while we waited: count against the live route.
                    guard = ready.track().ok_or_else(|| stopping(&ready))?;
                }
                upstream
            }
        };

        // Only WebSocket is relayed; any other upgrade (h2c, TLS) goes on as a plain request.
        let upgrade = headers::is_websocket_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        headers::remove_hop_by_hop(req.headers_mut(), upgrade);
        headers::set_forwarded(
            req.headers_mut(),
            peer.ip.clone(),
            self.proto.clone(),
            Some(host.clone()),
        );
        req.headers_mut().insert(HOST, host);
        *req.uri_mut() = upstream_uri(std::mem::take(req.uri_mut()), &upstream)?;
        *req.version_mut() = Version::HTTP_11;
        let req = req.map(|body| RequestBody::new(body, self.config.request_body_idle_timeout));

        let route = Arc::clone(guard.route());
        let backend = route.backend();
        let mut response = match self.client.request(req).await {
            Ok(response) => response,
            Err(source) if source.is_connect() => {
                // The backend never saw this request: it must not count as activity.
                guard.cancel();
                return Err(ProxyError::BackendConnect {
                    backend: backend.into(),
                    source,
                });
            }
            Err(source) => {
                if let Some(waited) = request_body_idle(&source) {
                    return Err(ProxyError::RequestBodyTimeout {
                        backend: backend.into(),
                        waited,
                    });
                }
                return Err(ProxyError::BackendRequest {
                    backend: backend.into(),
                    source,
                });
            }
        };
        debug!(backend = %backend, peer = %peer.addr, status = %response.status(), "routed");

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::BackendProtocol {
                    backend: backend.into(),
                    reason: "101 to a request that did not ask to upgrade",
                });
            };
            if !headers::is_websocket_upgrade(response.headers()) {
                return Err(ProxyError::BackendProtocol {
                    backend: backend.into(),
                    reason: "101 to a protocol other than websocket",
                });
            }
            let backend_upgrade = hyper::upgrade::on(&mut response);
            headers::remove_hop_by_hop(response.headers_mut(), true);
            tokio::spawn(upgrade::relay(
                client_upgrade,
                backend_upgrade,
                guard,
                upgrade::Hold {
                    peer: Arc::clone(peer),
                    drain: self.drain.clone(),
                    half_close_grace: self.config.upgrade_half_close_grace,
                },
            ));
            return Ok(response.map(|_| ProxyBody::empty()));
        }

        headers::remove_hop_by_hop(response.headers_mut(), false);
        Ok(response.map(|body| ProxyBody::upstream(body, guard)))
    }

    /// Holds a request until the backend is ready, removed, `starting_wait` passes, or the proxy
    /// starts draining (a held request must not outlast the shutdown grace; the client gets the
    /// same 503 with `Retry-After` and can retry against the next proxy).
    ///
    /// Cancel safe: dropping it only drops `watch` receivers.
    async fn wait_ready(
        &self,
        label: &str,
        peer: &Peer,
    ) -> Result<(Arc<Route>, Arc<Upstream>), ProxyError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.config.starting_wait);
        // Subscribe before looking, so a change between the look and the wait is not missed.
        let mut changes = self.table.subscribe();
        let mut drain = self.drain.clone();
        debug!(backend = %label, peer = %peer.addr, "holding request for starting backend");
        loop {
            let route = self.table.lookup(label).ok_or_else(|| unknown(label))?;
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

    fn error_response(&self, error: &ProxyError) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(Bytes::from(format!("{error}\n"))));
        *response.status_mut() = error.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if error.status() == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, self.retry_after.clone());
        }
        response
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

/// How long the client's request body had stalled, if that is why the backend exchange failed.
fn request_body_idle(error: &hyper_util::client::legacy::Error) -> Option<Duration> {
    let mut cause = error.source();
    while let Some(error) = cause {
        if let Some(RequestBodyError::Idle(waited)) = error.downcast_ref() {
            return Some(*waited);
        }
        cause = error.source();
    }
    None
}

/// The request URI pointed at the backend: `http://{backend address}{path and query}`. Only the
/// route's address ever becomes the authority, whatever the client sent.
fn upstream_uri(uri: Uri, upstream: &Upstream) -> Result<Uri, ProxyError> {
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// `service_fn` needs an error type; the proxy answers every request, so it is uninhabited.
pub(crate) type Never = Infallible;
