//! The routing decision: which backend a `Host` names.
//!
//! Pure, allocation-free string slicing so that the proxy, the benchmark and the fuzz target all
//! exercise the exact code that routes requests.

use crate::limits::{MAX_HOST_BYTES, MAX_LABEL_BYTES};

/// Why a `Host` does not name a backend of this cluster. Every variant is the client's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host is empty.
    #[error("empty host")]
    Empty,
    /// The host is not `{label}.{cluster}` (another domain, an IP literal, a trailing dot).
    #[error("host is not in this cluster")]
    OutsideCluster,
    /// Nothing before `.{cluster}`, or the host is the cluster itself.
    #[error("host names no backend")]
    EmptyLabel,
    /// More than one label before the cluster (`a.b.{cluster}`).
    #[error("nested label before the cluster")]
    NestedLabel,
    /// The label is longer than a DNS label may be.
    #[error("backend label longer than 63 bytes")]
    LabelTooLong,
    /// The label has a byte other than ASCII letters, digits, `-` and `_`.
    #[error("backend label has an invalid character")]
    InvalidLabel,
    /// The part after the last `:` is not a port number.
    #[error("bad port")]
    BadPort,
}

/// Returns the backend label of `host` (`{label}.{cluster}[:port]`), as written (not lowercased).
///
/// The cluster is compared ASCII case-insensitively. The label is one DNS label of
/// `[A-Za-z0-9_-]`, at most 63 bytes. Never allocates and never panics, whatever `host` holds.
///
/// ```
/// # use plane_dataplane::{backend_label, HostError};
/// assert_eq!(backend_label("Abc.Plane.Localhost:9090", "plane.localhost"), Ok("Abc"));
/// assert_eq!(backend_label("a.b.plane.localhost", "plane.localhost"), Err(HostError::NestedLabel));
/// ```
pub fn backend_label<'a>(host: &'a str, cluster: &str) -> Result<&'a str, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if cluster.is_empty() || host.starts_with('[') {
        return Err(HostError::OutsideCluster);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) => {
            check_port(port)?;
            name
        }
        None => host,
    };
    let (name_bytes, cluster_bytes) = (name.as_bytes(), cluster.as_bytes());
    if name_bytes.len() <= cluster_bytes.len() {
        return Err(if name_bytes.eq_ignore_ascii_case(cluster_bytes) {
            HostError::EmptyLabel
        } else {
            HostError::OutsideCluster
        });
    }
    let split = name_bytes.len() - cluster_bytes.len();
    if !name_bytes[split..].eq_ignore_ascii_case(cluster_bytes) || name_bytes[split - 1] != b'.' {
        return Err(HostError::OutsideCluster);
    }
    // The byte at `split - 1` is an ASCII '.', so this is a char boundary; `get` keeps that
    // reasoning from ever turning into a panic.
    let label = name.get(..split - 1).ok_or(HostError::OutsideCluster)?;
    check_label(label)?;
    Ok(label)
}

/// Returns the host name of `host` (`{name}[:port]`), as written, for tables of static routes
/// keyed by whole host names: DNS letters, digits, `-`, `_` and dots, at most 253 bytes. Never
/// allocates and never panics.
///
/// ```
/// # use plane_dataplane::{host_name, HostError};
/// assert_eq!(host_name("App.Example.com:8080"), Ok("App.Example.com"));
/// assert_eq!(host_name("a b"), Err(HostError::InvalidLabel));
/// ```
pub fn host_name(host: &str) -> Result<&str, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) => {
            check_port(port)?;
            name
        }
        None => host,
    };
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_BYTES {
        return Err(HostError::LabelTooLong);
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(HostError::InvalidLabel);
    }
    Ok(name)
}

fn check_port(port: &str) -> Result<(), HostError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match port.parse::<u16>() {
        Ok(_) => Ok(()),
        Err(_) => Err(HostError::BadPort),
    }
}

fn check_label(label: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if label.contains('.') {
        return Err(HostError::NestedLabel);
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(HostError::LabelTooLong);
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HostError::InvalidLabel);
    }
    Ok(())
}

/// A key lowercased into a stack buffer of `N` bytes: the route table's lookup key, built
/// without allocating.
pub(crate) struct LabelKey<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> LabelKey<N> {
    /// `None` when `label` is longer than any route key can be.
    pub(crate) fn new(label: &str) -> Option<LabelKey<N>> {
        let bytes = label.as_bytes();
        if bytes.len() > N {
            return None;
        }
        let mut buf = [0u8; N];
        for (dst, src) in buf.iter_mut().zip(bytes) {
            *dst = src.to_ascii_lowercase();
        }
        Some(LabelKey {
            buf,
            len: bytes.len(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        // ASCII lowercasing leaves multi-byte sequences untouched, so this is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests;
