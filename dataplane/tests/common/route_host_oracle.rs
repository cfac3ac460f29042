//! The oracle for arbitrary `Host` bytes, shared by the `route_host` fuzz target and the
//! `fuzz_corpus` test (which runs every seed through it): no panic, and an accepted host is
//! exactly `{label}.{cluster}[:port]` with a sane label that the lookup treats consistently.

use plane_dataplane::{backend_label, RouteTable};

pub const CLUSTER: &str = "plane.localhost";

/// Backends present in the oracle's table, so lookups also hit.
pub const BACKENDS: [&str; 3] = ["abc", "backend-1", "x_y"];

pub fn table() -> RouteTable {
    let table = RouteTable::new(CLUSTER);
    for (port, backend) in (1..).zip(BACKENDS) {
        table.set_ready(backend, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    table
}

/// Runs one input through routing; panics if an invariant breaks. Returns the label if routed.
pub fn check(data: &[u8], table: &RouteTable) -> Option<String> {
    // Real hosts come from `HeaderValue::to_str` (visible ASCII), but the function takes any
    // `&str`, so feed it everything, invalid UTF-8 replaced.
    let host = String::from_utf8_lossy(data);
    let host = host.as_ref();
    let cluster = table.cluster();
    let label = match backend_label(host, cluster) {
        Ok(label) => label,
        Err(_) => {
            // A lookup with garbage must not panic either (and must miss: keys are labels).
            if let Some(route) = table.lookup(host) {
                assert!(route.backend().eq_ignore_ascii_case(host), "{host:?}");
            }
            return None;
        }
    };
    assert!(!label.is_empty(), "empty label from {host:?}");
    assert!(label.len() <= 63, "label over 63 bytes from {host:?}");
    assert!(host.contains(label), "label not in {host:?}");
    assert!(
        label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "bad label char from {host:?}"
    );

    // host == label + "." + cluster (+ ":" port), cluster compared case-insensitively.
    let rest = host
        .strip_prefix(label)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or_else(|| panic!("{host:?} does not start with {label:?}."));
    let (name, port) = match rest.get(..cluster.len()) {
        Some(name) => (name, &rest[cluster.len()..]),
        None => panic!("{host:?} too short for the cluster"),
    };
    assert!(
        name.eq_ignore_ascii_case(cluster),
        "{host:?} not in cluster"
    );
    if !port.is_empty() {
        let digits = port
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("{host:?} has junk after the cluster"));
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "{host:?}"
        );
        assert!(digits.parse::<u16>().is_ok(), "{host:?} port out of range");
    }

    // The lookup is case-insensitive and only ever finds the route for this label.
    let found = table.lookup(label);
    let expected = BACKENDS.iter().any(|b| b.eq_ignore_ascii_case(label));
    assert_eq!(found.is_some(), expected, "{host:?}");
    if let Some(route) = found {
        assert!(route.backend().eq_ignore_ascii_case(label), "{host:?}");
    }
    Some(label.to_owned())
}
