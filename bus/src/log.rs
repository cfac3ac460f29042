//! Bounded message logs: a JetStream stream (or its in-memory twin) that keeps what is
//! published on its subjects, the last so many messages per subject for so long, and lets a
//! reader replay a subject's kept messages and then follow new ones. Writers need nothing but
//! [`crate::Bus::publish`] (so a writer's permissions can stop at publishing on its own
//! subjects); readers open the log.

use super::memory_log::{MemoryLog, MemoryLogReader};
use super::nats_log::{NatsLog, NatsLogReader};
use super::{subject, BusError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// What a log keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// The subjects it keeps, a pattern (e.g. `app.*.logs.*`).
    pub subjects: String,
    /// Messages kept per subject; the oldest go first.
    pub per_subject: u64,
    /// Bytes kept in all; past this the oldest messages (of any subject) go first.
    pub max_bytes: u64,
    /// How long a message is kept.
    pub max_age: Duration,
    /// The largest message kept (larger ones are refused by the store).
    pub max_message: usize,
}

/// A handle to one log; clones share it.
#[derive(Clone)]
pub struct Log {
    name: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryLog>),
    Nats(Arc<NatsLog>),
}

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position in the whole log: increases with every message kept, on any subject.
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

impl Log {
    pub(crate) fn memory(name: &str, log: Arc<MemoryLog>) -> Log {
        Log {
            name: name.to_owned(),
            backend: Backend::Memory(log),
        }
    }

    pub(crate) fn nats(name: &str, log: NatsLog) -> Log {
        Log {
            name: name.to_owned(),
            backend: Backend::Nats(Arc::new(log)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kept messages of `subject` (a pattern may match several), oldest first; then, with
    /// `follow`, each new one as it is kept. Without `follow` the reader ends once it has
    /// given what was kept when it opened (or, on NATS, when none has come for
    /// [`crate::LOG_READ_IDLE`]: kept messages can expire between the count and their delivery).
    pub async fn read(&self, subject: &str, follow: bool) -> Result<LogReader, BusError> {
        if !subject::valid_pattern(subject) {
            return Err(BusError::InvalidSubject {
                subject: subject.to_owned(),
            });
        }
        let inner = match &self.backend {
            Backend::Memory(m) => ReaderInner::Memory(m.read(subject, follow)?),
            Backend::Nats(n) => ReaderInner::Nats(Box::new(n.read(subject, follow).await?)),
        };
        Ok(LogReader { inner })
    }
}

/// Messages of a [`Log`], in order; see [`Log::read`].
pub struct LogReader {
    inner: ReaderInner,
}

enum ReaderInner {
    Memory(MemoryLogReader),
    Nats(Box<NatsLogReader>),
}

impl LogReader {
    /// The next message; `None` at the end (caught up without `follow`, or the bus closed).
    pub async fn next(&mut self) -> Option<Result<LogEntry, BusError>> {
        match &mut self.inner {
            ReaderInner::Memory(m) => m.next().await.map(Ok),
            ReaderInner::Nats(n) => n.next().await,
        }
    }
}
