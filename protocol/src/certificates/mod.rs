//! The cluster's TLS certificate: what drones and controllers say about it.
//!
//! One certificate serves a whole cluster (`{cluster}` and `*.{cluster}`), so drones share it
//! instead of each ordering their own: a drone whose copy is missing or due asks a controller,
//! which hands out the stored one while it is fresh, or else lets exactly one drone at a time
//! order a new one (the order lock) and keeps what that drone brings back. Drones never touch
//! the cluster's KV themselves; the controller holds the lock, the DNS-01 values and the
//! certificate there, for every controller to see.

use crate::ids::DroneId;
use crate::messages::UnixMillis;
use serde::{Deserialize, Serialize};

#[cfg(feature = "verify")]
mod verify;
#[cfg(feature = "verify")]
pub use verify::{CertificateError, CertificateInfo};

/// A drone's certificate as `plane drones` and `GET /v1/drones` show it (**contract**:
/// `"certificate": {"names", "not_after", "last_renewal_error"}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The names the served certificate is valid for; empty while none is served.
    #[serde(default)]
    pub names: Vec<String>,
    /// When the served certificate expires.
    #[serde(default)]
    pub not_after: Option<UnixMillis>,
    /// Why the last attempt to obtain or renew it failed; cleared by a success.
    #[serde(default)]
    pub last_renewal_error: Option<String>,
}

/// When a certificate valid from `not_before` to `not_after` should be replaced: once a third of
/// its lifetime is left (Let's Encrypt's advice), so that failures have time to be retried.
pub fn renew_at(not_before: UnixMillis, not_after: UnixMillis) -> UnixMillis {
    let lifetime = not_after.saturating_sub(not_before);
    not_after.saturating_sub(lifetime / 3)
}

/// The names of a cluster's certificate: the apex and the wildcard.
pub fn cluster_names(cluster: &str) -> Vec<String> {
    vec![cluster.to_owned(), format!("*.{cluster}")]
}

/// Whether a certificate for `names` is valid for every name in `wanted`.
fn covers(names: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|n| names.contains(n))
}

/// The cluster's certificate as the controller keeps it (bucket
/// [`crate::subjects::Subjects::acme_bucket`], key [`SharedCertificate::KEY`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCertificate {
    /// The chain, leaf first (PEM).
    pub chain_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    pub names: Vec<String>,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
    /// The drone that ordered it.
    pub ordered_by: DroneId,
}

impl std::fmt::Debug for SharedCertificate {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCertificate")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("ordered_by", &self.ordered_by)
            .finish_non_exhaustive()
    }
}

impl SharedCertificate {
    pub const KEY: &'static str = "certificate";

    /// When it should be replaced (see [`renew_at`]).
    pub fn renew_at(&self) -> UnixMillis {
        renew_at(self.not_before, self.not_after)
    }

    /// Whether it should be replaced at `now`.
    pub fn due(&self, now: UnixMillis) -> bool {
        now >= self.renew_at()
    }

    /// Whether it is valid for every name in `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        covers(&self.names, names)
    }
}

/// Who may order the cluster's certificate now, and the DNS-01 values its order asked to
/// publish (bucket [`crate::subjects::Subjects::acme_bucket`], key [`OrderLock::KEY`]).
/// Released by writing it back with no holder, so that every change is a compare-and-set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLock {
    #[serde(default)]
    pub holder: Option<DroneId>,
    /// The lock is the holder's until then (the controller's clock): a drone that dies while
    /// ordering does not block the cluster for longer.
    #[serde(default)]
    pub until: UnixMillis,
    /// The TXT values of `_acme-challenge.{cluster}` while the lock is held.
    #[serde(default)]
    pub challenges: Vec<String>,
    /// Orders that failed in a row, cluster-wide (a CA limits failed validations: the pause
    /// before the next order grows with them).
    #[serde(default)]
    pub failures: u32,
    /// No new order before then, after a failure.
    #[serde(default)]
    pub paused_until: UnixMillis,
    /// Why the last order failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl OrderLock {
    pub const KEY: &'static str = "order";

    /// The holder at `now`, if the lock has not expired.
    pub fn held_by(&self, now: UnixMillis) -> Option<&DroneId> {
        self.holder.as_ref().filter(|_| now < self.until)
    }

    /// The values DNS serves at `now`: none once the lock has expired or been released.
    pub fn live_challenges(&self, now: UnixMillis) -> &[String] {
        match self.held_by(now) {
            Some(_) => &self.challenges,
            None => &[],
        }
    }
}

