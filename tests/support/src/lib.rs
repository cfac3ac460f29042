//! What Plane's tests need to run real components: a `nats-server` with JetStream on a free port,
//! a TCP relay that can cut one client off from it, child processes that cannot outlive the test, the path of the test backend binary, `curl`, and
//! a deadline loop for conditions that have no event to await.

pub mod backend;
pub mod curl;
pub mod dig;
pub mod docker;
pub mod h2_flood;
pub mod nats;
pub mod nats_cluster;
pub mod nats_jwt;
pub mod pebble;
pub mod pki;
pub mod process;
pub mod registry;
pub mod relay;
pub mod tls_probe;
pub mod wait;

pub use backend::test_backend_path;
pub use curl::{curl, CurlResponse};
pub use nats::NatsServer;
pub use nats_cluster::NatsCluster;
pub use nats_jwt::NatsOperator;
pub use pebble::Pebble;
pub use pki::Pki;
pub use process::{process_alive, processes_with_env, ChildGuard};
pub use relay::TcpRelay;
pub use wait::eventually;

/// A TCP port that was free a moment ago (bound to `127.0.0.1:0`, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
