//! A typed client of the HTTP API, used by the `plane` CLI (and usable by apps written in Rust).

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plane_protocol::error_chain;
use plane_protocol::ids::BackendId;
use plane_protocol::keys::{ConnectAnswer, ConnectRequest};
use plane_protocol::messages::LogRecord;
use plane_protocol::records::{BackendRecord, BackendStatus, DroneView, SpawnAnswer};
use plane_protocol::spawn_request::SpawnRequest;
use serde::de::DeserializeOwned;
use std::pin::Pin;
use std::time::Duration;

/// How long connecting to the API may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one API call (not an event stream) may take; a spawn tries several drones.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API address {url:?}: {reason}")]
    BadAddress { url: String, reason: String },
    #[error("the API token is not valid in an HTTP header (visible ASCII only)")]
    BadToken,
    #[error("invalid backend id {id:?}")]
    BadId {
        id: String,
        source: plane_protocol::ids::IdError,
    },
    #[error("invalid drone id {id:?}")]
    BadDroneId {
        id: String,
        source: plane_protocol::ids::IdError,
    },
    /// `detail` is the whole cause chain: hyper's own message ("client error (Connect)") says
    /// little by itself.
    #[error(
        "could not reach the Plane API at {url}: {detail} (is Plane running there? \
         `plane dev` starts one; --api or PLANE_API names another)"
    )]
    Unreachable { url: String, detail: String },
    #[error("reading the API's answer")]
    Body(#[from] hyper::Error),
    #[error("the Plane API at {url} did not answer within {REQUEST_TIMEOUT:?}")]
    TimedOut { url: String },
    #[error("the API answered {status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("the API's answer did not decode")]
    Decode(#[from] serde_json::Error),
    #[error("the event stream is malformed: {0}")]
    Stream(String),
}

/// A client of one Plane API, e.g. `http://127.0.0.1:9080`.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Sent with every request (the API's bearer token), marked sensitive.
    authorization: Option<http::HeaderValue>,
}

