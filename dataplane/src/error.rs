//! Proxy errors, each knowing whose fault it is and what the client is told.

use std::time::Duration;

use http::StatusCode;

use crate::host::HostError;

/// A `Set-Cookie` value carrying an access token: given to the client it is for, never shown
/// by `Debug` (errors are logged and formatted for tests).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenCookie(Box<str>);

impl TokenCookie {
    pub(crate) fn new(value: String) -> TokenCookie {
        TokenCookie(value.into_boxed_str())
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCookie(<redacted>)")
    }
}

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something unroutable or malformed.
    Client,
    /// The backend could not be reached or failed mid-exchange.
    Backend,
    /// The proxy itself (listener, runtime).
    Proxy,
}

/// Everything that can go wrong while proxying. Request-level errors become a response with
/// [`status`](Self::status) and a one-line plain-text body; they never end the listener.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be proxied as sent (CONNECT, an invalid request target).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head is larger than `max_request_header_bytes` or has more fields than
    /// `max_request_headers`.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The request head did not arrive within `header_read_timeout`.
    #[error("request head not received in time")]
    HeadTimeout,
    /// The client closed or stopped reading in the middle of an exchange.
    #[error("client connection failed")]
    ClientGone(#[source] std::io::Error),
    /// The request has no `Host` (and no absolute-form URI authority).
    #[error("missing Host header")]
    MissingHost,
    /// The `Host` is not a backend of this cluster.
    #[error("invalid Host: {0}")]
    BadHost(#[from] HostError),
    /// No route for the backend (never existed or removed).
    #[error("no such backend: {backend}")]
    UnknownBackend {
        /// The (lowercased) label asked for.
        backend: Box<str>,
    },
    /// The backend was closed by the idle sweep and is being stopped.
    #[error("backend {backend} is shutting down")]
    BackendStopping {
        /// The backend asked for.
        backend: Box<str>,
    },
    /// The backend already has `max_conns_per_backend` requests and connections in flight.
    #[error("backend {backend} is at its connection limit")]
    BackendBusy {
        /// The backend asked for.
        backend: Box<str>,
    },
    /// A sleeping backend could not be woken here now (see [`crate::wake`]).
    #[error("{name} could not be woken: {reason}")]
    NotWoken {
        /// The route key asked for.
        name: Box<str>,
        reason: Box<str>,
    },
    /// The backend stayed in *starting* for the whole wait.
    #[error("backend {backend} is still starting after {waited:?}")]
    StillStarting {
        /// The backend waited for.
        backend: Box<str>,
        /// How long the request was held.
        waited: Duration,
    },
    /// The client stopped sending its request body before the backend answered.
    #[error("request body for backend {backend} stalled for {waited:?}")]
    RequestBodyTimeout {
        /// The backend the request was for.
        backend: Box<str>,
        /// The idle timeout that expired.
        waited: Duration,
    },
    /// The TCP connection to the backend was refused or timed out.
    #[error("could not connect to backend {backend}")]
    BackendConnect {
        /// The backend dialled.
        backend: Box<str>,
        /// What the dial reported.
        #[source]
        source: std::io::Error,
    },
    /// The backend closed or reset the connection, or sent an invalid response.
    #[error("backend {backend} failed to answer")]
    BackendRequest {
        /// The backend asked.
        backend: Box<str>,
        /// What the backend connection reported.
        #[source]
        source: std::io::Error,
    },
    /// The backend answered in a way the proxy cannot pass on.
    #[error("backend {backend} sent an invalid response: {reason}")]
    BackendProtocol {
        /// The backend asked.
        backend: Box<str>,
        /// What was wrong.
        reason: &'static str,
    },
    /// The TLS handshake named one route (SNI) and the request's `Host` another: the client
    /// must not reuse a connection across them (RFC 9110 §15.5.20).
    #[error("this connection is for {sni}, not {host}")]
    Misdirected {
        /// The route the handshake named.
        sni: Box<str>,
        /// The route the request named.
        host: Box<str>,
    },
    /// The backend requires an access token and the request shows none.
    #[error(
        "backend {backend} requires an access token: send `Authorization: Bearer TOKEN`, or open \
         /_plane_auth?token=TOKEN&redirect=/path once to get it as a cookie"
    )]
    TokenRequired {
        /// The backend asked for.
        backend: Box<str>,
    },
    /// The request shows a token that is not the backend's.
    #[error("wrong access token for backend {backend}")]
    TokenRefused {
        /// The backend asked for.
        backend: Box<str>,
    },
    /// `/_plane_auth` with the right token: the browser gets the cookie and goes on (303).
    #[error("signed in; continue at {location}")]
    TokenAccepted {
        /// The path on the same host to continue at.
        location: Box<str>,
        /// The `Set-Cookie` value carrying the token.
        cookie: TokenCookie,
    },
    /// A plain-HTTP request to a proxy that serves HTTPS: the client is sent there (308).
    #[error("this proxy serves HTTPS: {location}")]
    HttpsRequired {
        /// The same URL on https.
        location: Box<str>,
    },
    /// The listener failed in a way that accepting again cannot fix.
    #[error("listener failed")]
    Listener(#[source] std::io::Error),
    /// A worker thread of a thread-per-core listener could not start, or ended abnormally.
    #[error("proxy worker thread failed")]
    Worker(#[source] std::io::Error),
}

impl ProxyError {
    /// Whose fault the error is.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MissingHost
            | ProxyError::HeadTooLarge
            | ProxyError::HeadTimeout
            | ProxyError::ClientGone(_)
            | ProxyError::BadHost(_)
            | ProxyError::HttpsRequired { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::TokenRequired { .. }
            | ProxyError::TokenRefused { .. }
            | ProxyError::TokenAccepted { .. }
            | ProxyError::UnknownBackend { .. }
            | ProxyError::BackendStopping { .. }
            | ProxyError::RequestBodyTimeout { .. } => Side::Client,
            ProxyError::StillStarting { .. }
            | ProxyError::NotWoken { .. }
            | ProxyError::BackendBusy { .. }
            | ProxyError::BackendConnect { .. }
            | ProxyError::BackendProtocol { .. }
            | ProxyError::BackendRequest { .. } => Side::Backend,
            ProxyError::Listener(_) | ProxyError::Worker(_) => Side::Proxy,
        }
    }

    /// Whether the client may safely send the same request again (the backend never saw it).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::StillStarting { .. }
                | ProxyError::NotWoken { .. }
                | ProxyError::BackendBusy { .. }
                | ProxyError::BackendConnect { .. }
        )
    }

    /// Where the client is sent instead, for a redirect.
    pub fn location(&self) -> Option<&str> {
        match self {
            ProxyError::HttpsRequired { location } | ProxyError::TokenAccepted { location, .. } => {
                Some(location)
            }
            _ => None,
        }
    }

    /// The header fields the proxy's answer for this error carries besides its framing:
    /// `Retry-After` on a 503, `Location`, `Set-Cookie`, `WWW-Authenticate` on a 401.
    /// Allocated only on these answers, never for a proxied request.
    pub(crate) fn answer_fields(&self, retry_after_secs: u32) -> Vec<(&'static str, String)> {
        let mut fields = Vec::new();
        let status = self.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            fields.push(("retry-after", retry_after_secs.to_string()));
        }
        if let Some(location) = self.location() {
            fields.push(("location", location.to_owned()));
        }
        if let Some(cookie) = self.set_cookie() {
            fields.push(("set-cookie", cookie.to_owned()));
        }
        if status == StatusCode::UNAUTHORIZED {
            fields.push(("www-authenticate", "Bearer".to_owned()));
        }
        fields
    }

    /// The cookie the client is given with the answer.
    pub fn set_cookie(&self) -> Option<&str> {
        match self {
            ProxyError::TokenAccepted { cookie, .. } => Some(cookie.as_str()),
            _ => None,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MissingHost
            | ProxyError::BadHost(_)
            | ProxyError::ClientGone(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::HttpsRequired { .. } => StatusCode::PERMANENT_REDIRECT,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::TokenRequired { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::TokenRefused { .. } => StatusCode::FORBIDDEN,
            ProxyError::TokenAccepted { .. } => StatusCode::SEE_OTHER,
            ProxyError::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            // An ended backend is as gone as one never started.
            ProxyError::UnknownBackend { .. } | ProxyError::BackendStopping { .. } => {
                StatusCode::NOT_FOUND
            }
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::StillStarting { .. }
            | ProxyError::NotWoken { .. }
            | ProxyError::BackendBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendConnect { .. }
            | ProxyError::BackendRequest { .. }
            | ProxyError::BackendProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Listener(_) | ProxyError::Worker(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_sides() {
        let unknown = ProxyError::UnknownBackend {
            backend: "b".into(),
        };
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(unknown.side(), Side::Client);
        assert_eq!(unknown.to_string(), "no such backend: b");

        let host = ProxyError::from(HostError::NestedLabel);
        assert_eq!(host.status(), StatusCode::BAD_REQUEST);
        assert!(!host.retryable());

        let starting = ProxyError::StillStarting {
            backend: "b".into(),
            waited: Duration::from_secs(1),
        };
        assert_eq!(starting.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(starting.side(), Side::Backend);
        assert!(starting.retryable());

        let stalled = ProxyError::RequestBodyTimeout {
            backend: "b".into(),
            waited: Duration::from_secs(30),
        };
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(stalled.side(), Side::Client);
        assert!(!stalled.retryable(), "the backend saw the request head");
    }
}
