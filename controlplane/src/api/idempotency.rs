//! Idempotent retries: a spawn or connect sent with an `Idempotency-Key` header runs once, and a
//! retry with the same key within ten minutes (`IDEMPOTENCY_WINDOW`) gets the first answer (status and
//! body, token included) instead of a second backend. A client that lost an answer to a network
//! failure cannot otherwise tell whether its backend exists.
//!
//! The first request claims the key in a bucket shared by every controller (create-if-absent),
//! so retries that reach another controller, or arrive while the first still runs, find it: they
//! wait on a watch of the entry for its answer. A request that fails frees the key (marked
//! free with a compare-and-set, so it cannot free a retry's claim), so its retry runs again; one whose controller died is taken over after [`IDEMPOTENCY_TAKEOVER`]. The same
//! key with a different body is the caller's mistake, and refused.

use super::ApiError;
use crate::controller::Controller;
use crate::limits::{IDEMPOTENCY_TAKEOVER, MAX_CONNECT_ATTEMPTS};
use crate::state::wait_for_change;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plane_bus::{Kv, KvError};
use plane_protocol::error_chain;
use plane_protocol::keys::hash_label;
use plane_protocol::messages::{now_millis, UnixMillis};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use tracing::{debug, warn};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on an answer that repeats a stored one.
const REPLAYED: &str = "idempotent-replayed";

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// What the bucket keeps for one key.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Which request it was: a hash of its endpoint and body.
    request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<StoredAnswer>,
    started_at: UnixMillis,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredAnswer {
    status: u16,
    body: serde_json::Value,
}

/// A claimed key: the request runs, then its answer is stored under this revision.
struct Claim {
    label: String,
    revision: u64,
}

enum Begun {
    First(Claim),
    Replay(StoredAnswer),
}

/// Runs `run` once per `Idempotency-Key` (when the request has one) of endpoint `scope` and
/// `body`, answering retries with its first answer. Runs in its own task: a caller hanging up
/// must neither cut a spawn short nor leave the key claimed.
pub(super) async fn once<F, Fut>(
    controller: &Controller,
    headers: &HeaderMap,
    scope: &'static str,
    body: &[u8],
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>> + Send,
{
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(check_key(value)?),
    };
    let kv = controller.idempotency().clone();
    let request = hash_label(&[scope.as_bytes(), b"\n", body]);
    let task = tokio::spawn(async move {
        let Some(key) = key else {
            return run()
                .await
                .map(|(status, body)| (status, Json(body)).into_response());
        };
        let label = hash_label(&[scope.as_bytes(), b"\n", key.as_bytes()]);
        let claim = match begin(&kv, label, &request).await? {
            Begun::Replay(answer) => return Ok(replay(answer)),
            Begun::First(claim) => claim,
        };
        match run().await {
            Ok((status, body)) => {
                let entry = Entry {
                    request,
                    answer: Some(StoredAnswer {
                        status: status.as_u16(),
                        body: body.clone(),
                    }),
                    started_at: now_millis(),
                };
                if let Err(error) = kv.update_json(&claim.label, &entry, claim.revision).await {
                    warn!(error = %error_chain(&error), "could not keep an idempotent answer; a retry will run again");
                }
                Ok((status, Json(body)).into_response())
            }
            Err(error) => {
                // Freed for the next retry to run at once (as if its runner had died), only if
                // still this request's claim: a retry that took over must keep its own.
                let freed = Entry {
                    request,
                    answer: None,
                    started_at: 0,
                };
                if let Err(free) = kv.update_json(&claim.label, &freed, claim.revision).await {
                    debug!(error = %error_chain(&free), "could not free an idempotency key after a failure");
                }
                Err(error)
            }
        }
    });
    task.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request failed: {e}"),
        )
    })?
}

fn check_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
        return Err(bad());
    }
    Ok(key.to_string())
}

fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(answer.body)).into_response();
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Claims the key, or finds its answer (waiting for one still being made).
async fn begin(kv: &Kv, label: String, request: &str) -> Result<Begun, ApiError> {
    for _ in 0..MAX_CONNECT_ATTEMPTS {
        let fresh = Entry {
            request: request.to_string(),
            answer: None,
            started_at: now_millis(),
        };
        let (entry, revision) = match kv.get_json::<Entry>(&label).await.map_err(store)? {
            None => match kv.create_json(&label, &fresh).await {
                Ok(revision) => return Ok(Begun::First(Claim { label, revision })),
                Err(KvError::AlreadyExists { .. }) => continue,
                Err(error) => return Err(store(error)),
            },
            Some(found) => found,
        };
        if entry.request != request {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used with a different request",
            ));
        }
        if let Some(answer) = entry.answer {
            return Ok(Begun::Replay(answer));
        }
        let running_for = Duration::from_millis(now_millis().saturating_sub(entry.started_at));
        if running_for >= IDEMPOTENCY_TAKEOVER {
            if entry.started_at != 0 {
                warn!("taking over an idempotent request that never answered");
            }
            match kv.update_json(&label, &fresh, revision).await {
                Ok(revision) => return Ok(Begun::First(Claim { label, revision })),
                Err(KvError::WrongRevision { .. }) => continue,
                Err(error) => return Err(store(error)),
            }
        }
        // Still running: wait for its answer (or its failure, which frees the key).
        wait_for_change(kv, &label, revision, IDEMPOTENCY_TAKEOVER - running_for)
            .await
            .map_err(store)?;
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still in progress; retry later",
    ))
}

fn store(error: KvError) -> ApiError {
    warn!(error = %error_chain(&error), "idempotency store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("idempotency store: {}", error_chain(&error)),
    )
}
