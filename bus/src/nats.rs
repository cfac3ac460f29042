//! The production bus: a NATS connection (async-nats, which reconnects and resubscribes by
//! itself) and its JetStream context for KV buckets. This module only translates async-nats'
//! errors into [`BusError`]s; names are validated before they get here.

use super::log::LogConfig;
use super::nats_kv::NatsKv;
use super::nats_log::NatsLog;
use super::{BusError, KvError, Message, NatsAuth, NatsOptions, Source};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Event, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Values kept per KV key: only the latest (a delete marker counts), as Plane never reads
/// history.
const KV_HISTORY: i64 = 1;

/// The longest pause between two attempts to reconnect (async-nats' default is 4 s): a drone
/// must be heard again well within the drone grace of the moment the server is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How long [`NatsBus::sync`] waits for the server to echo its probe.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct NatsBus {
    client: Client,
    jetstream: jetstream::Context,
    /// Replicas of the KV buckets this connection creates.
    kv_replicas: usize,
    /// Whether the connection is up now, as async-nats' events tell it.
    connected: tokio::sync::watch::Receiver<bool>,
}

impl NatsBus {
    /// Connects with `options`; with several URLs the client picks one and fails over to the
    /// others.
    pub(crate) async fn connect(options: NatsOptions) -> Result<Self, BusError> {
        let url = options.urls.as_str();
        let failed = |source: Source| BusError::Connect {
            url: url.to_owned(),
            source,
        };
        let servers = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                source: Box::new(err),
            })?;
        if servers.is_empty() {
            return Err(BusError::Connect {
                url: url.to_owned(),
                source: "no server URL given".into(),
            });
        }
        let (connected_tx, connected) = tokio::sync::watch::channel(false);
        let connected_tx = std::sync::Arc::new(connected_tx);
        let mut connect = match &options.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|err| {
                    failed(format!("reading NATS credentials {}: {err}", path.display()).into())
                })?,
        };
        if options.tls.is_on() {
            connect = connect.require_tls(true);
            if let Some(ca) = &options.tls.ca {
                connect = connect.add_root_certificates(ca.clone());
            }
            match (&options.tls.cert, &options.tls.key) {
                (Some(cert), Some(key)) => {
                    connect = connect.add_client_certificate(cert.clone(), key.clone())
                }
                (None, None) => {}
                _ => {
                    return Err(failed(
                        "a client certificate needs both its certificate and its key".into(),
                    ))
                }
            }
        }
        if let Some(prefix) = &options.inbox_prefix {
            connect = connect.custom_inbox_prefix(prefix);
        }
        if let Some(name) = &options.name {
            connect = connect.name(name);
        }
        let client = connect
            .event_callback(move |event| {
                let connected = connected_tx.clone();
                async move {
                    match event {
                        Event::Connected => {
                            connected.send_replace(true);
                        }
                        Event::Disconnected | Event::Closed => {
                            connected.send_replace(false);
                        }
                        _ => {}
                    }
                    log_event(event)
                }
            })
            .reconnect_delay_callback(|attempts| {
                // 0, 2, 4, 8 ... ms, at most MAX_RECONNECT_DELAY.
                let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                match attempts {
                    0 | 1 => Duration::ZERO,
                    _ => Duration::from_millis(2u64.saturating_pow(exponent))
                        .min(MAX_RECONNECT_DELAY),
                }
            })
            .connect(servers)
            .await
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                source: Box::new(err),
            })?;
        let jetstream = jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            kv_replicas: options.kv_replicas.max(1),
            connected,
        })
    }

    pub(crate) fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.clone()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
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

    /// Opens the log, creating it (or bringing its limits to `config`).
    pub(crate) async fn log(&self, name: &str, config: &LogConfig) -> Result<NatsLog, BusError> {
        NatsLog::open(&self.jetstream, name, config, self.kv_replicas).await
    }

    /// Opens the bucket, creating it if absent. The bucket's stream is created directly, with
    /// the configuration async-nats' `create_key_value` would use, because that call first
    /// queries the account in a format servers before 2.10 do not answer. Creating a stream that
    /// exists with the same configuration succeeds, so controllers racing here all succeed.
    /// With `max_age`, an existing bucket whose age differs is brought to it.
    pub(crate) async fn kv(
        &self,
        bucket: &str,
        max_age: Option<Duration>,
    ) -> Result<NatsKv, KvError> {
        let open_failed = |source: Source| KvError::Open {
            bucket: bucket.to_owned(),
            source,
        };
        let wanted = stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Plane cluster state".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: KV_HISTORY,
            storage: stream::StorageType::File,
            num_replicas: self.kv_replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            max_age: max_age.unwrap_or_default(),
            ..Default::default()
        };
        let stream = self
            .jetstream
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|err| open_failed(Box::new(err)))?;
        if max_age.is_some() && stream.cached_info().config.max_age != wanted.max_age {
            self.jetstream
                .update_stream(wanted)
                .await
                .map_err(|err| open_failed(Box::new(err)))?;
        }
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
