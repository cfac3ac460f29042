//! The cluster's certificate, for drones that ask (see `plane_protocol::certificates`): a fresh
//! stored certificate is handed out; a missing or due one is ordered by one drone at a time,
//! the holder of the order lock, whose DNS-01 values this controller's DNS serves (and every
//! controller's, through the KV watch) until it stores the result, gives up, or its lease runs
//! out (each value it publishes extends the lease). What a drone hands in is checked (the key
//! belongs to the chain, whose names and dates are read from it) before any drone is given it.
//! After a failed order the cluster pauses before the next, longer after each failure in a row:
//! a CA limits failed validations, and drones taking turns must not use that up.

use super::Controller;
use crate::limits::{
    MAX_CHALLENGES, ORDER_FAILURE_PAUSE_MAX, ORDER_FAILURE_PAUSE_MIN, ORDER_LEASE, ORDER_WAIT_RETRY,
};
use crate::state::{Change, StateError};
use plane_bus::Message;
use plane_protocol::certificates::{
    cluster_names, CertificateAnswer, CertificateRequest, OrderLock, SharedCertificate,
};
use plane_protocol::error_chain;
use plane_protocol::ids::DroneId;
use plane_protocol::messages::{now_millis, UnixMillis};
use std::time::Duration;
use tracing::{debug, info, warn};

/// The longest DNS-01 value accepted (a real one is 43 characters of base64url).
const MAX_CHALLENGE_LEN: usize = 255;

/// Why a request about the lock was refused.
const NOT_THE_HOLDER: &str =
    "the order lock is not this drone's (it expired or another drone holds it)";

