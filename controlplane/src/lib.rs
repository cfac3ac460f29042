//! The controller: decides where backends run, keeps cluster state in the bus's KV buckets and
//! serves the HTTP API that apps and the `plane` CLI call. It never carries user traffic.

pub mod api;
pub mod client;
pub mod controller;
pub mod limits;
pub mod records;
pub mod scheduler;
pub mod spawn_request;
pub mod state;

pub use controller::{Controller, ControllerConfig};
