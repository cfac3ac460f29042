//! Arbitrary bytes as a `Host` header through `backend_label` and the route lookup.
//! Oracle (shared with the `fuzz_corpus` test in dataplane): no panic; an accepted host is
//! `{label}.{cluster}[:port]` with a non-empty label of at most 63 bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plane_dataplane::RouteTable;

#[path = "../../dataplane/tests/common/route_host_oracle.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    let table = TABLE.get_or_init(oracle::table);
    oracle::check(data, table);
});
