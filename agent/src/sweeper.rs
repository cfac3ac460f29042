//! Idle shutdown: a ready backend with no active connection for its `max_idle_secs` is stopped
//! with reason `swept`. The proxy keeps the counts; a few times a second this closes the routes
//! idle past their timeout (atomically with their count being zero, so that a request arriving
//! at that moment is either counted first, calling the sweep off, or refused, never forwarded to
//! a backend being stopped), and stops their backends. A backend is swept within
//! [`SWEEP_INTERVAL`] of its deadline.
//!
//! [`SWEEP_INTERVAL`]: crate::limits::SWEEP_INTERVAL

use crate::lifecycle::BackendHandle;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::TerminationReason;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// Stops every backend in `backends` that has been idle for its timeout at `now`; says how
/// many.
pub(crate) fn sweep(backends: &HashMap<BackendId, Arc<BackendHandle>>, now: Instant) -> u64 {
    let mut swept = 0;
    for (id, handle) in backends {
        let Some(route) = handle.route() else {
            continue; // Not ready yet: starting backends are never swept.
        };
        if route.is_closed() {
            continue; // Swept already; stopping.
        }
        if route.close_if_idle(handle.max_idle(), now) {
            info!(backend = %id, max_idle = ?handle.max_idle(), "backend idle; sweeping");
            handle.request_stop(TerminationReason::Swept);
            swept += 1;
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::ready_handle;
    use plane_dataplane::RouteTable;
    use std::time::Duration;

    fn backends(entries: &[(&str, &Arc<BackendHandle>)]) -> HashMap<BackendId, Arc<BackendHandle>> {
        entries
            .iter()
            .map(|(id, handle)| (BackendId::new(*id).expect("valid id"), Arc::clone(handle)))
            .collect()
    }

    #[test]
    fn an_idle_backend_is_swept_at_its_deadline_and_not_before() {
        let table = RouteTable::new("plane.test");
        let (handle, route, stop) = ready_handle(&table, "b1", 10);
        let all = backends(&[("b1", &handle)]);
        let idle_since = route.idle_since().expect("a fresh route is idle");
        let deadline = idle_since + Duration::from_secs(10);

        assert_eq!(sweep(&all, idle_since), 0);
        assert_eq!(sweep(&all, deadline - Duration::from_millis(1)), 0);
        assert_eq!(*stop.borrow(), None, "swept before its idle timeout");

        assert_eq!(sweep(&all, deadline), 1);
        assert_eq!(*stop.borrow(), Some(TerminationReason::Swept));
        assert_eq!(sweep(&all, deadline), 0, "a sweep counts once");
    }

    #[test]
    fn a_backend_idle_long_past_its_deadline_is_swept() {
        let table = RouteTable::new("plane.test");
        let (handle, route, stop) = ready_handle(&table, "b1", 1);
        let idle_since = route.idle_since().expect("idle");
        sweep(
            &backends(&[("b1", &handle)]),
            idle_since + Duration::from_secs(3600),
        );
        assert_eq!(*stop.borrow(), Some(TerminationReason::Swept));
    }

    #[test]
    fn an_active_backend_is_not_swept_and_its_idle_time_restarts() {
        let table = RouteTable::new("plane.test");
        let (handle, route, stop) = ready_handle(&table, "b1", 10);
        let all = backends(&[("b1", &handle)]);
        let first_idle = route.idle_since().expect("idle");

        let guard = route.track().expect("open");
        sweep(&all, first_idle + Duration::from_secs(3600));
        assert_eq!(*stop.borrow(), None, "swept while a connection was open");

        drop(guard);
        let idle_again = route.idle_since().expect("idle once the guard is gone");
        assert!(idle_again >= first_idle);
        sweep(
            &all,
            idle_again + Duration::from_secs(10) - Duration::from_millis(1),
        );
        assert_eq!(
            *stop.borrow(),
            None,
            "idle time did not restart at the close"
        );
        sweep(&all, idle_again + Duration::from_secs(10));
        assert_eq!(*stop.borrow(), Some(TerminationReason::Swept));
    }

    #[test]
    fn a_swept_backend_takes_no_new_request() {
        let table = RouteTable::new("plane.test");
        let (handle, route, stop) = ready_handle(&table, "b1", 1);
        let idle_since = route.idle_since().expect("idle");
        sweep(
            &backends(&[("b1", &handle)]),
            idle_since + Duration::from_secs(1),
        );
        assert_eq!(*stop.borrow(), Some(TerminationReason::Swept));
        // A request arriving now (the route is still in the table until the lifecycle removes
        // it) is refused instead of reaching the backend being stopped.
        assert!(route.track().is_none());
    }

    #[test]
    fn a_starting_backend_is_never_swept() {
        let (handle, stop) = BackendHandle::new(1);
        sweep(
            &backends(&[("b1", &handle)]),
            Instant::now() + Duration::from_secs(24 * 3600),
        );
        assert_eq!(*stop.borrow(), None);
    }

    #[test]
    fn each_backend_is_judged_by_its_own_timeout() {
        let table = RouteTable::new("plane.test");
        let (short, short_route, short_stop) = ready_handle(&table, "short", 5);
        let (long, long_route, long_stop) = ready_handle(&table, "long", 50);
        let (busy, busy_route, busy_stop) = ready_handle(&table, "busy", 5);
        let _guard = busy_route.track().expect("open");
        let now = short_route
            .idle_since()
            .expect("idle")
            .max(long_route.idle_since().expect("idle"))
            + Duration::from_secs(20);
        sweep(
            &backends(&[("short", &short), ("long", &long), ("busy", &busy)]),
            now,
        );
        assert_eq!(*short_stop.borrow(), Some(TerminationReason::Swept));
        assert_eq!(*long_stop.borrow(), None);
        assert_eq!(*busy_stop.borrow(), None);
    }

    #[test]
    fn sweeping_keeps_an_earlier_stop_reason() {
        let table = RouteTable::new("plane.test");
        let (handle, route, stop) = ready_handle(&table, "b1", 1);
        handle.request_stop(TerminationReason::Terminated);
        sweep(
            &backends(&[("b1", &handle)]),
            route.idle_since().expect("idle") + Duration::from_secs(60),
        );
        assert_eq!(*stop.borrow(), Some(TerminationReason::Terminated));
    }
}
