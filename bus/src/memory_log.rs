//! An in-memory log with JetStream's limits semantics: one sequence for the whole log, the
//! oldest messages of a subject dropped past its per-subject limit, the oldest of all past the
//! byte limit, messages older than the maximum age dropped (checked when read), and followers that get every message kept after
//! they started (unbounded, like a flow-controlled consumer: a follower never misses one).

use super::log::{LogConfig, LogEntry};
use super::{subject, BusError};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tokio::sync::mpsc;

pub(crate) struct MemoryLog {
    config: LogConfig,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    closed: bool,
    seq: u64,
    /// Bytes kept (payloads and subjects).
    bytes: u64,
    subjects: HashMap<String, VecDeque<Kept>>,
    followers: Vec<Follower>,
}

struct Kept {
    seq: u64,
    at: Instant,
    payload: Bytes,
}

struct Follower {
    pattern: String,
    tx: mpsc::UnboundedSender<LogEntry>,
}

impl MemoryLog {
    pub(crate) fn new(config: LogConfig) -> MemoryLog {
        MemoryLog {
            config,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // Nothing under this lock panics.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a message on `subject` belongs here.
    pub(crate) fn keeps(&self, subject: &str) -> bool {
        subject::matches(&self.config.subjects, subject)
    }

    /// Keeps a published message (the caller checked [`MemoryLog::keeps`]); one over the size
    /// limit is dropped, as the server refuses it.
    pub(crate) fn append(&self, subject: &str, payload: Bytes) {
        if payload.len() > self.config.max_message {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.seq += 1;
        let seq = state.seq;
        let size = (payload.len() + subject.len()) as u64;
        let kept = state.subjects.entry(subject.to_owned()).or_default();
        kept.push_back(Kept {
            seq,
            at: Instant::now(),
            payload: payload.clone(),
        });
        let mut freed = 0;
        while kept.len() as u64 > self.config.per_subject {
            if let Some(old) = kept.pop_front() {
                freed += (old.payload.len() + subject.len()) as u64;
            }
        }
        state.bytes = state.bytes + size - freed;
        while state.bytes > self.config.max_bytes {
            // The oldest message of any subject goes.
            let oldest = state
                .subjects
                .iter()
                .filter_map(|(subject, kept)| Some((kept.front()?.seq, subject.clone())))
                .min();
            let Some((_, subject)) = oldest else { break };
            if let Some(old) = state
                .subjects
                .get_mut(&subject)
                .and_then(VecDeque::pop_front)
            {
                state.bytes -= (old.payload.len() + subject.len()) as u64;
            }
        }
        state.followers.retain(|f| {
            !subject::matches(&f.pattern, subject)
                || f.tx
                    .send(LogEntry {
                        seq,
                        subject: subject.to_owned(),
                        payload: payload.clone(),
                    })
                    .is_ok()
        });
    }

    pub(crate) fn read(&self, pattern: &str, follow: bool) -> Result<MemoryLogReader, BusError> {
        let mut state = self.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let max_age = self.config.max_age;
        let mut backlog: Vec<LogEntry> = Vec::new();
        let mut freed = 0;
        for (subject, kept) in &mut state.subjects {
            while kept.front().is_some_and(|k| k.at.elapsed() > max_age) {
                if let Some(old) = kept.pop_front() {
                    freed += (old.payload.len() + subject.len()) as u64;
                }
            }
            if subject::matches(pattern, subject) {
                backlog.extend(kept.iter().map(|k| LogEntry {
                    seq: k.seq,
                    subject: subject.clone(),
                    payload: k.payload.clone(),
                }));
            }
        }
        state.bytes -= freed;
        state.subjects.retain(|_, kept| !kept.is_empty());
        backlog.sort_by_key(|e| e.seq);
        let live = follow.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            state.followers.push(Follower {
                pattern: pattern.to_owned(),
                tx,
            });
            rx
        });
        Ok(MemoryLogReader {
            backlog: backlog.into(),
            live,
        })
    }

    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.followers.clear();
    }
}

pub(crate) struct MemoryLogReader {
    backlog: VecDeque<LogEntry>,
    live: Option<mpsc::UnboundedReceiver<LogEntry>>,
}

impl MemoryLogReader {
    pub(crate) async fn next(&mut self) -> Option<LogEntry> {
        if let Some(entry) = self.backlog.pop_front() {
            return Some(entry);
        }
        self.live.as_mut()?.recv().await
    }
}
