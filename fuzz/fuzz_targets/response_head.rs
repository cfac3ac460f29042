//! Arbitrary bytes as a backend's response head through the rewrite the client gets.
//! Oracle: `plane_dataplane::fuzzing::response_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plane_dataplane::fuzzing;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::response_head(data);
});
