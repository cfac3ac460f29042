//! Arbitrary bytes as a script of sends and half-closes on an upgraded connection, relayed
//! between real loopback sockets. Oracle: `plane_dataplane::fuzzing::relay_script`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plane_dataplane::fuzzing;

fuzz_target!(|data: &[u8]| {
    // Long scripts only slow the fuzzer down; what they could find, short ones find.
    if data.len() <= 64 {
        fuzzing::relay_script(data);
    }
});
