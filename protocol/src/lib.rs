//! The types Plane's parts agree on: the messages controller and drones exchange and the subjects
//! and buckets they live under, and the records and spawn body of the HTTP API. Kept apart from
//! any behaviour, so that an app calling Plane compiles these and the client, nothing more.

pub mod certificates;
mod error_chain;
pub mod ids;
pub mod keys;
pub mod messages;
pub mod records;
pub mod registry;
pub mod spawn_request;
pub mod subjects;
pub mod token;

pub use error_chain::error_chain;
