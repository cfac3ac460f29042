//! Connecting by key: the live backend a key names, or exactly one new one however many
//! connects race. The key's record is claimed with a KV create-if-absent (or, once free, a
//! compare-and-set), so one connect wins and places the backend; the others wait on a watch of
//! the record until it says the backend is placed. A claim whose controller died is taken over
//! once [`KEY_CLAIM_TIMEOUT`] has passed, and a record naming a backend that has ended is free:
//! a missed release costs nothing but a compare-and-set.

use super::{ControlError, Controller, Placement, Secrets};
use crate::limits::{KEY_CLAIM_TIMEOUT, MAX_CONNECT_ATTEMPTS};
use crate::state::{wait_for_change, StateError};
use plane_bus::{KvError, Message};
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::keys::{
    is_label, BackendKey, ConnectAnswer, KeyRecord, ValidConnect, WakeAnswer, WakeRequest, KEY_ENV,
};
use plane_protocol::messages::{now_millis, BackendState};
use plane_protocol::records::{BackendRecord, SpawnAnswer};
use plane_protocol::registry::RegistryCredentials;
use plane_protocol::token::AccessToken;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

/// What a connect found in the key's record. Made once per connect and taken apart at once:
/// boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Found {
    /// A live backend, the key's record and its revision.
    Live {
        backend: BackendRecord,
        record: KeyRecord,
        revision: u64,
    },
    /// Free (absent, or naming a backend that ended, or a claim gone stale): claim it, with a
    /// compare-and-set on this revision (0: create).
    Free {
        previous: Option<KeyRecord>,
        revision: u64,
    },
    /// Another connect is placing its backend: wait for the record to change, at most this long.
    Placing { revision: u64, wait: Duration },
}

impl Controller {
    /// The live backend of `connect.key`, or a new one placed with its spec: of concurrent
    /// connects for one key exactly one creates it, and all answer with it.
    pub async fn connect(&self, connect: ValidConnect) -> Result<ConnectAnswer, ControlError> {
        let label = connect.key.label(self.cluster());
        let keys = self.inner.state.keys().clone();
        for _ in 0..MAX_CONNECT_ATTEMPTS {
            let current = keys.get_json::<KeyRecord>(&label).await.map_err(state)?;
            match self.judge(&connect.key, current).await? {
                Found::Live {
                    backend,
                    mut record,
                    revision,
                } => {
                    if connect.wake {
                        // The key can wake from now on, with this connect's spec.
                        let wanted = claim(&connect, None);
                        if !record.wake || record.spec != wanted.spec {
                            record.wake = true;
                            record.spec = wanted.spec;
                            record.credentials = wanted.credentials;
                            record.touched_at = now_millis();
                            match keys.update_json(&label, &record, revision).await {
                                Ok(_) => {}
                                Err(KvError::WrongRevision { .. }) => continue,
                                Err(error) => return Err(state(error)),
                            }
                        }
                    }
                    return Ok(self.answer(record, backend));
                }
                Found::Free { previous, revision } => {
                    let claim = claim(&connect, previous);
                    let written = if revision == 0 {
                        keys.create_json(&label, &claim).await
                    } else {
                        keys.update_json(&label, &claim, revision).await
                    };
                    match written {
                        Ok(revision) => {
                            let credentials = connect.spawn.credentials.as_ref();
                            let placed = self
                                .place_claimed(&label, claim, revision, None, credentials)
                                .await?;
                            if let Some(answer) = placed {
                                return Ok(answer);
                            }
                        }
                        Err(KvError::AlreadyExists { .. } | KvError::WrongRevision { .. }) => {
                            debug!(key = %connect.key, "another connect claimed the key first");
                        }
                        Err(error) => return Err(state(error)),
                    }
                }
                Found::Placing { revision, wait } => {
                    wait_for_change(&keys, &label, revision, wait)
                        .await
                        .map_err(state)?;
                }
            }
        }
        Err(ControlError::State(StateError::Contended { key: label }))
    }

