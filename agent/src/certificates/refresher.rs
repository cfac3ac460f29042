//! The refresher: keeps the drone's certificate files holding a current certificate for the
//! cluster's names, and the proxy serving them.
//!
//! It asks a controller (see `plane_protocol::certificates`) only when the certificate it serves
//! is missing or due (a third of its lifetime left): a fresh one another drone ordered is taken
//! as is; otherwise, holding the order lock, it orders one over DNS-01 with its own ACME
//! account, the controller publishing each value in the cluster's DNS, and hands the result to
//! the controller for the other drones. Failures are retried with exponential backoff, and
//! reported in the status until a success clears them.

use super::acme::{self, AcmeConfig, AcmeError};
use super::files::{CertificateFiles, CertificateInfo, FileError};
use super::status::{status_of, ExpiryWarning};
use crate::limits::{
    CERTIFICATE_RECHECK_MAX, CERTIFICATE_RECHECK_MIN, CERTIFICATE_REQUEST_TIMEOUT, ORDER_WAIT_MAX,
    RENEWAL_RETRY_MAX, RENEWAL_RETRY_MIN,
};
use instant_acme::Account;
use plane_bus::{Bus, BusError};
use plane_dataplane::tls::Certificate;
use plane_protocol::certificates::{
    cluster_names, CertificateAnswer, CertificateRequest, CertificateStatus, SharedCertificate,
};
use plane_protocol::error_chain;
use plane_protocol::ids::DroneId;
use plane_protocol::messages::{now_millis, UnixMillis};
use plane_protocol::subjects::Subjects;
use std::future::Future;
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
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error("the certificate")]
    File(#[from] FileError),
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
    served: Option<CertificateInfo>,
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
        let files = Self::files(&config);
        let names = cluster_names(&config.cluster);
        let served = match files.read_chain() {
            Ok(Some(chain)) => CertificateInfo::of_chain(&chain).ok(),
            Ok(None) => None,
            Err(error) => {
                warn!(error = %error_chain(&error), "cannot read the kept certificate; ordering anew");
                None
            }
        }
        .filter(|info| names.iter().all(|n| info.names.contains(n)));
        let (status, receiver) = watch::channel(Some(status_of(served.as_ref(), None)));
        let refresher = Refresher {
            subject: Subjects::new(&config.cluster).certificate(&config.drone),
            config,
            names,
            bus,
            files,
            listener,
            account: None,
            served,
            status,
        };
        (refresher, receiver)
    }

    /// Keeps the certificate current until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut warning = ExpiryWarning::default();
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            let now = now_millis();
            let pause = match &self.served {
                Some(info) if now < renew_at(info) => Duration::from_millis(renew_at(info) - now)
                    .clamp(CERTIFICATE_RECHECK_MIN, CERTIFICATE_RECHECK_MAX),
                _ => Duration::ZERO,
            };
            if !pause.is_zero() {
                warning.check(self.served.as_ref(), last_error.as_deref());
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            let attempt = tokio::select! {
                () = &mut shutdown => return,
                attempt = self.obtain() => attempt,
            };
            match attempt {
                Ok(()) => {
                    failures = 0;
                    last_error = None;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let message = error_chain(&error);
                    let retry = backoff(failures);
                    warn!(error = %message, retry_in_secs = retry.as_secs(), "could not obtain the cluster's certificate");
                    last_error = Some(message);
                    self.publish_status(last_error.as_deref());
                    warning.check(self.served.as_ref(), last_error.as_deref());
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    continue;
                }
            }
            self.publish_status(last_error.as_deref());
        }
    }

    fn publish_status(&self, error: Option<&str>) {
        let fresh = Some(status_of(self.served.as_ref(), error));
        self.status.send_if_modified(|current| {
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
    }

    /// One attempt: the stored certificate, or one ordered here, installed.
    async fn obtain(&mut self) -> Result<(), RefreshError> {
        let waiting_since = Instant::now();
        loop {
            let drone = self.config.drone.clone();
            match self.ask(CertificateRequest::Get { drone }).await? {
                CertificateAnswer::Current { certificate } => {
                    return self.install(&certificate);
                }
                CertificateAnswer::Wait {
                    retry_after_secs,
                    stale,
                } => {
                    if let Some(stale) = stale {
                        self.install_if_newer(&stale)?;
                    }
                    if waiting_since.elapsed() > ORDER_WAIT_MAX {
                        return Err(RefreshError::WaitedTooLong);
                    }
                    tokio::time::sleep(Duration::from_secs(retry_after_secs.max(1))).await;
                }
                CertificateAnswer::Order { stale, .. } => {
                    if let Some(stale) = stale {
                        self.install_if_newer(&stale)?;
                    }
                    return self.order_and_share().await;
                }
                CertificateAnswer::Done => return Err(RefreshError::OutOfTurn("done")),
                CertificateAnswer::Error { message } => return Err(RefreshError::Refused(message)),
            }
        }
    }

    /// Orders a certificate, holding the lock; gives the lock back if the order fails.
    async fn order_and_share(&mut self) -> Result<(), RefreshError> {
        info!(names = ?self.names, directory = %self.config.acme.directory, "ordering the cluster's certificate");
        let ordered = self.order().await;
        let certificate = match ordered {
            Ok(certificate) => certificate,
            Err(error) => {
                let drone = self.config.drone.clone();
                if let Err(release) = self.ask(CertificateRequest::Release { drone }).await {
                    warn!(error = %error_chain(&release), "could not release the order lock; it expires by itself");
                }
                return Err(error);
            }
        };
        // Served here whatever the controller says: it is a valid certificate.
        self.install(&certificate)?;
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
            Ok(answer) => {
                warn!(?answer, "the controller did not keep the new certificate; other drones will order their own")
            }
            Err(error) => {
                warn!(error = %error_chain(&error), "could not hand the new certificate to a controller")
            }
        }
        Ok(())
    }

    async fn order(&mut self) -> Result<SharedCertificate, RefreshError> {
        let account = match &self.account {
            Some(account) => account.clone(),
            None => {
                let account = self.config.acme.account(&self.config.dir).await?;
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
        let (chain_pem, key_pem) = acme::order(&account, &self.names, publish).await?;
        let info = CertificateInfo::of_chain(&chain_pem)?;
        Ok(SharedCertificate {
            chain_pem,
            key_pem,
            names: info.names,
            not_before: info.not_before,
            not_after: info.not_after,
            ordered_by: self.config.drone.clone(),
        })
    }

    /// Installs `certificate` unless it is the one served, or expires before it.
    fn install_if_newer(&mut self, certificate: &SharedCertificate) -> Result<(), RefreshError> {
        let newer = self
            .served
            .as_ref()
            .is_none_or(|served| certificate.not_after > served.not_after);
        if newer && now_millis() < certificate.not_after {
            self.install(certificate)?;
        }
        Ok(())
    }

    /// Writes the files and has the listener serve them now.
    fn install(&mut self, certificate: &SharedCertificate) -> Result<(), RefreshError> {
        let info = CertificateInfo::of_chain(&certificate.chain_pem)?;
        if self.served.as_ref() == Some(&info) {
            return Ok(());
        }
        self.files
            .write(&certificate.chain_pem, &certificate.key_pem)?;
        match self.listener.reload_if_changed() {
            Ok(_) => {}
            Err(error) => {
                warn!(error = %error_chain(&error), "the new certificate cannot be served; still serving the previous one")
            }
        }
        info!(names = ?info.names, not_after = info.not_after, "serving the cluster's certificate");
        self.served = Some(info);
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

/// When the certificate described by `info` should be replaced (a third of its lifetime left).
fn renew_at(info: &CertificateInfo) -> UnixMillis {
    let lifetime = info.not_after.saturating_sub(info.not_before);
    info.not_after.saturating_sub(lifetime / 3)
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

    #[test]
    fn renewal_comes_with_a_third_left() {
        let info = CertificateInfo {
            names: Vec::new(),
            not_before: 0,
            not_after: 90,
        };
        assert_eq!(renew_at(&info), 60);
    }
}
