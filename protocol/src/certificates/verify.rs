//! What a certificate says about itself (its names and validity) and whether a key belongs to
//! it: drones check what the CA or the controller gave them before serving it, and controllers
//! check what a drone hands them before sharing it with every drone, rather than believe the
//! fields that travel beside the PEM.

use super::SharedCertificate;
use crate::ids::DroneId;
use crate::messages::UnixMillis;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

/// Why a certificate is not usable.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no PEM certificate in the chain")]
    NoCertificate,
    #[error("the leaf is not a valid X.509 certificate: {0}")]
    Unparsable(String),
    #[error("no PEM private key")]
    NoKey,
    #[error("the private key does not belong to the certificate: {0}")]
    KeyMismatch(String),
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its DNS names (subject alternative names), lowercase.
    pub names: Vec<String>,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
}

impl CertificateInfo {
    /// Reads the leaf (the first certificate) of a PEM chain.
    pub fn of_chain(chain_pem: &str) -> Result<CertificateInfo, CertificateError> {
        let leaf = leaf(chain_pem)?;
        Self::of_der(&leaf)
    }

    /// Reads one DER certificate.
    pub fn of_der(der: &[u8]) -> Result<CertificateInfo, CertificateError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| CertificateError::Unparsable(error.to_string()))?;
        let millis = |seconds: i64| u64::try_from(seconds).unwrap_or(0).saturating_mul(1000);
        let validity = parsed.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(name) = name {
                    names.push(name.to_ascii_lowercase());
                }
            }
        }
        Ok(CertificateInfo {
            names,
            not_before: millis(validity.not_before.timestamp()),
            not_after: millis(validity.not_after.timestamp()),
        })
    }

    /// Whether it is valid for every name in `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        super::covers(&self.names, names)
    }

    /// When it should be replaced (see [`super::renew_at`]).
    pub fn renew_at(&self) -> UnixMillis {
        super::renew_at(self.not_before, self.not_after)
    }
}

fn leaf(chain_pem: &str) -> Result<CertificateDer<'static>, CertificateError> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or(CertificateError::NoCertificate)?
        .map_err(|_| CertificateError::NoCertificate)
}

impl SharedCertificate {
    /// The certificate made of `chain_pem` and `key_pem`, its names and validity read from the
    /// chain, once the key is found to belong to it.
    pub fn verified(
        chain_pem: String,
        key_pem: String,
        ordered_by: DroneId,
    ) -> Result<SharedCertificate, CertificateError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| CertificateError::NoCertificate)?;
        let leaf = chain.first().ok_or(CertificateError::NoCertificate)?;
        let info = CertificateInfo::of_der(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| CertificateError::NoKey)?;
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|error| CertificateError::KeyMismatch(error.to_string()))?;
        rustls::sign::CertifiedKey::new(chain, signing_key)
            .keys_match()
            .map_err(|error| CertificateError::KeyMismatch(error.to_string()))?;
        Ok(SharedCertificate {
            chain_pem,
            key_pem,
            names: info.names,
            not_before: info.not_before,
            not_after: info.not_after,
            ordered_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            CertificateInfo::of_chain("not pem"),
            Err(CertificateError::NoCertificate)
        ));
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            CertificateInfo::of_chain(bogus),
            Err(CertificateError::Unparsable(_))
        ));
        let drone = DroneId::new("d1").expect("valid");
        assert!(SharedCertificate::verified(bogus.into(), String::new(), drone).is_err());
    }
}
