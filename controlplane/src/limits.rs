//! Every default and bound of the controller, in one place.

use std::time::Duration;

/// A drone whose last heartbeat is older than this is declared lost.
pub const DEFAULT_DRONE_GRACE: Duration = Duration::from_secs(10);

/// How often the controller looks for lost drones.
pub const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long a drone gets to acknowledge a command before the next one is tried.
pub const DRONE_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// After a drone took a drain (or its cancellation), how long the API waits for the drone's
/// heartbeat to show it before answering, and how often it looks.
pub const DRAIN_SHOWN_TIMEOUT: Duration = Duration::from_secs(5);
pub const DRAIN_SHOWN_POLL: Duration = Duration::from_millis(20);

/// Spawn bodies larger than this are refused.
pub const MAX_API_BODY_BYTES: usize = 256 * 1024;

/// How many compare-and-set attempts a state update makes before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// How often the controller retries reloading its view when a watch of the cluster state ended
/// and the reload failed.
pub const RESYNC_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Terminated backends and lost drones are forgotten this long after they ended.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// How often the controller forgets what is past retention; shorter when retention is.
pub const MAX_COLLECT_INTERVAL: Duration = Duration::from_secs(30);

/// A backend still `scheduled` without a single report from its drone after this many drone
/// grace periods is ended `lost`: the drone took it and then vanished, or a controller died
/// while placing it. (A live drone reports `loading` at once.)
pub const UNREPORTED_GRACE_PERIODS: u32 = 3;

/// Connections the API serves at once (event streams included); more are closed on accept.
pub const MAX_API_CONNECTIONS: usize = 1024;

/// How long a request's headers may take to arrive before the connection is closed.
pub const API_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a request's head may take (hyper's read buffer; larger heads are refused).
pub const MAX_API_HEADER_BYTES: usize = 64 * 1024;

/// On shutdown, how long requests in progress may take to finish.
pub const API_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Log records kept per backend (with drones keeping each record within 1 KiB, a backend's log
/// stays within 1 MiB).
pub const LOG_LINES_PER_BACKEND: u64 = 1000;

/// The most the cluster's log holds in all (the oldest records go first past it), so that logs
/// never take the storage the cluster state needs.
pub const LOG_STORE_BYTES: u64 = 1 << 30;

/// The largest log record the cluster's log accepts (drones send at most 1 KiB).
pub const MAX_LOG_RECORD_BYTES: usize = 2048;

/// After a backend ended, how long a followed log waits for the last lines its drone sent
/// (they travel apart from the state report that ends it) before it ends.
pub const LOG_DRAIN_AFTER_END: Duration = Duration::from_millis(500);

/// How long a drone holds the certificate order lock (each DNS-01 value it publishes extends
/// it): longer than a drone lets an order take (4 minutes), short enough that a drone that died
/// while ordering does not hold up the cluster for long.
pub const ORDER_LEASE: Duration = Duration::from_secs(300);

/// After a failed order, the cluster orders again no sooner than this, doubling with each
/// failure in a row up to the maximum.
pub const ORDER_FAILURE_PAUSE_MIN: Duration = Duration::from_secs(60);
pub const ORDER_FAILURE_PAUSE_MAX: Duration = Duration::from_secs(3600);

/// When another drone holds the order lock, how soon a drone asks again.
pub const ORDER_WAIT_RETRY: Duration = Duration::from_secs(2);

/// DNS-01 values one order may publish (an order for `{cluster}` and `*.{cluster}` has two).
pub const MAX_CHALLENGES: usize = 8;

/// How long a key's record (and the spec a wake runs) is kept after its last use.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A key claimed for a backend that is not placed within this long is taken over by the next
/// connect (the controller placing it died); connects wait for the placement until then.
pub const KEY_CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the answer to a request with an `Idempotency-Key` is kept.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// A request with an `Idempotency-Key` that has not answered within this long is taken over
/// by a retry (its controller died); retries wait for its answer until then.
pub const IDEMPOTENCY_TAKEOVER: Duration = Duration::from_secs(60);

/// Most times a connect re-reads its key after losing a race for it.
pub const MAX_CONNECT_ATTEMPTS: usize = 16;
