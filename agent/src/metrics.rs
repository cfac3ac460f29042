//! The drone's Prometheus metrics (text format 0.0.4): what its proxy carried for each backend
//! it runs, its sweeps, and the proxy's error answers. Read from the counters the proxy keeps
//! anyway when scraped, so a scrape costs the hot path nothing; a backend's series go with it
//! (they are listed from the backends the drone runs now).

use plane_dataplane::{ErrorCounts, Route};
use plane_protocol::ids::BackendId;
use std::fmt::Write as _;
use std::sync::Arc;

/// One backend's route as scraped (`None` before its route exists).
pub struct BackendTraffic {
    pub backend: BackendId,
    pub route: Option<Arc<Route>>,
}

/// A per-backend series: its name, type, help text and how a route gives its value.
type Series = (&'static str, &'static str, &'static str, fn(&Route) -> u64);

/// The metrics text.
pub fn render(backends: &[BackendTraffic], sweeps: u64, errors: &ErrorCounts) -> String {
    let mut out = String::with_capacity(512 + backends.len() * 400);
    let _ = writeln!(out, "# HELP plane_drone_backends Backends this drone runs.");
    let _ = writeln!(out, "# TYPE plane_drone_backends gauge");
    let _ = writeln!(out, "plane_drone_backends {}", backends.len());
    let series: [Series; 4] = [
        (
            "plane_backend_active_connections",
            "gauge",
            "Requests in flight and upgraded connections open, per backend.",
            Route::active,
        ),
        (
            "plane_backend_requests_total",
            "counter",
            "Requests (and upgrades) the proxy admitted, per backend.",
            Route::requests,
        ),
        (
            "plane_backend_received_bytes_total",
            "counter",
            "Bytes forwarded to the backend (upgraded connections: when they close).",
            Route::received_bytes,
        ),
        (
            "plane_backend_sent_bytes_total",
            "counter",
            "Bytes forwarded from the backend to clients (upgraded connections: when they close).",
            Route::sent_bytes,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for backend in backends {
            let value = backend.route.as_deref().map_or(0, value);
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {value}", backend.backend);
        }
    }
    let _ = writeln!(
        out,
        "# HELP plane_sweeps_total Backends this drone stopped for being idle."
    );
    let _ = writeln!(out, "# TYPE plane_sweeps_total counter");
    let _ = writeln!(out, "plane_sweeps_total {sweeps}");
    let _ = writeln!(
        out,
        "# HELP plane_proxy_errors_total The proxy's own error answers, by status."
    );
    let _ = writeln!(out, "# TYPE plane_proxy_errors_total counter");
    for (status, count) in errors.counts() {
        let _ = writeln!(
            out,
            "plane_proxy_errors_total{{status=\"{status}\"}} {count}"
        );
    }
    out
}
