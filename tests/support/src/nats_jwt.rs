//! NATS decentralized auth for tests (what `nsc` makes, which Debian lacks): an operator, an
//! account with JetStream, and users, as JWTs signed with nkeys; the server configuration that
//! trusts them (operator mode, memory resolver); and `.creds` files for the users.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// An operator and one account it signed, JetStream enabled.
pub struct NatsOperator {
    account: KeyPair,
    operator_jwt: String,
    account_jwt: String,
    /// The server's own account (JetStream needs one in operator mode).
    system: KeyPair,
    system_jwt: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A JWT of `claims` (`nats` holding `nats`) about `subject`, signed by `issuer`.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> anyhow::Result<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": format!("{:032X}", rand_u128()),
        "iat": now_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let signed = format!("{header}.{claims}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing a JWT: {e}"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// A value unique enough for a JWT id.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_secs());
    let high = hasher.finish();
    let low = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (u128::from(high) << 64) | u128::from(low)
}

impl NatsOperator {
    pub fn new() -> anyhow::Result<Self> {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let system = KeyPair::new_account();
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "plane-test-operator",
            json!({ "system_account": system.public_key(), "type": "operator", "version": 2 }),
        )?;
        let system_jwt = sign(
            &operator,
            &system.public_key(),
            "SYS",
            json!({
                "limits": { "subs": -1, "data": -1, "payload": -1, "imports": -1,
                            "exports": -1, "wildcards": true, "conn": -1, "leaf": -1 },
                "type": "account",
                "version": 2,
            }),
        )?;
        let account_jwt = sign(
            &operator,
            &account.public_key(),
            "plane-test-account",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            }),
        )?;
        Ok(NatsOperator {
            account,
            operator_jwt,
            account_jwt,
            system,
            system_jwt,
        })
    }

    /// The server configuration that trusts this operator and knows its account.
    pub fn server_config(&self) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.operator_jwt,
            self.system.public_key(),
            self.account.public_key(),
            self.account_jwt,
            self.system.public_key(),
            self.system_jwt,
        )
    }

    /// Writes a `.creds` file for a new user of the account, allowed everything.
    pub fn user_creds(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let user = KeyPair::new_user();
        let jwt = sign(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        )?;
        let seed = user
            .seed()
            .map_err(|e| anyhow::anyhow!("the user's seed: {e}"))?;
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        );
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(&path, creds).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
