//! Cluster state: the KV buckets (the truth, shared by every controller) and this controller's
//! [`ClusterView`] of them. Reads come from the view; every write is a compare-and-set on the
//! revision the view held, retried from a fresh read of that one key when another writer got
//! there first, and applied to the view as soon as it succeeds.

use crate::limits::{IDEMPOTENCY_WINDOW, MAX_CAS_ATTEMPTS};
use crate::view::{Bucket, ClusterView, Versioned};
use plane_bus::{Bus, BusError, Kv, KvChange, KvError, KvWatch};
use plane_protocol::certificates::{OrderLock, SharedCertificate};
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::records::{BackendRecord, DroneRecord};
use plane_protocol::subjects::Subjects;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Why reading or writing cluster state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cluster state store")]
    Kv(#[from] KvError),
    #[error("opening cluster state")]
    Bus(#[from] BusError),
    #[error("record {key} kept changing under us; gave up after {MAX_CAS_ATTEMPTS} attempts")]
    Contended { key: String },
}

/// The cluster's buckets and this controller's view of them. Cheap to clone.
#[derive(Clone)]
pub struct ClusterState {
    backends: Kv,
    drones: Kv,
    /// The certificate and its order lock.
    acme: Kv,
    /// Keys and the backends they name; not in the view: each connect reads its own key.
    keys: Kv,
    /// Answers to requests with an `Idempotency-Key`.
    idempotency: Kv,
    view: ClusterView,
}

/// What an update closure decided.
pub enum Change<T> {
    /// Write the modified record; return this value.
    Write(T),
    /// Leave the record as it is; return this value.
    Keep(T),
}

/// The watches that keep a [`ClusterView`] current; see [`ClusterState::follow`].
pub struct Watches {
    backends: KvWatch,
    drones: KvWatch,
    order_lock: KvWatch,
}

impl Watches {
    /// The next change of either bucket; `None` when a watch ended (the bus closed, or the
    /// watch failed for good): [`ClusterState::resync`] then.
    pub async fn next(&mut self) -> Option<(Bucket, KvChange)> {
        tokio::select! {
            change = self.backends.next() => change.map(|c| (Bucket::Backends, c)),
            change = self.drones.next() => change.map(|c| (Bucket::Drones, c)),
            change = self.order_lock.next() => change.map(|c| (Bucket::Acme, c)),
        }
    }
}

/// A record type stored in one of the buckets.
trait Stored: Serialize + DeserializeOwned {
    const BUCKET: Bucket;
    fn key(&self) -> &str;
    fn held(view: &ClusterView, key: &str) -> Option<Versioned<Self>>;
    fn store(view: &ClusterView, record: Self, revision: u64);
}

impl Stored for BackendRecord {
    const BUCKET: Bucket = Bucket::Backends;
    fn key(&self) -> &str {
        self.id.as_str()
    }
    fn held(view: &ClusterView, key: &str) -> Option<Versioned<Self>> {
        BackendId::new(key).ok().and_then(|id| view.backend(&id))
    }
    fn store(view: &ClusterView, record: Self, revision: u64) {
        view.put_backend(record, revision);
    }
}

impl Stored for DroneRecord {
    const BUCKET: Bucket = Bucket::Drones;
    fn key(&self) -> &str {
        self.id.as_str()
    }
    fn held(view: &ClusterView, key: &str) -> Option<Versioned<Self>> {
        DroneId::new(key).ok().and_then(|id| view.drone(&id))
    }
    fn store(view: &ClusterView, record: Self, revision: u64) {
        view.put_drone(record, revision);
    }
}

impl Stored for OrderLock {
    const BUCKET: Bucket = Bucket::Acme;
    fn key(&self) -> &str {
        OrderLock::KEY
    }
    fn held(view: &ClusterView, _key: &str) -> Option<Versioned<Self>> {
        view.order_lock()
    }
    fn store(view: &ClusterView, record: Self, revision: u64) {
        view.put_order_lock(record, revision);
    }
}

impl ClusterState {
    /// Opens (creating when absent) the cluster's buckets and loads the view: the watches start
    /// first, then one snapshot of each bucket, so that no change falls in between.
    /// Keys are forgotten `key_retention` after their record was last written.
    pub async fn open(
        bus: &Bus,
        cluster: &str,
        key_retention: Duration,
    ) -> Result<(Self, Watches), StateError> {
        let subjects = Subjects::new(cluster);
        let state = ClusterState {
            backends: bus.kv(&subjects.backends_bucket()).await?,
            drones: bus.kv(&subjects.drones_bucket()).await?,
            acme: bus.kv(&subjects.acme_bucket()).await?,
            keys: bus
                .kv_expiring(&subjects.keys_bucket(), key_retention)
                .await?,
            idempotency: bus
                .kv_expiring(&subjects.idempotency_bucket(), IDEMPOTENCY_WINDOW)
                .await?,
            view: ClusterView::new(cluster),
        };
        let watches = state.resync().await?;
        Ok((state, watches))
    }

    /// Watches both buckets anew and replaces the view with a fresh snapshot.
    pub async fn resync(&self) -> Result<Watches, StateError> {
        let watches = Watches {
            backends: self.backends.watch(">").await?,
            drones: self.drones.watch(">").await?,
            order_lock: self.acme.watch(OrderLock::KEY).await?,
        };
        let backends = self.backends.entries().await?;
        let drones = self.drones.entries().await?;
        let order_lock = self.acme.get(OrderLock::KEY).await?;
        self.view
            .replace(backends, drones, order_lock.into_iter().collect());
        Ok(watches)
    }

    /// Applies a change a watch saw.
    pub fn follow(&self, bucket: Bucket, change: KvChange) {
        self.view.apply_change(bucket, change);
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// The keys' bucket ([`plane_protocol::keys::KeyRecord`] by label).
    pub fn keys(&self) -> &Kv {
        &self.keys
    }

    /// The bucket of answers to requests with an `Idempotency-Key`.
    pub fn idempotency(&self) -> &Kv {
        &self.idempotency
    }

    fn kv(&self, bucket: Bucket) -> &Kv {
        match bucket {
            Bucket::Backends => &self.backends,
            Bucket::Drones => &self.drones,
            Bucket::Acme => &self.acme,
        }
    }

    /// Creates the record; [`KvError::AlreadyExists`] if the key is taken.
    async fn create<R: Stored>(&self, record: R) -> Result<(), StateError> {
        let revision = self
            .kv(R::BUCKET)
            .create_json(record.key(), &record)
            .await?;
        R::store(&self.view, record, revision);
        Ok(())
    }

    pub async fn create_backend(&self, record: BackendRecord) -> Result<(), StateError> {
        self.create(record).await
    }

    pub async fn create_drone(&self, record: DroneRecord) -> Result<(), StateError> {
        self.create(record).await
    }

    pub async fn delete_backend(&self, id: &BackendId) -> Result<(), StateError> {
        let held = self.view.backend(id).map_or(0, |v| v.revision);
        self.backends.delete(id.as_str()).await?;
        // The delete's own revision is not returned; one past the held record's is enough for
        // the view to drop it now, and the watch brings the real one.
        self.view.remove_backend(id, held + 1);
        Ok(())
    }

    pub async fn delete_drone(&self, id: &DroneId) -> Result<(), StateError> {
        let held = self.view.drone(id).map_or(0, |v| v.revision);
        self.drones.delete(id.as_str()).await?;
        self.view.remove_drone(id, held + 1);
        Ok(())
    }

    /// Reads one key from the store into the view (when the view may be behind).
    async fn refresh<R: Stored>(&self, key: &str) -> Result<Option<Versioned<R>>, StateError> {
        if let Some(entry) = self.kv(R::BUCKET).get(key).await? {
            self.view.apply_entry(R::BUCKET, entry);
        }
        Ok(R::held(&self.view, key))
    }

    /// Lets `change` decide on the record and writes the result with compare-and-set on the
    /// revision it saw, retrying from a fresh read when another writer got there first. `None`
    /// when there is no such record.
    async fn update<R: Stored + Clone, T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut R) -> Change<T>,
    ) -> Result<Option<T>, StateError> {
        let mut held = match R::held(&self.view, key) {
            Some(held) => Some(held),
            // Written by another controller a moment ago, and not seen by the watch yet?
            None => self.refresh::<R>(key).await?,
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(current) = held else {
                return Ok(None);
            };
            let mut record = R::clone(&current.record);
            match change(&mut record) {
                Change::Keep(out) => return Ok(Some(out)),
                Change::Write(out) => {
                    match self
                        .kv(R::BUCKET)
                        .update_json(key, &record, current.revision)
                        .await
                    {
                        Ok(revision) => {
                            R::store(&self.view, record, revision);
                            return Ok(Some(out));
                        }
                        Err(KvError::WrongRevision { .. }) => {
                            held = self.refresh::<R>(key).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(StateError::Contended {
            key: key.to_string(),
        })
    }

    /// [`ClusterState::update`] of a backend record.
    pub async fn update_backend<T>(
        &self,
        id: &BackendId,
        change: impl FnMut(&mut BackendRecord) -> Change<T>,
    ) -> Result<Option<T>, StateError> {
        self.update(id.as_str(), change).await
    }

    /// [`ClusterState::update`] of a drone record.
    pub async fn update_drone<T>(
        &self,
        id: &DroneId,
        change: impl FnMut(&mut DroneRecord) -> Change<T>,
    ) -> Result<Option<T>, StateError> {
        self.update(id.as_str(), change).await
    }

    /// Lets `change` decide on the certificate order lock (created empty when absent), as
    /// [`ClusterState::update`] does.
    pub async fn update_order_lock<T>(
        &self,
        change: impl FnMut(&mut OrderLock) -> Change<T>,
    ) -> Result<T, StateError> {
        if self.refresh::<OrderLock>(OrderLock::KEY).await?.is_none() {
            match self.create(OrderLock::default()).await {
                Ok(()) | Err(StateError::Kv(KvError::AlreadyExists { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        self.update(OrderLock::KEY, change)
            .await?
            .ok_or_else(|| StateError::Contended {
                key: OrderLock::KEY.into(),
            })
    }

    /// The cluster's certificate as stored.
    pub async fn shared_certificate(&self) -> Result<Option<SharedCertificate>, StateError> {
        Ok(self
            .acme
            .get_json(SharedCertificate::KEY)
            .await?
            .map(|(certificate, _revision)| certificate))
    }

    /// Stores the cluster's certificate.
    pub async fn store_certificate(
        &self,
        certificate: &SharedCertificate,
    ) -> Result<(), StateError> {
        self.acme
            .put_json(SharedCertificate::KEY, certificate)
            .await?;
        Ok(())
    }

    /// The backend's record, from the view, or from the store when the view does not have it
    /// (yet): a backend another controller created a moment ago.
    pub async fn backend(
        &self,
        id: &BackendId,
    ) -> Result<Option<Versioned<BackendRecord>>, StateError> {
        match self.view.backend(id) {
            Some(held) => Ok(Some(held)),
            None => self.refresh::<BackendRecord>(id.as_str()).await,
        }
    }
}

/// Waits until `key`'s latest revision in `kv` is no longer `revision` (a write or a delete by
/// someone else), or `wait` has passed; either way the caller reads the key again. The watch
/// starts before the key is read, so a change in between is not missed.
pub async fn wait_for_change(
    kv: &Kv,
    key: &str,
    revision: u64,
    wait: Duration,
) -> Result<(), KvError> {
    let mut watch = kv.watch(key).await?;
    if kv.get(key).await?.map(|e| e.revision) == Some(revision) {
        let _ = tokio::time::timeout(wait, watch.next()).await;
    }
    Ok(())
}
