//! HTTP/2 through the proxy, with the h2 crate as the client: prior-knowledge h2c on the plain
//! listener and ALPN `h2` over TLS; streams routed by `:authority` and counted; bodies both
//! ways (known length, unknown length, 1 MiB under flow control, trailers); a WebSocket as an
//! extended CONNECT; 421 across backends on one TLS connection; rapid-reset and CONTINUATION
//! floods cut while the proxy keeps serving.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plane_dataplane::ProxyConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

type Sender = h2::client::SendRequest<Bytes>;

/// An HTTP/2 client connection over `io`; its connection task runs in the background.
async fn client<IO>(io: IO) -> Sender
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = within(h2::client::handshake(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// One request; the response's status, fields, body and trailers.
async fn send(
    sender: &mut Sender,
    request: Request<()>,
    body: Option<Bytes>,
) -> (Response<()>, Bytes, Option<http::HeaderMap>) {
    let mut sender = within(sender.clone().ready()).await.expect("ready");
    let (response, mut stream) = sender
        .send_request(request, body.is_none())
        .expect("send request");
    if let Some(body) = body {
        stream.reserve_capacity(body.len());
        stream.send_data(body, true).expect("send body");
    }
    let response = within(response).await.expect("response");
    let (parts, mut recv) = response.into_parts();
    let mut got = Vec::new();
    while let Some(data) = within(recv.data()).await {
        let data = data.expect("data");
        got.extend_from_slice(&data);
        let _ = recv.flow_control().release_capacity(data.len());
    }
    let trailers = within(recv.trailers()).await.expect("trailers");
    (Response::from_parts(parts, ()), Bytes::from(got), trailers)
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).expect("request")
}

#[tokio::test]
async fn prior_knowledge_h2c_routes_streams_by_authority_and_counts_them() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let route_a = proxy.table.set_ready("a", a.addr);
    let route_b = proxy.table.set_ready("b", b.addr);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let mut sender = client(tcp).await;

    let (response, body, _) = send(&mut sender, get("http://a.plane.localhost/x?y=1"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.contains("backend: a"), "{body}");
    assert_eq!(echoed(&body, "target"), ["/x?y=1"]);
    assert_eq!(echoed(&body, "host"), ["a.plane.localhost"]);
    assert_eq!(echoed(&body, "x-forwarded-proto"), ["http"]);

    // Many streams at once, to two backends, on one connection.
    let mut streams = Vec::new();
    for i in 0..40 {
        let mut sender = sender.clone();
        let host = if i % 2 == 0 { "a" } else { "b" };
        streams.push(tokio::spawn(async move {
            let uri = format!("http://{host}.plane.localhost/{i}");
            let (response, body, _) = send(&mut sender, get(&uri), None).await;
            (
                host,
                response.status(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }));
    }
    for stream in streams {
        let (host, status, body) = within(stream).await.expect("stream");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(&format!("backend: {host}")), "{body}");
    }
    let (response, _, _) = send(&mut sender, get("http://nobody.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    eventually("every stream to stop counting", || {
        route_a.active() == 0 && route_b.active() == 0
    })
    .await;
}

#[tokio::test]
async fn bodies_of_every_framing_cross_both_ways() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let large: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let served = large.clone();
    let backend = Backend::start(move |request: Request<Incoming>| {
        let served = served.clone();
        async move {
            match request.uri().path() {
                "/large" => Response::new(full(served)),
                "/trailers" => {
                    let frames = futures::stream::iter([
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(
                            "chunked ",
                        ))),
                        Ok(hyper::body::Frame::data(Bytes::from("body"))),
                        Ok(hyper::body::Frame::trailers({
                            let mut t = http::HeaderMap::new();
                            t.insert("x-checksum", "42".parse().expect("value"));
                            t
                        })),
                    ]);
                    // hyper sends only the trailer fields its response announces.
                    Response::builder()
                        .header("trailer", "x-checksum")
                        .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
                        .expect("response")
                }
                _ => {
                    let framing = request
                        .headers()
                        .get("transfer-encoding")
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_else(|| "length".to_owned());
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .expect("upload")
                        .to_bytes();
                    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                    Response::new(full(format!("{} {sum} {framing}", body.len())))
                }
            }
        }
    })
    .await;
    proxy.table.set_ready("app", backend.addr);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let mut sender = client(tcp).await;

    let (response, body, _) =
        send(&mut sender, get("http://app.plane.localhost/large"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body == large, "1 MiB arrives whole under flow control");

    // Trailers are sent to clients that say they take them (hyper, as the backend, insists).
    let with_te = Request::get("http://app.plane.localhost/trailers")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (_, body, trailers) = send(&mut sender, with_te, None).await;
    assert_eq!(&body[..], b"chunked body");
    let trailers = trailers.expect("trailers forwarded");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"42"[..])
    );

    let upload = Bytes::copy_from_slice(&large[..300_000]);
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    // Without a length the backend gets it chunked; with one, as it is.
    let unknown = Request::post("http://app.plane.localhost/up")
        .body(())
        .expect("request");
    let (_, body, _) = send(&mut sender, unknown, Some(upload.clone())).await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("300000 {sum} chunked")
    );
    let known = Request::post("http://app.plane.localhost/up")
        .header("content-length", "300000")
        .body(())
        .expect("request");
    let (_, body, _) = send(&mut sender, known, Some(upload)).await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("300000 {sum} length")
    );
}

