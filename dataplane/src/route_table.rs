//! The route table: backend label → [`Route`], shared by the proxy and the agent.
//!
//! Readers (every request) load an immutable snapshot through `ArcSwap` and look it up with a
//! stack-lowercased key: no lock, no allocation. Writers (backend start/stop, rare) copy the map
//! under a mutex, swap it in and bump a `watch` channel so held requests re-check. The copy is
//! O(routes) per change; [`RouteTable::set_ready_many`] loads many routes with one copy.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::counting::{ActiveGuard, Activity, ErrorCounts, Traffic};
use crate::host::{backend_label, host_name, HostError, LabelKey};
use crate::limits::{MAX_HOST_BYTES, MAX_LABEL_BYTES};
use crate::token_digest::TokenDigest;
use crate::upstream::Upstream;
use crate::wake::{Wake, WakeRefusal};

type Routes = HashMap<Arc<str>, Arc<Route>>;

/// One backend as the proxy sees it: where it listens (once ready) and how busy it is.
///
/// States: *starting* (`address() == None`: requests are held) → *ready* (`address() == Some`).
/// Removal from the table ends routing but not the `Route`: upgraded connections still hold it
/// and keep counting until they close.
pub struct Route {
    backend: Box<str>,
    upstream: ArcSwapOption<Upstream>,
    activity: Activity,
    traffic: Traffic,
    /// The digest of the access token requests must show, fixed when the route is created.
    token: Option<TokenDigest>,
}

impl Route {
    fn new(backend: Box<str>, upstream: Option<Upstream>) -> Route {
        Route {
            backend,
            upstream: ArcSwapOption::new(upstream.map(Arc::new)),
            activity: Activity::new(),
            traffic: Traffic::default(),
            token: None,
        }
    }

    /// Whether requests must show an access token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn token(&self) -> Option<&TokenDigest> {
        self.token.as_ref()
    }

    /// The backend's id as stored (lowercased).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The backend's address; `None` while it is starting.
    pub fn address(&self) -> Option<SocketAddr> {
        self.upstream.load().as_ref().map(|upstream| upstream.addr)
    }

    /// In-flight requests (from request head until the response body ends or is dropped, so
    /// streaming responses, SSE and long polls count) plus open upgraded (WebSocket) connections.
    pub fn active(&self) -> u64 {
        self.activity.active()
    }

    /// `None` while active; otherwise the instant it last became inactive (or was made ready).
    pub fn idle_since(&self) -> Option<Instant> {
        self.activity.idle_since()
    }

    /// Counts work against this route until the returned guard is dropped; `None` once the
    /// route is closed for sweeping (the work must then not reach the backend). The proxy does
    /// this for every request; it is public so that other front ends (and tests) count the same
    /// way.
    pub fn track(self: &Arc<Self>) -> Option<ActiveGuard> {
        ActiveGuard::new(Arc::clone(self))
    }

    /// Closes the route if it has been idle for at least `max_idle` at `now`, atomically with
    /// its count being zero; `true` if it is closed (now or before). A closed route takes no
    /// more work ([`Route::track`] fails): whoever closes it stops its backend.
    pub fn close_if_idle(&self, max_idle: std::time::Duration, now: Instant) -> bool {
        self.activity.close_if_idle(max_idle, now)
    }

    /// Whether the route was closed for sweeping.
    pub fn is_closed(&self) -> bool {
        self.activity.is_closed()
    }

    pub(crate) fn upstream(&self) -> Option<Arc<Upstream>> {
        self.upstream.load_full()
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    pub(crate) fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Requests (and upgraded connections) admitted to the backend so far.
    pub fn requests(&self) -> u64 {
        self.traffic.requests()
    }

    /// Bytes forwarded to the backend so far (request heads as rewritten, bodies, what clients
    /// sent on upgraded connections once those close).
    pub fn received_bytes(&self) -> u64 {
        self.traffic.received()
    }

    /// Bytes forwarded from the backend to clients so far (HTTP/1.1 responses as sent, HTTP/2
    /// response bodies, what the backend sent on upgraded connections once those close).
    pub fn sent_bytes(&self) -> u64 {
        self.traffic.sent()
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("backend", &self.backend)
            .field("address", &self.address())
            .field("active", &self.active())
            .finish()
    }
}