impl ApiClient {
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri =
            base.parse()
                .map_err(|e: http::uri::InvalidUri| ClientError::BadAddress {
                    url: base.clone(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ClientError::BadAddress {
                url: base,
                reason: "expected http://HOST:PORT".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // Requests are small and answered at once: no Nagle delay on them.
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient {
            base,
            http,
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer {token}` with every request.
    pub fn with_token(self, token: &str) -> Result<Self, ClientError> {
        self.with_authorization(&format!("Bearer {}", token.trim()))
    }

    /// Sends this `Authorization` value with every request.
    pub fn with_authorization(mut self, value: &str) -> Result<Self, ClientError> {
        let mut value = http::HeaderValue::from_str(value).map_err(|_| ClientError::BadToken)?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// Spawns a backend; the answer carries its access token when it requires one (no other
    /// answer ever does).
    pub async fn spawn(&self, request: &SpawnRequest) -> Result<SpawnAnswer, ClientError> {
        self.spawn_once(request, None).await
    }

    /// [`ApiClient::spawn`] with an `Idempotency-Key`: a retry with the same key (within ten
    /// minutes) gets the first answer instead of a second backend.
    pub async fn spawn_once(
        &self,
        request: &SpawnRequest,
        idempotency_key: Option<&str>,
    ) -> Result<SpawnAnswer, ClientError> {
        let body = serde_json::to_vec(request)?;
        self.json_with(Method::POST, "/v1/backends", Some(body), idempotency_key)
            .await
    }

    /// The live backend of `request.key`, or a new one started with its spawn (`created`); the
    /// answer carries the backend's token when it requires one. With `idempotency_key`, a
    /// retry gets the first answer.
    pub async fn connect(
        &self,
        request: &ConnectRequest,
        idempotency_key: Option<&str>,
    ) -> Result<ConnectAnswer, ClientError> {
        let body = serde_json::to_vec(request)?;
        self.json_with(Method::POST, "/v1/connect", Some(body), idempotency_key)
            .await
    }

    /// The backend's record and latest resource use.
    pub async fn backend(&self, id: &str) -> Result<BackendStatus, ClientError> {
        let id = parse_id(id)?;
        self.json(Method::GET, &format!("/v1/backends/{id}"), None)
            .await
    }

    pub async fn backends(&self) -> Result<Vec<BackendRecord>, ClientError> {
        self.json(Method::GET, "/v1/backends", None).await
    }

    pub async fn terminate(&self, id: &str) -> Result<BackendRecord, ClientError> {
        let id = parse_id(id)?;
        self.json(Method::DELETE, &format!("/v1/backends/{id}"), None)
            .await
    }

    /// Changes a running backend's idle timeout (`PATCH /v1/backends/{id}`); its record after.
    pub async fn set_idle(
        &self,
        id: &str,
        max_idle_secs: u64,
    ) -> Result<BackendRecord, ClientError> {
        let id = parse_id(id)?;
        let body = serde_json::to_vec(&plane_protocol::spawn_request::BackendUpdate {
            max_idle_secs: Some(max_idle_secs),
        })?;
        self.json(Method::PATCH, &format!("/v1/backends/{id}"), Some(body))
            .await
    }

    /// Drains a drone (`POST /v1/drones/{id}/drain`): no new backends; with `deadline_secs`,
    /// what still runs then is terminated.
    pub async fn drain(
        &self,
        drone: &str,
        deadline_secs: Option<u64>,
    ) -> Result<DroneView, ClientError> {
        let body =
            serde_json::to_vec(&plane_protocol::spawn_request::DrainRequest { deadline_secs })?;
        self.json(
            Method::POST,
            &format!("/v1/drones/{}/drain", drone_path(drone)?),
            Some(body),
        )
        .await
    }

    /// Cancels a drain (`DELETE /v1/drones/{id}/drain`).
    pub async fn undrain(&self, drone: &str) -> Result<DroneView, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/v1/drones/{}/drain", drone_path(drone)?),
            None,
        )
        .await
    }

    pub async fn drones(&self) -> Result<Vec<DroneView>, ClientError> {
        self.json(Method::GET, "/v1/drones", None).await
    }

    /// Follows the backend's event stream: one record per state change, ending after
    /// `terminated`.
    pub async fn events(&self, id: &str) -> Result<EventStream, ClientError> {
        let id = parse_id(id)?;
        let response = self
            .send(Method::GET, &format!("/v1/backends/{id}/events"), None)
            .await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        Ok(EventStream::new(response.into_body()))
    }

    /// The backend's kept log lines, oldest first; with `follow`, then each new one until the
    /// backend has ended.
    pub async fn logs(&self, id: &str, follow: bool) -> Result<LogStream, ClientError> {
        let id = parse_id(id)?;
        let path = format!("/v1/backends/{id}/logs?follow={follow}");
        let response = self.send(Method::GET, &path, None).await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        Ok(LogStream {
            events: EventStream::new(response.into_body()),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        self.send_with(method, path, body, None).await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut request = Request::builder().method(method).uri(&url);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization.clone());
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadAddress {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        self.http
            .request(request)
            .await
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: error_chain(&error),
            })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        self.json_with(method, path, body, None).await
    }

    async fn json_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let call = async {
            let response = self.send_with(method, path, body, idempotency_key).await?;
            if !response.status().is_success() {
                return Err(api_error(response).await);
            }
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok(serde_json::from_slice(&bytes)?)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| ClientError::TimedOut {
                url: self.base.clone(),
            })?
    }
}

fn parse_id(id: &str) -> Result<BackendId, ClientError> {
    BackendId::new(id).map_err(|source| ClientError::BadId {
        id: id.to_string(),
        source,
    })
}

/// A drone id, checked before it goes into a path.
fn drone_path(id: &str) -> Result<plane_protocol::ids::DroneId, ClientError> {
    plane_protocol::ids::DroneId::new(id).map_err(|source| ClientError::BadDroneId {
        id: id.to_string(),
        source,
    })
}

async fn api_error(response: hyper::Response<Incoming>) -> ClientError {
    let status = response.status();
    let message = match response.into_body().collect().await {
        Ok(body) => {
            let bytes = body.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(e) => format!("(unreadable body: {e})"),
    };
    ClientError::Api { status, message }
}

/// A server-sent event stream of backend records (parsed by `eventsource-stream`).
pub struct EventStream {
    events: Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<hyper::Error>>> + Send>>,
}

impl EventStream {
    fn new(body: Incoming) -> Self {
        EventStream {
            events: Box::pin(body.into_data_stream().eventsource()),
        }
    }

    /// The next state change; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<BackendRecord, ClientError>> {
        loop {
            match self.next_event().await? {
                Ok(BackendEvent::State(record)) => return Some(Ok(record)),
                Ok(BackendEvent::Updated(_)) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The next server-sent event; `None` when the stream ended.
    async fn next_raw(&mut self) -> Option<Result<Event, ClientError>> {
        Some(match self.events.next().await? {
            Ok(event) => Ok(event),
            Err(EventStreamError::Transport(e)) => Err(e.into()),
            Err(e) => Err(ClientError::Stream(e.to_string())),
        })
    }

    /// The next state change or update (pull progress); `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<BackendEvent, ClientError>> {
        loop {
            let event = match self.next_raw().await? {
                Ok(event) => event,
                Err(error) => return Some(Err(error)),
            };
            let wrap = match event.event.as_str() {
                "state" => BackendEvent::State,
                "updated" => BackendEvent::Updated,
                _ => continue,
            };
            return Some(
                serde_json::from_str(&event.data)
                    .map(wrap)
                    .map_err(ClientError::from),
            );
        }
    }
}

/// A backend's log lines as server-sent events.
pub struct LogStream {
    events: EventStream,
}

impl LogStream {
    /// The next line; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<LogRecord, ClientError>> {
        loop {
            let event = match self.events.next_raw().await? {
                Ok(event) => event,
                Err(error) => return Some(Err(error)),
            };
            if event.event == "log" {
                return Some(serde_json::from_str(&event.data).map_err(ClientError::from));
            }
        }
    }
}

/// One event of a backend's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// Its state changed.
    State(BackendRecord),
    /// Something else changed (the pull of its image, while loading).
    Updated(BackendRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through the same parser `EventStream` uses and returns the state data.
    async fn state_data(chunks: Vec<&'static [u8]>) -> Vec<String> {
        let body = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        body.eventsource()
            .filter_map(|e| async move { e.ok().filter(|e| e.event == "state").map(|e| e.data) })
            .collect()
            .await
    }

    #[tokio::test]
    async fn parses_events_split_anywhere() {
        let stream: &'static [u8] =
            b": keep-alive\n\nevent: state\ndata: {\"a\":1}\n\nevent: state\r\ndata: 2\r\n\r\n";
        for split in 0..stream.len() {
            let found = state_data(vec![&stream[..split], &stream[split..]]).await;
            assert_eq!(found, ["{\"a\":1}", "2"], "split at {split}");
        }
    }

    #[test]
    fn rejects_non_http_addresses() {
        assert!(ApiClient::new("ftp://x").is_err());
        assert!(ApiClient::new("not a url").is_err());
        assert!(ApiClient::new("http://127.0.0.1:9080/").is_ok());
    }
}