/// A masked client text frame (RFC 6455 §5.2).
fn text_frame(text: &str) -> Bytes {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

#[tokio::test]
async fn a_websocket_over_http2_is_an_extended_connect_relayed_to_an_http1_upgrade() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let route = proxy.table.set_ready("ws", websocket_echo().await.0);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (sender, mut connection) = within(h2::client::handshake(tcp)).await.expect("handshake");
    let mut ping = connection.ping_pong().expect("ping");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The pong comes after the proxy's SETTINGS, which enable extended CONNECT.
    within(ping.ping(h2::Ping::opaque())).await.expect("pong");
    let mut sender = within(sender.ready()).await.expect("ready");
    assert!(
        sender.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL advertised"
    );
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri("http://ws.plane.localhost/socket")
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from("websocket"));
    let (response, mut stream) = sender.send_request(request, false).expect("send");
    let response = within(response).await.expect("response");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the backend's 101 is a 200"
    );
    assert_eq!(route.active(), 1, "an open WebSocket counts");
    let mut recv = response.into_body();
    for text in ["hello", "over h2"] {
        stream.send_data(text_frame(text), false).expect("frame");
        let mut got = Vec::new();
        while got.len() < 2 + text.len() {
            let data = within(recv.data()).await.expect("data").expect("ok");
            let _ = recv.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        assert_eq!(got[0], 0x81);
        assert_eq!(&got[2..], text.as_bytes());
    }
    // The client ends its side; the backend closes too; the stream and the count end.
    stream.send_data(Bytes::new(), true).expect("end");
    while let Some(Ok(_)) = within(recv.data()).await {}
    eventually("the relay to end", || route.active() == 0).await;
}

#[tokio::test]
async fn alpn_h2_over_tls_says_https_and_refuses_another_backend_with_421() {
    let proxy = HttpsProxy::start(ProxyConfig::default(), &[b"h2", b"http/1.1"]).await;
    let app = Backend::echo("app").await;
    let other = Backend::echo("other").await;
    proxy.table.set_ready("app", app.addr);
    proxy.table.set_ready("other", other.addr);
    let tls = proxy.connect().await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = client(tls).await;
    let (response, body, _) = send(&mut sender, get("https://app.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(echoed(&body, "x-forwarded-proto"), ["https"]);
    let (response, _, _) = send(&mut sender, get("https://other.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(other.accepted(), 0);
}

#[tokio::test]
async fn rapid_reset_and_continuation_floods_are_cut_and_others_still_served() {
    use plane_test_support::h2_flood;
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    for attack in [
        h2_flood::rapid_reset("a.plane.localhost", 500),
        h2_flood::endless_continuation("a.plane.localhost", 256 * 1024),
    ] {
        let mut flood = within(TcpStream::connect(proxy.addr))
            .await
            .expect("connect");
        assert!(
            h2_flood::is_cut_off(&mut flood, &attack, STEP).await,
            "the flood ends its connection"
        );
    }

    // The proxy is fine: a new client is served.
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let mut sender = client(tcp).await;
    let (response, _, _) = send(&mut sender, get("http://a.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_open_streams_finish() {
    let mut proxy = TestProxy::start(ProxyConfig {
        shutdown_grace: Duration::from_secs(10),
        ..ProxyConfig::default()
    })
    .await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let opened = Arc::clone(&gate);
    let backend = Backend::start(move |_request: Request<Incoming>| {
        let opened = Arc::clone(&opened);
        async move {
            opened.notified().await;
            Response::new(full("late"))
        }
    })
    .await;
    let route = proxy.table.set_ready("a", backend.addr);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (sender, connection) = within(h2::client::handshake(tcp)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let mut in_flight = sender.clone();
    let pending = tokio::spawn(async move {
        send(&mut in_flight, get("http://a.plane.localhost/slow"), None).await
    });
    eventually("the request to reach the backend", || route.active() == 1).await;

    let served = proxy.shutdown();
    // GOAWAY: the client may open no more streams on this connection.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let refused = match sender.clone().ready().await {
            Err(_) => true,
            Ok(mut ready) => ready
                .send_request(get("http://a.plane.localhost/"), true)
                .is_err(),
        };
        if refused {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no GOAWAY");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open stream still gets its whole answer.
    gate.notify_one();
    let (response, body, _) = within(pending).await.expect("in flight");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&body[..], b"late");
    within(served)
        .await
        .expect("joined")
        .expect("drained cleanly");
    let _ = within(connection).await;
    assert_eq!(route.active(), 0);
}

#[tokio::test]
async fn h2c_on_the_plain_listener_of_an_https_proxy_is_served_not_redirected() {
    // HTTP/1.1 there gets 308 to https (tests/https.rs); prior-knowledge h2c is for internal
    // clients and keeps working.
    let proxy = TestProxy::start(ProxyConfig {
        https_redirect: Some(443),
        ..ProxyConfig::default()
    })
    .await;
    let backend = Backend::echo("internal").await;
    proxy.table.set_ready("a", backend.addr);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let mut sender = client(tcp).await;
    let (response, body, _) = send(&mut sender, get("http://a.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("backend: internal"));
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_like_an_idle_keep_alive() {
    let proxy = TestProxy::start(ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    })
    .await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let tcp = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (sender, connection) = within(h2::client::handshake(tcp)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let mut sender = sender;
    let (response, _, _) = send(&mut sender, get("http://a.plane.localhost/"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    // No stream after that one: the proxy says GOAWAY and closes; the client's side ends.
    within(connection)
        .await
        .expect("joined")
        .expect("closed cleanly");
}
