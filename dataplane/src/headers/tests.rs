use super::*;
use crate::head::{header_slots, RequestHead, ResponseHead};

fn forwarded_request(raw: &[u8]) -> String {
    let mut slots = header_slots();
    let head = RequestHead::parse(raw, &mut slots)
        .expect("valid")
        .expect("complete");
    let mut out = Vec::new();
    let host = head.authority().expect("host");
    write_request_head(
        &mut out,
        &head,
        host,
        &Forwarded {
            client_ip: b"127.0.0.1",
            proto: b"http",
        },
        Credentials::Pass,
    );
    String::from_utf8(out).expect("ascii")
}

#[test]
fn removes_fixed_and_named_hop_by_hop_and_sets_forwarded() {
    let out = forwarded_request(
        b"GET /p?q HTTP/1.1\r\nHost: a.c\r\nConnection: keep-alive, X-Secret\r\nConnection: x-other\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\n\
Proxy-Authorization: Basic dTpw\r\nX-Secret: 1\r\nX-Other: 2\r\nX-Kept: 3\r\n\
X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n",
    );
    assert_eq!(
        out,
        "GET /p?q HTTP/1.1\r\nhost: a.c\r\nX-Kept: 3\r\nte: trailers\r\n\
x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.c\r\n\r\n"
    );
}

#[test]
fn connection_cannot_remove_framing_fields() {
    let out = forwarded_request(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, transfer-encoding, x-a\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
    );
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    assert!(!out.contains("X-A"), "{out}");
}

#[test]
fn keeps_framing_and_the_websocket_handshake_only() {
    let out = forwarded_request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMA\r\n\r\n",
    );
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    assert!(out.contains("Trailer: x-sum\r\n"), "{out}");
    for gone in ["Upgrade", "upgrade", "HTTP2-Settings", "onnection"] {
        assert!(!out.contains(gone), "{gone} in {out}");
    }
    let out = forwarded_request(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
    );
    assert!(
        out.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
        "{out}"
    );
    assert!(out.contains("Sec-WebSocket-Key: k\r\n"), "{out}");
    assert_eq!(out.matches("onnection").count(), 1, "{out}");
}

#[test]
fn absolute_form_becomes_origin_form() {
    let out = forwarded_request(b"GET http://a.c HTTP/1.1\r\nHost: b\r\n\r\n");
    assert!(out.starts_with("GET / HTTP/1.1\r\nhost: a.c\r\n"), "{out}");
    let out = forwarded_request(b"GET http://a.c?x=1 HTTP/1.1\r\n\r\n");
    assert!(
        out.starts_with("GET /?x=1 HTTP/1.1\r\nhost: a.c\r\n"),
        "{out}"
    );
}

#[test]
fn response_heads_lose_hop_by_hop_and_say_close() {
    let raw = b"HTTP/1.1 200 Fine\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Public: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut slots = header_slots();
    let head = ResponseHead::parse(raw, &mut slots, false)
        .expect("valid")
        .expect("complete");
    let mut out = Vec::new();
    write_response_head(&mut out, &head, true);
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 200 Fine\r\nX-Public: 1\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn error_responses_are_complete() {
    let mut out = b"stale".to_vec();
    out.clear();
    write_error_response(
        &mut out,
        http::StatusCode::SERVICE_UNAVAILABLE,
        &"backend b is still starting",
        &[("retry-after", "1")],
        true,
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 28\r\nretry-after: 1\r\nconnection: close\r\n\r\nbackend b is still starting\n"
    );
}

#[test]
fn redirects_carry_their_location() {
    let mut out = Vec::new();
    write_error_response(
        &mut out,
        http::StatusCode::PERMANENT_REDIRECT,
        &"this proxy serves HTTPS",
        &[("location", "https://a.plane.test:8443/x?y=1")],
        false,
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 308 Permanent Redirect\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 24\r\nlocation: https://a.plane.test:8443/x?y=1\r\n\r\nthis proxy serves HTTPS\n"
    );
}
