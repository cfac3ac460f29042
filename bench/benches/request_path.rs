//! The per-request path. `head_work`: the proxy's own CPU per request (request head parsed,
//! checked, routed, counted and rewritten; response head parsed and rewritten; body end found),
//! without sockets. `loopback`: one keep-alive request's round trip on loopback, to a backend
//! directly and through `plane_dataplane::serve` on its own thread, in the same run; the
//! difference is what the proxy adds to a request's latency (two TCP hops and the work above).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plane_dataplane::measure::HeadWork;
use plane_dataplane::{ProxyConfig, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "plane.localhost";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: text/plain\r\n\r\nHello, world!";

/// wrk's request, as the load comparison sends it.
const SMALL_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a.plane.localhost:9090\r\n\r\n";
/// What a browser sends for a page.
const BROWSER_GET: &[u8] = b"GET /app/index.html?session=42 HTTP/1.1\r\n\
Host: A.Plane.Localhost:9090\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Cookie: plane_session=abcdef0123456789; theme=dark; tz=Europe%2FParis\r\n\
Cache-Control: no-cache\r\n\
Pragma: no-cache\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: none\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Connection: keep-alive\r\n\r\n";
const CHUNKED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Transfer-Encoding: chunked\r\n\
Cache-Control: no-store\r\n\
Date: Wed, 02 Dec 2026 12:00:00 GMT\r\n\
Server: backend\r\n\r\n\
1a\r\n{\"document\":42,\"ok\":true}\n\r\n0\r\n\r\n";

fn table(addr: SocketAddr) -> RouteTable {
    let table = RouteTable::new(CLUSTER);
    table.set_ready("a", addr);
    table
}

fn head_work(c: &mut Criterion) {
    let mut work = HeadWork::new(
        table(SocketAddr::from(([127, 0, 0, 1], 8080))),
        ProxyConfig::default(),
    );
    let mut group = c.benchmark_group("head_work");
    group.throughput(Throughput::Elements(1));
    for (name, request, response) in [
        ("small_get", SMALL_GET, RESPONSE),
        ("browser_get_chunked", BROWSER_GET, CHUNKED_RESPONSE),
    ] {
        assert!(work.exchange(request, response).is_some(), "{name} refused");
        group.bench_function(name, |b| {
            b.iter(|| work.exchange(black_box(request), black_box(response)))
        });
    }
    group.finish();
}

/// A backend that answers every request head on a connection with [`RESPONSE`].
async fn backend(listener: tokio::net::TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut filled = 0;
            loop {
                match stream.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.copy_within(end + 4..filled, 0);
                    filled -= end + 4;
                    if stream.write_all(RESPONSE).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// Starts the backend and the proxy on one current-thread runtime on their own thread, as
/// `plane proxy --threads 1` runs; returns the backend's and the proxy's addresses.
fn start_servers() -> (SocketAddr, SocketAddr) {
    let std_backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let std_proxy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let backend_addr = std_backend.local_addr().expect("backend addr");
    let proxy_addr = std_proxy.local_addr().expect("proxy addr");
    for listener in [&std_backend, &std_proxy] {
        listener.set_nonblocking(true).expect("nonblocking");
    }
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let backend_listener =
                tokio::net::TcpListener::from_std(std_backend).expect("backend listener");
            let proxy_listener =
                tokio::net::TcpListener::from_std(std_proxy).expect("proxy listener");
            tokio::spawn(backend(backend_listener));
            let served = plane_dataplane::serve(
                proxy_listener,
                table(backend_addr),
                ProxyConfig::default(),
                std::future::pending(),
            );
            served.await.expect("proxy");
        });
    });
    (backend_addr, proxy_addr)
}

/// One GET and its whole response on a keep-alive connection.
fn round_trip(stream: &mut TcpStream, response: &mut [u8]) {
    stream.write_all(SMALL_GET).expect("send");
    let mut got = 0;
    while got < RESPONSE.len() {
        match stream.read(&mut response[got..]) {
            Ok(0) => panic!("connection closed after {got} bytes"),
            Ok(n) => got += n,
            Err(error) => panic!("read: {error}"),
        }
    }
    assert_eq!(got, RESPONSE.len(), "one response per request");
}

fn loopback(c: &mut Criterion) {
    let (backend_addr, proxy_addr) = start_servers();
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    for (name, addr) in [("direct", backend_addr), ("plane", proxy_addr)] {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut response = vec![0u8; RESPONSE.len()];
        round_trip(&mut stream, &mut response);
        assert_eq!(response, RESPONSE, "{name} answers the backend's response");
        group.bench_with_input(BenchmarkId::new("keep_alive_get", name), &(), |b, ()| {
            b.iter(|| round_trip(&mut stream, &mut response))
        });
    }
    group.finish();
}

criterion_group!(benches, head_work, loopback);
criterion_main!(benches);
