//! The controller: decides where backends run, keeps cluster state in the bus's KV buckets and
//! serves the HTTP API that apps and the `plane` CLI call (through `plane-client`). It never carries user traffic.

pub mod api;
pub mod controller;
pub mod dns;
pub mod limits;
pub mod liveness;
pub mod metrics;
pub mod scheduler;
pub mod state;
pub mod usage;
pub mod view;

pub use controller::{Controller, ControllerConfig};
