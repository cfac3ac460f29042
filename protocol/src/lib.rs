//! The one thing the controller and the drones share: the messages they exchange, the subjects
//! and buckets those messages live under, and the bus that carries them (a real NATS server in
//! production, an in-memory twin for `plane dev` and unit tests).

pub mod bus;
mod error_chain;
pub mod ids;
pub mod messages;
pub mod subjects;

pub use error_chain::error_chain;