    /// Decides what the key's record means now.
    async fn judge(
        &self,
        key: &BackendKey,
        current: Option<(KeyRecord, u64)>,
    ) -> Result<Found, ControlError> {
        let Some((record, revision)) = current else {
            return Ok(Found::Free {
                previous: None,
                revision: 0,
            });
        };
        let free = |record: KeyRecord| {
            Ok(Found::Free {
                previous: Some(record),
                revision,
            })
        };
        let Some(id) = record.backend.clone() else {
            return free(record);
        };
        let backend = match self.backend(&id).await {
            Ok(backend) => Some(backend),
            Err(ControlError::NotFound(_)) => None,
            Err(error) => return Err(error),
        };
        let claimed_for = Duration::from_millis(now_millis().saturating_sub(record.claimed_at));
        match backend {
            Some(backend) if backend.is_terminated() => free(record),
            // Placed, or its drone has reported it (the placing controller died after the drone
            // took it): the key's backend.
            Some(backend) if record.placed || backend.last_seq > 0 => Ok(Found::Live {
                backend,
                record,
                revision,
            }),
            _ if claimed_for >= KEY_CLAIM_TIMEOUT => {
                warn!(%key, backend = %id, "taking over a key whose placement never finished");
                free(record)
            }
            _ => Ok(Found::Placing {
                revision,
                wait: KEY_CLAIM_TIMEOUT - claimed_for,
            }),
        }
    }

