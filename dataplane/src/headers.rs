//! Header rewriting between client and backend: hop-by-hop removal and `X-Forwarded-*`.
//!
//! Hop-by-hop headers describe one connection, so they never cross the proxy, except the
//! WebSocket upgrade handshake (`Connection: upgrade` + `Upgrade: websocket`) which the backend
//! must see to answer 101. `X-Forwarded-*` are always overwritten and the other forwarding headers
//! (`Forwarded`, `X-Real-IP`, ...) removed: a client could otherwise claim any address.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// `X-Forwarded-For`: the client's IP as the proxy saw it.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers that are removed whatever `Connection` says. `Proxy-Authorization`
/// and `Proxy-Authenticate` are credentials for (and challenges from) a proxy, never for the hop
/// beyond it.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Forwarding headers a client could use to claim another address, scheme, port or path prefix.
/// Plane does not set them, so it removes them; it sets `X-Forwarded-{For,Proto,Host}` itself.
const UNTRUSTED_FORWARDING: [HeaderName; 5] = [
    FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
];

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Whether the message asks to switch protocols: `Connection` lists `upgrade` (also among other
/// tokens, as Firefox's `keep-alive, Upgrade`) and an `Upgrade` header is present.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

/// Whether the message is an upgrade to WebSocket, the only protocol the proxy relays: an
/// [upgrade](is_upgrade) whose `Upgrade` is the single token `websocket` (any case). An offer of
/// several protocols is not, since the backend could pick one the proxy does not relay.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut offered = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty());
    let websocket =
        matches!(offered.next(), Some(token) if token.eq_ignore_ascii_case(b"websocket"));
    websocket && offered.next().is_none() && is_upgrade(headers)
}

/// Removes hop-by-hop headers: the fixed list and every header named in `Connection`.
///
/// With `keep_upgrade`, a [WebSocket upgrade](is_websocket_upgrade) handshake survives as exactly
/// `Connection: upgrade` plus the original `Upgrade` value; any other upgrade is removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in `Connection` beyond the fixed list are rare; only they cost an allocation.
    let named: Vec<HeaderName> = if connection_tokens(headers).any(|t| !is_fixed_hop_by_hop(t)) {
        connection_tokens(headers)
            .filter(|t| !is_fixed_hop_by_hop(t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in named {
        headers.remove(name);
    }

    // A WebSocket upgrade carries one `Upgrade` value (checked above), so no Vec is needed.
    let upgrade = if keep_upgrade && is_websocket_upgrade(headers) {
        headers.remove(UPGRADE)
    } else {
        None
    };
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(value) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, value);
    }
}

fn is_fixed_hop_by_hop(token: &str) -> bool {
    token.eq_ignore_ascii_case("close")
        || HOP_BY_HOP
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_str()))
}

/// Sets the `X-Forwarded-*` headers, replacing whatever the client sent, and removes the other
/// forwarding headers a client could forge (`Forwarded`, `X-Real-IP`, `X-Forwarded-Port`,
/// `X-Forwarded-Prefix`, `X-Forwarded-Ssl`).
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: HeaderValue,
    proto: HeaderValue,
    host: Option<HeaderValue>,
) {
    for name in UNTRUSTED_FORWARDING {
        headers.remove(name);
    }
    headers.insert(X_FORWARDED_FOR, client_ip);
    headers.insert(X_FORWARDED_PROTO, proto);
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn removes_fixed_and_named_hop_by_hop() {
        let mut headers = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic dTpw"),
            ("proxy-authenticate", "Basic"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("host", "a.c"),
        ]);
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "host"]);
    }

    #[test]
    fn keeps_the_upgrade_handshake_only_for_upgrades() {
        let mut headers = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(
            headers.get(CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            headers.get(UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(headers.get(KEEP_ALIVE).is_none());
        assert!(headers.contains_key("sec-websocket-key"));

        let mut headers = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(is_upgrade(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(is_upgrade(&map(&[
            ("connection", "keep-alive"),
            ("connection", " upgrade "),
            ("upgrade", "websocket"),
        ])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
        assert!(!is_upgrade(&map(&[
            ("connection", "upgraded"),
            ("upgrade", "websocket")
        ])));

        // Without an `Upgrade` header, keep_upgrade keeps nothing.
        let mut headers = map(&[("connection", "upgrade")]);
        remove_hop_by_hop(&mut headers, true);
        assert!(headers.is_empty());
    }

    #[test]
    fn only_websocket_upgrades_are_kept() {
        for upgrade in ["websocket", "WebSocket", " websocket "] {
            let headers = map(&[("connection", "Upgrade"), ("upgrade", upgrade)]);
            assert!(is_websocket_upgrade(&headers), "{upgrade:?}");
        }
        for upgrade in ["h2c", "websocket, h2c", "h2c, websocket", "websocketx", ""] {
            let mut headers = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ]);
            assert!(!is_websocket_upgrade(&headers), "{upgrade:?}");
            remove_hop_by_hop(&mut headers, true);
            assert!(headers.is_empty(), "{upgrade:?}: {headers:?}");
        }
        // Two `Upgrade` lines are an offer of two protocols.
        let headers = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert!(!is_websocket_upgrade(&headers));
        // Without `Connection: upgrade` it is no upgrade at all.
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn untrusted_forwarding_headers_are_removed() {
        let mut headers = map(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-ssl", "on"),
            ("x-kept", "1"),
        ]);
        set_forwarded(
            &mut headers,
            HeaderValue::from_static("127.0.0.1"),
            HeaderValue::from_static("http"),
            None,
        );
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "x-forwarded-for", "x-forwarded-proto"]);
    }

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut headers = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        set_forwarded(
            &mut headers,
            HeaderValue::from_static("127.0.0.1"),
            HeaderValue::from_static("http"),
            Some(HeaderValue::from_static("a.c")),
        );
        let all =
            |name| -> Vec<&[u8]> { headers.get_all(name).iter().map(|v| v.as_bytes()).collect() };
        assert_eq!(all(X_FORWARDED_FOR), [&b"127.0.0.1"[..]]);
        assert_eq!(all(X_FORWARDED_PROTO), [&b"http"[..]]);
        assert_eq!(all(X_FORWARDED_HOST), [&b"a.c"[..]]);
    }
}
