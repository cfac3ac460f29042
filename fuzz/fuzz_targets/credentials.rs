//! Arbitrary bytes as a request to a backend that requires an access token: the token found
//! in `Authorization` or the `plane_token` cookie, the `/_plane_auth` exchange, and the head the
//! backend would get. Oracle: `plane_dataplane::fuzzing::credentials`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plane_dataplane::fuzzing;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::credentials(data);
});
