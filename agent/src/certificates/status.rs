//! What the drone tells the cluster about its certificate, and the warning before it expires.

use crate::limits::{CERTIFICATE_STATUS_CHECK, EXPIRY_WARNING_EVERY, EXPIRY_WARNING_WITHIN};
use plane_dataplane::tls::Certificate;
use plane_protocol::certificates::{CertificateInfo, CertificateStatus};
use plane_protocol::messages::{now_millis, UnixMillis};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tracing::warn;

/// The status of the served certificate `served` after the last attempt, which failed with
/// `error` if it did.
pub(super) fn status_of(
    served: Option<&CertificateInfo>,
    error: Option<&str>,
) -> CertificateStatus {
    CertificateStatus {
        names: served.map(|info| info.names.clone()).unwrap_or_default(),
        not_after: served.map(|info| info.not_after),
        last_renewal_error: error.map(str::to_owned),
    }
}

/// Logs a warning at most every [`EXPIRY_WARNING_EVERY`] while the served certificate is
/// within [`EXPIRY_WARNING_WITHIN`] of its expiry.
#[derive(Default)]
pub(super) struct ExpiryWarning {
    last: Option<Instant>,
}

impl ExpiryWarning {
    /// Whether a certificate that expires at `not_after` calls for a warning at `now`.
    pub(super) fn near_expiry(not_after: UnixMillis, now: UnixMillis) -> bool {
        not_after.saturating_sub(now) < EXPIRY_WARNING_WITHIN.as_millis() as UnixMillis
    }

    pub(super) fn check(&mut self, served: Option<&CertificateInfo>, error: Option<&str>) {
        let Some(info) = served else { return };
        let now = now_millis();
        if !Self::near_expiry(info.not_after, now) {
            return;
        }
        if self
            .last
            .is_some_and(|last| last.elapsed() < EXPIRY_WARNING_EVERY)
        {
            return;
        }
        self.last = Some(Instant::now());
        let hours_left = info.not_after.saturating_sub(now) / 3_600_000;
        warn!(names = ?info.names, not_after = info.not_after, hours_left, last_renewal_error = error.unwrap_or("none"),
            "the TLS certificate expires within 7 days");
    }
}

/// What the TLS listener serves now (its leaf), if anything: the status reports that, not the
/// files on disk, which may hold a pair the listener refused.
pub(super) fn served(listener: &Certificate) -> Option<CertificateInfo> {
    let chain = listener.served_chain()?;
    CertificateInfo::of_der(chain.first()?).ok()
}

/// Keeps `status` current for a listener serving files the operator provides (`--cert`/`--key`,
/// which the listener reloads by itself), looking every [`CERTIFICATE_STATUS_CHECK`], and warns
/// while the certificate is near its expiry. Runs until dropped.
pub async fn watch_operator_files(
    listener: Arc<Certificate>,
    status: watch::Sender<Option<CertificateStatus>>,
) {
    let mut warning = ExpiryWarning::default();
    let mut tick = tokio::time::interval(CERTIFICATE_STATUS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let info = served(&listener);
        warning.check(info.as_ref(), None);
        status.send_if_modified(|current| {
            let fresh = Some(status_of(info.as_ref(), None));
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_within_seven_days_of_expiry() {
        let day = 86_400_000;
        assert!(ExpiryWarning::near_expiry(10 * day, 4 * day));
        assert!(!ExpiryWarning::near_expiry(10 * day, 2 * day));
        assert!(ExpiryWarning::near_expiry(10 * day, 11 * day), "expired");
    }
}
