//! WebSockets through the proxy: the handshake passes, bytes are relayed both ways, and the
//! backend counts as active exactly while the connection is open.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use plane_dataplane::ProxyConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn echoes_and_counts(connection_header: Option<&'static str>) {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (backend, server) = websocket_echo().await;
    let route = proxy.table.set_ready("ws", backend);

    let mut request = "ws://ws.plane.localhost:9090/socket"
        .into_client_request()
        .expect("request");
    if let Some(value) = connection_header {
        request
            .headers_mut()
            .insert("connection", value.parse().expect("header value"));
    }
    let stream = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (mut ws, response) = within(tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake through the proxy");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(route.active(), 1, "open WebSocket counts");

    for text in ["hello", "world"] {
        within(ws.send(Message::text(text))).await.expect("send");
        let echoed = within(ws.next())
            .await
            .expect("a message")
            .expect("ok message");
        assert_eq!(echoed, Message::text(text));
    }
    assert_eq!(route.active(), 1);

    within(ws.close(None)).await.expect("close");
    while let Some(Ok(_)) = within(ws.next()).await {}
    // The close handshake is done; the client now closes its TCP side, as browsers do.
    drop(ws);
    eventually("the relay to end", || route.active() == 0).await;
    assert!(route.idle_since().is_some());
    server.abort();
}

#[tokio::test]
async fn websocket_echoes_and_counts_while_open() {
    echoes_and_counts(None).await;
}

#[tokio::test]
async fn firefox_connection_header_is_an_upgrade() {
    echoes_and_counts(Some("keep-alive, Upgrade")).await;
}

#[tokio::test]
async fn removed_route_lets_open_websocket_finish() {
    let proxy = TestProxy::start(ProxyConfig::default()).await;
    let (backend, server) = websocket_echo().await;
    let route = proxy.table.set_ready("ws", backend);
    let stream = within(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (mut ws, _) = within(tokio_tungstenite::client_async(
        "ws://ws.plane.localhost/",
        stream,
    ))
    .await
    .expect("handshake");

    proxy.table.remove("ws");
    within(ws.send(Message::text("still here")))
        .await
        .expect("send");
    let echoed = within(ws.next()).await.expect("message").expect("ok");
    assert_eq!(echoed, Message::text("still here"));
    assert_eq!(route.active(), 1);
    drop(ws);
    eventually("the relay to end", || route.active() == 0).await;
    server.abort();
}

/// A WebSocket server on 127.0.0.1:0 that completes the handshake, then either holds the
/// connection without ever reading it (`hold`) or drops it at once.
async fn handshake_then(hold: bool) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if hold {
                    // Never reads, so never notices the client leaving, and never closes.
                    let _ws = ws;
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, task)
}

async fn open_websocket(
    proxy: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = within(TcpStream::connect(proxy)).await.expect("connect");
    let (ws, response) = within(tokio_tungstenite::client_async(
        "ws://ws.plane.localhost/",
        stream,
    ))
    .await
    .expect("handshake through the proxy");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

fn short_grace() -> ProxyConfig {
    ProxyConfig {
        upgrade_half_close_grace: std::time::Duration::from_millis(200),
        ..ProxyConfig::default()
    }
}

#[tokio::test]
async fn client_leaving_ends_the_relay_even_if_the_backend_stays() {
    let proxy = TestProxy::start(short_grace()).await;
    let (backend, server) = handshake_then(true).await;
    let route = proxy.table.set_ready("ws", backend);
    let ws = open_websocket(proxy.addr).await;
    assert_eq!(route.active(), 1);

    // The client closes its socket without a close handshake; the backend ignores the FIN.
    drop(ws);
    eventually("the relay to end after the half-close grace", || {
        route.active() == 0
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn backend_leaving_ends_the_relay_even_if_the_client_stays() {
    let proxy = TestProxy::start(short_grace()).await;
    let (backend, server) = handshake_then(false).await;
    let route = proxy.table.set_ready("ws", backend);
    // The client keeps its socket open and never reads or closes it.
    let _ws = open_websocket(proxy.addr).await;
    eventually("the relay to end after the half-close grace", || {
        route.active() == 0
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn open_websocket_keeps_its_connection_slot() {
    let config = ProxyConfig {
        max_connections: 1,
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start(config).await;
    let (backend, server) = websocket_echo().await;
    let route = proxy.table.set_ready("ws", backend);
    let http_backend = Backend::echo("a").await;
    proxy.table.set_ready("a", http_backend.addr);

    let mut ws = open_websocket(proxy.addr).await;
    let addr = proxy.addr;
    let second = tokio::spawn(async move { get(addr, "a.plane.localhost", "/").await });
    // A negative can only be shown by waiting: the second connection is not served meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "an upgraded connection escaped max_connections"
    );

    within(ws.close(None)).await.expect("close");
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);
    let (status, _, body) = within(second).await.expect("second request");
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(route.active(), 0);
    server.abort();
}
