//! The drone's TLS certificate: obtained and renewed over ACME DNS-01 and shared with the other
//! drones of the cluster through the controller (see `plane_protocol::certificates`), or
//! provided by the operator as files. Either way the proxy's TLS listener serves the files and
//! swaps in new ones without a restart, and the drone's heartbeat tells the cluster which
//! certificate it serves and why its last renewal failed.

mod acme;
mod files;
mod refresher;
mod status;

pub use acme::{AcmeConfig, AcmeError, ExternalAccount};
pub use files::{CertificateFiles, FileError};
pub use refresher::{Refresher, RefresherConfig};
pub use status::watch_operator_files;
