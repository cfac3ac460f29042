//! The proxy end to end over loopback: routing, headers, errors, holding, counting, limits.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plane_dataplane::ProxyConfig;
use tokio::net::TcpListener;

#[tokio::test]
async fn routes_by_host_and_preserves_it() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    proxy.table.set_ready("a", a.addr);
    proxy.table.set_ready("B", b.addr);

    let (status, _, body) = get(proxy.addr, "A.Plane.Localhost:9090", "/x/y?z=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "backend"), ["a"]);
    assert_eq!(echoed(&body, "target"), ["/x/y?z=1"]);
    assert_eq!(echoed(&body, "host"), ["A.Plane.Localhost:9090"]);

    let (status, _, body) = get(proxy.addr, "b.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "backend"), ["b"]);
}

#[tokio::test]
async fn replaces_forwarded_headers_and_strips_hop_by_hop() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::start(|req: Request<Incoming>| async move {
        let seen: Vec<String> = req
            .headers()
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
            .collect();
        Response::builder()
            .header("connection", "x-backend-private")
            .header("x-backend-private", "1")
            .header("keep-alive", "timeout=5")
            .header("x-backend-public", "1")
            .body(full(seen.join("\n")))
            .expect("response")
    })
    .await;
    proxy.table.set_ready("a", backend.addr);

    let req = Request::get("/")
        .header("host", "a.plane.localhost:9090")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "7.7.7.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers, deflate")
        .header("x-client-public", "1")
        .body(empty())
        .expect("request");
    let (status, headers, body) = read_all(Client::connect(proxy.addr).await.send(req).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&body, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        echoed(&body, "x-forwarded-host"),
        ["a.plane.localhost:9090"]
    );
    assert_eq!(echoed(&body, "x-client-public"), ["1"]);
    // Trailers are forwarded, so the client's acceptance of them is too; nothing else of `TE`.
    assert_eq!(echoed(&body, "te"), ["trailers"]);
    for gone in [
        "x-client-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(echoed(&body, gone).is_empty(), "{gone} forwarded:\n{body}");
    }
    assert!(headers.get("x-backend-private").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(
        headers.get("x-backend-public").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
}

#[tokio::test]
async fn unknown_and_unroutable_hosts() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("gone", backend.addr);
    proxy.table.remove("gone");

    for host in ["nobody.plane.localhost", "gone.plane.localhost:9090"] {
        let (status, headers, body) = get(proxy.addr, host, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{host}");
        assert_eq!(
            headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain; charset=utf-8"[..])
        );
        assert_eq!(body.lines().count(), 1, "{body:?}");
    }
    for host in [
        "a.example.com",
        "plane.localhost",
        "x.a.plane.localhost",
        "a.plane.localhost:99999",
    ] {
        let (status, _, body) = get(proxy.addr, host, "/").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{host}: {body}");
    }
    let response = raw(proxy.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("missing Host"), "{response}");
    assert_eq!(backend.accepted(), 0, "nothing reached the backend");
}

#[tokio::test]
async fn more_than_one_host_is_refused() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nHost: b.plane.localhost\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nhost: a.plane.localhost\r\nConnection: close\r\n\r\n"[..],
    ] {
        let response = raw(proxy.addr, request).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("more than one Host"), "{response}");
    }
    assert_eq!(backend.accepted(), 0, "nothing reached the backend");
    // One Host is fine.
    let response = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn absolute_form_uses_its_authority() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let response = raw(
        proxy.addr,
        b"GET http://a.plane.localhost/p HTTP/1.1\r\nHost: other.plane.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("host: a.plane.localhost\n"), "{response}");
    assert!(response.contains("target: /p\n"), "{response}");
}

async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test]
async fn refused_backend_is_502_and_not_counted() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let route = proxy.table.set_ready("a", refused_addr().await);
    let idle_before = route.idle_since();
    assert!(idle_before.is_some());

    let (status, headers, body) = get(proxy.addr, "a.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/plain; charset=utf-8"[..])
    );
    assert_eq!(route.active(), 0);
    assert_eq!(
        route.idle_since(),
        idle_before,
        "a refused dial is no activity"
    );
}

#[tokio::test]
async fn backend_reset_is_502() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts, reads nothing, closes: the request dies mid-exchange.
    let rude = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let route = proxy.table.set_ready("a", addr);
    let (status, _, body) = get(proxy.addr, "a.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(route.active(), 0);
    rude.abort();
}

