//! The bus that carries the controller <-> drone protocol: NATS in production, an in-memory twin
//! for `plane dev` and unit tests, with the same semantics (checked by one contract test suite
//! against both, `bus/tests/bus_contract.rs`). Dispatch is a plain enum: two known
//! implementations need no trait objects, and async fns stay zero-cost.
//!
//! Names (subjects, queue groups, buckets, keys) are validated here before dispatch, so both
//! buses reject the same ones with the same error.

mod error;
mod kv;
mod log;
mod memory;
mod memory_kv;
mod memory_log;
mod nats;
mod nats_kv;
mod nats_log;
mod options;
mod subject;

pub use error::{BusError, KvError, Source};
pub use kv::{Kv, KvChange, KvEntry, KvWatch};
pub use log::{Log, LogConfig, LogEntry, LogReader};
pub use options::{NatsAuth, NatsOptions, NatsTls};

use bytes::Bytes;
use memory::{MemoryBus, MemorySubscription};
use nats::{NatsBus, NatsSubscription};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A read of a log's kept messages (without follow) ends when none has come for this long.
pub const LOG_READ_IDLE: Duration = Duration::from_secs(2);

/// Bytes of a KV write's payload limit kept for its headers (`Nats-Expected-Last-Subject-
/// Sequence` and the like).
const KV_HEADER_ALLOWANCE: usize = 256;

/// A connection to the bus; clones share it (and, in memory, the subscribers and buckets).
#[derive(Clone)]
pub struct Bus {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(MemoryBus),
    // Behind an Arc: the client and JetStream context are a few hundred bytes to clone.
    Nats(Arc<NatsBus>),
}

/// A message received from a subscription.
#[derive(Clone, Debug)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where a requester waits for the answer; see [`Bus::respond`].
    pub reply: Option<String>,
}

impl Message {
    /// The payload as the JSON message `T`; [`BusError::Decode`] (never a panic) on anything else.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.payload).map_err(|source| BusError::Decode {
            subject: self.subject.clone(),
            source,
        })
    }
}

/// The messages of one subscription, in the order each publisher sent them. Dropping it
/// unsubscribes.
pub struct Subscription {
    inner: SubscriptionInner,
}

enum SubscriptionInner {
    Memory(MemorySubscription),
    Nats(NatsSubscription),
}

impl Subscription {
    /// The next message; `None` once the bus is closed. Cancel safe.
    pub async fn next(&mut self) -> Option<Message> {
        match &mut self.inner {
            SubscriptionInner::Memory(m) => m.next().await,
            SubscriptionInner::Nats(n) => n.next().await,
        }
    }
}

fn invalid_subject(subject: &str) -> BusError {
    BusError::InvalidSubject {
        subject: subject.to_owned(),
    }
}

impl Bus {
    /// A bus in this process, empty; clones share it.
    pub fn in_memory() -> Bus {
        Bus {
            backend: Backend::Memory(MemoryBus::new()),
        }
    }

    /// Connects to NATS at `url`, or at any of several comma-separated URLs (a NATS cluster's
    /// nodes); async-nats reconnects (to any of them, and resubscribes) by itself afterwards.
    /// Fails if the first connection fails.
    pub async fn connect(url: &str) -> Result<Bus, BusError> {
        Self::connect_with(NatsOptions::new(url)).await
    }

    /// [`Bus::connect`] with credentials, TLS, an inbox prefix and KV replicas.
    pub async fn connect_with(options: NatsOptions) -> Result<Bus, BusError> {
        Ok(Bus {
            backend: Backend::Nats(Arc::new(NatsBus::connect(options).await?)),
        })
    }

