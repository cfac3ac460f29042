//! The HTTP API (**contract**: paths and JSON shapes). Handlers translate between HTTP and
//! [`Controller`] methods; every error is JSON `{"error": "..."}` with a status that says whose
//! fault it is (4xx: the caller's, 5xx: ours or a drone's). `auth` guards it with a bearer
//! token, `server` bounds its connections, `events` streams a backend's changes.

mod auth;
mod events;
mod idempotency;
mod logs;
mod server;

pub use auth::{ApiToken, TokenError, MIN_API_TOKEN_BYTES};
pub use server::{serve, serve_router};

use crate::controller::{ControlError, Controller, DroneNow};
use crate::limits::MAX_API_BODY_BYTES;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use plane_protocol::error_chain;
use plane_protocol::ids::{BackendId, DroneId};
use plane_protocol::keys::ConnectRequest;
use plane_protocol::records::{BackendRecord, BackendStatus, DroneView};
use plane_protocol::spawn_request::{BackendUpdate, DrainRequest, SpawnRequest};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::warn;

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::NotFound(_) | ControlError::NoSuchDrone(_) => StatusCode::NOT_FOUND,
            ControlError::NoDrone(_)
            | ControlError::NoDroneAccepted(_)
            | ControlError::DroneUnreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::DroneRefused { .. } => StatusCode::BAD_GATEWAY,
            ControlError::Ended(_) | ControlError::DroneLost(_) => StatusCode::CONFLICT,
            ControlError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            warn!(error = %error_chain(&e), "API request failed");
        }
        ApiError::new(status, error_chain(&e))
    }
}

pub(super) fn backend_id(raw: &str) -> Result<BackendId, ApiError> {
    BackendId::new(raw).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no backend named {raw:?}: {e}"),
        )
    })
}

/// How the API is set up.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Required of every caller (but `/healthz`) when set.
    pub token: Option<ApiToken>,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive.
    pub header_read_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_connections: crate::limits::MAX_API_CONNECTIONS,
            header_read_timeout: crate::limits::API_HEADER_READ_TIMEOUT,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(super) struct ApiState {
    controller: Controller,
    token: Option<ApiToken>,
    /// Set when the server shuts down: event streams end then, instead of holding the
    /// graceful shutdown open for as long as their backend lives.
    closing: Arc<watch::Sender<bool>>,
}

/// The API's routes over `controller`.
pub fn router(controller: Controller, config: ApiConfig) -> Router {
    router_with(controller, config, Arc::new(watch::Sender::new(false)))
}

fn router_with(
    controller: Controller,
    config: ApiConfig,
    closing: Arc<watch::Sender<bool>>,
) -> Router {
    let state = ApiState {
        controller,
        token: config.token,
        closing,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/backends", get(list_backends).post(spawn_backend))
        .route("/v1/connect", post(connect))
        .route(
            "/v1/backends/{id}",
            get(get_backend)
                .patch(update_backend)
                .delete(terminate_backend),
        )
        .route("/v1/backends/{id}/events", get(events::backend_events))
        .route("/v1/backends/{id}/logs", get(logs::backend_logs))
        .route("/v1/drones", get(list_drones))
        .route(
            "/v1/drones/{id}/drain",
            post(drain_drone).delete(undrain_drone),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.token.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// A server of `GET /metrics` alone, rendered by `render` when scraped, behind `token` like the
/// API (for a drone's metrics).
pub fn metrics_router(
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    token: Option<ApiToken>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { prometheus_text(render()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
}

fn prometheus_text(text: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn metrics(State(ApiState { controller, .. }): State<ApiState>) -> Response {
    prometheus_text(controller.metrics())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn spawn_backend(
    State(ApiState { controller, .. }): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let spec = SpawnRequest::from_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid spawn request: {e}"),
        )
    })?;
    let spawning = controller.clone();
    idempotency::once(&controller, &headers, "spawn", &body, move || async move {
        let answer = spawning.spawn(spec).await?;
        Ok((StatusCode::CREATED, to_json(&answer)?))
    })
    .await
}

/// `POST /v1/connect`: the key's live backend (200) or a new one (201).
async fn connect(
    State(ApiState { controller, .. }): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let request = ConnectRequest::from_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid connect request: {e}"),
        )
    })?;
    let connecting = controller.clone();
    idempotency::once(
        &controller,
        &headers,
        "connect",
        &body,
        move || async move {
            let answer = connecting.connect(request).await?;
            let status = if answer.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, to_json(&answer)?))
        },
    )
    .await
}

fn to_json(answer: &impl serde::Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(answer).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )
    })
}

async fn list_backends(
    State(ApiState { controller, .. }): State<ApiState>,
) -> Json<Vec<Arc<BackendRecord>>> {
    Json(controller.backends())
}

async fn get_backend(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BackendStatus>, ApiError> {
    Ok(Json(controller.backend_status(&backend_id(&id)?).await?))
}

async fn update_backend(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BackendRecord>, ApiError> {
    let id = backend_id(&id)?;
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let update = BackendUpdate::from_json(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid update: {e}")))?;
    let record = match update.max_idle_secs {
        Some(max_idle_secs) => controller.set_idle(&id, max_idle_secs).await?,
        None => controller.backend(&id).await?,
    };
    Ok(Json(record))
}

async fn terminate_backend(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<BackendRecord>), ApiError> {
    let record = controller.terminate(&backend_id(&id)?).await?;
    let status = if record.is_terminated() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(record)))
}

fn drone_id(raw: &str) -> Result<DroneId, ApiError> {
    DroneId::new(raw).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no drone named {raw:?}: {e}"),
        )
    })
}

async fn drain_drone(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DroneView>, ApiError> {
    let id = drone_id(&id)?;
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let request = DrainRequest::from_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid drain request: {e}"),
        )
    })?;
    let drone = controller.drain(&id, request.deadline_secs).await?;
    Ok(Json(drone.to_view()))
}

async fn undrain_drone(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DroneView>, ApiError> {
    let drone = controller.undrain(&drone_id(&id)?).await?;
    Ok(Json(drone.to_view()))
}

async fn list_drones(State(ApiState { controller, .. }): State<ApiState>) -> Json<Vec<DroneView>> {
    Json(controller.drones().iter().map(DroneNow::to_view).collect())
}
