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
