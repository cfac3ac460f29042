//! Runs every seed of every fuzz target (`route_host`, `request_head`, `response_head`,
//! `upgrade_relay`, `credentials`) through its oracle, so the corpora are checked by `cargo test` and not only
//! by `cargo fuzz`.

#[path = "common/route_host_oracle.rs"]
mod oracle;

use std::path::Path;

#[test]
fn route_host_seed_corpus_passes_the_oracle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/route_host");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("seed corpus {} missing: {error}", dir.display()));
    let table = oracle::table();
    let (mut seeds, mut routed) = (0, 0);
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read seed");
        seeds += 1;
        if oracle::check(&data, &table).is_some() {
            routed += 1;
        }
    }
    assert!(seeds >= 10, "only {seeds} seeds in {}", dir.display());
    assert!(
        routed >= 3 && routed < seeds,
        "seeds should mix accepted and rejected hosts"
    );
}

#[test]
fn oracle_accepts_and_rejects_as_expected() {
    let table = oracle::table();
    assert_eq!(
        oracle::check(b"ABC.plane.LOCALHOST:9090", &table).as_deref(),
        Some("ABC")
    );
    assert_eq!(
        oracle::check(b"zzz.plane.localhost", &table).as_deref(),
        Some("zzz")
    );
    assert_eq!(oracle::check(b"a.b.plane.localhost", &table), None);
    assert_eq!(oracle::check(b"\xff\xfe.plane.localhost", &table), None);
}

/// Every seed of fuzz target `target`, as bytes.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("seed corpus {} missing: {error}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                name.unwrap_or_default(),
                std::fs::read(&path).expect("read seed"),
            )
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn request_head_seed_corpus_passes_the_oracle() {
    let table = plane_dataplane::fuzzing::table();
    let seeds = seeds("request_head");
    assert!(seeds.len() >= 15, "only {} seeds", seeds.len());
    let routed: Vec<&str> = seeds
        .iter()
        .filter(|(_, data)| plane_dataplane::fuzzing::request_head(data, &table).is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    // The seeds mix routed requests with refused ones (every smuggling shape is refused).
    for name in [
        "get",
        "absolute_form",
        "post_chunked_trailers",
        "websocket",
        "connection_names_framing",
    ] {
        assert!(routed.contains(&name), "{name} should route: {routed:?}");
    }
    for name in [
        "cl_te",
        "double_cl",
        "te_obfuscated",
        "folded",
        "bare_cr",
        "nul",
        "two_hosts",
        "get_unknown",
    ] {
        assert!(!routed.contains(&name), "{name} should not route");
    }
}

#[test]
fn response_head_seed_corpus_passes_the_oracle() {
    let seeds = seeds("response_head");
    assert!(seeds.len() >= 10, "only {} seeds", seeds.len());
    let accepted: Vec<&str> = seeds
        .iter()
        .filter(|(_, data)| plane_dataplane::fuzzing::response_head(data))
        .map(|(name, _)| name.as_str())
        .collect();
    for name in [
        "ok_length",
        "chunked_trailer",
        "switching",
        "connection_named",
        "until_close",
    ] {
        assert!(
            accepted.contains(&name),
            "{name} should be accepted: {accepted:?}"
        );
    }
    for name in ["cl_te", "bad_status", "garbage"] {
        assert!(!accepted.contains(&name), "{name} should be refused");
    }
}

#[test]
fn upgrade_relay_seed_corpus_passes_the_oracle() {
    let seeds = seeds("upgrade_relay");
    assert!(seeds.len() >= 5, "only {} seeds", seeds.len());
    for (_, data) in seeds {
        plane_dataplane::fuzzing::relay_script(&data);
    }
}

#[test]
fn credentials_seed_corpus_passes_the_oracle() {
    let seeds = seeds("credentials");
    assert!(seeds.len() >= 10, "only {} seeds", seeds.len());
    let admitted: Vec<&str> = seeds
        .iter()
        .filter(|(_, data)| plane_dataplane::fuzzing::credentials(data))
        .map(|(name, _)| name.as_str())
        .collect();
    for name in ["bearer", "bearer_lowercase", "cookie", "two_cookie_fields"] {
        assert!(
            admitted.contains(&name),
            "{name} should be admitted: {admitted:?}"
        );
    }
    for name in [
        "wrong_bearer_right_cookie",
        "prefix",
        "basic",
        "lookalike_cookies",
        "none",
        "auth_wrong",
    ] {
        assert!(!admitted.contains(&name), "{name} should be refused");
    }
}
