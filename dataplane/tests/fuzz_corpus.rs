//! Runs every seed of the `route_host` fuzz target through its oracle, so the corpus is checked
//! by `cargo test` and not only by `cargo fuzz`.

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
