//! Per-route activity counts that drive idle shutdown.
//!
//! One `AtomicU64` of in-flight work and one of "last became inactive", both shared in-process
//! with the agent's sweeper. Work is counted by an RAII [`ActiveGuard`], so every exit path
//! (response body finished or dropped, relay closed, task cancelled) decrements exactly once,
//! with no lock and no allocation.
//!
//! The sweeper does not merely read the counts: it *closes* an idle route, atomically with its
//! count being zero (a flag bit in the same word), and a closed route takes no more work. So a
//! request arriving just as the sweeper decides either counts first (and the sweep is called
//! off) or finds the route closed (and is answered, never forwarded to a backend being stopped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::route_table::Route;

/// The instant that `last_inactive` nanos count from; fixed at first use in the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    // u64 nanoseconds last 584 years of uptime.
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Set in `active` once the route is closed for sweeping; the count is in the other bits.
const CLOSED: u64 = 1 << 63;

/// The counters of one route.
#[derive(Debug)]
pub(crate) struct Activity {
    /// In-flight work, plus [`CLOSED`] once closed.
    active: AtomicU64,
    /// Nanoseconds since [`epoch`] when the count last dropped to zero (or the route was reset).
    last_inactive: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            active: AtomicU64::new(0),
            last_inactive: AtomicU64::new(nanos_since_epoch(Instant::now())),
        }
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire) & !CLOSED
    }

    /// `None` while active or once closed.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) != 0 {
            return None;
        }
        let nanos = self.last_inactive.load(Ordering::Acquire);
        Some(epoch() + Duration::from_nanos(nanos))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.active.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Closes the route if it has had no work for at least `max_idle` at `now`; `true` if it
    /// is closed now (by this call or an earlier one). Once closed, [`Activity::enter`] fails.
    pub(crate) fn close_if_idle(&self, max_idle: Duration, now: Instant) -> bool {
        let idle_long_enough = |nanos: u64| {
            now.saturating_duration_since(epoch() + Duration::from_nanos(nanos)) >= max_idle
        };
        let seen = self.last_inactive.load(Ordering::Acquire);
        if !idle_long_enough(seen) {
            return self.is_closed();
        }
        match self
            .active
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(current) => return current & CLOSED != 0,
        }
        // Work that came and went between the read above and the close left the count at zero
        // but moved `last_inactive` (written before its decrement): it was not idle after all.
        if self.last_inactive.load(Ordering::Acquire) != seen {
            self.active.fetch_and(!CLOSED, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Marks the route idle from now, whatever happened before (a backend that just became ready).
    pub(crate) fn reset_idle(&self) {
        self.last_inactive
            .fetch_max(nanos_since_epoch(Instant::now()), Ordering::AcqRel);
    }

    /// Counts one unit of work unless the route is closed or already has `max` in flight.
    fn enter(&self, max: u64) -> Result<(), Refusal> {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if before & CLOSED != 0 {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Closed);
        }
        if before >= max {
            // Never counted: the idle time is left as it was.
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        Ok(())
    }

    fn leave(&self, touch: bool) {
        if touch {
            // Record the time *before* decrementing: whoever sees the count at zero must also see
            // a `last_inactive` at least this recent, or a sweeper could stop a backend that was
            // busy a moment ago. `fetch_max` keeps it monotonic when guards race.
            self.last_inactive
                .fetch_max(nanos_since_epoch(Instant::now()), Ordering::AcqRel);
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one unit of work (a request until its response body ends, or an upgraded connection)
/// against a route for as long as it lives.
#[derive(Debug)]
#[must_use = "the work is counted only while the guard lives"]
pub struct ActiveGuard {
    route: Arc<Route>,
    touch_on_drop: bool,
    /// Bytes forwarded to the backend and to the client, added to the route's [`Traffic`]
    /// once, when the guard drops: no shared write per buffer.
    received: u64,
    sent: u64,
}

/// What a route has carried, for the drone's metrics: requests (and upgraded connections),
/// bytes forwarded to the backend, and bytes forwarded from it to clients. Monotonic.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    requests: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
}

/// The proxy's own error answers by status (400 to 599), for the drone's metrics.
pub struct ErrorCounts {
    by_status: [AtomicU64; 200],
}

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ErrorCounts {
    pub(crate) fn count(&self, status: u16) {
        if let Some(slot) = status
            .checked_sub(400)
            .and_then(|i| self.by_status.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every status answered at least once, with how often, lowest first.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        self.by_status
            .iter()
            .zip(400u16..)
            .map(|(slot, status)| (status, slot.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

impl Traffic {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Why work was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The route was closed by the idle sweep.
    Closed,
    /// The route has as much work in flight as it may.
    Full,
}

impl ActiveGuard {
    /// Counts work against `route`; `None` if it is closed for sweeping.
    pub(crate) fn new(route: Arc<Route>) -> Option<ActiveGuard> {
        ActiveGuard::bounded(route, u64::MAX).ok()
    }

    /// Counts work against `route` unless it is closed or already has `max` in flight.
    pub(crate) fn bounded(route: Arc<Route>, max: u64) -> Result<ActiveGuard, Refusal> {
        route.activity().enter(max)?;
        Ok(ActiveGuard {
            route,
            touch_on_drop: true,
            received: 0,
            sent: 0,
        })
    }

    /// Counts `n` bytes forwarded to the backend.
    pub(crate) fn received(&mut self, n: u64) {
        self.received += n;
    }

    /// Counts `n` bytes forwarded from the backend to the client.
    pub(crate) fn sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// The route this guard counts against.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// Ends the count without marking the route as recently active: for work the backend never
    /// saw (a refused dial must not keep the backend alive).
    pub fn cancel(mut self) {
        self.touch_on_drop = false;
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let traffic = self.route.traffic();
        if self.received != 0 {
            traffic.received.fetch_add(self.received, Ordering::Relaxed);
        }
        if self.sent != 0 {
            traffic.sent.fetch_add(self.sent, Ordering::Relaxed);
        }
        self.route.activity().leave(self.touch_on_drop);
    }
}

#[cfg(test)]
mod tests {
    use super::{ActiveGuard, Refusal};
    use crate::RouteTable;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn guard_counts_while_alive() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let ready_at = route.idle_since().expect("idle when made ready");
        assert_eq!(route.active(), 0);

        let first = route.track().expect("open");
        let second = route.track().expect("open");
        assert_eq!(route.active(), 2);
        assert_eq!(route.idle_since(), None);

        drop(first);
        assert_eq!(route.active(), 1);
        assert_eq!(route.idle_since(), None);

        drop(second);
        assert_eq!(route.active(), 0);
        let idle = route.idle_since().expect("idle after the last guard");
        assert!(idle >= ready_at);
    }

    #[test]
    fn cancelled_guard_leaves_idle_time_alone() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let before = route.idle_since();
        route.track().expect("open").cancel();
        assert_eq!(route.active(), 0);
        assert_eq!(route.idle_since(), before);
    }

    #[test]
    fn guards_from_many_threads_balance() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let guard = route.track().expect("open");
                        drop(guard);
                    }
                });
            }
        });
        assert_eq!(route.active(), 0);
        assert!(route.idle_since().is_some());
    }

    #[test]
    fn an_idle_route_closes_and_then_takes_no_work() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let idle_since = route.idle_since().expect("idle");
        let max_idle = Duration::from_secs(10);
        assert!(!route.close_if_idle(max_idle, idle_since + max_idle - Duration::from_millis(1)));
        assert!(
            route.track().is_some(),
            "not closed before its idle timeout"
        );
        let idle_since = route.idle_since().expect("idle again");
        assert!(route.close_if_idle(max_idle, idle_since + max_idle));
        assert!(route.track().is_none(), "a closed route takes no work");
        assert_eq!(route.active(), 0);
        assert_eq!(route.idle_since(), None);
        assert!(
            route.close_if_idle(max_idle, idle_since + max_idle),
            "stays closed"
        );
    }

    #[test]
    fn a_bounded_guard_refuses_work_past_the_limit() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let idle_since = route.idle_since();
        let first = ActiveGuard::bounded(Arc::clone(&route), 2).expect("room");
        let second = ActiveGuard::bounded(Arc::clone(&route), 2).expect("room");
        assert_eq!(
            ActiveGuard::bounded(Arc::clone(&route), 2).err(),
            Some(Refusal::Full)
        );
        assert_eq!(route.active(), 2, "the refused one was not counted");
        drop((first, second));
        assert_eq!(route.active(), 0);
        assert!(route.idle_since() >= idle_since);
        assert!(route.close_if_idle(Duration::ZERO, Instant::now() + Duration::from_secs(1)));
        assert_eq!(
            ActiveGuard::bounded(Arc::clone(&route), 2).err(),
            Some(Refusal::Closed)
        );
    }

    #[test]
    fn a_route_with_work_in_flight_does_not_close() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let guard = route.track().expect("open");
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(!route.close_if_idle(Duration::from_secs(1), far));
        drop(guard);
        // Work just ended: idle again from now, so not yet idle for a second.
        assert!(!route.close_if_idle(Duration::from_secs(1), Instant::now()));
        assert!(route.track().is_some());
    }

    /// Requests racing the sweeper on two threads: while a request is counted the route cannot
    /// be closed under it, and once the sweep succeeds no request gets in.
    #[test]
    fn requests_racing_the_sweeper_are_either_counted_or_refused() {
        use std::sync::atomic::AtomicBool;
        for _ in 0..200 {
            let table = RouteTable::new("c");
            let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
            let closed = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !route.close_if_idle(Duration::ZERO, Instant::now()) {
                        std::hint::spin_loop();
                    }
                    closed.store(true, Ordering::SeqCst);
                });
                s.spawn(|| {
                    while !closed.load(Ordering::SeqCst) {
                        // `None` is allowed here too: a request that meets a sweep which is
                        // then called off (work moved the idle time) is refused, not counted.
                        if let Some(guard) = route.track() {
                            assert!(
                                !closed.load(Ordering::SeqCst),
                                "a request was counted on a closed route"
                            );
                            drop(guard);
                        }
                    }
                });
            });
            assert!(
                route.track().is_none(),
                "closed for good once the sweep succeeded"
            );
            assert_eq!(route.active(), 0);
        }
    }
}
