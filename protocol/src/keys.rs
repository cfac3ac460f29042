//! Keys: the names apps give their backends ("the backend of document 42"), so that they ask
//! Plane for one by name instead of keeping ids. A key maps to at most one live backend at a
//! time; the controller keeps that mapping in a KV bucket of its own, addressed by the key's
//! label (a hash), so that key text never has to be a valid KV key or DNS label, and the label
//! (which shows in `key_url`) reveals nothing of the key.

use crate::ids::BackendId;
use crate::messages::{BackendSpec, UnixMillis};
use crate::records::SpawnAnswer;
use crate::registry::RegistryCredentials;
use crate::spawn_request::{parse, InvalidSpawn, SpawnRequest, ValidSpawn};
use crate::token::AccessToken;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The environment variable that tells a backend its key (set by the controller only: a spawn
/// may not set it).
pub const KEY_ENV: &str = "PLANE_KEY";

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Characters of a key's label: 26 of base32 carry 130 bits of the hash.
pub const KEY_LABEL_LEN: usize = 26;

/// What starts the host name of a key (`k-{label}.{cluster}`). Generated backend ids never
/// contain `-`, so the two kinds of name cannot collide.
pub const KEY_HOST_PREFIX: &str = "k-";

/// An app's name for a backend: 1 to [`MAX_KEY_LEN`] bytes of printable text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendKey(String);

/// Why a string is not a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadKey {
    #[error("a key may not be empty")]
    Empty,
    #[error("a key is at most {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("a key may not contain control characters")]
    Control,
}

impl BackendKey {
    pub fn new(key: impl Into<String>) -> Result<BackendKey, BadKey> {
        let key = key.into();
        if key.is_empty() {
            return Err(BadKey::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(BadKey::TooLong);
        }
        if key.chars().any(char::is_control) {
            return Err(BadKey::Control);
        }
        Ok(BackendKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's label in `cluster`: the first [`KEY_LABEL_LEN`] characters of the lowercase
    /// base32 of SHA-256(cluster + "/" + key). A DNS label and a KV key.
    pub fn label(&self, cluster: &str) -> String {
        hash_label(&[cluster.as_bytes(), b"/", self.0.as_bytes()])
    }

    /// The key's host label: `k-{label}`, reached as `k-{label}.{cluster}` whatever backend
    /// serves it.
    pub fn host_label(&self, cluster: &str) -> String {
        format!("{KEY_HOST_PREFIX}{}", self.label(cluster))
    }
}

/// The first [`KEY_LABEL_LEN`] characters of the lowercase base32 of the SHA-256 of `parts`,
/// one after the other: a name for any text that is a DNS label and a KV key, and reveals
/// nothing of the text.
pub fn hash_label(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    let mut label = data_encoding::BASE32_NOPAD.encode(&hash.finalize());
    label.truncate(KEY_LABEL_LEN);
    label.make_ascii_lowercase();
    label
}

/// Whether `s` is a key label: [`KEY_LABEL_LEN`] characters of lowercase base32.
pub fn is_label(s: &str) -> bool {
    s.len() == KEY_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BackendKey {
    type Error = BadKey;
    fn try_from(key: String) -> Result<Self, BadKey> {
        BackendKey::new(key)
    }
}

impl From<BackendKey> for String {
    fn from(key: BackendKey) -> String {
        key.0
    }
}

/// The body of `POST /v1/connect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    pub key: BackendKey,
    /// What to run when the key has no live backend; ignored when it has one.
    pub spawn: SpawnRequest,
    /// Keep the key's spec so that a request to its `key_url` starts a backend again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wake: bool,
}

/// A checked connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidConnect {
    pub key: BackendKey,
    pub spawn: ValidSpawn,
    pub wake: bool,
}

impl ConnectRequest {
    /// Parses and validates a JSON body; errors name the field at fault.
    pub fn from_json(body: &[u8]) -> Result<ValidConnect, InvalidSpawn> {
        let request: ConnectRequest = parse(body)?;
        let spawn = request.spawn.validate().map_err(|e| InvalidSpawn {
            field: format!("spawn.{}", e.field),
            problem: e.problem,
        })?;
        Ok(ValidConnect {
            key: request.key,
            spawn,
            wake: request.wake,
        })
    }
}

/// The answer to a connect: the key's backend (with its token when it requires one), whether
/// this call created it, and with `wake` the key's own URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectAnswer {
    #[serde(flatten)]
    pub answer: SpawnAnswer,
    pub created: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_url: Option<String>,
}

impl std::ops::Deref for ConnectAnswer {
    type Target = SpawnAnswer;

