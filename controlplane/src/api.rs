//! The HTTP API (**contract**: paths and JSON shapes). Handlers translate between HTTP and
//! [`Controller`] methods; every error is JSON `{"error": "..."}` with a status that says whose
//! fault it is (4xx: the caller's, 5xx: ours or a drone's).

use crate::controller::{ControlError, Controller, DroneNow};
use crate::limits::MAX_API_BODY_BYTES;
use crate::view::ClusterView;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::Stream;
use plane_protocol::error_chain;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::BackendState;
use plane_protocol::records::{BackendRecord, DroneView};
use plane_protocol::spawn_request::SpawnRequest;
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tracing::warn;

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
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
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::NoDrone(_)
            | ControlError::NoDroneAccepted(_)
            | ControlError::DroneUnreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::DroneRefused { .. } => StatusCode::BAD_GATEWAY,
            ControlError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            warn!(error = %error_chain(&e), "API request failed");
        }
        ApiError::new(status, error_chain(&e))
    }
}

fn backend_id(raw: &str) -> Result<BackendId, ApiError> {
    BackendId::new(raw).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no backend named {raw:?}: {e}"),
        )
    })
}

/// What every handler sees.
#[derive(Clone)]
struct ApiState {
    controller: Controller,
    /// Set when the server shuts down: event streams end then, instead of holding the
    /// graceful shutdown open for as long as their backend lives.
    closing: Arc<watch::Sender<bool>>,
}

/// The API's routes over `controller`.
pub fn router(controller: Controller) -> Router {
    router_with(controller, Arc::new(watch::Sender::new(false)))
}

fn router_with(controller: Controller, closing: Arc<watch::Sender<bool>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/backends", get(list_backends).post(spawn_backend))
        .route(
            "/v1/backends/{id}",
            get(get_backend).delete(terminate_backend),
        )
        .route("/v1/backends/{id}/events", get(backend_events))
        .route("/v1/drones", get(list_drones))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .with_state(ApiState {
            controller,
            closing,
        })
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = Arc::new(watch::Sender::new(false));
    let app = router_with(controller, closing.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.send_replace(true);
        })
        .await
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
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BackendRecord>), ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let spec = SpawnRequest::from_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid spawn request: {e}"),
        )
    })?;
    // In its own task: a caller hanging up must not cut a spawn off between writing the record
    // and telling the drone.
    let controller = state.controller;
    let record = tokio::spawn(async move { controller.spawn(spec).await })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("spawn failed: {e}"),
            )
        })??;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn list_backends(
    State(ApiState { controller, .. }): State<ApiState>,
) -> Json<Vec<Arc<BackendRecord>>> {
    Json(controller.backends())
}

async fn get_backend(
    State(ApiState { controller, .. }): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BackendRecord>, ApiError> {
    Ok(Json(controller.backend(&backend_id(&id)?).await?))
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

async fn list_drones(State(ApiState { controller, .. }): State<ApiState>) -> Json<Vec<DroneView>> {
    Json(controller.drones().iter().map(DroneNow::to_view).collect())
}

/// One `state` event per state change of the backend, ending after `terminated`. Fed by the
/// controller's view: a stream costs no watch of its own on the bus.
async fn backend_events(
    State(ApiState {
        controller,
        closing,
    }): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = backend_id(&id)?;
    // Another controller may have created it a moment ago.
    controller.backend(&id).await?;
    let (current, changes) = controller
        .view()
        .subscribe(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no backend named {id}")))?;
    let events = EventStream {
        closing: closing.subscribe(),
        view: controller.view().clone(),
        id,
        changes,
        last_state: None,
        pending: Some(current),
        done: false,
    };
    let stream = futures::stream::unfold(events, |mut s| async move {
        let record = s.next_record().await?;
        Some((Ok(state_event(&record)), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct EventStream {
    closing: watch::Receiver<bool>,
    view: ClusterView,
    id: BackendId,
    changes: broadcast::Receiver<Arc<BackendRecord>>,
    last_state: Option<BackendState>,
    pending: Option<Arc<BackendRecord>>,
    done: bool,
}

impl EventStream {
    /// The next record whose state differs from the last one sent; `None` after `terminated`,
    /// when the backend is forgotten, or when the server shuts down.
    async fn next_record(&mut self) -> Option<Arc<BackendRecord>> {
        if self.done {
            return None;
        }
        loop {
            let record = match self.pending.take() {
                Some(record) => record,
                None => tokio::select! {
                    _ = self.closing.wait_for(|closing| *closing) => return None,
                    change = self.changes.recv() => match change {
                        Ok(record) => record,
                        // Fell behind: skip to the latest version.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            Arc::clone(&self.view.backend(&self.id)?.record)
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                },
            };
            if self.last_state == Some(record.state) {
                continue;
            }
            self.last_state = Some(record.state);
            self.done = record.is_terminated();
            return Some(record);
        }
    }
}

fn state_event(record: &BackendRecord) -> Event {
    Event::default()
        .event("state")
        .json_data(record)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}
