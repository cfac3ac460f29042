//! Header rewriting between client and backend, written straight into the outgoing head.
//!
//! Hop-by-hop fields describe one connection, so they never cross the proxy: the fixed set and
//! every field the `Connection` header names (RFC 9110 §7.6.1). Exceptions, because the proxy
//! forwards bodies and upgrades as they are: `Transfer-Encoding` passes (the chunked framing is
//! forwarded unchanged), `TE: trailers` passes (trailers are forwarded), and a WebSocket
//! handshake passes as exactly `Connection: upgrade` + `Upgrade: websocket`.
//!
//! `X-Forwarded-{For,Proto,Host}` are always set by the proxy, and the other forwarding fields
//! (`Forwarded`, `X-Real-IP`, ...) removed: a client could otherwise claim any address.

use std::io::Write;

use httparse::Header;

use crate::access;
use crate::head::{tokens, RequestHead, ResponseHead};

/// Removed from every message whatever `Connection` says. `Proxy-Authorization` and
/// `Proxy-Authenticate` are credentials for (and challenges from) a proxy, never for the hop
/// beyond it.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Forwarding fields a client could use to claim another address, scheme, port or path prefix;
/// and the three the proxy sets itself.
const FORWARDING: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Whether a `Connection` token names a field that is removed anyway (or is `close`), so that a
/// head whose `Connection` says only such things needs no per-field check.
pub(crate) fn is_fixed_hop_by_hop(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"transfer-encoding")
        || HOP_BY_HOP
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_bytes()))
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether `Connection` (in `headers`) names the field `name`, which must then be removed.
/// Framing fields never are: dropping `Content-Length` or `Transfer-Encoding` while the body is
/// forwarded would let the body be read as the next request.
fn named_by_connection(headers: &[Header<'_>], name: &str) -> bool {
    if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .any(|token| token.eq_ignore_ascii_case(name.as_bytes()))
}

/// What the proxy says about the client in `X-Forwarded-*`.
pub(crate) struct Forwarded<'a> {
    /// The client's IP as the proxy saw it.
    pub(crate) client_ip: &'a [u8],
    /// The scheme the client used.
    pub(crate) proto: &'a [u8],
}

/// What happens to the request's credentials for Plane (`access.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// The backend takes no token: `Authorization` and every cookie are the app's own.
    Pass,
    /// The backend requires a token: `Authorization` and the `plane_token` cookie were Plane's
    /// and stop here.
    Strip,
}

/// Writes the head the backend gets for `head`: origin-form target, `Host` set to `host`, hop-by-hop
/// and forwarding fields replaced, Plane's credentials removed when `credentials` says so.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_, '_>,
    host: &[u8],
    forwarded: &Forwarded<'_>,
    credentials: Credentials,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    if head.target.path.is_empty() || head.target.path.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(head.target.path.as_bytes());
    out.extend_from_slice(if head.minor == 1 {
        b" HTTP/1.1\r\nhost: "
    } else {
        b" HTTP/1.0\r\nhost: "
    });
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut trailers = false;
    for header in head.headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("te") {
            trailers |= tokens(header.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            continue;
        }
        if name.eq_ignore_ascii_case("host")
            || is_hop_by_hop(name)
            || FORWARDING.iter().any(|n| name.eq_ignore_ascii_case(n))
            || (head.connection_names_fields && named_by_connection(head.headers, name))
        {
            continue;
        }
        if credentials == Credentials::Strip {
            if name.eq_ignore_ascii_case("authorization") {
                continue;
            }
            if name.eq_ignore_ascii_case("cookie") {
                let start = out.len();
                out.extend_from_slice(b"cookie: ");
                if access::without_token_cookie(header.value, out) {
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.truncate(start);
                }
                continue;
            }
        }
        write_field(out, name.as_bytes(), header.value);
    }
    if trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    write_field(out, b"x-forwarded-for", forwarded.client_ip);
    write_field(out, b"x-forwarded-proto", forwarded.proto);
    write_field(out, b"x-forwarded-host", host);
    if head.websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What an HTTP/2 request is sent to its backend as.
pub(crate) struct H2Request<'a> {
    pub(crate) parts: &'a http::request::Parts,
    /// `:authority` (or `Host`), sent as `Host`.
    pub(crate) authority: &'a str,
    /// The body is sent chunked (it has no `Content-Length` and is not empty).
    pub(crate) chunked: bool,
    /// An extended CONNECT for a WebSocket: sent as an HTTP/1.1 upgrade with this key.
    pub(crate) websocket_key: Option<&'a str>,
}

