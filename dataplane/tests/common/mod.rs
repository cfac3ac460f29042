//! Helpers for the proxy's integration tests: a proxy and tiny hyper backends on ephemeral
//! ports, a bare HTTP/1.1 client, and deadlines on everything that could hang.
#![allow(dead_code)] // each test crate uses a different subset

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use plane_dataplane::{ProxyConfig, ProxyError, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CLUSTER: &str = "plane.localhost";

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("test step timed out")
}

/// Polls `condition` until it holds, failing the test after [`STEP`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    pub table: RouteTable,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ProxyError>>>,
}

impl TestProxy {
    pub async fn start(config: ProxyConfig) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let table = RouteTable::new(CLUSTER);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(plane_dataplane::serve(
            listener,
            table.clone(),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        TestProxy {
            addr,
            table,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the shutdown and returns the `serve` task to await.
    pub fn shutdown(&mut self) -> JoinHandle<Result<(), ProxyError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("shut down once")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().boxed()
}

/// A hyper HTTP/1.1 backend on 127.0.0.1:0 that counts the TCP connections it accepts.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let (addr, accepted, task) = raw_backend(move |stream: TcpStream| {
            let handler = handler.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        })
        .await;
        Backend {
            addr,
            accepted,
            task,
        }
    }

    /// A backend answering with its `name`, the request target and every request header, one
    /// `name: value` line each.
    pub async fn echo(name: &'static str) -> Backend {
        Backend::start(move |req: Request<Incoming>| async move {
            let mut text = format!("backend: {name}\ntarget: {}\n", req.uri());
            for (header, value) in req.headers() {
                text.push_str(&format!(
                    "{header}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            Response::new(full(text))
        })
        .await
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The values of header `name` in an echo backend's answer.
pub fn echoed<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .collect()
}

/// A client HTTP/1.1 connection to the proxy.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        let (sender, conn) = within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        within(self.sender.ready()).await.expect("connection ready");
        within(self.sender.send_request(req))
            .await
            .expect("response")
    }

    /// `GET path` with `Host: host`; returns status, headers and the whole body as text.
    pub async fn get(&mut self, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = Request::get(path)
            .header("host", host)
            .body(empty())
            .expect("request");
        read_all(self.send(req).await).await
    }
}

pub async fn read_all(response: Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = within(body.collect()).await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// One-shot `GET` on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    Client::connect(addr).await.get(host, path).await
}

/// Writes `request` as raw bytes and reads until the server closes the connection.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    within(stream.write_all(request)).await.expect("write");
    let mut response = Vec::new();
    // A reset after the server's answer is fine: we only care about what arrived.
    let _ = within(stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// A backend that hands each accepted TCP connection to `handler` as it is: for answers no
/// HTTP library would give (cut bodies, closes right after a response).
pub async fn raw_backend<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(stream));
        }
    });
    (addr, accepted, task)
}

/// Reads one request head (up to the blank line) from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match within(stream.read(&mut byte)).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads from `stream` until `pattern` has arrived (or the stream ends); returns all of it.
pub async fn read_until(stream: &mut TcpStream, pattern: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(pattern) {
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A proxy serving HTTPS with a certificate for `*.plane.localhost` from a test CA, and a
/// client that trusts that CA and offers `alpn`.
pub struct HttpsProxy {
    pub addr: SocketAddr,
    pub table: RouteTable,
    pub connector: tokio_rustls::TlsConnector,
    _pki: plane_test_support::pki::Pki,
    _stop: oneshot::Sender<()>,
}

impl HttpsProxy {
    pub async fn start(config: ProxyConfig, alpn: &[&[u8]]) -> HttpsProxy {
        use rustls::pki_types::pem::PemObject;
        let pki = plane_test_support::pki::Pki::generate().expect("pki");
        let (cert, key) = pki
            .write_server_pair(&["*.plane.localhost"], "proxy")
            .expect("certificate files");
        let certificate =
            plane_dataplane::tls::Certificate::load(&cert, &key).expect("certificate");
        let listeners = plane_dataplane::Listeners::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            std::num::NonZeroUsize::MIN,
        )
        .expect("bind")
        .with_tls(&certificate)
        .expect("tls");
        let addr = listeners.local_addr().expect("addr");
        let table = RouteTable::new(CLUSTER);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(listeners.serve(table.clone(), config, async move {
            let _ = stopped.await;
        }));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
            roots.add(cert.expect("ca pem")).expect("trust");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        HttpsProxy {
            addr,
            table,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            _pki: pki,
            _stop: stop,
        }
    }

    /// A connection whose handshake names `name` (a DNS name is sent as SNI; an address is not).
    pub async fn connect_as(
        &self,
        name: rustls::pki_types::ServerName<'static>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = within(TcpStream::connect(self.addr))
            .await
            .expect("connect");
        within(self.connector.connect(name, tcp))
            .await
            .expect("TLS handshake")
    }

    /// A connection for `app.plane.localhost`.
    pub async fn connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let name = rustls::pki_types::ServerName::try_from("app.plane.localhost").expect("name");
        self.connect_as(name).await
    }
}

/// A WebSocket echo server on 127.0.0.1:0: every text or binary message comes back.
pub async fn websocket_echo() -> (SocketAddr, JoinHandle<()>) {
    use futures::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}
