//! Key-value buckets, where cluster state lives: one handle type over a JetStream bucket or its
//! in-memory twin. Keys are validated here, once for both, and the typed helpers are the JSON
//! layer that callers normally use.

use super::memory_kv::{Expect, MemoryBucket, MemoryWatch};
use super::nats_kv::{NatsKv, NatsWatch};
use super::{subject, KvError};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// A handle to one bucket; clones share it.
#[derive(Clone)]
pub struct Kv {
    bucket: String,
    /// Values larger than this are refused before they reach the store.
    max_value: usize,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryBucket>),
    // Boxed behind an Arc: the store carries the stream's info (over a kilobyte).
    Nats(Arc<NatsKv>),
}

/// A live key with its value and the revision that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
}

/// One change seen by a [`KvWatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvChange {
    Put(KvEntry),
    Delete { key: String, revision: u64 },
}

impl Kv {
    pub(crate) fn memory(bucket: &str, memory: Arc<MemoryBucket>, max_value: usize) -> Self {
        Self {
            bucket: bucket.to_owned(),
            max_value,
            backend: Backend::Memory(memory),
        }
    }

    pub(crate) fn nats(bucket: &str, nats: NatsKv, max_value: usize) -> Self {
        Self {
            bucket: bucket.to_owned(),
            max_value,
            backend: Backend::Nats(Arc::new(nats)),
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if subject::valid_key(key) {
            Ok(())
        } else {
            Err(KvError::InvalidKey {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            })
        }
    }

    /// [`Kv::check_key`], and that the value fits (the limit is the same for both buses, where
    /// JetStream would fail with a less telling error).
    fn check_write(&self, key: &str, value: &Bytes) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.max_value {
            return Err(KvError::ValueTooLarge {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                size: value.len(),
                max: self.max_value,
            });
        }
        Ok(())
    }

    /// The key's live value, `None` if it was never written, or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => m.get(key),
            Backend::Nats(n) => n.get(key).await,
        }
    }

    /// Writes the key if it has no live value (never written, or deleted); returns the new
    /// revision. Of concurrent creates of one key exactly one succeeds, the others get
    /// [`KvError::AlreadyExists`].
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.check_write(key, &value)?;
        match &self.backend {
            Backend::Memory(m) => m.write(key, Some(value), Expect::NotLive),
            Backend::Nats(n) => n.create(key, value).await,
        }
    }

    /// Compare-and-set: writes the key only if its latest revision (a delete counts) is
    /// `revision`, else [`KvError::WrongRevision`]. Returns the new revision.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.check_write(key, &value)?;
        match &self.backend {
            Backend::Memory(m) => m.write(key, Some(value), Expect::Revision(revision)),
            Backend::Nats(n) => n.update(key, value, revision).await,
        }
    }

    /// Writes the key whatever its state; returns the new revision.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.check_write(key, &value)?;
        match &self.backend {
            Backend::Memory(m) => m.write(key, Some(value), Expect::Any),
            Backend::Nats(n) => n.put(key, value).await,
        }
    }

    /// Deletes the key (a delete marker with its own revision, seen by watchers), whether or not
    /// it had a value.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => m.write(key, None, Expect::Any).map(drop),
            Backend::Nats(n) => n.delete(key).await,
        }
    }

    /// Every live key with its current value, sorted by key.
    pub async fn entries(&self) -> Result<Vec<KvEntry>, KvError> {
        match &self.backend {
            Backend::Memory(m) => m.entries(),
            Backend::Nats(n) => n.entries().await,
        }
    }

    /// Changes made after this call returns (no history) to `key`, which may be a pattern with
    /// `*` (one token) and `>` (the rest; `">"` is the whole bucket). Callers read the current
    /// value with [`Kv::get`] after watching and dedupe by revision.
    pub async fn watch(&self, key: &str) -> Result<KvWatch, KvError> {
        if !subject::valid_key_pattern(key) {
            return Err(KvError::InvalidKey {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            });
        }
        let inner = match &self.backend {
            Backend::Memory(m) => WatchInner::Memory(m.watch(key)?),
            Backend::Nats(n) => WatchInner::Nats(Box::new(n.watch(key).await?)),
        };
        Ok(KvWatch { inner })
    }

    /// [`Kv::get`] decoded from JSON, with its revision.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, KvError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&entry.value).map_err(|source| KvError::Decode {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source,
        })?;
        Ok(Some((value, entry.revision)))
    }

    /// [`Kv::create`] of a value encoded as JSON.
    pub async fn create_json<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, KvError> {
        self.create(key, self.encode(key, value)?).await
    }

    /// [`Kv::update`] of a value encoded as JSON.
    pub async fn update_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, KvError> {
        self.update(key, self.encode(key, value)?, revision).await
    }

    /// [`Kv::put`] of a value encoded as JSON.
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, KvError> {
        self.put(key, self.encode(key, value)?).await
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Bytes, KvError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|source| KvError::Encode {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            })
    }
}

/// The changes to some keys of a bucket, in revision order; stops watching when dropped.
pub struct KvWatch {
    inner: WatchInner,
}

enum WatchInner {
    Memory(MemoryWatch),
    Nats(Box<NatsWatch>),
}

impl KvWatch {
    /// The next change; `None` once the bus is closed (or, on NATS, the watch failed for good:
    /// open a new one). Cancel safe.
    pub async fn next(&mut self) -> Option<KvChange> {
        match &mut self.inner {
            WatchInner::Memory(m) => m.next().await,
            WatchInner::Nats(n) => n.next().await,
        }
    }
}
