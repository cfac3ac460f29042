//! `GET /v1/backends/{id}/logs`: the backend's kept log lines as server-sent events (`event:
//! log`, data `{"seq", "at", "stream", "line"}`), oldest first; then, unless `?follow=false`,
//! each new line as its drone sends it, until the backend has ended and its last lines are in.
//! Read from the cluster's log on the bus, not through the controller's view: a stream costs one
//! ordered consumer while it is open, nothing after.

use super::{backend_id, ApiError, ApiState};
use crate::limits::LOG_DRAIN_AFTER_END;
use crate::Controller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use plane_bus::{LogEntry, LogReader};
use plane_protocol::error_chain;
use plane_protocol::ids::BackendId;
use plane_protocol::messages::{LogLine, LogRecord};
use plane_protocol::records::BackendRecord;
use std::collections::HashMap;
use std::convert::Infallible;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The handler.
pub(super) async fn backend_logs(
    State(ApiState {
        controller,
        closing,
        ..
    }): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = backend_id(&id)?;
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("follow must be true or false, not {other:?}"),
            ))
        }
    };
    let record = controller.backend(&id).await?;
    let follow = follow && !record.is_terminated();
    let reader = controller.logs(&record, follow).await?;
    let lines = Lines {
        controller,
        closing: closing.subscribe(),
        id,
        record,
        reader,
        following: follow,
        last_seq: 0,
    };
    let stream = futures::stream::unfold(lines, |mut lines| async move {
        let record = lines.next_record().await?;
        Some((Ok(event(&record)), lines))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Lines {
    controller: Controller,
    closing: watch::Receiver<bool>,
    id: BackendId,
    /// As it was when the stream opened (its drone is whose lines are read).
    record: BackendRecord,
    reader: LogReader,
    /// Still following: the backend has not ended yet.
    following: bool,
    last_seq: u64,
}

impl Lines {
    /// The next line; `None` at the end.
    async fn next_record(&mut self) -> Option<LogRecord> {
        loop {
            let entry = if self.following {
                self.next_while_live().await?
            } else {
                tokio::select! {
                    entry = self.reader.next() => entry,
                    closing = self.closing.wait_for(|closing| *closing) => {
                        drop(closing);
                        return None;
                    }
                }
            };
            let entry = match entry? {
                Ok(entry) => entry,
                Err(error) => {
                    warn!(backend = %self.id, error = %error_chain(&error), "reading the backend's log failed");
                    return None;
                }
            };
            if entry.seq <= self.last_seq {
                continue;
            }
            self.last_seq = entry.seq;
            match decode(&entry) {
                Some(line) => {
                    return Some(LogRecord {
                        seq: entry.seq,
                        line,
                    })
                }
                None => continue,
            }
        }
    }

    /// The next entry while the backend lives; once it has ended, a moment later (for its last
    /// lines), a reader of what is kept then takes over, and the stream ends after it.
    async fn next_while_live(&mut self) -> Option<Option<Result<LogEntry, plane_bus::BusError>>> {
        let (_, mut changes) = self.controller.view().subscribe(&self.id)?;
        let ended = async {
            loop {
                let terminated = self
                    .controller
                    .view()
                    .backend(&self.id)
                    .is_none_or(|held| held.record.is_terminated());
                if terminated {
                    return;
                }
                if changes.recv().await.is_err()
                    && self.controller.view().backend(&self.id).is_none()
                {
                    return;
                }
            }
        };
        enum Next {
            Entry(Option<Result<LogEntry, plane_bus::BusError>>),
            Ended,
            Closing,
        }
        let next = tokio::select! {
            entry = self.reader.next() => Next::Entry(entry),
            () = ended => Next::Ended,
            closing = self.closing.wait_for(|closing| *closing) => {
                drop(closing);
                Next::Closing
            }
        };
        match next {
            Next::Entry(entry) => Some(entry),
            Next::Closing => None,
            Next::Ended => {
                tokio::time::sleep(LOG_DRAIN_AFTER_END).await;
                match self.controller.logs(&self.record, false).await {
                    Ok(reader) => {
                        self.reader = reader;
                        self.following = false;
                        Some(self.reader.next().await)
                    }
                    Err(error) => {
                        warn!(backend = %self.id, error = %error_chain(&error), "reading the backend's last log lines failed");
                        None
                    }
                }
            }
        }
    }
}

fn decode(entry: &LogEntry) -> Option<LogLine> {
    match serde_json::from_slice(&entry.payload) {
        Ok(line) => Some(line),
        Err(error) => {
            debug!(seq = entry.seq, subject = %entry.subject, %error, "skipping a malformed log record");
            None
        }
    }
}

fn event(record: &LogRecord) -> Event {
    Event::default()
        .event("log")
        .json_data(record)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}