/// Writes the HTTP/1.1 head a backend gets for an HTTP/2 request: the same rules as
/// [`write_request_head`] (hop-by-hop and forwarding fields replaced, credentials removed when
/// asked), the `Cookie` fields HTTP/2 splits joined into one (RFC 9113 §8.2.3), and an extended
/// CONNECT (RFC 8441) turned into `GET` with `Upgrade: websocket`.
pub(crate) fn write_h2_request_head(
    out: &mut Vec<u8>,
    request: &H2Request<'_>,
    forwarded: &Forwarded<'_>,
    credentials: Credentials,
) {
    let parts = request.parts;
    let method = if request.websocket_key.is_some() {
        "GET"
    } else {
        parts.method.as_str()
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !path.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(request.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut trailers = false;
    let mut cookies = 0usize;
    let mut websocket_version = false;
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if name == "te" {
            trailers |= tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            continue;
        }
        if name == "host"
            || name == "transfer-encoding"
            || is_hop_by_hop(name)
            || FORWARDING.contains(&name)
            || (credentials == Credentials::Strip && name == "authorization")
        {
            continue;
        }
        if name == "cookie" {
            cookies += 1;
            continue;
        }
        // The client's key (if it sent one) is not the one the backend's 101 must answer.
        if request.websocket_key.is_some() && name == "sec-websocket-key" {
            continue;
        }
        websocket_version |= name == "sec-websocket-version";
        write_field(out, name.as_bytes(), value.as_bytes());
    }
    if cookies > 0 {
        let start = out.len();
        out.extend_from_slice(b"cookie: ");
        let values_start = out.len();
        for value in parts.headers.get_all(http::header::COOKIE) {
            let before = out.len();
            if before > values_start {
                out.extend_from_slice(b"; ");
            }
            let written = match credentials {
                Credentials::Strip => access::without_token_cookie(value.as_bytes(), out),
                Credentials::Pass => {
                    out.extend_from_slice(value.as_bytes());
                    !value.is_empty()
                }
            };
            if !written {
                out.truncate(before);
            }
        }
        if out.len() > values_start {
            out.extend_from_slice(b"\r\n");
        } else {
            out.truncate(start);
        }
    }
    if trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    write_field(out, b"x-forwarded-for", forwarded.client_ip);
    write_field(out, b"x-forwarded-proto", forwarded.proto);
    write_field(out, b"x-forwarded-host", request.authority.as_bytes());
    if request.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(key) = request.websocket_key {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
        write_field(out, b"sec-websocket-key", key.as_bytes());
        if !websocket_version {
            out.extend_from_slice(b"sec-websocket-version: 13\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The HTTP/2 response a client gets for a backend's `head` (status and fields; the body
/// follows as DATA frames): hop-by-hop fields dropped, as HTTP/2 forbids them. A WebSocket's
/// 101 becomes the 200 that accepts an extended CONNECT.
pub(crate) fn h2_response(head: &ResponseHead<'_, '_>) -> Result<http::Response<()>, &'static str> {
    let status = if head.code == 101 { 200 } else { head.code };
    let mut response = http::Response::new(());
    *response.status_mut() =
        http::StatusCode::from_u16(status).map_err(|_| "invalid status code")?;
    let fields = response.headers_mut();
    for header in head.headers {
        let name = header.name;
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("transfer-encoding")
            || (head.code == 101 && name.eq_ignore_ascii_case("sec-websocket-accept"))
            || (head.connection_names_fields && named_by_connection(head.headers, name))
        {
            continue;
        }
        let name =
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| "invalid header name")?;
        let value =
            http::HeaderValue::from_bytes(header.value).map_err(|_| "invalid header value")?;
        fields.append(name, value);
    }
    Ok(response)
}

/// A chunked body's trailer section (`name: value` lines and the blank line) as HTTP/2
/// trailers; malformed or hop-by-hop lines are left out.
pub(crate) fn h2_trailers(section: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    let mut slots = [httparse::EMPTY_HEADER; 64];
    if let Ok(httparse::Status::Complete((_, fields))) =
        httparse::parse_headers(section, &mut slots)
    {
        for field in fields {
            if is_hop_by_hop(field.name) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(field.name.as_bytes()),
                http::HeaderValue::from_bytes(field.value),
            ) {
                map.append(name, value);
            }
        }
    }
    map
}

/// Writes the head the client gets for a backend's `head`; `close` adds `Connection: close`
/// (the client connection ends after this response).
pub(crate) fn write_response_head(out: &mut Vec<u8>, head: &ResponseHead<'_, '_>, close: bool) {
    let _ = write!(out, "HTTP/1.1 {} ", head.code);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in head.headers {
        let name = header.name;
        if is_hop_by_hop(name)
            || (head.connection_names_fields && named_by_connection(head.headers, name))
        {
            continue;
        }
        write_field(out, name.as_bytes(), header.value);
    }
    if head.websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete response of the proxy's own: a one-line plain-text `message`, with
/// `fields` (`Retry-After`, `Location`, ...) after the framing ones.
pub(crate) fn write_error_response(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    message: &dyn std::fmt::Display,
    fields: &[(&str, &str)],
    close: bool,
) {
    let body = format!("{message}\n");
    let body_len = body.len();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {body_len}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    for (name, value) in fields {
        write_field(out, name.as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
