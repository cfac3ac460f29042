//! Secrets handed to Plane's processes: read from files (never from flags, which any user can
//! see in the process list) or, for the API token, from `PLANE_API_TOKEN`.

use crate::cli::{ApiServerAuth, ApiTokenArgs, NatsArgs};
use anyhow::{bail, Context};
use plane_bus::{NatsAuth, NatsOptions, NatsTls};
use plane_controlplane::api::ApiToken;
use std::net::SocketAddr;
use std::path::Path;

/// The variable that may hold the API token itself.
pub const API_TOKEN_VAR: &str = "PLANE_API_TOKEN";

/// A secret file's text, without its trailing newline.
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} from {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The API token from `--api-token-file` or `PLANE_API_TOKEN`, if either is given.
pub fn api_token(args: &ApiTokenArgs) -> anyhow::Result<Option<ApiToken>> {
    let from_env = std::env::var(API_TOKEN_VAR).ok().filter(|v| !v.is_empty());
    let text = match (&args.api_token_file, from_env) {
        (Some(_), Some(_)) => {
            bail!("--api-token-file and {API_TOKEN_VAR} are both set: give the token one way")
        }
        (Some(file), None) => read_secret(file, "API token")?,
        (None, Some(token)) => token,
        (None, None) => return Ok(None),
    };
    let token = ApiToken::new(&text).context("the API token")?;
    Ok(Some(token))
}

/// The token an API server listening on `addr` requires: none is fine on loopback, or when
/// the operator says so; beyond loopback an open API is refused.
pub fn api_server_token(
    auth: &ApiServerAuth,
    addr: SocketAddr,
) -> anyhow::Result<Option<ApiToken>> {
    let token = api_token(&auth.token)?;
    if token.is_none() && !addr.ip().is_loopback() && !auth.insecure_no_auth {
        bail!(
            "the API would listen on {addr}, beyond loopback, with no token: give one with \
             --api-token-file FILE (or {API_TOKEN_VAR}), or pass --insecure-no-auth to serve it \
             open on purpose"
        );
    }
    Ok(token)
}

/// The NATS connection settings `args` describe, reading the secret files they name.
pub fn nats_options(args: &NatsArgs) -> anyhow::Result<NatsOptions> {
    let auth = if let (Some(user), Some(file)) = (&args.nats_user, &args.nats_password_file) {
        NatsAuth::UserPassword {
            user: user.clone(),
            password: read_secret(file, "NATS password")?,
        }
    } else if let Some(file) = &args.nats_token_file {
        NatsAuth::Token(read_secret(file, "NATS token")?)
    } else if let Some(file) = &args.nats_nkey_file {
        NatsAuth::NKey(read_secret(file, "NATS nkey seed")?.trim().to_string())
    } else if let Some(file) = &args.nats_creds {
        NatsAuth::CredsFile(file.clone())
    } else {
        NatsAuth::None
    };
    let mut options = NatsOptions::new(args.nats.clone());
    options.auth = auth;
    options.tls = NatsTls {
        ca: args.nats_tls_ca.clone(),
        cert: args.nats_tls_cert.clone(),
        key: args.nats_tls_key.clone(),
    };
    Ok(options)
}
