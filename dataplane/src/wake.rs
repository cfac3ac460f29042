//! Waking on request: a request for a name the table does not route may be for a backend that
//! is asleep (a key whose backend was swept). The proxy then asks the table's [`Wake`], which
//! the drone's agent installs, to get a route in place for that name, and serves the request
//! once it is there; the request is admitted again against the new route, so its token check
//! is the backend's own (and the waker starts nothing for a request without the key's token).
//! Without a `Wake` (e.g. `plane proxy`), an unknown name is a 404 as
//! before.

use crate::token_digest::TokenDigest;
use std::future::Future;
use std::pin::Pin;

/// Why a name could not be woken.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WakeRefusal {
    /// Nothing by that name can wake: the request gets the same 404 as any unknown name.
    #[error("no such backend or key")]
    Unknown,
    /// It requires a token and the request shows none (401): nothing is started for it.
    #[error("a token is required")]
    TokenRequired,
    /// It requires a token and the request shows another (403).
    #[error("the token is not this one's")]
    TokenRefused,
    /// It exists but cannot be served here now (no room, draining, runs on another drone, the
    /// controller unreachable): 503 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
}

/// The future of one wake.
pub type Waking<'a> = Pin<Box<dyn Future<Output = Result<(), WakeRefusal>> + Send + 'a>>;

/// Puts a route in place for a route key the table does not have.
pub trait Wake: Send + Sync + 'static {
    /// Resolves once the table routes `label` (to a starting or ready backend), or with why it
    /// will not. `token` is the digest of the access token the request shows, if any: what
    /// requires one is not started for a request without it. Bounded by the implementation;
    /// concurrent calls for one label and token should share one wake.
    fn wake<'a>(&'a self, label: &'a str, token: Option<TokenDigest>) -> Waking<'a>;
}