/// The routes of one cluster. Cheap to clone (an `Arc`); all clones see the same routes.
#[derive(Clone)]
pub struct RouteTable {
    inner: Arc<Inner>,
}

struct Inner {
    /// How a `Host` names a route.
    naming: Naming,
    /// The cluster domain in cluster naming; empty for static hosts.
    cluster: Box<str>,
    routes: ArcSwap<Routes>,
    /// Serialises writers so that two concurrent copy-and-swap updates cannot lose one another.
    writer: Mutex<()>,
    /// Bumped after every change; requests held for a starting backend wait on it.
    changed: watch::Sender<()>,
    /// Asked for route keys the table does not have (see [`crate::wake`]).
    waker: ArcSwapOption<Box<dyn Wake>>,
    /// The proxy's error answers, by status.
    errors: ErrorCounts,
}

/// How a request's `Host` names its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// `{backend}.{cluster}`: the key is the backend label (a drone's table).
    Cluster,
    /// The whole host name is the key (`plane proxy --route HOST=ADDR`).
    Hosts,
}

impl RouteTable {
    /// An empty table for `cluster` (matched case-insensitively; stored lowercased): `Host`
    /// `{backend}.{cluster}` routes to the backend named `backend`.
    pub fn new(cluster: &str) -> RouteTable {
        Self::with_naming(Naming::Cluster, cluster)
    }

    /// An empty table of static routes keyed by whole host names (case-insensitive, port
    /// ignored): any host without a route is unknown.
    pub fn for_hosts() -> RouteTable {
        Self::with_naming(Naming::Hosts, "")
    }

    fn with_naming(naming: Naming, cluster: &str) -> RouteTable {
        RouteTable {
            inner: Arc::new(Inner {
                naming,
                cluster: cluster.to_ascii_lowercase().into_boxed_str(),
                routes: ArcSwap::from_pointee(Routes::new()),
                writer: Mutex::new(()),
                changed: watch::Sender::new(()),
                waker: ArcSwapOption::empty(),
                errors: ErrorCounts::default(),
            }),
        }
    }

    /// The cluster domain, lowercased.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// Registers a backend that is starting: requests for it are held until it becomes ready
    /// (bounded by `ProxyConfig::starting_wait`, then 503 with `Retry-After`). An existing route
    /// goes back to starting and keeps its counters.
    pub fn insert_starting(&self, backend: &str) -> Arc<Route> {
        self.insert_starting_with(backend, None)
    }

    /// [`insert_starting`](Self::insert_starting) for a backend that admits only requests
    /// showing `token` (`Authorization: Bearer` or the `plane_token` cookie). The token is part
    /// of the route from its first moment, so no request ever gets through without it; an
    /// existing route keeps the token it was created with.
    pub fn insert_starting_with(&self, backend: &str, token: Option<TokenDigest>) -> Arc<Route> {
        let _writer = self.lock_writer();
        let key = backend.to_ascii_lowercase();
        if let Some(route) = self.inner.routes.load().get(key.as_str()) {
            route.upstream.store(None);
            self.notify();
            return Arc::clone(route);
        }
        let mut route = Route::new(key.into_boxed_str(), None);
        route.token = token;
        let route = Arc::new(route);
        self.insert_locked([Arc::clone(&route)]);
        route
    }

    /// Makes the backend routable at `addr`, creating the route if absent, and resets its idle
    /// time to now.
    pub fn set_ready(&self, backend: &str, addr: SocketAddr) -> Arc<Route> {
        let _writer = self.lock_writer();
        let route = self.ready_locked(backend, addr);
        self.notify();
        route
    }