#[tokio::test]
async fn starting_backend_times_out_with_503() {
    let config = ProxyConfig {
        starting_wait: Duration::from_millis(300),
        retry_after_secs: 7,
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let route = proxy.table.insert_starting("s");
    let started = Instant::now();
    let (status, headers, body) = get(proxy.addr, "s.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert_eq!(route.active(), 0);
}

#[tokio::test]
async fn held_request_goes_through_once_ready() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("late").await;
    let route = proxy.table.insert_starting("late");
    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "late.plane.localhost", "/").await });

    // A held request counts as active: that is how we know it is waiting.
    eventually("the request to be held", || route.active() == 1).await;
    assert!(!request.is_finished());
    proxy.table.set_ready("late", backend.addr);

    let (status, _, body) = within(request).await.expect("request task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "backend"), ["late"]);
    eventually("the request to finish counting", || route.active() == 0).await;
}

#[tokio::test]
async fn held_request_gets_404_when_removed() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let route = proxy.table.insert_starting("doomed");
    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "doomed.plane.localhost", "/").await });
    eventually("the request to be held", || route.active() == 1).await;
    proxy.table.remove("doomed");
    let (status, _, body) = within(request).await.expect("request task");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// A backend whose single response streams chunks sent through the returned channel.
async fn streaming_backend() -> (
    Backend,
    tokio::sync::mpsc::Receiver<http_body_util::channel::Sender<Bytes>>,
) {
    let (senders, body_senders) = tokio::sync::mpsc::channel(1);
    let backend = Backend::start(move |_req: Request<Incoming>| {
        let senders = senders.clone();
        async move {
            let (tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
            let _ = senders.send(tx).await;
            Response::new(body.boxed())
        }
    })
    .await;
    (backend, body_senders)
}

#[tokio::test]
async fn streaming_response_counts_until_the_body_ends() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (backend, mut body_senders) = streaming_backend().await;
    let route = proxy.table.set_ready("sse", backend.addr);

    let mut client = Client::connect(proxy.addr).await;
    let req = Request::get("/events")
        .header("host", "sse.plane.localhost")
        .body(empty())
        .expect("request");
    let response = client.send(req).await;
    let mut tx = within(body_senders.recv())
        .await
        .expect("backend got request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(route.active(), 1);
    assert_eq!(route.idle_since(), None);

    let mut body = response.into_body();
    within(tx.send_data(Bytes::from_static(b"data: 1\n\n")))
        .await
        .expect("send chunk");
    let frame = within(body.frame())
        .await
        .expect("a frame")
        .expect("ok frame");
    assert_eq!(frame.into_data().expect("data"), &b"data: 1\n\n"[..]);
    assert_eq!(route.active(), 1, "still streaming");

    drop(tx); // the backend ends the body
    let rest = within(body.collect())
        .await
        .expect("rest of body")
        .to_bytes();
    assert!(rest.is_empty());
    eventually("the stream to stop counting", || route.active() == 0).await;
    assert!(route.idle_since().is_some());
}

#[tokio::test]
async fn client_dropping_a_stream_stops_the_count() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (backend, mut body_senders) = streaming_backend().await;
    let route = proxy.table.set_ready("sse", backend.addr);

    let mut client = Client::connect(proxy.addr).await;
    let req = Request::get("/events")
        .header("host", "sse.plane.localhost")
        .body(empty())
        .expect("request");
    let response = client.send(req).await;
    let _tx = within(body_senders.recv())
        .await
        .expect("backend got request");
    assert_eq!(route.active(), 1);
    drop(response);
    drop(client); // closes the client connection mid-body
    eventually("the abandoned stream to stop counting", || {
        route.active() == 0
    })
    .await;
}

#[tokio::test]
async fn keep_alive_connections_to_backends_are_pooled() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        let (status, _, body) = client.get("a.plane.localhost", "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A different client connection reuses the same pooled backend connection too.
    let (status, _, _) = get(proxy.addr, "a.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn huge_headers_get_431() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let big = "x".repeat(70 * 1024);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let response = raw(proxy.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{:.80}", response);

    // Just under the limit still goes through.
    let fits = "x".repeat(60 * 1024);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n"
    );
    let response = raw(proxy.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{:.80}", response);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let started = Instant::now();
    // Never finishes the head; `raw` returns when the proxy closes the connection.
    let response = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: a.plane.loc").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
}

