//! Cluster state in the bus's KV buckets. Every write is a compare-and-set on the revision that
//! was read, retried on conflict, so that several controllers can serve the same cluster.

use crate::limits::MAX_CAS_ATTEMPTS;
use plane_bus::{Bus, BusError, Kv, KvError};
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::records::{BackendRecord, DroneRecord};
use plane_protocol::subjects::Subjects;

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

/// The controller's view of the cluster's buckets.
#[derive(Clone)]
pub struct ClusterState {
    backends: Kv,
    drones: Kv,
}

/// What an update closure decided.
pub enum Change<T> {
    /// Write the modified record; return this value.
    Write(T),
    /// Leave the record as it is; return this value.
    Keep(T),
}

impl ClusterState {
    /// Opens (creating when absent) the cluster's buckets.
    pub async fn open(bus: &Bus, subjects: &Subjects) -> Result<Self, StateError> {
        Ok(ClusterState {
            backends: bus.kv(&subjects.backends_bucket()).await?,
            drones: bus.kv(&subjects.drones_bucket()).await?,
        })
    }

    pub fn backends_kv(&self) -> &Kv {
        &self.backends
    }

    pub async fn create_backend(&self, record: &BackendRecord) -> Result<(), StateError> {
        self.backends
            .create_json(record.id.as_str(), record)
            .await?;
        Ok(())
    }

    pub async fn backend(&self, id: &BackendId) -> Result<Option<BackendRecord>, StateError> {
        Ok(self
            .backends
            .get_json::<BackendRecord>(id.as_str())
            .await?
            .map(|(record, _)| record))
    }

    pub async fn delete_backend(&self, id: &BackendId) -> Result<(), StateError> {
        Ok(self.backends.delete(id.as_str()).await?)
    }

    /// Every backend record; records that do not decode are logged and skipped.
    pub async fn backends(&self) -> Result<Vec<BackendRecord>, StateError> {
        decode_all(&self.backends).await
    }

    /// Every drone record; records that do not decode are logged and skipped.
    pub async fn drones(&self) -> Result<Vec<DroneRecord>, StateError> {
        decode_all(&self.drones).await
    }

    pub async fn drone(&self, id: &DroneId) -> Result<Option<DroneRecord>, StateError> {
        Ok(self
            .drones
            .get_json::<DroneRecord>(id.as_str())
            .await?
            .map(|(record, _)| record))
    }

    pub async fn delete_drone(&self, id: &DroneId) -> Result<(), StateError> {
        Ok(self.drones.delete(id.as_str()).await?)
    }

    pub async fn put_drone(&self, record: &DroneRecord) -> Result<(), StateError> {
        self.drones.put_json(record.id.as_str(), record).await?;
        Ok(())
    }

    /// Reads the backend, lets `change` decide, and writes the result with compare-and-set,
    /// retrying from a fresh read when another writer got there first. `None` when absent.
    pub async fn update_backend<T>(
        &self,
        id: &BackendId,
        mut change: impl FnMut(&mut BackendRecord) -> Change<T>,
    ) -> Result<Option<T>, StateError> {
        update(&self.backends, id.as_str(), |r: &mut BackendRecord| {
            change(r)
        })
        .await
    }

    /// As [`ClusterState::update_backend`], for a drone record.
    pub async fn update_drone<T>(
        &self,
        id: &DroneId,
        mut change: impl FnMut(&mut DroneRecord) -> Change<T>,
    ) -> Result<Option<T>, StateError> {
        update(&self.drones, id.as_str(), |r: &mut DroneRecord| change(r)).await
    }
}

async fn update<R, T>(
    kv: &Kv,
    key: &str,
    mut change: impl FnMut(&mut R) -> Change<T>,
) -> Result<Option<T>, StateError>
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((mut record, revision)) = kv.get_json::<R>(key).await? else {
            return Ok(None);
        };
        match change(&mut record) {
            Change::Keep(out) => return Ok(Some(out)),
            Change::Write(out) => match kv.update_json(key, &record, revision).await {
                Ok(_) => return Ok(Some(out)),
                Err(KvError::WrongRevision { .. }) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(StateError::Contended {
        key: key.to_string(),
    })
}

async fn decode_all<R: serde::de::DeserializeOwned>(kv: &Kv) -> Result<Vec<R>, StateError> {
    let entries = kv.entries().await?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match serde_json::from_slice(&entry.value) {
            Ok(record) => out.push(record),
            Err(error) => tracing::warn!(key = %entry.key, %error, "skipping undecodable record"),
        }
    }
    Ok(out)
}