    /// Follows whether the bus can carry messages now: each change marks the receiver changed
    /// (use [`Bus::is_connected`] for the current state). In memory the bus is always
    /// connected and there is nothing to follow: the receiver's `changed()` fails at once.
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        match &self.backend {
            Backend::Memory(_) => tokio::sync::watch::channel(true).1,
            Backend::Nats(n) => n.connection(),
        }
    }

    /// Whether the bus is connected now (always, in memory).
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Nats(n) => n.is_connected(),
        }
    }

    /// The largest payload (and KV value) this bus carries: the server's `max_payload` on NATS
    /// (1 MiB by default), the same 1 MiB in memory.
    pub fn max_payload(&self) -> usize {
        match &self.backend {
            Backend::Memory(_) => memory::MAX_PAYLOAD_BYTES,
            Backend::Nats(n) => n.max_payload(),
        }
    }

    fn check_outgoing(&self, subject: &str, payload: &Bytes) -> Result<(), BusError> {
        if !subject::valid_publish(subject) {
            return Err(invalid_subject(subject));
        }
        let max = self.max_payload();
        if payload.len() > max {
            return Err(BusError::PayloadTooLarge {
                subject: subject.to_owned(),
                size: payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// Sends a message to every subscriber of `subject` (and one member of each queue group).
    /// Nobody listening is not an error.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.check_outgoing(subject, &payload)?;
        match &self.backend {
            Backend::Memory(m) => m.publish(subject, payload),
            Backend::Nats(n) => n.publish(subject, payload).await,
        }
    }

    /// Receives every message on subjects matching `subject`, where `*` matches one token and
    /// `>` the remaining ones (at least one). The subscription is in place when this returns.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        self.subscribe_inner(subject, None).await
    }

    /// Like [`Bus::subscribe`], but each message goes to only one member of `group` (among all
    /// subscriptions with that group name whose subject matches).
    pub async fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<Subscription, BusError> {
        if !subject::valid_queue_group(group) {
            return Err(BusError::InvalidQueueGroup {
                subject: subject.to_owned(),
                group: group.to_owned(),
            });
        }
        self.subscribe_inner(subject, Some(group)).await
    }

    async fn subscribe_inner(
        &self,
        subject: &str,
        group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        if !subject::valid_pattern(subject) {
            return Err(invalid_subject(subject));
        }
        let inner = match &self.backend {
            Backend::Memory(m) => SubscriptionInner::Memory(m.subscribe(subject, group)?),
            Backend::Nats(n) => SubscriptionInner::Nats(n.subscribe(subject, group).await?),
        };
        Ok(Subscription { inner })
    }

    /// Sends a request and waits for the first answer. [`BusError::NoResponders`] at once when
    /// nobody listens on `subject`, [`BusError::Timeout`] after `timeout`. Cancel safe.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.check_outgoing(subject, &payload)?;
        match &self.backend {
            Backend::Memory(m) => m.request(subject, payload, timeout).await,
            Backend::Nats(n) => n.request(subject, payload, timeout).await,
        }
    }

    /// Answers a request; [`BusError::NoReplySubject`] if `msg` was published, not requested.
    pub async fn respond(&self, msg: &Message, payload: Bytes) -> Result<(), BusError> {
        let Some(reply) = msg.reply.as_deref() else {
            return Err(BusError::NoReplySubject {
                subject: msg.subject.clone(),
            });
        };
        self.publish(reply, payload).await
    }

    /// Waits until the server has processed everything sent so far.
    pub async fn flush(&self) -> Result<(), BusError> {
        match &self.backend {
            Backend::Memory(m) => m.flush(),
            Backend::Nats(n) => n.flush().await,
        }
    }

    /// Closes the bus for every clone: subscriptions and KV watches deliver what they already
    /// hold, then end (`None`); on NATS, pending messages are flushed first (drain).
    pub async fn close(&self) -> Result<(), BusError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.close();
                Ok(())
            }
            Backend::Nats(n) => n.close().await,
        }
    }

    /// The largest KV value: the payload limit less room for the headers a compare-and-set
    /// write carries (on NATS they count against the same limit).
    fn max_kv_value(&self) -> usize {
        self.max_payload().saturating_sub(KV_HEADER_ALLOWANCE)
    }

    /// Opens the KV bucket, creating it if absent (in memory: a named bucket shared by all
    /// clones of this bus). Its values live until deleted.
    pub async fn kv(&self, bucket: &str) -> Result<Kv, BusError> {
        self.open_kv(bucket, None).await
    }

    /// Opens the KV bucket like [`Bus::kv`], but each value reads as absent once `max_age` has
    /// passed since it was written (a later write starts its clock anew): for records that must
    /// not outlive their use without anyone scanning for them. On NATS an existing bucket is
    /// brought to `max_age`; in memory the first opener's age holds.
    pub async fn kv_expiring(&self, bucket: &str, max_age: Duration) -> Result<Kv, BusError> {
        self.open_kv(bucket, Some(max_age)).await
    }

    async fn open_kv(&self, bucket: &str, max_age: Option<Duration>) -> Result<Kv, BusError> {
        if !subject::valid_bucket(bucket) {
            return Err(KvError::InvalidBucket {
                bucket: bucket.to_owned(),
            }
            .into());
        }
        Ok(match &self.backend {
            Backend::Memory(m) => {
                Kv::memory(bucket, m.bucket(bucket, max_age)?, self.max_kv_value())
            }
            Backend::Nats(n) => Kv::nats(bucket, n.kv(bucket, max_age).await?, self.max_kv_value()),
        })
    }

    /// Opens the log named `name` (`[A-Za-z0-9_-]+`), creating it as `config` says; on NATS an
    /// existing one is brought to `config`'s limits, in memory it keeps its own. Messages
    /// published on its subjects from then on are kept.
    pub async fn log(&self, name: &str, config: &LogConfig) -> Result<Log, BusError> {
        if !subject::valid_bucket(name) {
            return Err(BusError::Log {
                log: name.to_owned(),
                op: "open",
                source: "a log's name is made of A-Za-z0-9_-".into(),
            });
        }
        if !subject::valid_pattern(&config.subjects) {
            return Err(invalid_subject(&config.subjects));
        }
        Ok(match &self.backend {
            Backend::Memory(m) => Log::memory(name, m.log(name, config)?),
            Backend::Nats(n) => Log::nats(name, n.log(name, config).await?),
        })
    }

    /// [`Bus::publish`] of a message encoded as JSON.
    pub async fn publish_json<T: Serialize>(&self, subject: &str, msg: &T) -> Result<(), BusError> {
        self.publish(subject, encode(subject, msg)?).await
    }

    /// [`Bus::request`] with both sides encoded as JSON; [`BusError::Decode`] if the answer is
    /// not an `A`.
    pub async fn request_json<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: &str,
        msg: &Q,
        timeout: Duration,
    ) -> Result<A, BusError> {
        let answer = self
            .request(subject, encode(subject, msg)?, timeout)
            .await?;
        serde_json::from_slice(&answer).map_err(|source| BusError::Decode {
            subject: subject.to_owned(),
            source,
        })
    }

    /// [`Bus::respond`] with an answer encoded as JSON.
    pub async fn respond_json<T: Serialize>(
        &self,
        msg: &Message,
        reply: &T,
    ) -> Result<(), BusError> {
        self.respond(msg, encode(&msg.subject, reply)?).await
    }
}

fn encode<T: Serialize>(subject: &str, msg: &T) -> Result<Bytes, BusError> {
    serde_json::to_vec(msg)
        .map(Bytes::from)
        .map_err(|source| BusError::Encode {
            subject: subject.to_owned(),
            source,
        })
}
