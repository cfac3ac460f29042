//! `GET /v1/backends/{id}/events`: server-sent events, one `state` event per state change of
//! the backend, ending after `terminated`, and `updated` events for other changes worth
//! following (the pull of its image while it loads, a new idle timeout). Fed by the controller's view: a stream costs no
//! watch of its own on the bus, and a slow client skips to the latest version instead of
//! holding memory for every change.

use super::{backend_id, ApiError, ApiState};
use crate::view::ClusterView;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{BackendState, PullProgress};
use plane_protocol::records::BackendRecord;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// The handler.
pub(super) async fn backend_events(
    State(ApiState {
        controller,
        closing,
        ..
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
        last_pull: None,
        last_max_idle: current.max_idle_secs,
        pending: Some(current),
        done: false,
    };
    let stream = futures::stream::unfold(events, |mut s| async move {
        let (kind, record) = s.next_record().await?;
        Some((Ok(event(kind, &record)), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct EventStream {
    closing: watch::Receiver<bool>,
    view: ClusterView,
    id: BackendId,
    changes: broadcast::Receiver<Arc<BackendRecord>>,
    last_state: Option<BackendState>,
    last_pull: Option<PullProgress>,
    last_max_idle: u64,
    pending: Option<Arc<BackendRecord>>,
    done: bool,
}

impl EventStream {
    /// The next record whose state differs from the last one sent (`state`), or whose pull
    /// progress or idle timeout does (`updated`); `None` after `terminated`, when the backend
    /// is forgotten, or when the server shuts down.
    async fn next_record(&mut self) -> Option<(&'static str, Arc<BackendRecord>)> {
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
                if record.pull != self.last_pull && record.state == BackendState::Loading {
                    self.last_pull = record.pull;
                    self.last_max_idle = record.max_idle_secs;
                    return Some(("updated", record));
                }
                if record.max_idle_secs != self.last_max_idle {
                    self.last_max_idle = record.max_idle_secs;
                    return Some(("updated", record));
                }
                continue;
            }
            self.last_state = Some(record.state);
            self.last_pull = record.pull;
            self.last_max_idle = record.max_idle_secs;
            self.done = record.is_terminated();
            return Some(("state", record));
        }
    }
}

fn event(kind: &'static str, record: &BackendRecord) -> Event {
    Event::default()
        .event(kind)
        .json_data(record)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}
