//! Benchmarks of Plane's hot paths. The benches live in `benches/`; this library holds the code
//! paths they measure, written once so a bench cannot drift from what the proxy does.

use std::sync::Arc;

use plane_dataplane::{backend_label, Route, RouteTable};

/// The proxy's per-request routing decision: parse the backend label out of `host`, then look it
/// up (lowercased on the stack) in the current route snapshot.
#[inline]
pub fn route(table: &RouteTable, host: &str) -> Option<Arc<Route>> {
    let label = backend_label(host, table.cluster()).ok()?;
    table.lookup(label)
}

/// The `p`th percentile (nearest rank) of `values`, which it sorts; NaN when there are none.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

pub mod controller_load;
