//! The in-memory bus behind `plane dev` and unit tests: core NATS semantics (wildcards, queue
//! groups, request/reply with immediate "no responders") on tokio channels within one process.
//! One mutex guards the subscriber list; it is never held across an await, and delivery uses
//! `try_send` so that a publisher never waits on a slow subscriber (NATS drops for slow consumers
//! too).

use super::log::LogConfig;
use super::memory_kv::MemoryBucket;
use super::memory_log::MemoryLog;
use super::{subject, BusError, Message};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Messages a subscription may have waiting before further ones are dropped (async-nats' default
/// subscription capacity, so that a slow consumer behaves the same on both buses).
const SUBSCRIPTION_CAPACITY: usize = 64 * 1024;

/// The largest payload the in-memory bus carries: nats-server's default `max_payload`, so that
/// what works in `plane dev` fits in production.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// A bus living in this process; clones share subscribers and KV buckets.
#[derive(Clone, Default)]
pub(crate) struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_id: u64,
    subscribers: Vec<Subscriber>,
    /// Rotates which member of a queue group gets the next message.
    queue_turn: usize,
    buckets: HashMap<String, Arc<MemoryBucket>>,
    logs: HashMap<String, Arc<MemoryLog>>,
}

struct Subscriber {
    id: u64,
    pattern: String,
    group: Option<String>,
    tx: mpsc::Sender<Message>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that can panic runs under this lock, so a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryBus {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Delivers to every plain subscriber and one member of each queue group whose pattern
    /// matches, and returns how many subscriptions showed interest (0: nobody listens).
    fn deliver(
        &self,
        subject: &str,
        payload: Bytes,
        reply: Option<String>,
    ) -> Result<usize, BusError> {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(BusError::Closed);
        }
        // Subscriptions whose receiver is gone without running `Drop` cleanup (it always runs,
        // but a receiver can also be closed while the subscription lives) are pruned here.
        state.subscribers.retain(|s| !s.tx.is_closed());
        for log in state.logs.values().filter(|log| log.keeps(subject)) {
            log.append(subject, payload.clone());
        }
        let message = Message {
            subject: subject.to_owned(),
            payload,
            reply,
        };
        let mut interested = 0;
        let mut groups: Vec<(&str, Vec<&Subscriber>)> = Vec::new();
        for sub in state
            .subscribers
            .iter()
            .filter(|s| subject::matches(&s.pattern, subject))
        {
            interested += 1;
            match sub.group.as_deref() {
                None => send(sub, message.clone()),
                Some(group) => match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push(sub),
                    None => groups.push((group, vec![sub])),
                },
            }
        }
        state.queue_turn = state.queue_turn.wrapping_add(1);
        for (_, members) in &groups {
            send(members[state.queue_turn % members.len()], message.clone());
        }
        Ok(interested)
    }

    pub(crate) fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.deliver(subject, payload, None).map(drop)
    }

    pub(crate) fn subscribe(
        &self,
        pattern: &str,
        group: Option<&str>,
    ) -> Result<MemorySubscription, BusError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        state.next_id += 1;
        let id = state.next_id;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        state.subscribers.push(Subscriber {
            id,
            pattern: pattern.to_owned(),
            group: group.map(str::to_owned),
            tx,
        });
        Ok(MemorySubscription {
            rx,
            id,
            shared: Arc::downgrade(&self.shared),
        })
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let inbox = {
            let mut state = self.shared.lock();
            state.next_id += 1;
            format!("_INBOX.memory.{}", state.next_id)
        };
        let mut replies = self.subscribe(&inbox, None)?;
        if self.deliver(subject, payload, Some(inbox))? == 0 {
            return Err(BusError::NoResponders {
                subject: subject.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                subject: subject.to_owned(),
            }),
        }
    }

    pub(crate) fn flush(&self) -> Result<(), BusError> {
        if self.shared.lock().closed {
            return Err(BusError::Closed);
        }
        Ok(())
    }

    /// Ends every subscription and KV watch (after what they already hold) and fails later calls.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.subscribers.clear();
        for bucket in state.buckets.values() {
            bucket.close();
        }
        for log in state.logs.values() {
            log.close();
        }
    }

    /// The log named `name`, shared by all clones of this bus; created with `config` if absent
    /// (an existing one keeps its own).
    pub(crate) fn log(&self, name: &str, config: &LogConfig) -> Result<Arc<MemoryLog>, BusError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let log = state
            .logs
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryLog::new(config.clone())));
        Ok(Arc::clone(log))
    }

    /// The bucket named `name`, shared by all clones of this bus.
    pub(crate) fn bucket(
        &self,
        name: &str,
        max_age: Option<Duration>,
    ) -> Result<Arc<MemoryBucket>, BusError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let bucket = state
            .buckets
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryBucket::new(name, max_age)));
        Ok(Arc::clone(bucket))
    }

    #[cfg(test)]
    fn subscriber_count(&self) -> usize {
        self.shared.lock().subscribers.len()
    }
}

fn send(sub: &Subscriber, message: Message) {
    if let Err(mpsc::error::TrySendError::Full(message)) = sub.tx.try_send(message) {
        warn!(
            subject = %message.subject,
            pattern = %sub.pattern,
            "slow consumer on the in-memory bus: message dropped"
        );
    }
}

/// Receives the messages of one subscription; unsubscribes when dropped.
pub(crate) struct MemorySubscription {
    rx: mpsc::Receiver<Message>,
    id: u64,
    shared: Weak<Shared>,
}

impl MemorySubscription {
    /// `None` once the bus is closed or every clone of it dropped. Cancel safe.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().subscribers.retain(|s| s.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_subscriptions_are_removed() {
        let bus = MemoryBus::new();
        let a = bus.subscribe("a.>", None).unwrap();
        let b = bus.subscribe("a.b", Some("g")).unwrap();
        assert_eq!(bus.subscriber_count(), 2);
        drop(a);
        assert_eq!(bus.subscriber_count(), 1);
        drop(b);
        assert_eq!(bus.subscriber_count(), 0);
        // A request's reply subscription goes away too, whatever the outcome.
        let err = bus
            .request("nobody", Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::NoResponders { .. }), "{err:?}");
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[tokio::test]
    async fn dropping_every_bus_ends_subscriptions() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe("a", None).unwrap();
        bus.publish("a", Bytes::from_static(b"1")).unwrap();
        drop(bus);
        assert_eq!(sub.next().await.unwrap().payload, "1");
        assert!(sub.next().await.is_none());
    }
}
