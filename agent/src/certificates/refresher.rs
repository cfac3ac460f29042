//! The refresher: keeps the drone's certificate files holding a current certificate for the
//! cluster's names, and the proxy serving them.
//!
//! It asks a controller (see `plane_protocol::certificates`) only when the certificate the TLS
//! listener serves is missing or due (a third of its lifetime left): a fresh one another drone
//! ordered is taken as is; otherwise, holding the order lock, it orders one over DNS-01 with its
//! own ACME account, the controller publishing each value in the cluster's DNS, and hands the
//! result to the controller for the other drones before serving it. The lock is given back on
//! every failure (saying why, when the CA refused the order, so that the cluster pauses before
//! the next). Failures are retried with exponential backoff, and reported in the status until a
//! success clears them.

use super::acme::{self, AcmeConfig, AcmeError};
use super::files::{CertificateFiles, FileError};
use super::status::{served, status_of, ExpiryWarning};
use crate::limits::{
    CERTIFICATE_RECHECK_MAX, CERTIFICATE_RECHECK_MIN, CERTIFICATE_REQUEST_TIMEOUT, ORDER_TIMEOUT,
    ORDER_WAIT_MAX, RENEWAL_RETRY_MAX, RENEWAL_RETRY_MIN,
};
use instant_acme::Account;
use plane_bus::{Bus, BusError};
use plane_dataplane::tls::Certificate;
use plane_protocol::certificates::{
    cluster_names, CertificateAnswer, CertificateError, CertificateInfo, CertificateRequest,
    CertificateStatus, SharedCertificate,
};
use plane_protocol::error_chain;
use plane_protocol::ids::DroneId;
use plane_protocol::messages::now_millis;
use plane_protocol::subjects::Subjects;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// Why one attempt to obtain the certificate failed.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("asking a controller")]
    Bus(#[from] BusError),
    #[error("the controller refused: {0}")]
    Refused(String),
    #[error("the controller answered {0:?} out of turn")]
    OutOfTurn(&'static str),
    #[error("another drone's order took over {} s", ORDER_WAIT_MAX.as_secs())]
    WaitedTooLong,
    #[error("the cluster's last certificate order failed ({0}); it waits before the next")]
    ClusterPaused(String),
    #[error("the ACME account")]
    Account(#[source] AcmeError),
    #[error(transparent)]
    Order(AcmeError),
    #[error("the ACME order took over {} s", ORDER_TIMEOUT.as_secs())]
    OrderTimedOut,
    #[error("the certificate obtained")]
    Unusable(#[from] CertificateError),
    #[error("writing the certificate")]
    File(#[from] FileError),
    #[error("the TLS listener does not serve the new certificate (see the log)")]
    NotServed,
}

/// What the refresher needs to know.
#[derive(Clone, Debug)]
pub struct RefresherConfig {
    pub drone: DroneId,
    pub cluster: String,
    pub acme: AcmeConfig,
    /// The drone's state for this cluster: the ACME account and the certificate files.
    pub dir: PathBuf,
}

/// The certificate refresher of one drone.
pub struct Refresher {
    config: RefresherConfig,
    names: Vec<String>,
    bus: Bus,
    subject: String,
    files: CertificateFiles,
    /// The TLS listener's certificate, reloaded as soon as new files are written.
    listener: Arc<Certificate>,
    account: Option<Account>,
    status: watch::Sender<Option<CertificateStatus>>,
}

impl Refresher {
    /// The files the TLS listener must serve (with [`Certificate::awaiting`]) for this refresher.
    pub fn files(config: &RefresherConfig) -> CertificateFiles {
        CertificateFiles::in_dir(&config.dir)
    }

    /// A refresher for the listener serving [`Refresher::files`]; the receiver follows its
    /// status (for the drone's heartbeat).
    pub fn new(
        config: RefresherConfig,
        bus: Bus,
        listener: Arc<Certificate>,
    ) -> (Refresher, watch::Receiver<Option<CertificateStatus>>) {
        let (status, receiver) = watch::channel(None);
        let refresher = Refresher {
            subject: Subjects::new(&config.cluster).certificate(&config.drone),
            names: cluster_names(&config.cluster),
            files: Self::files(&config),
            config,
            bus,
            listener,
            account: None,
            status,
        };
        refresher.publish_status(None);
        (refresher, receiver)
    }

    /// What the listener serves now, if it is for the cluster's names: the files on disk may
    /// not be it (a pair cut in two by a crash is not served).
    fn served(&self) -> Option<CertificateInfo> {
        served(&self.listener).filter(|info| info.covers(&self.names))
    }

    /// Keeps the certificate current, until the task is aborted.
    pub async fn run(mut self) {
        let mut warning = ExpiryWarning::default();
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        let mut just_succeeded = false;
        loop {
            let served = self.served();
            let now = now_millis();
            let mut pause = match &served {
                Some(info) if now < info.renew_at() => Duration::from_millis(info.renew_at() - now)
                    .clamp(CERTIFICATE_RECHECK_MIN, CERTIFICATE_RECHECK_MAX),
                _ => Duration::ZERO,
            };
            // Due by this drone's clock but not by the controller's: not asked again at once.
            if just_succeeded {
                pause = pause.max(CERTIFICATE_RECHECK_MIN);
            }
            if !pause.is_zero() {
                warning.check(served.as_ref(), last_error.as_deref());
                tokio::time::sleep(pause).await;
                just_succeeded = false;
                continue;
            }
            match self.obtain().await {
                Ok(()) => {
                    failures = 0;
                    last_error = None;
                    just_succeeded = true;
                    self.publish_status(None);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let message = error_chain(&error);
                    let retry = backoff(failures);
                    warn!(error = %message, retry_in_secs = retry.as_secs(), "could not obtain the cluster's certificate");
                    self.publish_status(Some(&message));
                    warning.check(self.served().as_ref(), Some(&message));
                    last_error = Some(message);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    fn publish_status(&self, error: Option<&str>) {
        let fresh = Some(status_of(self.served().as_ref(), error));
        self.status.send_if_modified(|current| {
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
    }

    /// One attempt: the stored certificate, or one ordered here, served.
    async fn obtain(&mut self) -> Result<(), RefreshError> {
        let waiting_since = Instant::now();
        loop {
            let drone = self.config.drone.clone();
            match self.ask(CertificateRequest::Get { drone }).await? {
                CertificateAnswer::Current { certificate } => {
                    return self.install_shared(certificate).await;
                }
                CertificateAnswer::Wait {
                    retry_after_secs,
                    stale,
                    last_error,
                } => {
                    self.install_stale(stale).await;
                    if let Some(error) = last_error {
                        return Err(RefreshError::ClusterPaused(error));
                    }
                    if waiting_since.elapsed() > ORDER_WAIT_MAX {
                        return Err(RefreshError::WaitedTooLong);
                    }
                    tokio::time::sleep(Duration::from_secs(retry_after_secs.max(1))).await;
                }
                CertificateAnswer::Order { stale, .. } => {
                    self.install_stale(stale).await;
                    return self.order_and_share().await;
                }
                CertificateAnswer::Done => return Err(RefreshError::OutOfTurn("done")),
                CertificateAnswer::Error { message } => return Err(RefreshError::Refused(message)),
            }
        }
    }

    /// Holding the lock: orders a certificate, hands it to the controller, serves it. The lock
    /// is given back whatever happens (storing the certificate releases it).
    async fn order_and_share(&mut self) -> Result<(), RefreshError> {
        info!(names = ?self.names, directory = %self.config.acme.directory, "ordering the cluster's certificate");
        let ordered = match tokio::time::timeout(ORDER_TIMEOUT, self.order()).await {
            Ok(ordered) => ordered,
            Err(_) => Err(RefreshError::OrderTimedOut),
        };
        let certificate = match ordered {
            Ok(certificate) => certificate,
            Err(error) => {
                // Only what the CA did counts against the cluster: not this drone's account.
                let failed = match &error {
                    RefreshError::Order(_) | RefreshError::OrderTimedOut => {
                        Some(error_chain(&error))
                    }
                    _ => None,
                };
                let release = CertificateRequest::Release {
                    drone: self.config.drone.clone(),
                    error: failed,
                };
                if let Err(release) = self.ask(release).await {
                    warn!(error = %error_chain(&release), "could not release the order lock; it expires by itself");
                }
                return Err(error);
            }
        };
        let store = CertificateRequest::Store {
            drone: self.config.drone.clone(),
            certificate: certificate.clone(),
        };
        match self.ask(store).await {
            Ok(CertificateAnswer::Done) => {
                info!(
                    not_after = certificate.not_after,
                    "certificate obtained and shared with the cluster"
                )
            }
            // Served here all the same: it is a valid certificate.
            Ok(answer) => {
                warn!(?answer, "the controller did not keep the new certificate; other drones will order their own")
            }
            Err(error) => {
                warn!(error = %error_chain(&error), "could not hand the new certificate to a controller")
            }
        }
        self.install(certificate).await
    }

    async fn order(&mut self) -> Result<SharedCertificate, RefreshError> {
        let account = match &self.account {
            Some(account) => account.clone(),
            None => {
                let account = self
                    .config
                    .acme
                    .account(&self.config.dir)
                    .await
                    .map_err(RefreshError::Account)?;
                self.account = Some(account.clone());
                account
            }
        };
        let (bus, subject, drone) = (
            self.bus.clone(),
            self.subject.clone(),
            self.config.drone.clone(),
        );
        let publish = move |value: String| {
            let (bus, subject, drone) = (bus.clone(), subject.clone(), drone.clone());
            async move {
                let request = CertificateRequest::Challenge { drone, value };
                match ask(&bus, &subject, &request).await {
                    Ok(CertificateAnswer::Done) => Ok(()),
                    Ok(CertificateAnswer::Error { message }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(error) => Err(error_chain(&error)),
                }
            }
        };
        let (chain_pem, key_pem) = acme::order(&account, &self.names, publish)
            .await
            .map_err(RefreshError::Order)?;
        // Checked (key against chain, names and dates read) before it is shared or served.
        Ok(SharedCertificate::verified(
            chain_pem,
            key_pem,
            self.config.drone.clone(),
        )?)
    }

    /// Serves a still valid certificate the controller gave while a new one is on its way, if it
    /// is better than what is served; a failure here is logged, not fatal.
    async fn install_stale(&mut self, stale: Option<SharedCertificate>) {
        let Some(stale) = stale else { return };
        let better = self
            .served()
            .is_none_or(|served| stale.not_after > served.not_after);
        if better && now_millis() < stale.not_after {
            if let Err(error) = self.install_shared(stale).await {
                warn!(error = %error_chain(&error), "could not serve the cluster's current certificate");
            }
        }
    }

    /// Checks a certificate a controller handed out, then installs it.
    async fn install_shared(&mut self, certificate: SharedCertificate) -> Result<(), RefreshError> {
        let certificate = SharedCertificate::verified(
            certificate.chain_pem,
            certificate.key_pem,
            certificate.ordered_by,
        )?;
        self.install(certificate).await
    }

    /// Writes the files of a checked certificate and has the listener serve them now; an error
    /// unless it does.
    async fn install(&mut self, certificate: SharedCertificate) -> Result<(), RefreshError> {
        let fresh = CertificateInfo {
            names: certificate.names.clone(),
            not_before: certificate.not_before,
            not_after: certificate.not_after,
        };
        if self.served().as_ref() == Some(&fresh) {
            return Ok(());
        }
        let (files, listener) = (self.files.clone(), Arc::clone(&self.listener));
        let written = tokio::task::spawn_blocking(move || {
            files.write(&certificate.chain_pem, &certificate.key_pem)?;
            if let Err(error) = listener.reload_if_changed() {
                warn!(error = %error_chain(&error), "the new certificate files cannot be served");
            }
            Ok::<_, FileError>(())
        })
        .await;
        match written {
            Ok(result) => result?,
            Err(join) => {
                return Err(FileError::Write {
                    path: self.files.cert.clone(),
                    source: std::io::Error::other(join),
                }
                .into())
            }
        }
        if self.served().as_ref() != Some(&fresh) {
            return Err(RefreshError::NotServed);
        }
        info!(names = ?fresh.names, not_after = fresh.not_after, "serving the cluster's certificate");
        Ok(())
    }

    async fn ask(&self, request: CertificateRequest) -> Result<CertificateAnswer, RefreshError> {
        Ok(ask(&self.bus, &self.subject, &request).await?)
    }
}

async fn ask(
    bus: &Bus,
    subject: &str,
    request: &CertificateRequest,
) -> Result<CertificateAnswer, BusError> {
    bus.request_json(subject, request, CERTIFICATE_REQUEST_TIMEOUT)
        .await
}

/// The pause after the `failures`-th failure in a row: doubling from the minimum, capped.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RENEWAL_RETRY_MIN
        .saturating_mul(1 << doublings)
        .min(RENEWAL_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff(1), RENEWAL_RETRY_MIN);
        assert_eq!(backoff(2), RENEWAL_RETRY_MIN * 2);
        assert_eq!(backoff(100), RENEWAL_RETRY_MAX);
    }
}
