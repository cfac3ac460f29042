//! The controller's in-memory view of the cluster state: every backend and drone record with its
//! KV revision, indexed by drone, fed by one watch per bucket. Every read the controller makes
//! (scheduling, liveness, loss handling, the API and its event streams) is served from here, so
//! that the cost of an event does not grow with the size of the cluster; only writes go to the
//! KV store, and a writer applies its own result at once (read-your-writes) instead of waiting
//! for the watch to bring it back.
//!
//! Consistency: a record's revision only moves forward here. The watch delivers every change in
//! order; the initial snapshot, taken after the watch started, and a write applied locally may
//! arrive out of order with it, and the revision check keeps whichever is newer.

use plane_bus::{KvChange, KvEntry};
use plane_protocol::certificates::OrderLock;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::records::{BackendRecord, DroneRecord};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::broadcast;
use tracing::warn;

/// Changes of one backend an event stream may fall behind by before it skips to the latest.
const EVENT_BUFFER: usize = 16;

/// A record as the view holds it: shared, never copied on read.
#[derive(Debug)]
pub struct Versioned<T> {
    pub record: Arc<T>,
    /// The KV revision that wrote it.
    pub revision: u64,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Versioned {
            record: Arc::clone(&self.record),
            revision: self.revision,
        }
    }
}

/// The in-memory view. Cheap to clone; all clones share it.
#[derive(Clone, Default)]
pub struct ClusterView {
    inner: Arc<RwLock<ViewState>>,
    /// The cluster's name, which a key's label hashes.
    cluster: Arc<str>,
}

#[derive(Default)]
struct ViewState {
    backends: HashMap<BackendId, Versioned<BackendRecord>>,
    /// Unterminated backends by the drone they were given to.
    by_drone: HashMap<DroneId, HashSet<BackendId>>,
    /// The unterminated backend of each key, by the key's label.
    by_key: HashMap<String, BackendId>,
    drones: HashMap<DroneId, Versioned<DroneRecord>>,
    /// Event streams' channels, by backend; made when the first stream subscribes.
    events: HashMap<BackendId, broadcast::Sender<Arc<BackendRecord>>>,
    /// Revisions of recent backend deletes, so that a write applied late (a writer's own, racing
    /// the watch) cannot bring a deleted record back. Pruned by [`ClusterView::prune_deleted`].
    deleted: HashMap<BackendId, u64>,
    /// The deletes recorded before the last prune; forgotten at the next one.
    deleted_earlier: HashMap<BackendId, u64>,
    /// The certificate order lock, with the DNS-01 values it publishes.
    order_lock: Option<Versioned<OrderLock>>,
}

/// Which bucket a change belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Bucket {
    Backends,
    Drones,
    /// The certificate's bucket; the view follows only its [`OrderLock`].
    Acme,
}

impl ClusterView {
    /// An empty view of `cluster`.
    pub fn new(cluster: &str) -> ClusterView {
        ClusterView {
            inner: Arc::default(),
            cluster: cluster.into(),
        }
    }

    /// The unterminated backend of the key with this label, if any.
    pub fn backend_of_key(&self, label: &str) -> Option<Versioned<BackendRecord>> {
        let state = self.read();
        state
            .by_key
            .get(label)
            .and_then(|id| state.backends.get(id))
            .cloned()
    }

