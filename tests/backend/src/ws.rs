//! `GET /ws`: a WebSocket echo. The handshake is answered by hand (hyper's upgrade plus the
//! accept key from tungstenite) so the same hyper server handles plain HTTP and WebSocket.

use crate::routes::{text, Body};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Answers a valid upgrade request with 101 and echoes on the upgraded connection; anything
/// else gets 400.
pub fn upgrade(mut request: Request<Incoming>) -> Response<Body> {
    let accept = match accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(reason) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("not a WebSocket upgrade: {reason}\n"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws).await;
            }
            Err(error) => eprintln!("websocket upgrade failed: {error}"),
        }
    });
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks the handshake headers (RFC 6455 §4.2.1) and derives `Sec-WebSocket-Accept`.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(UPGRADE, "websocket") {
        return Err("missing Upgrade: websocket");
    }
    if !has_token(CONNECTION, "upgrade") {
        return Err("missing Connection: upgrade");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")?;
    HeaderValue::try_from(derive_accept_key(key.as_bytes()))
        .map_err(|_| "unusable Sec-WebSocket-Key")
}

/// Sends every text and binary message back. Pings and closes are answered by tungstenite itself
/// while it reads, so the loop only ends when the connection does.
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                eprintln!("websocket read failed: {error}");
                return;
            }
        };
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            if let Err(error) = ws.send(message).await {
                eprintln!("websocket write failed: {error}");
                return;
            }
        }
    }
}
