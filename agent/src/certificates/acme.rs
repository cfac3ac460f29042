//! One ACME order for the cluster's names over DNS-01, with the drone's account.
//!
//! The account key is generated once, kept in the drone's state directory (one file per
//! directory URL, readable by the drone's user only) and reused: a CA rate-limits new
//! accounts, and an operator sees one account per state directory. The certificate's key is a fresh ECDSA P-256
//! key per order (rcgen's default), never reused across renewals.

use super::files::write_atomically;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::info;

/// How long the CA gets to validate the challenges, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the drone reaches its CA.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// The account's contact (`mailto:`).
    pub email: Option<String>,
    /// External account binding, for CAs that require one.
    pub external_account: Option<ExternalAccount>,
    /// Roots to trust for the CA's own HTTPS (a test CA's), instead of the system's.
    pub root_ca: Option<PathBuf>,
}

/// An external account binding: the key id and the HMAC key the CA gave out.
#[derive(Clone)]
pub struct ExternalAccount {
    pub key_id: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why an order did not produce a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME account file {path}")]
    AccountFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ACME account file {path} is not one Plane wrote: {reason}")]
    AccountUnreadable { path: PathBuf, reason: String },
    #[error("{0}")]
    File(#[from] super::files::FileError),
    #[error("the CA offers no DNS-01 challenge for {0}")]
    NoDns01(String),
    #[error("the CA's authorization for {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order ended {status:?} instead of ready: {why}")]
    NotReady { status: OrderStatus, why: String },
    #[error("publishing the DNS-01 value: {0}")]
    Publish(String),
}

/// The account file as Plane keeps it.
#[derive(Serialize, Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl AcmeConfig {
    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.root_ca {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        })
    }

    /// The account's file under `dir`: one per directory URL.
    fn account_file(&self, dir: &Path) -> PathBuf {
        let hash = digest(&SHA256, self.directory.as_bytes());
        let tag: String = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dir.join("acme").join(format!("account-{tag}.json"))
    }

    /// The drone's account with this CA: the kept one, else a new one, kept.
    pub async fn account(&self, dir: &Path) -> Result<Account, AcmeError> {
        let path = self.account_file(dir);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let kept: KeptAccount = serde_json::from_slice(&bytes).map_err(|error| {
                    AcmeError::AccountUnreadable {
                        path: path.clone(),
                        reason: error.to_string(),
                    }
                })?;
                let account = self.builder()?.from_credentials(kept.credentials).await?;
                info!(account = account.id(), file = %path.display(), "reusing the kept ACME account");
                return Ok(account);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AcmeError::AccountFile { path, source }),
        }
        let contact = self.email.as_ref().map(|email| format!("mailto:{email}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let external = self
            .external_account
            .as_ref()
            .map(|eab| ExternalAccountKey::new(eab.key_id.clone(), &eab.hmac_key));
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                external.as_ref(),
            )
            .await?;
        let kept = KeptAccount {
            directory: self.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec(&kept).map_err(|error| AcmeError::AccountUnreadable {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let kept_at = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&kept_at, &json, 0o600))
            .await
            .map_err(|join| AcmeError::AccountFile {
                path: path.clone(),
                source: std::io::Error::other(join),
            })??;
        info!(account = account.id(), file = %path.display(), "ACME account created and kept");
        Ok(account)
    }
}

/// Orders a certificate for `names` with `account`; `publish` makes a DNS-01 value served by
/// the cluster's DNS (it returns once it is). Every value is published before the CA is told to
/// look, so that it never sees the name with some values missing. Returns the chain and its
/// private key (PEM).
pub async fn order<F, Fut>(
    account: &Account,
    names: &[String],
    mut publish: F,
) -> Result<(String, String), AcmeError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut values = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Validated recently for this account: the CA reuses it.
            AuthorizationStatus::Valid => continue,
            status => return Err(AcmeError::Authorization { name, status }),
        }
        let challenge = authorization
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| AcmeError::NoDns01(name.clone()))?;
        values.push(challenge.key_authorization().dns_value());
    }
    for value in values {
        publish(value).await.map_err(AcmeError::Publish)?;
    }
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        if authorization.status != AuthorizationStatus::Pending {
            continue;
        }
        let name = authorization.identifier().to_string();
        let mut challenge = authorization
            .challenge(ChallengeType::Dns01)
            .ok_or(AcmeError::NoDns01(name))?;
        challenge.set_ready().await?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5);
    let status = order
        .poll_ready(&polling.timeout(VALIDATION_TIMEOUT))
        .await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::NotReady {
            status,
            why: why_invalid(&mut order).await,
        });
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order
        .poll_certificate(&polling.timeout(ISSUANCE_TIMEOUT))
        .await?;
    Ok((chain_pem, key_pem))
}

/// What the CA said about the challenges of a failed order (`"name: problem"`, joined).
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                problems.push(format!("{name}: {problem}"));
            }
        }
    }
    if problems.is_empty() {
        "the CA gave no reason".to_owned()
    } else {
        problems.join("; ")
    }
}
