//! HTTP/1.1 semantics the proxy keeps while going fast, over real sockets: heads split
//! anywhere, request smuggling refused, trailers both ways, interim responses, pipelining,
//! pooled connections the backend closed, cut and stalled bodies, and counts back at zero.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plane_dataplane::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend answering with the request's method, target, body and trailers, and a trailer of
/// its own (`x-backend-sum`), in a chunked response.
async fn body_echo() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let head = format!("{} {}\n", req.method(), req.uri());
        let collected = req.into_body().collect().await.expect("request body");
        let trailers = collected
            .trailers()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("trailer {k}: {}\n", v.to_str().unwrap_or("?")))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let body = collected.to_bytes();
        let text = format!("{head}body {}\n{trailers}", String::from_utf8_lossy(&body));
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes>::new(2);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from(text)).await;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-backend-sum", http::HeaderValue::from_static("7"));
            let _ = tx.send_trailers(trailers).await;
        });
        // hyper sends only the trailer fields its response announces.
        Response::builder()
            .header("trailer", "x-backend-sum")
            .body(rx.boxed())
            .expect("response")
    })
    .await
}

/// Sends `request` in two writes split at `at`, and reads the connection to its end.
async fn split_exchange(proxy: &TestProxy, request: &[u8], at: usize) -> String {
    let mut stream = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    within(stream.write_all(&request[..at]))
        .await
        .expect("first part");
    within(stream.write_all(&request[at..]))
        .await
        .expect("second part");
    let mut response = Vec::new();
    let _ = within(stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn heads_and_chunked_bodies_split_at_every_byte() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = body_echo().await;
    let route = proxy.table.set_ready("a", backend.addr);
    let request = b"POST /upload?x=1 HTTP/1.1\r\nHost: a.plane.localhost\r\nTransfer-Encoding: chunked\r\n\
Trailer: x-sum\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
    for at in 1..request.len() {
        let response = split_exchange(&proxy, request, at).await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n"),
            "split at {at}: {response}"
        );
        assert!(
            response.contains("POST /upload?x=1\n"),
            "split at {at}: {response}"
        );
        assert!(
            response.contains("body hello world\n"),
            "split at {at}: {response}"
        );
        assert!(
            response.contains("trailer x-sum: 42\n"),
            "split at {at}: {response}"
        );
        // The backend's trailer reaches the client after the last chunk.
        assert!(
            response.contains("\r\n0\r\nx-backend-sum: 7\r\n\r\n"),
            "split at {at}: {response}"
        );
    }
    eventually("every exchange to stop counting", || route.active() == 0).await;
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_desync() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let smuggled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&smuggled);
    let backend = Backend::start(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            if req.uri().path() == "/smuggled" {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let _ = req.into_body().collect().await;
            Response::new(full("ok"))
        }
    })
    .await;
    let route = proxy.table.set_ready("a", backend.addr);
    const HOST: &str = "Host: a.plane.localhost\r\n";
    let heads = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 40\r\n",
        "Content-Length: 5, 40\r\n",
        "Content-Length: +5\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "X-Folded: a\r\n Transfer-Encoding: chunked\r\n",
        "X-Bare: a\rTransfer-Encoding: chunked\r\n",
        "X-Nul: a\0b\r\n",
    ];
    for extra in heads {
        let request = format!(
            "POST / HTTP/1.1\r\n{HOST}{extra}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n{HOST}\r\n"
        );
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{extra:?}: {response}"
        );
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "closed after the 400: {response}"
        );
    }
    assert_eq!(backend.accepted(), 0, "no refused head reached the backend");

    // Bodies whose chunked framing is broken are refused once the break is seen.
    for body in [
        "5 ;x\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n{body}GET /smuggled HTTP/1.1\r\n{HOST}\r\n"
        );
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{body:?}: {response}"
        );
    }
    assert_eq!(smuggled.load(Ordering::SeqCst), 0, "nothing was smuggled");
    eventually("the refused requests to stop counting", || {
        route.active() == 0
    })
    .await;
}

