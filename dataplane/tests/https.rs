//! HTTPS through the proxy: HTTP/1.1 over TLS with bodies large and small both ways, keep-alive,
//! WebSockets counted while open, a silent client cut at the head timeout; and the plain
//! listener of an HTTPS proxy sending clients to https.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plane_dataplane::ProxyConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Reads one response with a `content-length` (or chunked to its last chunk) from `stream`:
/// its head and body.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = within(stream.read(&mut byte)).await.expect("read head");
        assert_eq!(
            n,
            1,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).expect("ascii head");
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
    {
        body.resize(len.trim().parse().expect("length"), 0);
        within(stream.read_exact(&mut body)).await.expect("body");
    } else if lower.contains("transfer-encoding: chunked") {
        while !body.ends_with(b"\r\n0\r\n\r\n") && body != b"0\r\n\r\n" {
            let n = within(stream.read(&mut byte)).await.expect("chunk");
            assert_eq!(n, 1, "closed inside a chunked body");
            body.push(byte[0]);
        }
    }
    (head, body)
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) {
    within(stream.write_all(request)).await.expect("send");
    within(stream.flush()).await.expect("flush");
}

#[tokio::test]
async fn requests_over_tls_are_proxied_and_say_https() {
    let proxy = HttpsProxy::start(ProxyConfig::default(), &[b"http/1.1"]).await;
    let backend = Backend::echo("tls").await;
    let route = proxy.table.set_ready("app", backend.addr);
    let mut stream = proxy.connect().await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    for path in ["/one", "/two"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: app.plane.localhost\r\n\r\n");
        send(&mut stream, request.as_bytes()).await;
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let body = String::from_utf8(body).expect("text");
        assert_eq!(echoed(&body, "target"), [path]);
        assert_eq!(echoed(&body, "x-forwarded-proto"), ["https"]);
    }
    assert_eq!(backend.accepted(), 1, "one pooled backend connection");
    drop(stream);
    eventually("the requests to stop counting", || route.active() == 0).await;
}

#[tokio::test]
async fn large_chunked_and_uploaded_bodies_cross_tls_intact() {
    let proxy = HttpsProxy::start(ProxyConfig::default(), &[b"http/1.1"]).await;
    let large: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let served = large.clone();
    let backend = Backend::start(move |request: Request<Incoming>| {
        let served = served.clone();
        async move {
            match request.uri().path() {
                "/large" => Response::new(full(served)),
                "/chunked" => {
                    let chunks = futures::stream::iter(["abc", "defg", "hi"].map(|c| {
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                            bytes::Bytes::from(c),
                        ))
                    }));
                    Response::new(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
                }
                _ => {
                    let body = request.into_body().collect().await.expect("upload");
                    let body = body.to_bytes();
                    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                    Response::new(full(format!("{} {sum}", body.len())))
                }
            }
        }
    })
    .await;
    proxy.table.set_ready("app", backend.addr);
    let mut stream = proxy.connect().await;

    send(
        &mut stream,
        b"GET /large HTTP/1.1\r\nHost: app.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body == large, "the 1 MiB body arrives whole and in order");

    send(
        &mut stream,
        b"GET /chunked HTTP/1.1\r\nHost: app.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut stream).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(
        String::from_utf8(body).expect("text"),
        "3\r\nabc\r\n4\r\ndefg\r\n2\r\nhi\r\n0\r\n\r\n"
    );

    let upload = &large[..300_000];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.plane.localhost\r\ncontent-length: {}\r\n\r\n",
        upload.len()
    );
    send(&mut stream, head.as_bytes()).await;
    send(&mut stream, upload).await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(
        String::from_utf8(body).expect("text"),
        format!("{} {sum}", upload.len())
    );
}