/// Drone → any controller, request/reply on [`crate::subjects::Subjects::certificate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum CertificateRequest {
    /// The cluster's certificate if it is fresh; otherwise the order lock (or the word to wait).
    Get { drone: DroneId },
    /// Publish a DNS-01 value; answered once this controller's DNS serves it. Lock holder only.
    Challenge { drone: DroneId, value: String },
    /// The certificate the holder obtained: stored, and the lock released.
    Store {
        drone: DroneId,
        certificate: SharedCertificate,
    },
    /// The holder gives up its order: the lock and its values are released. With `error`, the
    /// order failed, and the cluster pauses before the next one.
    Release {
        drone: DroneId,
        #[serde(default)]
        error: Option<String>,
    },
}

impl CertificateRequest {
    /// The drone that says it sent it.
    pub fn drone(&self) -> &DroneId {
        match self {
            CertificateRequest::Get { drone }
            | CertificateRequest::Challenge { drone, .. }
            | CertificateRequest::Store { drone, .. }
            | CertificateRequest::Release { drone, .. } => drone,
        }
    }
}

/// A controller's answer to a [`CertificateRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum CertificateAnswer {
    /// The stored certificate, not due for renewal: serve it.
    Current { certificate: SharedCertificate },
    /// The lock is the asking drone's until `until`: order one. `stale` is the stored one, to
    /// serve meanwhile while it is still valid.
    Order {
        until: UnixMillis,
        #[serde(default)]
        stale: Option<SharedCertificate>,
    },
    /// Another drone is ordering, or the cluster pauses after failed orders (`last_error`
    /// says why the last one failed): ask again after `retry_after_secs`.
    Wait {
        retry_after_secs: u64,
        #[serde(default)]
        stale: Option<SharedCertificate>,
        #[serde(default)]
        last_error: Option<String>,
    },
    /// Done as asked.
    Done,
    /// Refused (e.g. the lock is not the asker's) or failed.
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_before: UnixMillis, not_after: UnixMillis) -> SharedCertificate {
        SharedCertificate {
            chain_pem: String::new(),
            key_pem: "secret".into(),
            names: cluster_names("c.dev"),
            not_before,
            not_after,
            ordered_by: DroneId::new("d1").expect("valid"),
        }
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let cert = certificate(0, 90);
        assert_eq!(cert.renew_at(), 60);
        assert!(!cert.due(59));
        assert!(cert.due(60));
        assert!(cert.covers(&cluster_names("c.dev")));
        assert!(!cert.covers(&cluster_names("other.dev")));
        assert!(!format!("{cert:?}").contains("secret"));
    }

    #[test]
    fn an_expired_lock_has_no_holder_and_serves_no_values() {
        let lock = OrderLock {
            holder: Some(DroneId::new("d1").expect("valid")),
            until: 100,
            challenges: vec!["v".into()],
            ..OrderLock::default()
        };
        assert!(lock.held_by(99).is_some());
        assert_eq!(lock.live_challenges(99), ["v".to_owned()]);
        assert!(lock.held_by(100).is_none());
        assert!(lock.live_challenges(100).is_empty());
    }

    #[test]
    fn requests_round_trip() {
        let request = CertificateRequest::Challenge {
            drone: DroneId::new("d1").expect("valid"),
            value: "abc".into(),
        };
        let json = serde_json::to_string(&request).expect("serialises");
        assert_eq!(
            json,
            r#"{"request":"challenge","drone":"d1","value":"abc"}"#
        );
        let back: CertificateRequest = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, request);
    }
}
