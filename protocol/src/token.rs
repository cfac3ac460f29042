//! Backend access tokens: the secret a client shows the proxy to reach a backend spawned with
//! `require_token`. Only the spawn answer and the drone that runs the backend ever hold one;
//! it is never part of a record, an event or a log line, so its `Debug` shows nothing of it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of a generated token: 32 characters of base 36 from the OS CSPRNG, about 165 bits.
pub const TOKEN_LEN: usize = 32;

/// The longest token accepted from the wire.
const MAX_TOKEN_LEN: usize = 256;

/// A backend's access token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccessToken(String);

/// Why a string is not a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an access token is 1 to {MAX_TOKEN_LEN} letters and digits")]
pub struct BadToken;

impl AccessToken {
    /// A new random token.
    pub fn generate() -> AccessToken {
        AccessToken(crate::ids::random_label(TOKEN_LEN))
    }

    /// Checks a token received from elsewhere: letters and digits only, so that it passes
    /// through headers, cookies and query strings unchanged.
    pub fn new(token: impl Into<String>) -> Result<AccessToken, BadToken> {
        let token = token.into();
        let valid = !token.is_empty()
            && token.len() <= MAX_TOKEN_LEN
            && token.bytes().all(|b| b.is_ascii_alphanumeric());
        if valid {
            Ok(AccessToken(token))
        } else {
            Err(BadToken)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lowercase hex of the token's SHA-256: how a drone tells which token a request
    /// showed without passing the token on (the proxy's `TokenDigest`).
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        data_encoding::HEXLOWER.encode(&Sha256::digest(self.0.as_bytes()))
    }
}

impl TryFrom<String> for AccessToken {
    type Error = BadToken;
    fn try_from(token: String) -> Result<Self, BadToken> {
        AccessToken::new(token)
    }
}

impl From<AccessToken> for String {
    fn from(token: AccessToken) -> String {
        token.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_checked_and_never_printed() {
        let a = AccessToken::generate();
        let b = AccessToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), TOKEN_LEN);
        assert_eq!(AccessToken::new(a.as_str()), Ok(a.clone()));
        assert!(!format!("{a:?}").contains(a.as_str()));
        for bad in [
            "",
            "has space",
            "semi;colon",
            "a=b",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(AccessToken::new(bad), Err(BadToken), "{bad:?}");
        }
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(json, format!("\"{}\"", a.as_str()));
        assert!(serde_json::from_str::<AccessToken>("\"a b\"").is_err());
    }
}