    fn deref(&self) -> &SpawnAnswer {
        &self.answer
    }
}

/// What the controller keeps of a key (bucket `plane_{cluster}_keys`, KV key = its label). The
/// only place besides the spawn answer that holds a keyed backend's token: every later connect
/// must answer with it. Only controllers can read this bucket (see the README's NATS
/// permissions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key: BackendKey,
    /// The backend the key names; `None` once it has ended (the key is free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendId>,
    /// Its drone acknowledged it: until then another connect waits for the one placing it.
    #[serde(default)]
    pub placed: bool,
    /// The spec of the last connect, which a wake runs again.
    pub spec: BackendSpec,
    /// Kept only for a key that can wake, whose image may need them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AccessToken>,
    #[serde(default)]
    pub wake: bool,
    /// When the current backend was claimed (a placement that never finishes is taken over).
    pub claimed_at: UnixMillis,
    /// When the record was last written: the bucket forgets it `--key-retention` later, so a
    /// controller rewrites the record of a key whose backend runs that long.
    pub touched_at: UnixMillis,
}

impl KeyRecord {
    /// The spawn that runs this key's spec again.
    pub fn spawn(&self) -> ValidSpawn {
        ValidSpawn {
            spec: self.spec.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

/// A drone → controller request: a request came in for `k-{label}.{cluster}` and nothing
/// serves it here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {
    pub label: String,
    /// The lowercase hex SHA-256 of the access token the request showed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// The controller's answer to a [`WakeRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "wake", rename_all = "snake_case")]
pub enum WakeAnswer {
    /// The key's backend runs on the asking drone (it may just have been started there).
    Here { backend: BackendId },
    /// It runs on another drone: DNS points there.
    Elsewhere { drone: crate::ids::DroneId },
    /// The key cannot wake here now (the drone is full, draining or lost; a placement failed).
    NoRoom { error: String },
    /// No key by that label can wake (never connected with `wake`, or forgotten).
    Unknown,
    /// The key requires a token and the request showed none: nothing was started.
    TokenRequired,
    /// The key requires a token and the request showed another: nothing was started.
    TokenRefused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_short_dns_labels_and_depend_on_the_cluster() {
        let key = BackendKey::new("doc-42").unwrap();
        let label = key.label("plane.example.com");
        assert!(is_label(&label), "{label}");
        assert!(!is_label("k-abc") && !is_label(&"a".repeat(27)) && !is_label(&"1".repeat(26)));
        assert_eq!(label, key.label("plane.example.com"));
        assert_ne!(label, key.label("other.example.com"));
        assert_ne!(
            label,
            BackendKey::new("doc-43")
                .unwrap()
                .label("plane.example.com")
        );
        // SHA-256("c/k") in base32, lowercased and cut to 26 characters.
        let hash = Sha256::digest(b"c/k");
        let expected = data_encoding::BASE32_NOPAD.encode(&hash)[..26].to_ascii_lowercase();
        assert_eq!(BackendKey::new("k").unwrap().label("c"), expected);
        assert_eq!(key.host_label("plane.example.com"), format!("k-{label}"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(BackendKey::new(""), Err(BadKey::Empty));
        assert_eq!(BackendKey::new("a".repeat(257)), Err(BadKey::TooLong));
        assert_eq!(BackendKey::new("a\nb"), Err(BadKey::Control));
        assert!(BackendKey::new("a".repeat(256)).is_ok());
        assert!(BackendKey::new("document 42 / ünïcode").is_ok());
    }

    #[test]
    fn connect_bodies_are_checked_with_the_spawn_s_field_names() {
        let ok = ConnectRequest::from_json(
            br#"{"key": "doc-42", "spawn": {"executable": {"command": ["app"]}}, "wake": true}"#,
        )
        .unwrap();
        assert_eq!(ok.key.as_str(), "doc-42");
        assert!(ok.wake);
        let bad =
            ConnectRequest::from_json(br#"{"key": "k", "spawn": {"executable": {}}}"#).unwrap_err();
        assert_eq!(bad.field, "spawn.executable.command");
        let bad =
            ConnectRequest::from_json(br#"{"key": "", "spawn": {"executable": {}}}"#).unwrap_err();
        assert_eq!(bad.field, "key");
        let bad = ConnectRequest::from_json(
            br#"{"key": "k", "spawn": {"executable": {"command": ["a"]}, "env": {"PLANE_KEY": "x"}}}"#,
        )
        .unwrap_err();
        assert_eq!(bad.field, "spawn.env.PLANE_KEY");
    }
}