#[tokio::test]
async fn websockets_over_tls_echo_and_count_while_open() {
    let proxy = HttpsProxy::start(ProxyConfig::default(), &[b"http/1.1"]).await;
    let route = proxy.table.set_ready("app", websocket_echo().await.0);
    let stream = proxy.connect().await;
    let request = "wss://app.plane.localhost/socket"
        .into_client_request()
        .expect("request");
    let (mut ws, response) = within(tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake through the proxy");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(route.active(), 1, "an open WebSocket counts");
    let big = "x".repeat(100_000);
    for text in ["hello", big.as_str()] {
        within(ws.send(Message::text(text))).await.expect("send");
        let echoed = within(ws.next()).await.expect("a message").expect("ok");
        assert_eq!(echoed, Message::text(text));
    }
    within(ws.close(None)).await.expect("close");
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);
    eventually("the relay to end", || route.active() == 0).await;
}

#[tokio::test]
async fn a_client_that_never_completes_its_handshake_is_cut() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = HttpsProxy::start(config, &[b"http/1.1"]).await;
    let mut silent = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let mut rest = Vec::new();
    // Cut: the read ends (EOF or reset) without a byte of TLS from the proxy.
    let _ = within(silent.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The proxy still serves others.
    let backend = Backend::echo("after").await;
    proxy.table.set_ready("app", backend.addr);
    let mut stream = proxy.connect().await;
    send(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: app.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
}

#[tokio::test]
async fn the_plain_listener_of_an_https_proxy_redirects_to_https() {
    for (port, location) in [
        (8443, "https://App.Plane.Localhost:8443/x/y?z=1"),
        (443, "https://App.Plane.Localhost/x/y?z=1"),
    ] {
        let proxy = TestProxy::start(ProxyConfig {
            https_redirect: Some(port),
            ..ProxyConfig::default()
        })
        .await;
        let backend = Backend::echo("never").await;
        proxy.table.set_ready("app", backend.addr);
        let mut stream = within(TcpStream::connect(proxy.addr))
            .await
            .expect("connect");
        for _ in 0..2 {
            send(
                &mut stream,
                b"GET /x/y?z=1 HTTP/1.1\r\nHost: App.Plane.Localhost:9090\r\n\r\n",
            )
            .await;
            let (head, _) = read_response(&mut stream).await;
            assert!(head.starts_with("HTTP/1.1 308 "), "{head}");
            assert!(
                head.lines()
                    .any(|line| line == format!("location: {location}")),
                "{head}"
            );
        }
        assert_eq!(backend.accepted(), 0, "nothing is proxied in plain HTTP");
    }
}

#[tokio::test]
async fn a_request_for_another_backend_than_the_handshake_named_is_misdirected() {
    let proxy = HttpsProxy::start(ProxyConfig::default(), &[b"http/1.1"]).await;
    let app = Backend::echo("app").await;
    let other = Backend::echo("other").await;
    proxy.table.set_ready("app", app.addr);
    proxy.table.set_ready("other", other.addr);

    let mut stream = proxy.connect().await;
    send(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: other.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 421 "), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("app.plane.localhost")
            || String::from_utf8_lossy(&body).contains("for app"),
        "{body:?}"
    );
    // The connection goes on for the backend it was opened for.
    send(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: APP.plane.localhost:443\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 200 "),
        "{head}{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("backend: app"));
    assert_eq!(other.accepted(), 0, "nothing reached the other backend yet");

    // A handshake naming no backend (here one that does not exist) binds nothing.
    let unrouted = ServerName::try_from("nobody.plane.localhost").expect("name");
    let mut unbound = proxy.connect_as(unrouted).await;
    send(
        &mut unbound,
        b"GET / HTTP/1.1\r\nHost: other.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut unbound).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("backend: other"),
        "routed by Host: {}",
        String::from_utf8_lossy(&body)
    );

    // Without SNI (a client that connected by address) the Host alone routes.
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut by_address = proxy.connect_as(ip).await;
    send(
        &mut by_address,
        b"GET / HTTP/1.1\r\nHost: other.plane.localhost\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut by_address).await;
    assert!(
        head.starts_with("HTTP/1.1 200 "),
        "{head}{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("backend: other"));
}
