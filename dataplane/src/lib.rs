//! Plane's data plane: an HTTP proxy that routes `{backend}.{cluster}` to the backend's address
//! and counts each backend's activity for idle shutdown.
//!
//! The shape, front to back: [`serve`] accepts HTTP/1.1 connections (`http1.rs`) and serves
//! each in one task (`exchange.rs`): heads are parsed in place and checked (`head.rs`), routed by
//! [`backend_label`] and the [`RouteTable`] (`host.rs`, `route_table.rs`), counted by an
//! [`ActiveGuard`] (`counting.rs`), rewritten (`headers.rs`) and sent with their bodies, whose
//! ends `framing.rs` finds, over pooled keep-alive connections (`upstream.rs`); WebSockets are
//! relayed as bytes (`upgrade.rs`). [`Listeners`] runs that on one thread per core
//! (`workers.rs`). Every limit lives in [`limits`]; every failure is a
//! [`ProxyError`] that knows its side.

mod access;
mod buffer;
mod client;
mod config;
mod counting;
mod drain;
mod error;
mod exchange;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod h2_exchange;
mod head;
mod headers;
mod host;
mod http1;
mod http2;
pub mod limits;
#[doc(hidden)]
pub mod measure;
mod route_table;
mod sockets;
mod splice;
mod stall;
pub mod tls;
mod token_digest;
mod upgrade;
mod upstream;
mod wake;
mod workers;

pub use config::ProxyConfig;
pub use counting::{ActiveGuard, ErrorCounts};
pub use error::{ProxyError, Side, TokenCookie};
pub use host::{backend_label, host_name, HostError};
pub use http1::serve;
pub use route_table::{Route, RouteTable};
pub use splice::Carry;
pub use token_digest::{BadTokenDigest, TokenDigest};
pub use wake::{Wake, WakeRefusal, Waking};
pub use workers::Listeners;
