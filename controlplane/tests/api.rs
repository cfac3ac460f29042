//! The HTTP API served on an ephemeral port over a controller on the in-memory bus: JSON errors
//! with statuses that say whose fault it is, spawn and terminate, and the event stream.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use common::{report, within, Answer, Cluster, FakeDrone, LONG_GRACE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plane_controlplane::api::{ApiConfig, ApiToken};
use plane_protocol::messages::{
    Ack, BackendState, DroneCommand, ExecutorKind, PullProgress, TerminationReason,
};
use plane_protocol::records::BackendRecord;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// The API of `cluster`'s controller on `127.0.0.1:0`; dropping it stops the server.
struct Api {
    addr: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization` with every request.
    authorization: Option<String>,
    _shutdown: oneshot::Sender<()>,
}

impl Api {
    async fn serve(cluster: &Cluster) -> Api {
        Self::serve_with(cluster, ApiConfig::default()).await
    }

    async fn serve_with(cluster: &Cluster, config: ApiConfig) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let controller = cluster.controller.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            plane_controlplane::api::serve(listener, controller, config, shutdown)
                .await
                .expect("the API serves");
        });
        Api {
            addr,
            http: Client::builder(TokioExecutor::new()).build_http(),
            authorization: None,
            _shutdown: shutdown,
        }
    }

    /// The event stream of backend `id`.
    async fn events(&self, id: &impl std::fmt::Display) -> Events {
        let response = self
            .send(Method::GET, &format!("/v1/backends/{id}/events"), "")
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        Events {
            body: response.into_body(),
            buffer: BytesMut::new(),
        }
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> hyper::Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        within(&format!("{path} answers"), self.http.request(request))
            .await
            .expect("the API is reachable")
    }

    /// Sends a request and returns the status and the JSON body (which every answer has).
    async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self.send(method, path, body).await;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = within("body", response.into_body().collect())
            .await
            .expect("a complete body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path} answered {status} with a non-JSON body ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(content_type, "application/json", "{path}: {json}");
        (status, json)
    }
}

/// The `error` text of an error body, failing if the body is not `{"error": "..."}`.
fn error_of(body: &Value) -> &str {
    let object = body.as_object().expect("an error body is an object");
    assert_eq!(object.len(), 1, "{body}");
    object
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no error text in {body}"))
}

#[tokio::test]
async fn a_bad_spawn_body_is_a_400_naming_the_field() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let api = Api::serve(&cluster).await;
    let cases = [
        (r#"{"executable": {"command": []}}"#, "executable.command"),
        (
            r#"{"executable": {"command": ["x"]}, "max_idle_secs": "ten"}"#,
            "max_idle_secs",
        ),
        (
            r#"{"executable": {"command": ["x"]}, "env": {"PORT": "1"}}"#,
            "env.PORT",
        ),
        (
            r#"{"executable": {"command": ["x"]}, "colour": 1}"#,
            "colour",
        ),
        ("{}", "executable"),
        ("not json", "body"),
    ];
    for (body, field) in cases {
        let (status, json) = api.call(Method::POST, "/v1/backends", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        let error = error_of(&json);
        assert!(
            error.contains(field),
            "{body}: {error:?} does not name {field}"
        );
    }
    // Nothing was scheduled (and no drone was even needed to find out).
    let (status, json) = api.call(Method::GET, "/v1/backends", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, Value::Array(vec![]));
}

#[tokio::test]
async fn unknown_backends_and_paths_are_json_404s() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let api = Api::serve(&cluster).await;
    for path in [
        "/v1/backends/no-such-backend",
        "/v1/backends/Not_A_Valid_Id",
        "/v1/backends/no-such-backend/events",
    ] {
        let (status, json) = api.call(Method::GET, path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {json}");
        assert!(
            error_of(&json).contains("no backend named"),
            "{path}: {json}"
        );
    }
    let (status, json) = api
        .call(Method::DELETE, "/v1/backends/no-such-backend", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");

    let (status, json) = api.call(Method::GET, "/v2/nothing/here", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    assert!(error_of(&json).contains("/v2/nothing/here"), "{json}");

    let (status, json) = api.call(Method::PUT, "/v1/backends", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{json}");
    assert!(error_of(&json).contains("PUT"), "{json}");
}

#[tokio::test]
async fn spawn_without_drones_is_a_503() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let api = Api::serve(&cluster).await;
    let (status, json) = api
        .call(
            Method::POST,
            "/v1/backends",
            r#"{"executable": {"command": ["x"]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(error_of(&json).contains("no drone"), "{json}");
}

#[tokio::test]
async fn spawn_get_and_terminate_over_http() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let api = Api::serve(&cluster).await;

    let (status, json) = api
        .call(
            Method::POST,
            "/v1/backends",
            r#"{"executable": {"command": ["my-server"]}, "max_idle_secs": 45}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let record: BackendRecord = serde_json::from_value(json.clone()).expect("a backend record");
    assert_eq!(json["state"], "scheduled");
    assert_eq!(json["drone"], "d1");
    assert_eq!(record.max_idle_secs, 45);
    let DroneCommand::Spawn {
        backend,
        spec,
        token,
        credentials,
    } = drone.next().await
    else {
        panic!("expected a spawn command");
    };
    assert_eq!(backend, record.id);
    assert_eq!(spec.executable.command, ["my-server"]);
    assert!(
        token.is_none() && json.get("token").is_none(),
        "no token unless asked"
    );
    assert!(credentials.is_none());

    let path = format!("/v1/backends/{}", record.id);
    let (status, json) = api.call(Method::GET, &path, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<BackendRecord>(json).expect("record"),
        record
    );

    // Not yet terminated: accepted, and the drone was told.
    let (status, json) = api.call(Method::DELETE, &path, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(
        drone.next().await,
        DroneCommand::Terminate {
            backend: record.id.clone()
        }
    );
    let end = report(
        &record.id,
        "d1",
        1,
        BackendState::Terminated,
        Some(TerminationReason::Terminated),
    );
    assert_eq!(cluster.report(&end).await, Ack::Accepted);
    let (status, json) = api.call(Method::DELETE, &path, "").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["state"], "terminated");
    assert_eq!(json["reason"], "terminated");
    drone.assert_no_more();
}

/// Everything the API and the store show of backend `id`: its status, the list, its first
/// event and the stored records, each named, as text.
async fn everything_shown(api: &Api, cluster: &Cluster, id: &str) -> Vec<(&'static str, String)> {
    let (_, status) = api
        .call(Method::GET, &format!("/v1/backends/{id}"), "")
        .await;
    let (_, list) = api.call(Method::GET, "/v1/backends", "").await;
    let mut events = api.events(&id).await;
    let event = events.next().await.expect("the current state");
    vec![
        ("status", status.to_string()),
        ("list", list.to_string()),
        ("event", serde_json::to_string(&event).expect("json")),
        (
            "stored record",
            serde_json::to_string(&cluster.controller.backends()).expect("json"),
        ),
    ]
}

/// Reads `state` events from a server-sent event stream.
struct Events {
    body: Incoming,
    buffer: BytesMut,
}

impl Events {
    /// The next `state` event's record; `None` once the stream has ended.
    async fn next(&mut self) -> Option<BackendRecord> {
        let (name, record) = self.next_named().await?;
        assert_eq!(name, "state");
        Some(record)
    }

    /// The next event's name and record; `None` once the stream has ended.
    async fn next_named(&mut self) -> Option<(String, BackendRecord)> {
        loop {
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8(self.buffer[..at].to_vec()).expect("UTF-8 events");
                self.buffer.advance(at + 2);
                let mut name = "message";
                let mut data = Vec::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // A keep-alive comment.
                }
                let record = serde_json::from_str(&data.join("\n")).expect("a backend record");
                return Some((name.to_string(), record));
            }
            match within("an event", self.body.frame()).await {
                None => {
                    assert!(self.buffer.is_empty(), "stream ended inside an event");
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.expect("a readable stream").into_data() {
                        self.buffer.extend_from_slice(data.chunk());
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_token_is_in_the_spawn_answer_and_the_drone_command_and_nowhere_else() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let mut drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let api = Api::serve(&cluster).await;
    let (status, json) = api
        .call(
            Method::POST,
            "/v1/backends",
            r#"{"executable": {"command": ["my-server"]}, "require_token": true}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let token = json["token"].as_str().expect("a token").to_string();
    assert_eq!(token.len(), plane_protocol::token::TOKEN_LEN);
    assert_eq!(json["spec"]["require_token"], true);
    let id = json["id"].as_str().expect("id").to_string();
    let DroneCommand::Spawn {
        token: sent, spec, ..
    } = drone.next().await
    else {
        panic!("expected a spawn command");
    };
    assert!(spec.require_token);
    assert_eq!(sent.as_ref().map(|t| t.as_str()), Some(token.as_str()));

    // Status, list and the event stream: the record, never the token.
    for (what, text) in everything_shown(&api, &cluster, &id).await {
        assert!(!text.contains(&token), "the token is in the {what}: {text}");
        assert!(
            !text.contains("\"token\""),
            "a token field in the {what}: {text}"
        );
    }
}

#[tokio::test]
async fn registry_credentials_reach_the_docker_drone_and_nothing_else() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("proc", 0, 1).await;
    let api = Api::serve(&cluster).await;
    let body = r#"{"executable": {"image": "127.0.0.1:5000/app:v1", "pull_policy": "always",
        "credentials": {"username": "robot", "password": "s3cret-pa55"}},
        "resources": {"memory_bytes": 67108864, "cpu_millis": 250, "pids": 32}}"#;
    // Only a process drone: the refusal says why.
    let (status, json) = api.call(Method::POST, "/v1/backends", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    let error = json["error"].as_str().expect("an error");
    assert!(error.contains("docker executor"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");

    cluster.heartbeat_of("dock", ExecutorKind::Docker).await;
    let mut drone = FakeDrone::start(&cluster, "dock", Answer::Accept).await;
    let (status, json) = api.call(Method::POST, "/v1/backends", body).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["drone"], "dock", "only the docker drone can run it");
    let id = json["id"].as_str().expect("id").to_string();
    let DroneCommand::Spawn {
        spec, credentials, ..
    } = drone.next().await
    else {
        panic!("expected a spawn command");
    };
    assert_eq!(
        spec.executable.image.as_deref(),
        Some("127.0.0.1:5000/app:v1")
    );
    assert_eq!(spec.resources.cpu_millis, Some(250));
    let credentials = credentials.expect("credentials for the drone");
    assert_eq!(
        (credentials.username.as_str(), credentials.password.as_str()),
        ("robot", "s3cret-pa55")
    );

    let shown = everything_shown(&api, &cluster, &id).await;
    for (what, text) in [("spawn answer", json.to_string())]
        .into_iter()
        .chain(shown)
    {
        assert!(
            !text.contains("s3cret"),
            "the password is in the {what}: {text}"
        );
        assert!(
            !text.contains("credentials"),
            "a credentials field in the {what}: {text}"
        );
    }
}

#[tokio::test]
async fn events_give_the_current_state_then_each_change_and_end_after_terminated() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let _drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(common::spec()))
        .await
        .expect("spawned");
    let api = Api::serve(&cluster).await;

    let response = api
        .send(
            Method::GET,
            &format!("/v1/backends/{}/events", record.id),
            "",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut events = Events {
        body: response.into_body(),
        buffer: BytesMut::new(),
    };
    let first = events.next().await.expect("the current state");
    assert_eq!(first, record.record);

    let steps = [
        (BackendState::Loading, None),
        (BackendState::Starting, None),
        (BackendState::Ready, None),
        (BackendState::Terminating, None),
        (BackendState::Terminated, Some(TerminationReason::Swept)),
    ];
    for (seq, (state, reason)) in (1..).zip(steps) {
        let ack = cluster
            .report(&report(&record.id, "d1", seq, state, reason))
            .await;
        assert_eq!(ack, Ack::Accepted);
        let event = events.next().await.expect("an event per change");
        assert_eq!(
            (event.state, event.reason, event.last_seq),
            (state, reason, seq)
        );
    }
    assert!(events.next().await.is_none(), "events after terminated");
}

#[tokio::test]
async fn pull_progress_while_loading_comes_as_updated_events_and_stays_in_the_record() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let _drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(common::spec()))
        .await
        .expect("spawned");
    let api = Api::serve(&cluster).await;
    let mut events = api.events(&record.id).await;
    events.next().await.expect("the current state");
    let loading = report(&record.id, "d1", 1, BackendState::Loading, None);
    assert_eq!(cluster.report(&loading).await, Ack::Accepted);
    let (name, _) = events.next_named().await.expect("loading");
    assert_eq!(name, "state");
    let figures = [(0, 2, 0, 1000), (1, 2, 600, 1000), (2, 2, 1000, 1000)];
    for (seq, (layers_done, layers_total, bytes_done, bytes_total)) in (2..).zip(figures) {
        let progress = PullProgress {
            layers_done,
            layers_total,
            bytes_done,
            bytes_total,
        };
        let mut pulling = report(&record.id, "d1", seq, BackendState::Loading, None);
        pulling.pull = Some(progress);
        assert_eq!(cluster.report(&pulling).await, Ack::Accepted);
        let (name, event) = events.next_named().await.expect("an update");
        assert_eq!(name, "updated");
        assert_eq!(
            (event.state, event.pull),
            (BackendState::Loading, Some(progress))
        );
    }
    let starting = report(&record.id, "d1", 5, BackendState::Starting, None);
    assert_eq!(cluster.report(&starting).await, Ack::Accepted);
    let (name, event) = events.next_named().await.expect("starting");
    assert_eq!(
        (name.as_str(), event.state),
        ("state", BackendState::Starting)
    );
    // The last figures stay: how the image got there is still worth knowing.
    let (_, status) = api
        .call(Method::GET, &format!("/v1/backends/{}", record.id), "")
        .await;
    assert_eq!(status["pull"]["layers_done"], 2, "{status}");
    assert_eq!(status["pull"]["bytes_total"], 1000, "{status}");
}

#[tokio::test]
async fn events_of_a_terminated_backend_end_after_one_event() {
    let cluster = Cluster::start(LONG_GRACE).await;
    cluster.heartbeat("d1", 0, 1).await;
    let _drone = FakeDrone::start(&cluster, "d1", Answer::Accept).await;
    let record = within("spawn", cluster.controller.spawn(common::spec()))
        .await
        .expect("spawned");
    let end = report(
        &record.id,
        "d1",
        1,
        BackendState::Terminated,
        Some(TerminationReason::Exited),
    );
    assert_eq!(cluster.report(&end).await, Ack::Accepted);
    let api = Api::serve(&cluster).await;
    let mut events = api.events(&record.id).await;
    let only = events.next().await.expect("the current state");
    assert_eq!(only.state, BackendState::Terminated);
    assert_eq!(only.reason, Some(TerminationReason::Exited));
    assert!(events.next().await.is_none(), "events after terminated");
}

const TOKEN: &str = "a-token-of-32-characters-0123456";

#[tokio::test]
async fn with_a_token_every_endpoint_but_healthz_requires_it() {
    let cluster = Cluster::start(LONG_GRACE).await;
    let config = ApiConfig {
        token: Some(ApiToken::new(TOKEN).expect("valid token")),
        ..ApiConfig::default()
    };
    let mut api = Api::serve_with(&cluster, config).await;
    let (status, _) = api.call(Method::GET, "/healthz", "").await;
    assert_eq!(status, StatusCode::OK, "health checks need no token");
    for (method, path) in [
        (Method::GET, "/v1/backends"),
        (Method::POST, "/v1/backends"),
        (Method::GET, "/v1/backends/b1"),
        (Method::DELETE, "/v1/backends/b1"),
        (Method::GET, "/v1/backends/b1/events"),
        (Method::GET, "/v1/drones"),
        (Method::GET, "/no/such/path"),
    ] {
        for authorization in [
            None,
            Some("Bearer wrong-token-of-32-characters-01"),
            Some(TOKEN),
        ] {
            // The last one lacks the scheme: a bare token is not a bearer token.
            api.authorization = authorization.map(str::to_string);
            let response = api.send(method.clone(), path, "{}").await;
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}"
            );
            assert_eq!(
                response
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..])
            );
        }
        api.authorization = None;
        let (_, json) = api.call(method.clone(), path, "{}").await;
        assert!(error_of(&json).contains("requires a token"), "{json}");
    }
    api.authorization = Some(format!("Bearer {TOKEN}"));
    let (status, json) = api.call(Method::GET, "/v1/backends", "").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, json) = api
        .call(Method::GET, "/v1/backends/no-such-backend", "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
}

#[tokio::test]
async fn slow_headers_too_many_connections_and_large_bodies_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(LONG_GRACE).await;
    let config = ApiConfig {
        max_connections: 2,
        header_read_timeout: std::time::Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let api = Api::serve_with(&cluster, config).await;

    // Slowloris: half a request head, then nothing. The server closes the connection.
    let mut slow = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("connects");
    slow.write_all(b"GET /v1/backends HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    let mut answer = Vec::new();
    within(
        "the slow connection to be closed",
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("read until closed");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // Two connections held open (mid-request) take both slots: a third is closed at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(api.addr)
            .await
            .expect("connects");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("writes");
        let mut buf = [0u8; 12];
        within("healthz", conn.read_exact(&mut buf))
            .await
            .expect("answered");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(conn);
    }
    let mut third = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("accepted");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = within(
        "the third connection to be closed",
        third.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_err() || buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);

    // A body over the cap is refused with 413, as JSON (once a slot is free again).
    let big = format!(
        r#"{{"executable": {{"command": ["{}"]}}}}"#,
        "x".repeat(300 * 1024)
    );
    let (status, json) = when_a_slot_is_free(&api, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
}

/// Retries the request until the server has noticed the closed connections and freed a slot.
async fn when_a_slot_is_free(api: &Api, body: &str) -> (StatusCode, Value) {
    common::eventually("a free connection slot", || async {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/v1/backends", api.addr))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let response = api.http.request(request).await.ok()?;
        let status = response.status();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    })
    .await
}
