//! What the proxy keeps of an access token: its SHA-256, never the token itself. A request's
//! token is hashed and the digests compared in constant time, so a memory dump or a container
//! label (where a drone keeps it, to route an adopted backend after a restart) reveals nothing
//! that gets a request through.

use std::fmt;

use subtle::ConstantTimeEq;

/// The SHA-256 of an access token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

/// Why a text is not a token digest.
#[derive(Debug, thiserror::Error)]
#[error("a token digest is 64 hexadecimal digits")]
pub struct BadTokenDigest;

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &[u8]) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn admits(&self, given: &[u8]) -> bool {
        TokenDigest::of(given).0.ct_eq(&self.0).into()
    }

    /// Lowercase hexadecimal, as [`TokenDigest::from_hex`] reads it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Result<TokenDigest, BadTokenDigest> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return Err(BadTokenDigest);
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| BadTokenDigest)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| BadTokenDigest)?;
        }
        Ok(TokenDigest(bytes))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_token() {
        let digest = TokenDigest::of(b"secret");
        assert!(digest.admits(b"secret"));
        assert!(!digest.admits(b"secre"), "a prefix is not the token");
        assert!(!digest.admits(b"secret "));
        assert!(!digest.admits(b""));
    }

    #[test]
    fn hex_round_trips_and_refuses_anything_else() {
        let digest = TokenDigest::of(b"t0k");
        let hex = digest.to_hex();
        // The well-known SHA-256 of "abc", so the digest is SHA-256 and not something else.
        assert_eq!(
            TokenDigest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let back = TokenDigest::from_hex(&hex).expect("its own hex");
        assert!(back.admits(b"t0k"));
        assert!(TokenDigest::from_hex(&hex[1..]).is_err());
        assert!(TokenDigest::from_hex(&format!("{}zz", &hex[2..])).is_err());
        assert!(TokenDigest::from_hex("é".repeat(32).as_str()).is_err());
        assert_eq!(format!("{digest:?}"), "TokenDigest(..)");
    }
}
