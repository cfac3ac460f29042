//! Identifiers that end up in hostnames, NATS subjects and KV keys, so they are validated once
//! here: a backend id is a DNS label, a drone id is a NATS subject token.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest backend id: a DNS label is at most 63 bytes.
pub const MAX_BACKEND_ID_LEN: usize = 63;

/// Length of the ids Plane generates (lowercase base-36).
pub const GENERATED_ID_LEN: usize = 16;

/// Why a string is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_BACKEND_ID_LEN} characters")]
    TooLong,
    #[error(
        "id may contain only lowercase letters, digits and '-', and may not start or end with '-'"
    )]
    BadCharacter,
}

fn validate_label(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_BACKEND_ID_LEN {
        return Err(IdError::TooLong);
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || s.starts_with('-') || s.ends_with('-') {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! label_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` (a lowercase DNS label).
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_label(&s)?;
                Ok(Self(s))
            }

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(random_label(GENERATED_ID_LEN))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, not `write_str`: tables align ids with `{:<18}`.
                f.pad(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

label_id!(
    BackendId,
    "A backend's id: the first label of its hostname `{id}.{cluster}`."
);
label_id!(DroneId, "A drone's id, unique in its cluster.");

/// A random lowercase base-36 string of `len` characters, starting with a letter, drawn from
/// the operating system's CSPRNG: a backend's id is all a client needs to reach a backend that
/// has no token, so it must not be guessable. Rejection sampling keeps every character uniform.
pub(crate) fn random_label(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        // The OS's random source failing is not something a server can work around; getrandom
        // documents it as unreachable on Linux once the pool is seeded.
        getrandom::getrandom(&mut pool).expect("the OS random source works");
        for &byte in &pool {
            let range = if out.is_empty() { 26 } else { ALPHABET.len() };
            // Bytes at or above the largest multiple of `range` would bias the low characters.
            if usize::from(byte) < 256 - 256 % range {
                out.push(ALPHABET[usize::from(byte) % range] as char);
                if out.len() == len {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = BackendId::generate();
        let b = BackendId::generate();
        assert_eq!(a.as_str().len(), GENERATED_ID_LEN);
        assert!(BackendId::new(a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn generated_ids_start_with_a_letter_and_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let id = BackendId::generate();
            assert!(id.as_str().as_bytes()[0].is_ascii_lowercase(), "{id}");
            seen.extend(id.as_str().bytes());
        }
        // 32,000 characters drawn: every one of the 36 shows up unless the draw is broken.
        assert_eq!(seen.len(), 36, "{seen:?}");
    }

    #[test]
    fn rejects_bad_labels() {
        assert_eq!(BackendId::new(""), Err(IdError::Empty));
        assert_eq!(BackendId::new("A"), Err(IdError::BadCharacter));
        assert_eq!(BackendId::new("a.b"), Err(IdError::BadCharacter));
        assert_eq!(BackendId::new("-a"), Err(IdError::BadCharacter));
        assert_eq!(BackendId::new("a".repeat(64)), Err(IdError::TooLong));
        assert!(BackendId::new("abc-123").is_ok());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<BackendId>("\"ok-id\"").is_ok());
        assert!(serde_json::from_str::<BackendId>("\"Not OK\"").is_err());
    }
}
