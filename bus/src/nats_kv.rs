//! A JetStream KV bucket behind [`super::Kv`]: maps async-nats' entries (which include delete
//! and purge markers) to live values and changes, and its error kinds to [`KvError`] variants.

use super::kv::{KvChange, KvEntry};
use super::KvError;
use async_nats::jetstream::kv::{CreateErrorKind, Entry, Operation, Store, UpdateErrorKind, Watch};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;
use tracing::{debug, warn};

/// How many `get`s `entries` keeps in flight while reading a bucket.
const ENTRIES_CONCURRENCY: usize = 32;

/// Consecutive watcher errors after which a watch is considered dead rather than recovering
/// (the ordered consumer recreates itself after transient failures, yielding one error each).
const MAX_CONSECUTIVE_WATCH_ERRORS: u32 = 16;

/// The longest one attempt at a KV operation (including listing a bucket) may take.
const KV_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a KV operation may take, retries included: long enough for a NATS cluster to
/// elect a new JetStream leader after losing a node.
const KV_OP_DEADLINE: Duration = Duration::from_secs(20);

/// Pause between attempts: first and longest.
const KV_RETRY_MIN: Duration = Duration::from_millis(50);
const KV_RETRY_MAX: Duration = Duration::from_secs(1);

pub(crate) struct NatsKv {
    bucket: String,
    store: Store,
}

impl NatsKv {
    pub(crate) fn new(bucket: &str, store: Store) -> Self {
        Self {
            bucket: bucket.to_owned(),
            store,
        }
    }

    fn failed(
        &self,
        op: &'static str,
        key: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> KvError {
        KvError::Store {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source: Box::new(source),
        }
    }

    /// Runs `attempt` until it succeeds, fails for a reason retrying cannot mend, or
    /// [`KV_OP_DEADLINE`] passes. Each attempt is bounded by [`KV_ATTEMPT_TIMEOUT`]: a request
    /// whose answer is lost (a reconnect, a node dying, a JetStream leader being elected) must
    /// fail over to another attempt, never hang. Returns whether an earlier attempt failed, as
    /// such an attempt may have been carried out all the same.
    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: F,
    ) -> (Result<T, KvError>, bool)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        let deadline = tokio::time::Instant::now() + KV_OP_DEADLINE;
        let mut pause = KV_RETRY_MIN;
        let mut retried = false;
        loop {
            let error = match tokio::time::timeout(KV_ATTEMPT_TIMEOUT, attempt()).await {
                // A store failure is the bus's or the server's (names were checked before):
                // worth another attempt. Anything else is the answer.
                Ok(Err(error @ KvError::Store { .. })) => error,
                Ok(result) => return (result, retried),
                Err(_) => self.failed(
                    op,
                    key,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {KV_ATTEMPT_TIMEOUT:?}"),
                    ),
                ),
            };
            if tokio::time::Instant::now() + pause >= deadline {
                warn!(op, bucket = %self.bucket, key, "KV operation failed; giving up");
                return (Err(error), retried);
            }
            debug!(op, bucket = %self.bucket, key, error = ?error, ?pause, "KV operation failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(KV_RETRY_MAX);
            retried = true;
        }
    }

    /// Whether `key` holds `value` now: a write whose answer was lost may have landed.
    async fn holds(&self, key: &str, value: &Bytes) -> Option<u64> {
        match self.retrying("get", key, || self.get_once(key)).await.0 {
            Ok(Some(entry)) if entry.value == *value => Some(entry.revision),
            _ => None,
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        self.retrying("get", key, || self.get_once(key)).await.0
    }

    pub(crate) async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        match self
            .retrying("create", key, || self.create_once(key, value.clone()))
            .await
        {
            (Err(KvError::AlreadyExists { key }), true) => match self.holds(&key, &value).await {
                Some(revision) => Ok(revision),
                None => Err(KvError::AlreadyExists { key }),
            },
            (result, _) => result,
        }
    }

    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, KvError> {
        match self
            .retrying("update", key, || {
                self.update_once(key, value.clone(), revision)
            })
            .await
        {
            (Err(KvError::WrongRevision { key }), true) => match self.holds(&key, &value).await {
                Some(revision) => Ok(revision),
                None => Err(KvError::WrongRevision { key }),
            },
            (result, _) => result,
        }
    }

    pub(crate) async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.retrying("put", key, || self.put_once(key, value.clone()))
            .await
            .0
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.retrying("delete", key, || self.delete_once(key))
            .await
            .0
    }

    pub(crate) async fn entries(&self) -> Result<Vec<KvEntry>, KvError> {
        self.retrying("listing", ">", || self.entries_once())
            .await
            .0
    }

    pub(crate) async fn watch(&self, key: &str) -> Result<NatsWatch, KvError> {
        self.retrying("watch", key, || self.watch_once(key)).await.0
    }

    async fn get_once(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|err| self.failed("get", key, err))?;
        Ok(entry.and_then(live))
    }

    async fn create_once(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        // async-nats' create retries with the delete marker's revision when the key was deleted,
        // and maps a lost race (on either attempt) to AlreadyExists.
        self.store
            .create(key, value)
            .await
            .map_err(|err| match err.kind() {
                CreateErrorKind::AlreadyExists => KvError::AlreadyExists {
                    key: key.to_owned(),
                },
                _ => self.failed("create", key, err),
            })
    }

    async fn update_once(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.store
            .update(key, value, revision)
            .await
            .map_err(|err| match err.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::WrongRevision {
                    key: key.to_owned(),
                },
                _ => self.failed("update", key, err),
            })
    }

    async fn put_once(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.store
            .put(key, value)
            .await
            .map_err(|err| self.failed("put", key, err))
    }

    async fn delete_once(&self, key: &str) -> Result<(), KvError> {
        self.store
            .delete(key)
            .await
            .map_err(|err| self.failed("delete", key, err))
    }

    /// Lists the keys with a live value, then reads each one. A key deleted in between is left
    /// out, so every entry returned was live at some moment during the call.
    async fn entries_once(&self) -> Result<Vec<KvEntry>, KvError> {
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|err| self.failed("listing keys", ">", err))?
            .try_collect()
            .await
            .map_err(|err| self.failed("listing keys", ">", err))?;
        let mut entries: Vec<KvEntry> = futures::stream::iter(keys)
            .map(|key| async move { self.get_once(&key).await })
            .buffer_unordered(ENTRIES_CONCURRENCY)
            .try_filter_map(|entry| async move { Ok(entry) })
            .try_collect()
            .await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    async fn watch_once(&self, key: &str) -> Result<NatsWatch, KvError> {
        // The stream's last sequence before the watch exists: whatever the consumer delivers
        // at or below it is history. async-nats recreates a watch's consumer after a reconnect
        // from the last sequence it delivered, which for a watch that has seen nothing yet is
        // the start of the stream: without this floor the whole bucket would be replayed.
        let floor = self
            .store
            .stream
            .get_info()
            .await
            .map_err(|err| self.failed("watch", key, err))?
            .state
            .last_sequence;
        let watch = self
            .store
            .watch(key)
            .await
            .map_err(|err| self.failed("watch", key, err))?;
        Ok(NatsWatch {
            watch,
            floor,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        })
    }
}

