//! Runs the real `plane-test-backend` binary and checks every endpoint and flag the end-to-end
//! tests rely on.

use futures::{SinkExt, StreamExt};
use plane_test_support::{curl, free_port, process_alive, ChildGuard};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);
const BACKEND_ID: &str = "test-backend-1";

struct Backend {
    child: ChildGuard,
    port: u16,
}

impl Backend {
    fn command(port: u16, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_plane-test-backend"));
        command
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PLANE_BACKEND_ID", BACKEND_ID)
            .env("PLANE_CLUSTER", "plane.test");
        command
    }

    /// Starts the backend and waits until it listens.
    fn start(args: &[&str]) -> Self {
        let port = free_port().unwrap();
        let child = ChildGuard::spawn("backend", Self::command(port, args)).unwrap();
        let line = child.wait_for_output("listening on", TIMEOUT).unwrap();
        assert_eq!(line, format!("listening on 127.0.0.1:{port}"));
        Backend { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

#[test]
fn root_names_the_backend() {
    let backend = Backend::start(&[]);
    let response = curl(&[&backend.url("/")]).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, format!("hello from {BACKEND_ID}\n"));
    backend.child.wait_for_output("GET /", TIMEOUT).unwrap();
}

#[test]
fn info_reports_request_env_and_peer() {
    let backend = Backend::start(&[]);
    let response = curl(&[
        "-X",
        "POST",
        "-H",
        "X-Custom: One",
        "-H",
        "x-custom: two",
        &backend.url("/info?a=1"),
    ])
    .unwrap();
    assert_eq!(response.status, 200);
    let info = response.json().unwrap();
    assert_eq!(info["method"], "POST");
    assert_eq!(info["path"], "/info");
    assert_eq!(info["headers"]["x-custom"], "One, two");
    assert_eq!(
        info["headers"]["host"],
        format!("127.0.0.1:{}", backend.port)
    );
    assert_eq!(info["env"]["PORT"], backend.port.to_string());
    assert_eq!(info["env"]["PLANE_BACKEND_ID"], BACKEND_ID);
    assert_eq!(info["env"]["PLANE_CLUSTER"], "plane.test");
    let peer = info["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    backend
        .child
        .wait_for_output("POST /info?a=1", TIMEOUT)
        .unwrap();
}

#[test]
fn stream_sends_chunks_over_time() {
    let backend = Backend::start(&[]);
    let started = Instant::now();
    let response = curl(&["-i", &backend.url("/stream?chunks=3&interval_ms=150")]).unwrap();
    assert_eq!(response.status, 200);
    let (head, body) = response.body.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let response = curl(&[&backend.url("/stream")]).unwrap();
    assert_eq!(response.body.lines().count(), 5);
}

#[test]
fn bad_queries_and_unknown_paths() {
    let backend = Backend::start(&[]);
    for path in [
        "/stream?chunks=many",
        "/stream?interval_ms=-1",
        "/exit?code=256",
        "/exit?code=x",
    ] {
        assert_eq!(curl(&[&backend.url(path)]).unwrap().status, 400, "{path}");
    }
    assert_eq!(curl(&[&backend.url("/nope")]).unwrap().status, 404);
    assert_eq!(
        curl(&["-X", "DELETE", &backend.url("/")]).unwrap().status,
        404
    );
    // A plain GET is not a WebSocket handshake.
    assert_eq!(curl(&[&backend.url("/ws")]).unwrap().status, 400);
    // Still serving after all that.
    assert_eq!(curl(&[&backend.url("/")]).unwrap().status, 200);
}

#[test]
fn exit_endpoint_answers_then_exits_with_the_code() {
    let backend = Backend::start(&[]);
    let response = curl(&[&backend.url("/exit?code=3")]).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "exiting with 3\n");
    assert_eq!(backend.child.wait_exit(TIMEOUT).unwrap().code(), Some(3));
}

#[test]
fn exit_code_flag_exits_before_listening() {
    let port = free_port().unwrap();
    let child =
        ChildGuard::spawn("backend", Backend::command(port, &["--exit-code", "4"])).unwrap();
    assert_eq!(child.wait_exit(TIMEOUT).unwrap().code(), Some(4));
    assert!(!child.output_so_far().contains("listening"));
}

#[test]
fn malformed_env_exits_with_2() {
    let mut command = Backend::command(0, &[]);
    command.env("PORT", "eighty");
    let child = ChildGuard::spawn("backend", command).unwrap();
    assert_eq!(child.wait_exit(TIMEOUT).unwrap().code(), Some(2));
    assert!(
        child.output_so_far().contains("PORT"),
        "{}",
        child.output_so_far()
    );

    let child = ChildGuard::spawn("backend", Backend::command(0, &["--frobnicate"])).unwrap();
    assert_eq!(child.wait_exit(TIMEOUT).unwrap().code(), Some(2));
}

#[test]
fn ready_delay_postpones_listening() {
    let started = Instant::now();
    let _backend = Backend::start(&["--ready-delay-ms", "300"]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_stops_it_unless_ignored() {
    let backend = Backend::start(&[]);
    backend.child.signal(libc::SIGTERM).unwrap();
    assert_eq!(
        backend.child.wait_exit(TIMEOUT).unwrap().signal(),
        Some(libc::SIGTERM)
    );

    let backend = Backend::start(&["--ignore-sigterm"]);
    backend.child.signal(libc::SIGTERM).unwrap();
    // The signal is delivered before the process next runs, so answering proves it survived.
    assert_eq!(curl(&[&backend.url("/")]).unwrap().status, 200);
    assert!(process_alive(backend.child.pid()));
    backend.child.signal(libc::SIGKILL).unwrap();
    assert_eq!(
        backend.child.wait_exit(TIMEOUT).unwrap().signal(),
        Some(libc::SIGKILL)
    );
}

#[tokio::test]
async fn websocket_echoes_and_closes() {
    let backend = Backend::start(&[]);
    let url = format!("ws://127.0.0.1:{}/ws", backend.port);
    tokio::time::timeout(TIMEOUT, async {
        let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(response.status(), 101);

        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 255])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![0u8, 1, 255])
        );

        ws.close(None).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
        assert!(ws.next().await.is_none());
    })
    .await
    .expect("websocket exchange timed out");
}
