//! Every default and bound of the agent, in one place.

use std::time::Duration;

/// How often a drone tells the controller it is alive.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a backend gets to accept connections on its port.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Between SIGTERM (or a container stop) and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Backends a drone runs at once unless told otherwise.
pub const DEFAULT_CAPACITY: u32 = 256;

/// How often the sweeper looks for idle backends; bounds the sweep's lateness.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Readiness probe backoff: first and longest pause between connection attempts. Starting at
/// 2 ms (not 20) took process spawn → ready from 40 to 21 ms at p50 (bench: spawnload); a
/// failed probe is one refused connect.
pub const READY_PROBE_MIN: Duration = Duration::from_millis(2);
pub const READY_PROBE_MAX: Duration = Duration::from_millis(250);

/// How long one HTTP readiness probe may take to get its status line.
pub const READY_PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The port a container's backend listens on inside (`PORT`); Docker publishes it on the
/// drone's loopback.
pub const CONTAINER_PORT: u16 = 8080;

/// Pause before a lost Docker events stream is opened again.
pub const DOCKER_EVENTS_RETRY: Duration = Duration::from_millis(500);

/// How often each backend's resource use is sampled.
pub const DEFAULT_USAGE_INTERVAL: Duration = Duration::from_secs(5);

/// Containers whose counters are read at once, and how long one reading may take.
pub const USAGE_READS_AT_ONCE: usize = 8;
pub const USAGE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a state report waits for the controller's acknowledgement before it is re-sent.
pub const REPORT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a drone waits for a controller's answer about the backends it found on starting,
/// before it asks again.
pub const RECOVERY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between re-sends of an unacknowledged report: first and longest.
pub const REPORT_RETRY_MIN: Duration = Duration::from_millis(100);
pub const REPORT_RETRY_MAX: Duration = Duration::from_secs(2);

/// State reports queued at most (while the controller is unreachable); past this, superseded
/// ones are dropped first.
pub const MAX_QUEUED_REPORTS: usize = 4096;

/// On shutdown, how long pending reports may take to reach the controller.
pub const REPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// An ended backend's id is remembered this long, so a re-sent spawn does not start it again.
pub const ENDED_MEMORY: Duration = Duration::from_secs(600);

/// The longest a heartbeat may wait to be handed to the bus; a heartbeat that cannot go out
/// soon is worthless, the next one is due anyway.
pub const HEARTBEAT_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest line of a backend's output read at once (a longer one is read in parts).
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// Log records a drone holds for publishing; past this (the bus slow or down) they are dropped.
pub const LOG_QUEUE_RECORDS: usize = 16 * 1024;

/// Log lines longer than this are sent as several records.
pub const MAX_LOG_LINE_PIECE_BYTES: usize = 900;

/// The longest encoded log record: with the log keeping 1,000 records per backend
/// (`plane_controlplane::limits::LOG_LINES_PER_BACKEND`), a backend's log stays within 1 MiB.
pub const MAX_LOG_RECORD_BYTES: usize = 1024;

/// Pull progress is reported at most this often (and once more when the pull ends).
pub const PULL_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The refresher checks again at most this long after its last check, and at least this soon
/// after a failure's backoff starts.
pub const CERTIFICATE_RECHECK_MAX: Duration = Duration::from_secs(3600);
pub const CERTIFICATE_RECHECK_MIN: Duration = Duration::from_secs(5);

/// Backoff after a failed renewal: first and longest pause.
pub const RENEWAL_RETRY_MIN: Duration = Duration::from_secs(5);
pub const RENEWAL_RETRY_MAX: Duration = Duration::from_secs(600);

/// How long a controller gets to answer a certificate request.
pub const CERTIFICATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a drone lets an ACME order (with its account) take before it gives up and
/// releases the lock (the controller's lease is longer).
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a drone waits on another drone's order before it counts as a failed attempt.
pub const ORDER_WAIT_MAX: Duration = Duration::from_secs(300);

/// How often the status of operator-provided certificate files is read again.
pub const CERTIFICATE_STATUS_CHECK: Duration = Duration::from_secs(60);

/// A certificate this close to its expiry is warned about, at most this often.
pub const EXPIRY_WARNING_WITHIN: Duration = Duration::from_secs(7 * 86_400);
pub const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// How long a drone waits for a controller to wake a key (placing its backend here included)
/// before the request waiting for it gets 503.
pub const WAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
