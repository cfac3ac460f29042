use super::*;

const CLUSTER: &str = "plane.localhost";

fn label(host: &str) -> Result<&str, HostError> {
    backend_label(host, CLUSTER)
}

/// The invariants of any accepted host: what the fuzz target also checks.
fn check_ok(host: &str, cluster: &str, label: &str) {
    assert!(
        !label.is_empty() && label.len() <= MAX_LABEL_BYTES,
        "{host:?}"
    );
    let rest = host.get(label.len()..).expect("label is a prefix of host");
    assert_eq!(&host[..label.len()], label);
    let rest = rest.strip_prefix('.').expect("a dot after the label");
    let (name, port) = match rest.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (rest, None),
    };
    assert!(name.eq_ignore_ascii_case(cluster), "{host:?}");
    if let Some(port) = port {
        assert!(port.parse::<u16>().is_ok(), "{host:?}");
    }
}

#[test]
fn accepts_label_with_and_without_port() {
    assert_eq!(label("abc.plane.localhost"), Ok("abc"));
    assert_eq!(label("abc.plane.localhost:9090"), Ok("abc"));
    assert_eq!(label("Abc.Plane.Localhost:9090"), Ok("Abc"));
    assert_eq!(label("a-b_c9.PLANE.LOCALHOST:1"), Ok("a-b_c9"));
    assert_eq!(label("abc.plane.localhost:65535"), Ok("abc"));
    assert_eq!(backend_label("x.A.B", "a.b"), Ok("x"));
}

#[test]
fn rejects_hosts_outside_cluster() {
    assert_eq!(label(""), Err(HostError::Empty));
    assert_eq!(label("abc.example.com"), Err(HostError::OutsideCluster));
    assert_eq!(label("abcplane.localhost"), Err(HostError::OutsideCluster));
    assert_eq!(
        label("abc.plane.localhost."),
        Err(HostError::OutsideCluster)
    );
    assert_eq!(
        label("abc.plane.localhost.evil.com"),
        Err(HostError::OutsideCluster)
    );
    assert_eq!(label("127.0.0.1:9090"), Err(HostError::OutsideCluster));
    assert_eq!(label("[::1]:9090"), Err(HostError::OutsideCluster));
    assert_eq!(label("[::1]"), Err(HostError::OutsideCluster));
    assert_eq!(label("localhost"), Err(HostError::OutsideCluster));
    assert_eq!(
        backend_label("abc.plane.localhost", ""),
        Err(HostError::OutsideCluster)
    );
    // Non-ASCII look-alikes of the cluster do not match ('ſ' uppercases to 'S' in Unicode).
    assert_eq!(label("abc.plane.localhoſt"), Err(HostError::OutsideCluster));
}

#[test]
fn rejects_bad_labels() {
    assert_eq!(label("plane.localhost"), Err(HostError::EmptyLabel));
    assert_eq!(label("PLANE.localhost:80"), Err(HostError::EmptyLabel));
    assert_eq!(label(".plane.localhost"), Err(HostError::EmptyLabel));
    assert_eq!(label("a.b.plane.localhost"), Err(HostError::NestedLabel));
    assert_eq!(label("..plane.localhost"), Err(HostError::NestedLabel));
    let long = format!("{}.plane.localhost", "a".repeat(64));
    assert_eq!(label(&long), Err(HostError::LabelTooLong));
    let max = format!("{}.plane.localhost", "a".repeat(63));
    assert_eq!(label(&max), Ok(&max[..63]));
    assert_eq!(label("a b.plane.localhost"), Err(HostError::InvalidLabel));
    assert_eq!(label("ü.plane.localhost"), Err(HostError::InvalidLabel));
    assert_eq!(label("a/b.plane.localhost"), Err(HostError::InvalidLabel));
}

#[test]
fn rejects_bad_ports() {
    for host in [
        "abc.plane.localhost:",
        "abc.plane.localhost:65536",
        "abc.plane.localhost:123456",
        "abc.plane.localhost:+80",
        "abc.plane.localhost:8o",
        "abc.plane.localhost:80:80",
        "abc.plane.localhost: 80",
    ] {
        assert!(label(host).is_err(), "{host:?}");
    }
    assert_eq!(label("abc.plane.localhost:x"), Err(HostError::BadPort));
}

#[test]
fn every_split_of_valid_hosts_is_consistent() {
    for host in [
        "abc.plane.localhost:9090",
        "Abc.Plane.Localhost",
        "ü.plane.localhost:1",
        "a.b.plane.localhost:80",
    ] {
        for i in 0..=host.len() {
            let (Some(head), Some(tail)) = (host.get(..i), host.get(i..)) else {
                continue; // not a char boundary
            };
            for part in [head, tail] {
                if let Ok(l) = label(part) {
                    check_ok(part, CLUSTER, l);
                }
            }
        }
    }
    // The prefixes that are themselves complete hosts are accepted, the others are not.
    assert_eq!(label("abc.plane.localhost:9"), Ok("abc"));
    assert_eq!(label("abc.plane.local"), Err(HostError::OutsideCluster));
}

#[test]
fn label_key_lowercases_without_touching_non_ascii() {
    let key = LabelKey::<63>::new("AbC-ü").expect("short label");
    assert_eq!(key.as_str(), "abc-ü");
    assert!(LabelKey::<63>::new(&"a".repeat(63)).is_some());
    assert!(LabelKey::<63>::new(&"a".repeat(64)).is_none());
    assert!(LabelKey::<253>::new(&"a".repeat(253)).is_some());
}

#[test]
fn host_names_for_static_routes() {
    assert_eq!(host_name("App.Example.com"), Ok("App.Example.com"));
    assert_eq!(host_name("app.example.com:8080"), Ok("app.example.com"));
    assert_eq!(host_name("localhost"), Ok("localhost"));
    assert_eq!(host_name(""), Err(HostError::Empty));
    assert_eq!(host_name(":80"), Err(HostError::Empty));
    assert_eq!(host_name("a:b"), Err(HostError::BadPort));
    assert_eq!(host_name("a:99999"), Err(HostError::BadPort));
    assert_eq!(host_name("a b.com"), Err(HostError::InvalidLabel));
    assert_eq!(host_name("[::1]:80"), Err(HostError::InvalidLabel));
    assert_eq!(host_name(&"a".repeat(254)), Err(HostError::LabelTooLong));
    // Split at every byte boundary, nothing panics.
    let host = "Ünï.example.com:80";
    for i in 0..=host.len() {
        let _ = host.get(..i).map(host_name);
    }
}
