//! The production bus: a NATS connection (async-nats, which reconnects and resubscribes by
//! itself) and its JetStream context for KV buckets. This module only translates async-nats'
//! errors into [`BusError`]s; names are validated before they get here.

use super::nats_kv::NatsKv;
use super::{BusError, KvError, Message, Source};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Event, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Values kept per KV key: only the latest (a delete marker counts), as Plane never reads
/// history.
const KV_HISTORY: i64 = 1;

/// How long [`NatsBus::sync`] waits for the server to echo its probe.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// The server's `max_payload`, as announced when connecting.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.max_payload()
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
    /// published by anyone after this returns is delivered (as on the in-memory bus, and
    /// unlike a bare async-nats subscribe, which returns before the server has seen it).
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
        self.sync().await.map_err(|source| BusError::Subscribe {
            subject: subject.to_owned(),
            source,
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
        self.sync()
            .await
            .map_err(|source| BusError::Flush { source })
    }

    /// Returns once the server has processed everything this connection sent before the call.
    /// async-nats' `flush` only writes the socket, and it has no public PING, so this sends a
    /// probe to a fresh inbox it subscribes to: the server handles a connection's operations in
    /// order, so the probe's echo means all earlier ones (a SUB in particular) are in effect.
    async fn sync(&self) -> Result<(), Source> {
        let inbox = self.client.new_inbox();
        let mut probe = self.client.subscribe(inbox.clone()).await?;
        self.client.publish(inbox, Bytes::new()).await?;
        match tokio::time::timeout(SYNC_TIMEOUT, probe.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("connection closed".into()),
            Err(_) => Err(format!("server did not answer within {SYNC_TIMEOUT:?}").into()),
        }
    }

    /// Drains: subscriptions deliver what they hold, then end; the connection closes.
    pub(crate) async fn close(&self) -> Result<(), BusError> {
        self.client.drain().await.map_err(|err| BusError::Flush {
            source: Box::new(err),
        })
    }

    /// Opens the bucket, creating it if absent. The bucket's stream is created directly, with
    /// the configuration async-nats' `create_key_value` would use, because that call first
    /// queries the account in a format servers before 2.10 do not answer. Creating a stream that
    /// exists with the same configuration succeeds, so controllers racing here all succeed.
    pub(crate) async fn kv(&self, bucket: &str) -> Result<NatsKv, KvError> {
        let open_failed = |source: Source| KvError::Open {
            bucket: bucket.to_owned(),
            source,
        };
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("Plane cluster state".to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: KV_HISTORY,
                storage: stream::StorageType::File,
                num_replicas: 1,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|err| open_failed(Box::new(err)))?;
        let store = self
            .jetstream
            .get_key_value(bucket)
            .await
            .map_err(|err| open_failed(Box::new(err)))?;
        Ok(NatsKv::new(bucket, store))
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        // async-nats closes the connection when its last handle goes, discarding writes it has
        // not flushed yet. A message published just before the bus is dropped (typically a
        // reply) must still go out, as it does in memory: a flush holds the connection open
        // until it is written.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                if let Err(error) = client.flush().await {
                    debug!(%error, "flushing a dropped NATS bus failed");
                }
            });
        }
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