    /// Places the backend a connect claimed the key for (on drone `only`, when given; with the
    /// registry `credentials` of the call), then marks it placed. On failure frees the key
    /// again. `None` when the key was taken over while placing (a placement slower than
    /// [`KEY_CLAIM_TIMEOUT`]): the backend placed here is ended, and the caller looks again.
    async fn place_claimed(
        &self,
        label: &str,
        claim: KeyRecord,
        revision: u64,
        only: Option<&DroneId>,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Option<ConnectAnswer>, ControlError> {
        let Some(id) = claim.backend.clone() else {
            return Err(ControlError::State(StateError::Contended {
                key: label.to_string(),
            }));
        };
        let secrets = Secrets {
            token: claim.token.as_ref(),
            credentials,
        };
        let placed = self
            .place(Placement {
                id: id.clone(),
                spec: claim.spec.clone(),
                secrets,
                key: Some(claim.key.clone()),
                only,
            })
            .await;
        let keys = self.inner.state.keys();
        match placed {
            Ok(backend) => {
                let Some(record) = self.mark_placed(label, &id).await? else {
                    warn!(key = %claim.key, backend = %id, "the key was taken over while its backend was placed; ending that backend");
                    if let Err(error) = self.terminate(&id).await {
                        warn!(backend = %id, error = %error_chain(&error), "could not end a backend that lost its key");
                    }
                    return Ok(None);
                };
                info!(key = %record.key, backend = %id, "key connected to a new backend");
                let key_url = record
                    .wake
                    .then(|| self.key_url(&record.key, &backend))
                    .flatten();
                Ok(Some(ConnectAnswer {
                    answer: SpawnAnswer {
                        record: backend,
                        token: record.token,
                    },
                    created: true,
                    key_url,
                }))
            }
            Err(error) => {
                let mut record = claim;
                record.backend = None;
                record.touched_at = now_millis();
                if let Err(release) = keys.update_json(label, &record, revision).await {
                    debug!(key = %record.key, error = %error_chain(&release), "could not free the key after a failed placement");
                }
                Err(error)
            }
        }
    }

    /// Marks the key's backend `id` placed; `None` if the key names another backend now.
    async fn mark_placed(
        &self,
        label: &str,
        id: &BackendId,
    ) -> Result<Option<KeyRecord>, ControlError> {
        let keys = self.inner.state.keys();
        for _ in 0..MAX_CONNECT_ATTEMPTS {
            let Some((mut record, revision)) =
                keys.get_json::<KeyRecord>(label).await.map_err(state)?
            else {
                return Ok(None);
            };
            if record.backend.as_ref() != Some(id) {
                return Ok(None);
            }
            if record.placed {
                return Ok(Some(record));
            }
            record.placed = true;
            record.touched_at = now_millis();
            match keys.update_json(label, &record, revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(KvError::WrongRevision { .. }) => continue,
                Err(error) => return Err(state(error)),
            }
        }
        Err(ControlError::State(StateError::Contended {
            key: label.to_string(),
        }))
    }

    /// The answer naming the key's live backend, which this connect did not create.
    fn answer(&self, record: KeyRecord, backend: BackendRecord) -> ConnectAnswer {
        let key_url = record
            .wake
            .then(|| self.key_url(&record.key, &backend))
            .flatten();
        ConnectAnswer {
            answer: SpawnAnswer {
                record: backend,
                token: record.token,
            },
            created: false,
            key_url,
        }
    }

    /// Where a key is reached whatever backend serves it: like the URL of its backend.
    fn key_url(&self, key: &BackendKey, backend: &BackendRecord) -> Option<String> {
        let drone = self.view().drone(&backend.drone)?;
        Some(
            drone
                .record
                .url_of(&key.host_label(self.cluster()), self.cluster()),
        )
    }

    /// Answers a drone's [`WakeRequest`]; the drone is the one its subject names (NATS
    /// permissions vouch for it).
    pub(super) async fn on_wake(&self, msg: Message) {
        let drone = self
            .inner
            .subjects
            .drone_of(&msg.subject)
            .and_then(|drone| DroneId::new(drone).ok());
        let answer = match (drone, msg.decode::<WakeRequest>()) {
            (Some(drone), Ok(request)) => match self
                .wake(&drone, &request.label, request.token_sha256.as_deref())
                .await
            {
                Ok(answer) => answer,
                Err(error) => {
                    warn!(error = %error_chain(&error), %drone, "could not wake a key");
                    WakeAnswer::NoRoom {
                        error: error_chain(&error),
                    }
                }
            },
            (None, _) => return,
            (Some(drone), Err(error)) => {
                warn!(error = %error_chain(&error), %drone, "refusing a malformed wake request");
                WakeAnswer::NoRoom {
                    error: format!("malformed wake request: {}", error_chain(&error)),
                }
            }
        };
        if let Err(error) = self.inner.bus.respond_json(&msg, &answer).await {
            debug!(error = %error_chain(&error), "could not answer a wake request");
        }
    }

    /// Wakes the key of `label` on `drone`, which received a request for it: the key's live
    /// backend if it runs there, else a new one with the key's last spec and token, placed on
    /// that drone only (where the request waits). Only keys connected with `wake` can, and a key
    /// that requires a token only for a request showing it (`token_sha256`).
    pub async fn wake(
        &self,
        drone: &DroneId,
        label: &str,
        token_sha256: Option<&str>,
    ) -> Result<WakeAnswer, ControlError> {
        if !is_label(label) {
            return Ok(WakeAnswer::Unknown);
        }
        let keys = self.inner.state.keys().clone();
        for _ in 0..MAX_CONNECT_ATTEMPTS {
            let current = keys.get_json::<KeyRecord>(label).await.map_err(state)?;
            let Some(key) = current
                .as_ref()
                .filter(|(record, _)| record.wake)
                .map(|(record, _)| record.key.clone())
            else {
                return Ok(WakeAnswer::Unknown);
            };
            // A key that requires a token wakes only for a request that shows it: nothing
            // starts for anyone else. Compared in constant time.
            if let Some((
                KeyRecord {
                    token: Some(token), ..
                },
                _,
            )) = &current
            {
                let expected = token.sha256_hex();
                match token_sha256 {
                    None => return Ok(WakeAnswer::TokenRequired),
                    Some(given) if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
                        return Ok(WakeAnswer::TokenRefused)
                    }
                    Some(_) => {}
                }
            }
            match self.judge(&key, current).await? {
                Found::Live { backend, .. } if &backend.drone == drone => {
                    return Ok(WakeAnswer::Here {
                        backend: backend.id,
                    })
                }
                Found::Live { backend, .. } => {
                    return Ok(WakeAnswer::Elsewhere {
                        drone: backend.drone,
                    })
                }
                Found::Placing { revision, wait } => {
                    wait_for_change(&keys, label, revision, wait)
                        .await
                        .map_err(state)?;
                }
                Found::Free { previous, revision } => {
                    let Some(previous) = previous else {
                        return Ok(WakeAnswer::Unknown);
                    };
                    let again = ValidConnect {
                        key,
                        spawn: previous.spawn(),
                        wake: true,
                    };
                    let claim = claim(&again, Some(previous));
                    match keys.update_json(label, &claim, revision).await {
                        Ok(revision) => {
                            info!(key = %again.key, %drone, "waking a key");
                            let credentials = claim.credentials.clone();
                            let placed = self
                                .place_claimed(
                                    label,
                                    claim,
                                    revision,
                                    Some(drone),
                                    credentials.as_ref(),
                                )
                                .await;
                            return match placed {
                                Ok(Some(answer)) => Ok(WakeAnswer::Here {
                                    backend: answer.answer.record.id,
                                }),
                                // Taken over meanwhile: look again.
                                Ok(None) => continue,
                                Err(
                                    error @ (ControlError::NoDrone(_)
                                    | ControlError::NoSuchDrone(_)
                                    | ControlError::NoDroneAccepted(_)),
                                ) => Ok(WakeAnswer::NoRoom {
                                    error: error_chain(&error),
                                }),
                                Err(error) => Err(error),
                            };
                        }
                        Err(KvError::WrongRevision { .. }) => {}
                        Err(error) => return Err(state(error)),
                    }
                }
            }
        }
        Err(ControlError::State(StateError::Contended {
            key: label.to_string(),
        }))
    }