    fn read(&self) -> RwLockReadGuard<'_, ViewState> {
        // Nothing under this lock panics; a poisoned lock still holds a consistent view.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ViewState> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn backend(&self, id: &BackendId) -> Option<Versioned<BackendRecord>> {
        self.read().backends.get(id).cloned()
    }

    /// Every backend record (in no order).
    pub fn backends(&self) -> Vec<Arc<BackendRecord>> {
        self.read()
            .backends
            .values()
            .map(|v| Arc::clone(&v.record))
            .collect()
    }

    /// The unterminated backends given to `drone`.
    pub fn live_backends_of(&self, drone: &DroneId) -> Vec<Arc<BackendRecord>> {
        let state = self.read();
        let Some(ids) = state.by_drone.get(drone) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| state.backends.get(id))
            .map(|v| Arc::clone(&v.record))
            .collect()
    }

    pub fn drone(&self, id: &DroneId) -> Option<Versioned<DroneRecord>> {
        self.read().drones.get(id).cloned()
    }

    /// Every drone record (in no order).
    pub fn drones(&self) -> Vec<Versioned<DroneRecord>> {
        self.read().drones.values().cloned().collect()
    }

    /// The certificate order lock as last seen.
    pub fn order_lock(&self) -> Option<Versioned<OrderLock>> {
        self.read().order_lock.clone()
    }

    /// The backend's record now and every later version of it, for an event stream; `None` if
    /// the view has no such backend. The channel closes when the record is deleted.
    pub fn subscribe(
        &self,
        id: &BackendId,
    ) -> Option<(Arc<BackendRecord>, broadcast::Receiver<Arc<BackendRecord>>)> {
        let mut state = self.write();
        let current = Arc::clone(&state.backends.get(id)?.record);
        let receiver = state
            .events
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe();
        Some((current, receiver))
    }

    /// Applies a change seen by a watch, if it is newer than what the view holds.
    pub fn apply_change(&self, bucket: Bucket, change: KvChange) {
        match change {
            KvChange::Put(entry) => self.apply_entry(bucket, entry),
            KvChange::Delete { key, revision } => match bucket {
                Bucket::Backends => {
                    if let Ok(id) = BackendId::new(key) {
                        self.remove_backend(&id, revision);
                    }
                }
                Bucket::Drones => {
                    if let Ok(id) = DroneId::new(key) {
                        self.remove_drone(&id, revision);
                    }
                }
                Bucket::Acme => {
                    if key == OrderLock::KEY {
                        self.remove_order_lock(revision);
                    }
                }
            },
        }
    }

    /// Applies a live entry (from a watch, a snapshot or a read), if newer. Entries that do not
    /// decode are logged and left out: they are not Plane's, or from a newer, incompatible one.
    pub fn apply_entry(&self, bucket: Bucket, entry: KvEntry) {
        match bucket {
            Bucket::Backends => match serde_json::from_slice::<BackendRecord>(&entry.value) {
                Ok(record) => self.put_backend(record, entry.revision),
                Err(error) => warn!(key = %entry.key, %error, "undecodable backend record"),
            },
            Bucket::Drones => match serde_json::from_slice::<DroneRecord>(&entry.value) {
                Ok(record) => self.put_drone(record, entry.revision),
                Err(error) => warn!(key = %entry.key, %error, "undecodable drone record"),
            },
            // The certificate itself stays in the store: only the lock is needed at every query.
            Bucket::Acme if entry.key != OrderLock::KEY => {}
            Bucket::Acme => match serde_json::from_slice::<OrderLock>(&entry.value) {
                Ok(lock) => self.put_order_lock(lock, entry.revision),
                Err(error) => warn!(key = %entry.key, %error, "undecodable certificate order lock"),
            },
        }
    }

    /// Replaces the whole view with a fresh snapshot of both buckets (after a watch had to be
    /// reopened and may have missed changes). Records absent from it are gone.
    pub fn replace(&self, backends: Vec<KvEntry>, drones: Vec<KvEntry>, acme: Vec<KvEntry>) {
        let fresh = ClusterView::new(&self.cluster);
        for entry in acme {
            fresh.apply_entry(Bucket::Acme, entry);
        }
        for entry in backends {
            fresh.apply_entry(Bucket::Backends, entry);
        }
        for entry in drones {
            fresh.apply_entry(Bucket::Drones, entry);
        }
        let fresh = std::mem::take(&mut *fresh.write());
        let mut state = self.write();
        let events = std::mem::take(&mut state.events);
        let old = std::mem::replace(&mut *state, fresh);
        for (id, sender) in events {
            match state.backends.get(&id) {
                Some(now) => {
                    let changed = old
                        .backends
                        .get(&id)
                        .is_none_or(|before| before.revision != now.revision);
                    if changed {
                        let _ = sender.send(Arc::clone(&now.record));
                    }
                    state.events.insert(id, sender);
                }
                // Dropping the sender ends the streams of a backend that is gone.
                None => drop(sender),
            }
        }
    }

    /// Stores a backend record written with `revision`, unless the view has a newer one.
    pub fn put_backend(&self, record: BackendRecord, revision: u64) {
        let mut state = self.write();
        let state = &mut *state;
        let deleted = |map: &HashMap<BackendId, u64>| map.get(&record.id).copied().unwrap_or(0);
        if deleted(&state.deleted).max(deleted(&state.deleted_earlier)) >= revision {
            return;
        }
        if let Some(held) = state.backends.get(&record.id) {
            if held.revision >= revision {
                return;
            }
            if held.record.drone != record.drone || held.record.is_terminated() {
                if let Some(ids) = state.by_drone.get_mut(&held.record.drone) {
                    ids.remove(&record.id);
                }
            }
        }
        if let Some(key) = &record.key {
            let label = key.label(&self.cluster);
            if !record.is_terminated() {
                state.by_key.insert(label, record.id.clone());
            } else if state.by_key.get(&label) == Some(&record.id) {
                state.by_key.remove(&label);
            }
        }
        if !record.is_terminated() {
            state
                .by_drone
                .entry(record.drone.clone())
                .or_default()
                .insert(record.id.clone());
        } else if let Some(ids) = state.by_drone.get_mut(&record.drone) {
            ids.remove(&record.id);
        }
        let record = Arc::new(record);
        if let Some(sender) = state.events.get(&record.id) {
            if sender.send(Arc::clone(&record)).is_err() {
                // Nobody listens any more.
                state.events.remove(&record.id);
            }
        }
        state.backends.insert(
            record.id.clone(),
            Versioned {
                record: Arc::clone(&record),
                revision,
            },
        );
    }

    /// Forgets a backend deleted at `revision`, unless the view holds a newer write.
    pub fn remove_backend(&self, id: &BackendId, revision: u64) {
        let mut state = self.write();
        let deleted = state.deleted.entry(id.clone()).or_default();
        *deleted = (*deleted).max(revision);
        if state
            .backends
            .get(id)
            .is_some_and(|held| held.revision < revision)
        {
            if let Some(held) = state.backends.remove(id) {
                if let Some(key) = &held.record.key {
                    let label = key.label(&self.cluster);
                    if state.by_key.get(&label) == Some(id) {
                        state.by_key.remove(&label);
                    }
                }
                if let Some(ids) = state.by_drone.get_mut(&held.record.drone) {
                    ids.remove(id);
                    if ids.is_empty() {
                        state.by_drone.remove(&held.record.drone);
                    }
                }
            }
            state.events.remove(id);
        }
    }

    /// Forgets the deletes recorded before the previous call: every delete is remembered for at
    /// least the interval between two calls, which must be longer than a write can take.
    pub fn prune_deleted(&self) {
        let mut state = self.write();
        state.deleted_earlier = std::mem::take(&mut state.deleted);
    }

    /// Stores a drone record written with `revision`, unless the view has a newer one.
    pub fn put_drone(&self, record: DroneRecord, revision: u64) {
        let mut state = self.write();
        if state
            .drones
            .get(&record.id)
            .is_some_and(|held| held.revision >= revision)
        {
            return;
        }
        state.drones.insert(
            record.id.clone(),
            Versioned {
                record: Arc::new(record),
                revision,
            },
        );
    }

    /// Stores the order lock written with `revision`, unless the view has a newer one.
    pub fn put_order_lock(&self, lock: OrderLock, revision: u64) {
        let mut state = self.write();
        if state
            .order_lock
            .as_ref()
            .is_some_and(|held| held.revision >= revision)
        {
            return;
        }
        state.order_lock = Some(Versioned {
            record: Arc::new(lock),
            revision,
        });
    }

    /// Forgets the order lock deleted at `revision`, unless the view holds a newer write.
    pub fn remove_order_lock(&self, revision: u64) {
        let mut state = self.write();
        if state
            .order_lock
            .as_ref()
            .is_some_and(|held| held.revision < revision)
        {
            state.order_lock = None;
        }
    }

    /// Forgets a drone deleted at `revision`, unless the view holds a newer write.
    pub fn remove_drone(&self, id: &DroneId, revision: u64) {
        let mut state = self.write();
        if state
            .drones
            .get(id)
            .is_some_and(|held| held.revision < revision)
        {
            state.drones.remove(id);
        }
    }
}

#[cfg(test)]
mod tests;