    /// [`set_ready`](Self::set_ready) for many backends with a single copy of the table: for
    /// loading a drone's backends at start-up (and benchmarks with 100,000 routes).
    pub fn set_ready_many<'a>(&self, routes: impl IntoIterator<Item = (&'a str, SocketAddr)>) {
        let _writer = self.lock_writer();
        let mut map = Routes::clone(&self.inner.routes.load());
        for (backend, addr) in routes {
            let key = backend.to_ascii_lowercase();
            match map.get(key.as_str()) {
                Some(route) => {
                    route.upstream.store(Some(Arc::new(Upstream::new(addr))));
                    route.activity.reset_idle();
                }
                None => {
                    let key: Arc<str> = key.into();
                    let route = Route::new(Box::from(&*key), Some(Upstream::new(addr)));
                    map.insert(key, Arc::new(route));
                }
            }
        }
        self.inner.routes.store(Arc::new(map));
        self.notify();
    }

    /// Removes the route, and the aliases of it: new requests get 404; open upgraded
    /// connections may finish.
    pub fn remove(&self, backend: &str) {
        let _writer = self.lock_writer();
        let key = backend.to_ascii_lowercase();
        let current = self.inner.routes.load();
        let Some(route) = current.get(key.as_str()) else {
            return;
        };
        let mut map = Routes::clone(&current);
        map.retain(|_, held| !Arc::ptr_eq(held, route));
        self.inner.routes.store(Arc::new(map));
        self.notify();
    }

    /// Routes `alias` (another route key, e.g. a key's host label) to the very route of
    /// `backend`, sharing its counts and token; replaces what `alias` routed to before. `false`
    /// (and nothing changed) when `backend` has no route. [`remove`](Self::remove) of the
    /// backend removes the alias too.
    pub fn alias(&self, alias: &str, backend: &str) -> bool {
        let _writer = self.lock_writer();
        let current = self.inner.routes.load();
        let Some(route) = current.get(backend.to_ascii_lowercase().as_str()) else {
            return false;
        };
        let mut map = Routes::clone(&current);
        map.insert(alias.to_ascii_lowercase().into(), Arc::clone(route));
        self.inner.routes.store(Arc::new(map));
        self.notify();
        true
    }

    /// The error answers of the proxies serving this table, by status.
    pub fn errors(&self) -> &ErrorCounts {
        &self.inner.errors
    }

    /// Installs what wakes route keys the table does not have.
    pub fn set_waker(&self, waker: impl Wake) {
        self.inner.waker.store(Some(Arc::new(Box::new(waker))));
    }

    /// Asks the waker for a route for `label`, for a request showing `token` (its digest);
    /// [`WakeRefusal::Unknown`] without a waker.
    pub(crate) async fn wake(
        &self,
        label: &str,
        token: Option<TokenDigest>,
    ) -> Result<(), WakeRefusal> {
        let Some(waker) = self.inner.waker.load_full() else {
            return Err(WakeRefusal::Unknown);
        };
        waker.wake(label, token).await
    }

    /// Whether a waker is installed: only then is an unknown route key worth a wake.
    pub(crate) fn wakes(&self) -> bool {
        self.inner.waker.load().is_some()
    }

    /// The route for `backend` (any case), if present.
    pub fn get(&self, backend: &str) -> Option<Arc<Route>> {
        self.lookup(backend)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.inner.routes.load().len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-request lookup: lowercases `label` on the stack and reads the current snapshot.
    /// Never allocates or locks.
    pub fn lookup(&self, label: &str) -> Option<Arc<Route>> {
        let routes = self.inner.routes.load();
        match self.inner.naming {
            Naming::Cluster => routes
                .get(LabelKey::<MAX_LABEL_BYTES>::new(label)?.as_str())
                .cloned(),
            Naming::Hosts => routes
                .get(LabelKey::<MAX_HOST_BYTES>::new(label)?.as_str())
                .cloned(),
        }
    }

    /// The key a request's `Host` (or authority) routes by: its backend label in a cluster's
    /// table, its host name in a table of static hosts. Never allocates.
    pub fn route_key<'a>(&self, host: &'a str) -> Result<&'a str, HostError> {
        match self.inner.naming {
            Naming::Cluster => backend_label(host, &self.inner.cluster),
            Naming::Hosts => host_name(host),
        }
    }

    /// Every ready route's upstream, for pool upkeep.
    pub(crate) fn for_each_upstream(&self, mut f: impl FnMut(&Upstream)) {
        for route in self.inner.routes.load().values() {
            if let Some(upstream) = route.upstream.load().as_ref() {
                f(upstream);
            }
        }
    }

    /// A receiver that sees every later change to the table (subscribe *before* checking the
    /// state you wait for, so no change is missed).
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.inner.changed.subscribe()
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic in another writer leaves nothing inconsistent.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ready_locked(&self, backend: &str, addr: SocketAddr) -> Arc<Route> {
        let key = backend.to_ascii_lowercase();
        if let Some(route) = self.inner.routes.load().get(key.as_str()) {
            route.upstream.store(Some(Arc::new(Upstream::new(addr))));
            route.activity.reset_idle();
            return Arc::clone(route);
        }
        let route = Arc::new(Route::new(key.into_boxed_str(), Some(Upstream::new(addr))));
        self.insert_locked([Arc::clone(&route)]);
        route
    }

    fn insert_locked(&self, routes: impl IntoIterator<Item = Arc<Route>>) {
        let mut map = Routes::clone(&self.inner.routes.load());
        for route in routes {
            map.insert(Arc::from(route.backend()), route);
        }
        self.inner.routes.store(Arc::new(map));
        self.notify();
    }

    fn notify(&self) {
        self.inner.changed.send_replace(());
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("cluster", &self.inner.cluster)
            .field("routes", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_alias_is_the_backend_s_route_and_goes_with_it() {
        let table = RouteTable::new("c");
        assert!(!table.alias("k-abc", "b1"), "no route to alias yet");
        let route = table.insert_starting("b1");
        assert!(table.alias("K-ABC", "b1"));
        let aliased = table.lookup("k-abc").expect("aliased");
        assert!(Arc::ptr_eq(&route, &aliased), "one route, one count");
        table.set_ready("b1", addr(7));
        assert_eq!(
            table.lookup("k-abc").and_then(|r| r.address()),
            Some(addr(7))
        );
        table.set_ready("b2", addr(8));
        table.remove("b1");
        assert!(table.lookup("k-abc").is_none() && table.lookup("b1").is_none());
        assert!(table.lookup("b2").is_some(), "other routes stay");
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let table = RouteTable::new("Plane.Localhost");
        assert_eq!(table.cluster(), "plane.localhost");
        table.set_ready("AbC", addr(1));
        assert_eq!(table.get("abc").and_then(|r| r.address()), Some(addr(1)));
        assert_eq!(
            table.lookup("ABC").map(|r| r.backend().to_owned()),
            Some("abc".into())
        );
        assert!(table.lookup("abd").is_none());
        assert!(table.lookup(&"a".repeat(64)).is_none());
    }

    #[test]
    fn starting_then_ready_keeps_the_same_route() {
        let table = RouteTable::new("c");
        let starting = table.insert_starting("b");
        assert_eq!(starting.address(), None);
        let changes = table.subscribe();
        let ready = table.set_ready("b", addr(2));
        assert!(Arc::ptr_eq(&starting, &ready));
        assert_eq!(starting.address(), Some(addr(2)));
        assert!(changes.has_changed().expect("sender alive"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_table_of_hosts_routes_whole_names() {
        let table = RouteTable::for_hosts();
        table.set_ready("App.Example.com", addr(4));
        let key = table
            .route_key("app.EXAMPLE.com:8080")
            .expect("a host name");
        assert_eq!(key, "app.EXAMPLE.com");
        let route = table.lookup(key).expect("routed");
        assert_eq!(route.address(), Some(addr(4)));
        let other = table.route_key("other.example.com").expect("a host name");
        assert!(table.lookup(other).is_none());
        assert!(table.route_key("bad host").is_err());
        // A cluster's table routes labels, not whole names.
        let cluster = RouteTable::new("example.com");
        cluster.set_ready("app", addr(5));
        let label = cluster.route_key("APP.example.com").expect("a label");
        assert_eq!(label, "APP");
        assert!(cluster.lookup(label).is_some());
    }

    #[test]
    fn remove_ends_routing_but_not_the_route() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", addr(3));
        let guard = route.track().expect("open");
        table.remove("B");
        assert!(table.get("b").is_none());
        assert!(table.is_empty());
        assert_eq!(route.active(), 1);
        drop(guard);
        assert_eq!(route.active(), 0);
        table.remove("b"); // removing twice is fine
    }

    #[test]
    fn set_ready_many_loads_and_updates() {
        let table = RouteTable::new("c");
        let existing = table.insert_starting("b0");
        let names: Vec<String> = (0..1000).map(|i| format!("B{i}")).collect();
        table.set_ready_many(names.iter().map(|n| (n.as_str(), addr(4))));
        assert_eq!(table.len(), 1000);
        assert_eq!(existing.address(), Some(addr(4)));
        assert_eq!(table.get("b999").and_then(|r| r.address()), Some(addr(4)));
    }
}