#[tokio::test]
async fn expect_continue_and_pipelined_requests() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = body_echo().await;
    proxy.table.set_ready("a", backend.addr);
    let mut stream = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(stream.write_all(
        b"PUT /doc HTTP/1.1\r\nHost: a.plane.localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    ))
    .await
    .expect("head");
    // The backend's 100 Continue comes through before any body byte was sent.
    let interim = read_until(&mut stream, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    within(stream.write_all(b"hello")).await.expect("body");
    let response = read_until(&mut stream, "\r\n0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("body hello\n"), "{response}");

    // Two requests in one write: two answers, in order, on the same connection.
    within(stream.write_all(
        b"GET /one HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: close\r\n\r\n",
    ))
    .await
    .expect("pipelined");
    let mut rest = Vec::new();
    let _ = within(stream.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    let one = rest.find("GET /one\n").expect("first answered");
    let two = rest.find("GET /two\n").expect("second answered");
    assert!(one < two, "{rest}");
    assert!(rest.contains("connection: close\r\n"), "{rest}");
}

#[tokio::test]
async fn http_1_0_clients_get_their_answer_and_a_close() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let response = raw(
        proxy.addr,
        b"GET /old HTTP/1.0\r\nHost: a.plane.localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("connection: close\r\n"), "{response}");
    assert!(response.contains("target: /old\n"), "{response}");
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    // Answers one request per connection with a keep-alive response, then closes: what a
    // backend whose idle timeout just expired looks like from the pool.
    let (addr, accepted, _task) = raw_backend(|mut stream: TcpStream| async move {
        let _ = read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let route = proxy.table.set_ready("a", addr);
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..5 {
        let (status, _, body) = client.get("a.plane.localhost", "/").await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        assert_eq!(body, "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "a new connection for each request"
    );
    eventually("the requests to stop counting", || route.active() == 0).await;
}

#[tokio::test]
async fn a_backend_that_dies_mid_answer_is_502_or_a_cut_body() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (addr, _, _task) = raw_backend(|mut stream: TcpStream| async move {
        let head = read_head(&mut stream).await;
        if head.starts_with("GET /half") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly some")
                .await;
        } else if head.starts_with("GET /garbage") {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        }
        // and then the backend is gone
    })
    .await;
    let route = proxy.table.set_ready("a", addr);

    let response = raw(
        proxy.addr,
        b"GET /nothing HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
    let response = raw(
        proxy.addr,
        b"GET /garbage HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
    // Once the head went out, the client sees the body cut short and the connection closed.
    let response = raw(
        proxy.addr,
        b"GET /half HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("only some"), "{response}");
    eventually("the failed exchanges to stop counting", || {
        route.active() == 0
    })
    .await;
}

#[tokio::test]
async fn oversized_response_heads_are_502() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (addr, _, _task) = raw_backend(|mut stream: TcpStream| async move {
        let _ = read_head(&mut stream).await;
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() < 100 * 1024 {
            head.extend_from_slice(
                b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let _ = stream.write_all(&head).await;
    })
    .await;
    proxy.table.set_ready("a", addr);
    let response = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_while_others_are_served() {
    let config = ProxyConfig {
        write_progress_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let backend = Backend::start(move |req: Request<Incoming>| {
        let big = big.clone();
        async move {
            if req.uri().path() == "/big" {
                Response::new(full(big))
            } else {
                Response::new(full("small"))
            }
        }
    })
    .await;
    let route = proxy.table.set_ready("a", backend.addr);

    // Asks for 64 MiB and never reads: the proxy's writes stop making progress.
    let mut stalled = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(stalled.write_all(b"GET /big HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n"))
        .await
        .expect("request");
    eventually("the big response to start", || route.active() == 1).await;
    let (status, _, body) = get(proxy.addr, "a.plane.localhost", "/").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, "small");
    eventually("the stalled reader to be cut", || route.active() == 0).await;
    drop(stalled);
}

#[tokio::test]
async fn a_slow_head_is_cut_while_others_are_served() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let backend = Backend::echo("a").await;
    proxy.table.set_ready("a", backend.addr);
    let mut slow = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(slow.write_all(b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nX-Slow: "))
        .await
        .expect("partial head");
    let (status, _, _) = get(proxy.addr, "a.plane.localhost", "/").await;
    assert_eq!(status, http::StatusCode::OK);
    let mut answer = Vec::new();
    let _ = within(slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(
        backend.accepted(),
        1,
        "only the complete request was forwarded"
    );
}

/// A backend that answers each GET with half of a 4-byte body ("ha"), and the rest ("lf")
/// each time the returned `Notify` is notified: a request that stays in flight until the test
/// lets it end.
async fn gated_backend() -> (
    std::net::SocketAddr,
    Arc<tokio::sync::Notify>,
    tokio::task::JoinHandle<()>,
) {
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let (addr, _, task) = raw_backend(move |mut stream: TcpStream| {
        let gate = Arc::clone(&gate);
        async move {
            while read_head(&mut stream).await.starts_with("GET") {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")
                    .await;
                gate.notified().await;
                let _ = stream.write_all(b"lf").await;
            }
        }
    })
    .await;
    (addr, release, task)
}

#[tokio::test]
async fn a_backend_at_its_connection_limit_gets_503_until_one_ends() {
    let config = ProxyConfig {
        max_conns_per_backend: Some(1),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let (addr, release, _task) = gated_backend().await;
    let route = proxy.table.set_ready("a", addr);

    let mut first = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(first.write_all(b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n"))
        .await
        .expect("first request");
    let head = read_until(&mut first, "\r\n\r\nha").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(route.active(), 1);

    let busy = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
    assert!(busy.contains("retry-after: 1\r\n"), "{busy}");
    assert!(busy.contains("connection limit"), "{busy}");
    assert_eq!(route.active(), 1, "the refused request was not counted");

    release.notify_one();
    let rest = read_until(&mut first, "lf").await;
    assert!(rest.ends_with("lf"), "{rest}");
    eventually("the first request to end", || route.active() == 0).await;
    // Room again: the next request is forwarded.
    let mut next = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(next.write_all(b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n"))
        .await
        .expect("next request");
    let head = read_until(&mut next, "\r\n\r\nha").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    release.notify_one();
}

#[tokio::test]
async fn early_bytes_after_an_upgrade_request_wait_for_the_101() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<(bool, Vec<u8>)>(1);
    let (addr, _, _task) = raw_backend(move |mut stream: TcpStream| {
        let seen_tx = seen_tx.clone();
        async move {
            let head = read_head(&mut stream).await;
            assert!(head.contains("upgrade: websocket\r\n"), "{head}");
            // Whatever the proxy sent came in one write with the head: anything early would be
            // readable now.
            let mut probe = [0u8; 64];
            let early_forwarded = match stream.try_read(&mut probe) {
                Ok(n) => n > 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .await;
            let mut after = vec![0u8; 5];
            let _ = within(stream.read_exact(&mut after)).await;
            let _ = seen_tx.send((early_forwarded, after)).await;
        }
    })
    .await;
    let route = proxy.table.set_ready("a", addr);
    let mut client = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    client.set_nodelay(true).expect("nodelay");
    // The handshake and the first bytes of the new protocol in one write.
    within(client.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly",
    ))
    .await
    .expect("request");
    let answer = read_until(&mut client, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let (early_forwarded, after) = within(seen_rx.recv()).await.expect("backend report");
    assert!(
        !early_forwarded,
        "bytes after the head reached the backend before its 101"
    );
    assert_eq!(after, b"early", "held bytes follow the 101");
    drop(client);
    eventually("the relay to stop counting", || route.active() == 0).await;
}

#[tokio::test]
async fn a_request_recounted_on_a_readded_route_respects_the_limit() {
    let config = ProxyConfig {
        max_conns_per_backend: Some(1),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let (addr, release, _task) = gated_backend().await;

    // A waits on the first route for "a"; the route is removed and added again (still
    // starting), and B takes the new route's one slot.
    let first = proxy.table.insert_starting("a");
    let mut a = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(a.write_all(b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n"))
        .await
        .expect("request a");
    eventually("a to be held", || first.active() == 1).await;
    proxy.table.remove("a");
    let second = proxy.table.insert_starting("a");
    let mut b = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    within(b.write_all(b"GET / HTTP/1.1\r\nHost: a.plane.localhost\r\n\r\n"))
        .await
        .expect("request b");
    eventually("b to be held", || second.active() == 1).await;

    proxy.table.set_ready("a", addr);
    let b_answer = read_until(&mut b, "\r\n\r\nha").await;
    assert!(b_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{b_answer}");
    let a_answer = read_until(&mut a, "connection limit").await;
    assert!(a_answer.starts_with("HTTP/1.1 503 "), "{a_answer}");
    assert_eq!(second.active(), 1, "a was not counted on the new route");
    assert_eq!(first.active(), 0, "a stopped counting on the old route");
    release.notify_one();
}

#[tokio::test]
async fn a_refused_request_is_answered_once_and_the_connection_goes_on() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let backend = body_echo().await;
    proxy.table.set_ready("a", backend.addr);
    let mut stream = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    // An unknown backend, a host outside the cluster, then a routed request that closes.
    within(stream.write_all(
        b"GET /x HTTP/1.1\r\nHost: nobody.plane.localhost\r\n\r\n\
GET /y HTTP/1.1\r\nHost: a.example.com\r\n\r\n\
GET /z HTTP/1.1\r\nHost: a.plane.localhost\r\nConnection: close\r\n\r\n",
    ))
    .await
    .expect("pipelined");
    let mut rest = Vec::new();
    let _ = within(stream.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(rest.matches("HTTP/1.1 404 ").count(), 1, "{rest}");
    assert_eq!(rest.matches("HTTP/1.1 400 ").count(), 1, "{rest}");
    assert_eq!(rest.matches("HTTP/1.1 200 ").count(), 1, "{rest}");
    assert!(rest.contains("GET /z\n"), "{rest}");
    assert_eq!(
        rest.matches("HTTP/1.1 ").count(),
        3,
        "one answer each: {rest}"
    );
}
