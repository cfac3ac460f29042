//! Idle shutdown: a ready backend with no active connection for its `max_idle_secs` is stopped
//! with reason `swept`. The proxy keeps the counts; this only reads them, a few times a second,
//! so a backend is swept within [`SWEEP_INTERVAL`] of its deadline.
//!
//! [`SWEEP_INTERVAL`]: crate::limits::SWEEP_INTERVAL

use crate::lifecycle::BackendHandle;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::TerminationReason;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// Stops every backend in `backends` that has been idle for its timeout at `now`.
pub(crate) fn sweep(backends: &HashMap<BackendId, Arc<BackendHandle>>, now: Instant) {
    for (id, handle) in backends {
        let Some(route) = handle.route() else {
            continue; // Not ready yet: starting backends are never swept.
        };
        let Some(idle_since) = route.idle_since() else {
            continue; // Active.
        };
        let idle = now.saturating_duration_since(idle_since);
        if idle >= handle.max_idle() {
            info!(backend = %id, ?idle, "backend idle; sweeping");
            handle.request_stop(TerminationReason::Swept);
        }
    }
}
