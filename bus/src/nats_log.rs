//! A log behind [`super::Log`] on JetStream: a limits stream over the log's subjects, read
//! through ordered consumers (client-side, no acknowledgements, recreated by async-nats after a
//! gap). A reader that does not follow counts the messages pending when it opened and stops
//! after them.

use super::log::{LogConfig, LogEntry};
use super::{BusError, LOG_READ_IDLE};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;

pub(crate) struct NatsLog {
    name: String,
    stream: stream::Stream,
}

fn failed(
    name: &str,
    op: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    BusError::Log {
        log: name.to_owned(),
        op,
        source: Box::new(source),
    }
}

/// The stream a log is.
fn stream_config(name: &str, config: &LogConfig, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some("Plane log".to_owned()),
        subjects: vec![config.subjects.clone()],
        max_messages_per_subject: i64::try_from(config.per_subject).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
        max_age: config.max_age,
        max_message_size: i32::try_from(config.max_message).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

impl NatsLog {
    /// Opens the log's stream, creating it, or bringing an existing one's limits to `config`.
    pub(crate) async fn open(
        jetstream: &jetstream::Context,
        name: &str,
        config: &LogConfig,
        replicas: usize,
    ) -> Result<NatsLog, BusError> {
        let wanted = stream_config(name, config, replicas);
        let mut stream = jetstream
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| failed(name, "open", e))?;
        let held = &stream.cached_info().config;
        let same = held.subjects == wanted.subjects
            && held.max_messages_per_subject == wanted.max_messages_per_subject
            && held.max_bytes == wanted.max_bytes
            && held.max_age == wanted.max_age
            && held.max_message_size == wanted.max_message_size;
        if !same {
            jetstream
                .update_stream(wanted)
                .await
                .map_err(|e| failed(name, "update", e))?;
            stream = jetstream
                .get_stream(name)
                .await
                .map_err(|e| failed(name, "open", e))?;
        }
        Ok(NatsLog {
            name: name.to_owned(),
            stream,
        })
    }

    pub(crate) async fn read(
        &self,
        pattern: &str,
        follow: bool,
    ) -> Result<NatsLogReader, BusError> {
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: pattern.to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&self.name, "read", e))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| failed(&self.name, "read", e))?;
        Ok(NatsLogReader {
            name: self.name.clone(),
            messages,
            remaining: (!follow).then_some(pending),
        })
    }
}

pub(crate) struct NatsLogReader {
    name: String,
    messages: pull::Ordered,
    /// Without follow: how many more to give.
    remaining: Option<u64>,
}

impl NatsLogReader {
    pub(crate) async fn next(&mut self) -> Option<Result<LogEntry, BusError>> {
        if self.remaining == Some(0) {
            return None;
        }
        let next = match self.remaining {
            Some(_) => match tokio::time::timeout(LOG_READ_IDLE, self.messages.next()).await {
                Ok(next) => next,
                // What was counted has expired meanwhile: nothing more is coming.
                Err(_) => return None,
            },
            None => self.messages.next().await,
        };
        let message = match next? {
            Ok(message) => message,
            Err(error) => return Some(Err(failed(&self.name, "read", error))),
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(error) => {
                return Some(Err(BusError::Log {
                    log: self.name.clone(),
                    op: "read",
                    source: error,
                }))
            }
        };
        if let Some(remaining) = &mut self.remaining {
            *remaining = if pending == 0 {
                0
            } else {
                remaining.saturating_sub(1)
            };
        }
        Some(Ok(LogEntry {
            seq,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        }))
    }
}
