//! A backend's log as its drone sends it: each line of its stdout and stderr, and Plane's own
//! lines about it (a pull error, how it ended), published on the backend's log subject, where
//! the cluster's log keeps the last of them. Published at most once, through one bounded queue
//! per drone: a line is never worth holding a backend for, so when the bus is slow or down and
//! the queue is full, lines are dropped (and counted in Plane's own log), and nothing waits.
//!
//! Lines are data. Each is cut to fit [`MAX_LOG_RECORD_BYTES`] once encoded (a longer one
//! becomes several records, so a backend's last 1,000 records stay within 1 MiB), and reaches
//! Plane's own log only escaped, at debug level.

use crate::limits::{LOG_QUEUE_RECORDS, MAX_LOG_LINE_PIECE_BYTES, MAX_LOG_RECORD_BYTES};
use bytes::Bytes;
use plane_bus::Bus;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{now_millis, LogLine, LogSource};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The drone's queue of log records and the task that publishes them; clones share it.
#[derive(Clone)]
pub(crate) struct LogPublisher {
    queue: mpsc::Sender<(Arc<str>, Bytes)>,
    /// Records dropped since the last one published.
    dropped: Arc<AtomicU64>,
}

impl LogPublisher {
    /// Starts the publishing task (it ends when every handle is gone).
    pub(crate) fn start(bus: Bus) -> LogPublisher {
        let (queue, mut records) = mpsc::channel::<(Arc<str>, Bytes)>(LOG_QUEUE_RECORDS);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        tokio::spawn(async move {
            while let Some((subject, record)) = records.recv().await {
                match bus.publish(&subject, record).await {
                    Ok(()) => {
                        let lost = counted.swap(0, Ordering::Relaxed);
                        if lost > 0 {
                            warn!(
                                lost,
                                "backend log lines dropped while the bus was slow or down"
                            );
                        }
                    }
                    Err(error) => debug!(%error, "log record not published"),
                }
            }
        });
        LogPublisher { queue, dropped }
    }

    fn send(&self, subject: &Arc<str>, record: Bytes) {
        if self.queue.try_send((subject.clone(), record)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where one backend's log lines go; clones share it.
#[derive(Clone)]
pub struct BackendLog {
    to: Option<(LogPublisher, Arc<str>)>,
    backend: BackendId,
}

impl std::fmt::Debug for BackendLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLog")
            .field("backend", &self.backend)
            .field("subject", &self.to.as_ref().map(|(_, subject)| &**subject))
            .finish()
    }
}

impl BackendLog {
    pub(crate) fn new(publisher: LogPublisher, subject: String, backend: BackendId) -> BackendLog {
        BackendLog {
            to: Some((publisher, subject.into())),
            backend,
        }
    }

    /// A log that keeps nothing (for an executor driven outside a drone).
    pub fn nowhere(backend: BackendId) -> BackendLog {
        BackendLog { to: None, backend }
    }

    /// One line of the backend's output (its end of line, if any, left out). Never waits.
    pub fn output(&self, source: LogSource, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        debug!(backend = %self.backend, ?source, line = ?text, "backend output");
        self.publish(source, text);
    }

    /// Plane's own line about the backend. Never waits.
    pub fn plane(&self, text: &str) {
        self.publish(LogSource::Plane, text);
    }

    fn publish(&self, source: LogSource, text: &str) {
        let Some((publisher, subject)) = &self.to else {
            return;
        };
        for record in records(source, text, now_millis()) {
            publisher.send(subject, record);
        }
    }
}

/// The encoded records of one line: pieces of at most [`MAX_LOG_LINE_PIECE_BYTES`], each
/// shortened further if escaping makes its record longer than [`MAX_LOG_RECORD_BYTES`].
fn records(stream: LogSource, text: &str, at: u64) -> Vec<Bytes> {
    let encode = |line: &str| {
        serde_json::to_vec(&LogLine {
            at,
            stream,
            line: line.to_owned(),
        })
        .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let mut take = char_boundary_at_most(rest, MAX_LOG_LINE_PIECE_BYTES);
        let record = loop {
            let record = encode(&rest[..take]);
            let smaller = char_boundary_at_most(rest, take / 2);
            if record.len() <= MAX_LOG_RECORD_BYTES || smaller == 0 || smaller == take {
                break record;
            }
            take = smaller;
        };
        out.push(Bytes::from(record));
        rest = &rest[take..];
        if rest.is_empty() {
            return out;
        }
    }
}

/// The largest `n <= max` at a character boundary of `text`, but at least its first character.
fn char_boundary_at_most(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut n = max;
    while n > 0 && !text.is_char_boundary(n) {
        n -= 1;
    }
    if n == 0 {
        text.chars().next().map_or(0, char::len_utf8)
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(records: &[Bytes]) -> Vec<LogLine> {
        records
            .iter()
            .map(|r| serde_json::from_slice(r).expect("a log line"))
            .collect()
    }

    #[test]
    fn a_short_line_is_one_record_and_a_long_one_several_that_join_up() {
        let one = records(LogSource::Stdout, "hello", 7);
        assert_eq!(
            decoded(&one),
            [LogLine {
                at: 7,
                stream: LogSource::Stdout,
                line: "hello".into()
            }]
        );
        let long = "é".repeat(3000);
        let many = records(LogSource::Stderr, &long, 7);
        assert!(many.len() > 1);
        assert!(many.iter().all(|r| r.len() <= MAX_LOG_RECORD_BYTES));
        let joined: String = decoded(&many).into_iter().map(|l| l.line).collect();
        assert_eq!(joined, long);
        let empty = records(LogSource::Plane, "", 7);
        assert_eq!(decoded(&empty)[0].line, "");
    }

    #[test]
    fn escaping_never_makes_a_record_too_long() {
        // Control characters grow sixfold in JSON (`\u0001`).
        let nasty = "\u{1}\u{1b}[31m\"\\".repeat(500);
        let records = records(LogSource::Stdout, &nasty, 1);
        assert!(records.iter().all(|r| r.len() <= MAX_LOG_RECORD_BYTES));
        let joined: String = decoded(&records).into_iter().map(|l| l.line).collect();
        assert_eq!(joined, nasty, "data, untouched");
    }
}