impl Controller {
    pub(super) async fn on_certificate_request(&self, msg: Message) {
        let answer = match msg.decode::<CertificateRequest>() {
            Ok(request) if self.sent_by(&msg, request.drone()) => {
                match self.certificate_request(&request).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        warn!(error = %error_chain(&error), drone = %request.drone(), "could not serve a certificate request");
                        CertificateAnswer::Error {
                            message: format!("cluster state: {}", error_chain(&error)),
                        }
                    }
                }
            }
            Ok(request) => {
                warn!(subject = %msg.subject, drone = %request.drone(), "ignoring a certificate request sent under another drone's subject");
                return;
            }
            Err(error) => {
                warn!(error = %error_chain(&error), "refusing a malformed certificate request");
                CertificateAnswer::Error {
                    message: format!("malformed request: {}", error_chain(&error)),
                }
            }
        };
        if let Err(error) = self.inner.bus.respond_json(&msg, &answer).await {
            debug!(error = %error_chain(&error), "could not answer a certificate request");
        }
    }

    /// Serves one request (see the module docs).
    pub async fn certificate_request(
        &self,
        request: &CertificateRequest,
    ) -> Result<CertificateAnswer, StateError> {
        match request {
            CertificateRequest::Get { drone } => self.certificate_or_lock(drone).await,
            CertificateRequest::Challenge { drone, value } => self.publish(drone, value).await,
            CertificateRequest::Store { drone, certificate } => {
                self.store_certificate(drone, certificate).await
            }
            CertificateRequest::Release { drone, error } => {
                if let Some(error) = error {
                    warn!(%drone, %error, "a certificate order failed");
                }
                self.release_order(drone, error.as_deref()).await?;
                Ok(CertificateAnswer::Done)
            }
        }
    }

    /// The stored certificate if it serves this cluster and is valid at `now`.
    async fn usable_certificate(
        &self,
        now: UnixMillis,
    ) -> Result<Option<SharedCertificate>, StateError> {
        let stored = match self.inner.state.shared_certificate().await {
            Ok(stored) => stored,
            // Not Plane's, or a newer Plane's: ordering anew replaces it.
            Err(StateError::Kv(error @ plane_bus::KvError::Decode { .. })) => {
                warn!(error = %error_chain(&error), "stored certificate unreadable; a new one will be ordered");
                None
            }
            Err(error) => return Err(error),
        };
        let names = cluster_names(self.cluster());
        Ok(stored.filter(|c| c.covers(&names) && now < c.not_after))
    }

    async fn certificate_or_lock(&self, drone: &DroneId) -> Result<CertificateAnswer, StateError> {
        let now = now_millis();
        let usable = self.usable_certificate(now).await?;
        if let Some(certificate) = usable.as_ref().filter(|c| !c.due(now)) {
            return Ok(CertificateAnswer::Current {
                certificate: certificate.clone(),
            });
        }
        let lease = millis(ORDER_LEASE);
        let granted = self
            .inner
            .state
            .update_order_lock(|lock| match lock.held_by(now) {
                Some(holder) if holder != drone => {
                    Change::Keep(Err((ORDER_WAIT_RETRY.as_secs(), None)))
                }
                _ if now < lock.paused_until => {
                    let left = (lock.paused_until - now).div_ceil(1000);
                    Change::Keep(Err((left, lock.last_error.clone())))
                }
                // Free, or its own lock asked for again: the drone starts its order over.
                _ => {
                    lock.holder = Some(drone.clone());
                    lock.until = now + lease;
                    lock.challenges.clear();
                    Change::Write(Ok(lock.until))
                }
            })
            .await?;
        let until = match granted {
            Ok(until) => until,
            Err((retry_after_secs, last_error)) => {
                return Ok(CertificateAnswer::Wait {
                    retry_after_secs,
                    stale: usable,
                    last_error,
                })
            }
        };
        // Another drone may have stored a new one between the first read and the lock.
        if let Some(certificate) = self.usable_certificate(now).await? {
            if !certificate.due(now) {
                self.release_order(drone, None).await?;
                return Ok(CertificateAnswer::Current { certificate });
            }
        }
        info!(%drone, "drone holds the certificate order lock");
        Ok(CertificateAnswer::Order {
            until,
            stale: usable,
        })
    }

    /// Publishes a DNS-01 value of the holder's order, extending its lease.
    async fn publish(&self, drone: &DroneId, value: &str) -> Result<CertificateAnswer, StateError> {
        let valid = !value.is_empty()
            && value.len() <= MAX_CHALLENGE_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Ok(refused("a DNS-01 value is base64url text"));
        }
        let now = now_millis();
        let lease = millis(ORDER_LEASE);
        let published = self
            .inner
            .state
            .update_order_lock(|lock| {
                if lock.held_by(now) != Some(drone) {
                    return Change::Keep(Err(NOT_THE_HOLDER));
                }
                if lock.challenges.iter().any(|c| c == value) {
                    return Change::Keep(Ok(()));
                }
                if lock.challenges.len() >= MAX_CHALLENGES {
                    return Change::Keep(Err("too many DNS-01 values for one order"));
                }
                lock.challenges.push(value.to_owned());
                lock.until = lock.until.max(now + lease);
                Change::Write(Ok(()))
            })
            .await?;
        // Written: this controller's view, which its DNS answers from, has it now.
        Ok(match published {
            Ok(()) => {
                info!(%drone, "DNS-01 value published");
                CertificateAnswer::Done
            }
            Err(why) => refused(why),
        })
    }

    async fn store_certificate(
        &self,
        drone: &DroneId,
        handed_in: &SharedCertificate,
    ) -> Result<CertificateAnswer, StateError> {
        let now = now_millis();
        // Read from the chain itself, not from the fields beside it.
        let certificate = match SharedCertificate::verified(
            handed_in.chain_pem.clone(),
            handed_in.key_pem.clone(),
            drone.clone(),
        ) {
            Ok(certificate) => certificate,
            Err(error) => return Ok(refused(&format!("not a usable certificate: {error}"))),
        };
        if !certificate.covers(&cluster_names(self.cluster())) || certificate.not_after <= now {
            return Ok(refused(
                "the certificate does not cover the cluster's names or has expired",
            ));
        }
        let held = match self.inner.state.view().order_lock() {
            Some(lock) if lock.record.held_by(now) == Some(drone) => true,
            _ => {
                self.inner
                    .state
                    .update_order_lock(|lock| Change::Keep(lock.held_by(now) == Some(drone)))
                    .await?
            }
        };
        if !held {
            return Ok(refused(NOT_THE_HOLDER));
        }
        if let Some(stored) = self.usable_certificate(now).await? {
            if stored.not_after > certificate.not_after {
                return Ok(refused(
                    "the cluster keeps a certificate that expires later",
                ));
            }
        }
        self.inner.state.store_certificate(&certificate).await?;
        self.release_order(drone, None).await?;
        info!(%drone, names = ?certificate.names, not_after = certificate.not_after, "cluster certificate stored");
        Ok(CertificateAnswer::Done)
    }

    /// Releases the lock and its values if `drone` holds it (a release by anyone else, or
    /// repeated, does nothing). With `error`, the order failed: the cluster pauses before the
    /// next one; without, the count of failures in a row starts over.
    async fn release_order(&self, drone: &DroneId, error: Option<&str>) -> Result<(), StateError> {
        let now = now_millis();
        self.inner
            .state
            .update_order_lock(|lock| {
                if lock.holder.as_ref() != Some(drone) {
                    return Change::Keep(());
                }
                *lock = match error {
                    Some(error) => {
                        let failures = lock.failures.saturating_add(1);
                        OrderLock {
                            failures,
                            paused_until: now + millis(failure_pause(failures)),
                            last_error: Some(error.to_owned()),
                            ..OrderLock::default()
                        }
                    }
                    None => OrderLock::default(),
                };
                Change::Write(())
            })
            .await
    }
}

fn millis(duration: Duration) -> UnixMillis {
    duration.as_millis() as UnixMillis
}

/// The pause after the `failures`-th failed order in a row: doubling from the minimum, capped.
fn failure_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    ORDER_FAILURE_PAUSE_MIN
        .saturating_mul(1 << doublings)
        .min(ORDER_FAILURE_PAUSE_MAX)
}

fn refused(why: &str) -> CertificateAnswer {
    CertificateAnswer::Error {
        message: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_after_failed_orders_grows_to_its_cap() {
        assert_eq!(failure_pause(1), ORDER_FAILURE_PAUSE_MIN);
        assert_eq!(failure_pause(2), ORDER_FAILURE_PAUSE_MIN * 2);
        assert_eq!(failure_pause(40), ORDER_FAILURE_PAUSE_MAX);
    }
}
