//! The drone's agent: it takes commands from the controller, runs each backend through an
//! executor, drives it through its lifecycle, routes it in the proxy once ready, sweeps it when
//! idle, and reports every state change until the controller acknowledges it.

pub mod certificates;
pub mod docker;
pub mod drone;
pub mod executor;
mod lifecycle;
pub mod limits;
mod listener_owner;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod readiness;
mod reaper;
mod reporter;
mod sock_diag;
mod sweeper;
mod usage;
pub mod wake;

pub use drone::{Drone, DroneConfig};