    /// Frees the key of a backend that has ended, so that the next connect starts a new one
    /// (a key that can wake keeps its spec and token). Best effort: a connect also treats a
    /// key naming an ended backend as free.
    pub(super) async fn release_key(&self, backend: &BackendRecord) {
        let Some(key) = &backend.key else { return };
        let label = key.label(self.cluster());
        let keys = self.inner.state.keys();
        for _ in 0..MAX_CONNECT_ATTEMPTS {
            let current = match keys.get_json::<KeyRecord>(&label).await {
                Ok(current) => current,
                Err(error) => {
                    debug!(%key, error = %error_chain(&error), "could not read the key to free it");
                    return;
                }
            };
            let Some((mut record, revision)) = current else {
                return;
            };
            if record.backend.as_ref() != Some(&backend.id) {
                return;
            }
            record.backend = None;
            record.placed = false;
            record.touched_at = now_millis();
            match keys.update_json(&label, &record, revision).await {
                Ok(_) => {
                    debug!(%key, backend = %backend.id, "key freed");
                    return;
                }
                Err(KvError::WrongRevision { .. }) => continue,
                Err(error) => {
                    debug!(%key, error = %error_chain(&error), "could not free the key");
                    return;
                }
            }
        }
    }

    /// Rewrites the records of keys whose backends have run for half the key retention, so
    /// that the bucket does not forget a key while its backend lives.
    pub(super) async fn touch_running_keys(&self) {
        let half = self.inner.config.key_retention.as_millis() as u64 / 2;
        let now = now_millis();
        let keys = self.inner.state.keys();
        for backend in self.view().backends() {
            let Some(key) = &backend.key else { continue };
            if backend.is_terminated()
                || backend.state == BackendState::Scheduled
                || now.saturating_sub(backend.created_at) < half
            {
                continue;
            }
            let label = key.label(self.cluster());
            let touched = match keys.get_json::<KeyRecord>(&label).await {
                Ok(Some((mut record, revision)))
                    if record.backend.as_ref() == Some(&backend.id)
                        && now.saturating_sub(record.touched_at) >= half =>
                {
                    record.touched_at = now;
                    keys.update_json(&label, &record, revision).await.map(drop)
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            };
            match touched {
                Ok(()) | Err(KvError::WrongRevision { .. }) => {}
                // One key's trouble must not stop the others, nor the rest of the collection.
                Err(error) => {
                    warn!(%key, error = %error_chain(&error), "could not keep a running backend's key")
                }
            }
        }
    }
}

/// The record that claims a free key for a new backend with this connect's spec. A key that
/// can wake keeps its token across backends.
fn claim(connect: &ValidConnect, previous: Option<KeyRecord>) -> KeyRecord {
    let spawn = &connect.spawn;
    let mut spec = spawn.spec.clone();
    spec.env
        .insert(KEY_ENV.to_string(), connect.key.as_str().to_string());
    // A key that could wake still can, with the same token.
    let wake = connect.wake || previous.as_ref().is_some_and(|p| p.wake);
    let token = spec.require_token.then(|| {
        previous
            .filter(|p| p.wake)
            .and_then(|p| p.token)
            .unwrap_or_else(AccessToken::generate)
    });
    let now = now_millis();
    KeyRecord {
        key: connect.key.clone(),
        backend: Some(BackendId::generate()),
        placed: false,
        spec,
        credentials: spawn.credentials.clone().filter(|_| wake),
        token,
        wake,
        claimed_at: now,
        touched_at: now,
    }
}

fn state(error: KvError) -> ControlError {
    ControlError::State(error.into())
}