/// The live value of an entry, `None` for a delete or purge marker.
fn live(entry: Entry) -> Option<KvEntry> {
    match entry.operation {
        Operation::Put => Some(KvEntry {
            key: entry.key,
            value: entry.value,
            revision: entry.revision,
        }),
        Operation::Delete | Operation::Purge => None,
    }
}

/// A JetStream ordered consumer delivering the changes to some keys.
pub(crate) struct NatsWatch {
    watch: Watch,
    /// Revisions at or below this were written before the watch began.
    floor: u64,
    bucket: String,
    key: String,
}

impl NatsWatch {
    /// Skips (and logs) the errors the ordered consumer recovers from; ends when the connection
    /// is closed or the consumer keeps failing.
    pub(crate) async fn next(&mut self) -> Option<KvChange> {
        let mut errors = 0;
        loop {
            match self.watch.next().await? {
                Ok(entry) if entry.revision <= self.floor => continue,
                Ok(entry) => {
                    return Some(match entry.operation {
                        Operation::Put => KvChange::Put(KvEntry {
                            key: entry.key,
                            value: entry.value,
                            revision: entry.revision,
                        }),
                        Operation::Delete | Operation::Purge => KvChange::Delete {
                            key: entry.key,
                            revision: entry.revision,
                        },
                    })
                }
                Err(error) => {
                    errors += 1;
                    warn!(%error, bucket = %self.bucket, key = %self.key, "KV watch error");
                    if errors >= MAX_CONSECUTIVE_WATCH_ERRORS {
                        warn!(bucket = %self.bucket, key = %self.key, "KV watch gave up");
                        return None;
                    }
                }
            }
        }
    }
}