#[tokio::test]
async fn connection_limit_queues_extra_connections() {
    let config = ProxyConfig {
        max_connections: 1,
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);

    let mut first = Client::connect(proxy.addr).await;
    let (status, _, _) = first.get("a.plane.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);

    let addr = proxy.addr;
    let second = tokio::spawn(async move { get(addr, "a.plane.localhost", "/").await });
    // A negative can only be shown by waiting: the second connection is not served meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "served beyond max_connections");
    drop(first);
    let (status, _, _) = within(second).await.expect("second request");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut proxy = TestProxy::start(ProxyConfig::default()).await;
    let (backend, mut body_senders) = streaming_backend().await;
    let route = proxy.table.set_ready("a", backend.addr);
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::get("/")
        .header("host", "a.plane.localhost")
        .body(empty())
        .expect("request");
    let response = client.send(req).await;
    let mut tx = within(body_senders.recv())
        .await
        .expect("backend got request");

    let serving = proxy.shutdown();
    // New connections are refused once the listener is gone.
    let addr = proxy.addr;
    eventually("the listener to close", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    })
    .await;
    assert!(!serving.is_finished(), "waits for the in-flight response");

    within(tx.send_data(Bytes::from_static(b"last words")))
        .await
        .expect("send");
    drop(tx);
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, &b"last words"[..]);
    within(serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert_eq!(route.active(), 0);
}

#[tokio::test]
async fn untrusted_forwarding_and_proxy_auth_headers_are_not_forwarded() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let req = Request::get("/")
        .header("host", "a.plane.localhost")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-prefix", "/admin")
        .header("x-forwarded-ssl", "on")
        .header("proxy-authorization", "Basic dTpw")
        .header("x-client-public", "1")
        .body(empty())
        .expect("request");
    let (status, _, body) = read_all(Client::connect(proxy.addr).await.send(req).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echoed(&body, "x-client-public"), ["1"]);
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "proxy-authorization",
    ] {
        assert!(echoed(&body, gone).is_empty(), "{gone} forwarded:\n{body}");
    }
}

#[tokio::test]
async fn non_websocket_upgrade_is_forwarded_as_a_plain_request() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    let route = proxy.table.set_ready("a", backend.addr);
    let response = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert_eq!(echoed(body, "backend"), ["a"]);
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(echoed(body, gone).is_empty(), "{gone} forwarded:\n{body}");
    }
    eventually("the request to finish counting", || route.active() == 0).await;
}

#[tokio::test]
async fn stalled_request_body_times_out() {
    let config = ProxyConfig {
        request_body_idle_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    // Reads the whole body before answering, as most backends do.
    let backend = Backend::start(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(body) => Response::new(full(body.to_bytes())),
            Err(_) => Response::new(empty()),
        }
    })
    .await;
    let route = proxy.table.set_ready("a", backend.addr);

    let started = Instant::now();
    // Announces 100 bytes, sends 2, then waits (keeping the socket open) for the answer.
    let response = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a.plane.localhost\r\nContent-Length: 100\r\n\r\nab",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    eventually("the stalled request to stop counting", || {
        route.active() == 0
    })
    .await;

    // A body that keeps coming, if slowly, is not cut.
    let mut stream = within(tokio::net::TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(stream.write_all(
        b"POST / HTTP/1.1\r\nHost: a.plane.localhost\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    ))
    .await
    .expect("write head");
    for chunk in [&b"ab"[..], b"cd", b"ef"] {
        tokio::time::sleep(Duration::from_millis(120)).await;
        within(stream.write_all(chunk)).await.expect("write chunk");
    }
    let mut response = Vec::new();
    let _ = within(stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("abcdef"), "{response}");
}

#[tokio::test]
async fn shutdown_answers_held_requests_with_503() {
    let config = ProxyConfig {
        starting_wait: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        retry_after_secs: 3,
        ..ProxyConfig::default()
    };
    let mut proxy = TestProxy::start(config).await;
    let route = proxy.table.insert_starting("s");
    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "s.plane.localhost", "/").await });
    eventually("the request to be held", || route.active() == 1).await;

    let started = Instant::now();
    let serving = proxy.shutdown();
    let (status, headers, body) = within(request).await.expect("request task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before the shutdown grace ran out"
    );
    within(serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert_eq!(route.active(), 0);
}
