//! Arbitrary bytes as what a client sends: request head → checks → routing decision → the head
//! the backend would get. Oracle: `plane_dataplane::fuzzing::request_head`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plane_dataplane::fuzzing;
use plane_dataplane::RouteTable;

fuzz_target!(|data: &[u8]| {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    let _ = fuzzing::request_head(data, TABLE.get_or_init(fuzzing::table));
});
