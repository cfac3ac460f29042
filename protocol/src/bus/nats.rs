//! The production bus: a NATS connection (async-nats, which reconnects and resubscribes by
//! itself) and its JetStream context for KV buckets. This module only translates async-nats'
//! errors into [`BusError`]s; names are validated before they get here.

use super::nats_kv::NatsKv;
use super::{BusError, KvError, Message};
use async_nats::jetstream;
use async_nats::{Client, Event, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tracing::{info, warn};

pub(crate) struct NatsBus {
    client: Client,
    jetstream: jetstream::Context,
}

impl NatsBus {
    pub(crate) async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .event_callback(|event| async move { log_event(event) })
            .connect(url)
            .await
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                source: Box::new(err),
            })?;
        let jetstream = jetstream::new(client.clone());
        Ok(Self { client, jetstream })
    }

    pub(crate) async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|err| BusError::Publish {
                subject: subject.to_owned(),
                source: Box::new(err),
            })
    }

    /// Subscribes and waits until the server has registered the interest, so that a message
    /// published by anyone after this returns is delivered (as on the in-memory bus).
    pub(crate) async fn subscribe(
        &self,
        subject: &str,
        group: Option<&str>,
    ) -> Result<NatsSubscription, BusError> {
        let subscribed = match group {
            None => self.client.subscribe(subject.to_owned()).await,
            Some(group) => {
                self.client
                    .queue_subscribe(subject.to_owned(), group.to_owned())
                    .await
            }
        };
        let subscriber = subscribed.map_err(|err| BusError::Subscribe {
            subject: subject.to_owned(),
            source: Box::new(err),
        })?;
        self.client
            .flush()
            .await
            .map_err(|err| BusError::Subscribe {
                subject: subject.to_owned(),
                source: Box::new(err),
            })?;
        Ok(NatsSubscription { subscriber })
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(reply.payload),
            Err(err) => Err(match err.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::TimedOut => BusError::Timeout {
                    subject: subject.to_owned(),
                },
                _ => BusError::Request {
                    subject: subject.to_owned(),
                    source: Box::new(err),
                },
            }),
        }
    }

    pub(crate) async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|err| BusError::Flush {
                source: Box::new(err),
            })
    }

    /// Drains: subscriptions deliver what they hold, then end; the connection closes.
    pub(crate) async fn close(&self) -> Result<(), BusError> {
        self.client
            .drain()
            .await
            .map_err(|err| BusError::Flush {
                source: Box::new(err),
            })
    }

    /// Opens the bucket, creating it if absent. Creation is idempotent on the server (same
    /// config), so two controllers racing to create it both succeed.
    pub(crate) async fn kv(&self, bucket: &str) -> Result<NatsKv, KvError> {
        let store = match self.jetstream.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => self
                .jetstream
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.to_owned(),
                    description: "Plane cluster state".to_owned(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|err| KvError::Open {
                    bucket: bucket.to_owned(),
                    source: Box::new(err),
                })?,
        };
        Ok(NatsKv::new(bucket, store))
    }
}

fn log_event(event: Event) {
    match event {
        Event::Connected => info!("connected to NATS"),
        Event::Closed | Event::Draining => info!(%event, "NATS connection"),
        _ => warn!(%event, "NATS connection"),
    }
}

/// Receives the messages of one NATS subscription; unsubscribes when dropped.
pub(crate) struct NatsSubscription {
    subscriber: async_nats::Subscriber,
}

impl NatsSubscription {
    /// Cancel safe: the subscriber is a channel receiver.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        let message = self.subscriber.next().await?;
        Some(Message {
            subject: message.subject.to_string(),
            payload: message.payload,
            reply: message.reply.map(|reply| reply.to_string()),
        })
    }
}
