//! The backend the load benchmark puts behind every proxy: as cheap as a server gets, so that
//! the proxies, not the backend, set the pace. `GET /` answers 13 bytes, `GET /1m` one MiB;
//! keep-alive HTTP/1.1; `GET /ws` upgrades to a WebSocket that echoes every data message
//! (tungstenite). One thread (the benchmark pins it to a core of its own).
//!
//! `bench-backend ADDR [TLS_ADDR CERT KEY]` (e.g. `127.0.0.1:18080`); prints `listening on
//! ADDR` when ready. With `TLS_ADDR`, it also serves HTTPS there (rustls, ALPN `h2` and
//! `http/1.1`, HTTP/2 when the client picks it): what "direct" means for the HTTPS and HTTP/2
//! cases, where each proxy terminates TLS and HTTP/2 itself.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::OnceLock;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The small response: 13 bytes.
const SMALL: &[u8] = b"Hello, world!";

/// The large response's size.
const LARGE_BYTES: usize = 1 << 20;

fn large() -> Bytes {
    static LARGE: OnceLock<Bytes> = OnceLock::new();
    LARGE
        .get_or_init(|| Bytes::from(vec![b'x'; LARGE_BYTES]))
        .clone()
}

/// Answers the WebSocket handshake and echoes data messages until the client closes.
fn websocket(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|key| derive_accept_key(key.as_bytes()));
    let Some(accept) = key else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not a websocket")));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_binary() || message.is_text()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/ws" {
        return Ok(websocket(request));
    }
    let (status, body) = match request.uri().path() {
        "/" => (StatusCode::OK, Bytes::from_static(SMALL)),
        "/1m" => (StatusCode::OK, large()),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    Ok(response)
}

/// TLS settings from a PEM certificate and key: TLS 1.3/1.2, ALPN `h2` then `http/1.1`.
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Serves HTTPS on `listener`: HTTP/2 or HTTP/1.1 as ALPN decides.
async fn serve_tls(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            if h2 {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .max_concurrent_streams(256)
                        .serve_connection(io, service_fn(handle))
                        .await;
            } else {
                let _ = http1::Builder::new()
                    .serve_connection(io, service_fn(handle))
                    .with_upgrades()
                    .await;
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, tls) = match args.as_slice() {
        [addr] => (addr.clone(), None),
        [addr, tls_addr, cert, key] => (addr.clone(), Some((tls_addr.clone(), cert, key))),
        _ => {
            eprintln!("usage: bench-backend ADDR [TLS_ADDR CERT KEY]");
            return std::process::ExitCode::from(2);
        }
    };
    let acceptor = match &tls {
        Some((_, cert, key)) => match tls_acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(error) => {
                eprintln!("error: {error}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served: std::io::Result<Infallible> = runtime.block_on(async move {
        if let (Some((tls_addr, _, _)), Some(acceptor)) = (tls, acceptor) {
            let listener = tokio::net::TcpListener::bind(&tls_addr).await?;
            println!("listening on {} (TLS)", listener.local_addr()?);
            tokio::spawn(serve_tls(listener, acceptor));
        }
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
    match served {
        Ok(never) => match never {},
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
