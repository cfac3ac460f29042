//! Access tokens at the proxy: a backend spawned with `require_token` is reached only by
//! requests that show its token, as `Authorization: Bearer TOKEN` or as the cookie
//! `plane_token`, which a browser gets by visiting `/_plane_auth?token=TOKEN&redirect=/path`.
//!
//! The proxy holds only the token's digest and compares digests in constant time
//! (`token_digest`), so the token cannot be guessed a byte at a time. Neither credential
//! reaches the backend: the `Authorization` field and the `plane_token` cookie are left out of
//! the rewritten head (other cookies pass).

use crate::error::{ProxyError, TokenCookie};
use crate::token_digest::TokenDigest;
use httparse::Header;

/// The cookie that carries a token.
pub(crate) const COOKIE: &str = "plane_token";

/// The path that turns a token in the query into the cookie.
pub(crate) const AUTH_PATH: &str = "/_plane_auth";

/// A request's header fields as (name, value) pairs, walked as often as needed: an HTTP/1.1
/// head's or an HTTP/2 header map, without copying either.
pub(crate) trait Fields<'b>: Copy {
    fn pairs(self) -> impl Iterator<Item = (&'b str, &'b [u8])>;
}

impl<'b> Fields<'b> for &[Header<'b>] {
    fn pairs(self) -> impl Iterator<Item = (&'b str, &'b [u8])> {
        self.iter().map(|h| (h.name, h.value))
    }
}

impl<'b> Fields<'b> for &'b http::HeaderMap {
    fn pairs(self) -> impl Iterator<Item = (&'b str, &'b [u8])> {
        self.iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// The token a request shows: `Authorization: Bearer`, else the cookie.
pub(crate) fn presented<'b>(fields: impl Fields<'b>) -> Option<&'b [u8]> {
    let bearer = fields
        .pairs()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .find_map(|(_, value)| bearer(value));
    bearer.or_else(|| {
        fields
            .pairs()
            .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
            .find_map(|(_, value)| cookie(value, COOKIE))
    })
}

/// The token a request to `target` shows: [`presented`], or the `token` of a visit to
/// [`AUTH_PATH`] (a browser's first visit to a sleeping backend).
pub(crate) fn presented_at<'b>(fields: impl Fields<'b>, target: &'b str) -> Option<&'b [u8]> {
    presented(fields).or_else(|| {
        let (path, query) = target.split_once('?')?;
        if path != AUTH_PATH {
            return None;
        }
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .filter(|token| !token.is_empty())
            .map(str::as_bytes)
    })
}

/// The credentials of `Authorization: Bearer CREDENTIALS` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = trim(rest);
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` in a `Cookie` field (`a=1; b=2`).
pub(crate) fn cookie<'b>(value: &'b [u8], name: &str) -> Option<&'b [u8]> {
    value.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
    })
}

/// Appends a `Cookie` field's value without the `plane_token` cookie to `out`; `false` when
/// nothing else was left (then nothing was appended).
pub(crate) fn without_token_cookie(value: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    for pair in value.split(|&b| b == b';') {
        let pair = trim(pair);
        let name = pair
            .iter()
            .position(|&b| b == b'=')
            .map_or(pair, |eq| trim(&pair[..eq]));
        if pair.is_empty() || name == COOKIE.as_bytes() {
            continue;
        }
        if out.len() > start {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    out.len() > start
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Admits a request to a backend that requires `expected`: 401 without a token, 403 with
/// another one.
pub(crate) fn admit<'b>(
    fields: impl Fields<'b>,
    expected: &TokenDigest,
    backend: &str,
) -> Result<(), ProxyError> {
    match presented(fields) {
        None => Err(ProxyError::TokenRequired {
            backend: backend.into(),
        }),
        Some(given) if !expected.admits(given) => Err(ProxyError::TokenRefused {
            backend: backend.into(),
        }),
        Some(_) => Ok(()),
    }
}

/// Answers `GET /_plane_auth?token=T&redirect=/path`: with the right token, a 303 to `/path`
/// (a path on the same host only; `/` when absent) that sets the cookie (`Secure` when the
/// client came over https).
pub(crate) fn exchange_for_cookie(
    query: &str,
    expected: &TokenDigest,
    backend: &str,
    secure: bool,
) -> ProxyError {
    let mut token = None;
    let mut redirect = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "token" => token = Some(value),
            "redirect" => redirect = Some(value),
            _ => {}
        }
    }
    let Some(token) = token.and_then(percent_decode) else {
        return ProxyError::TokenRequired {
            backend: backend.into(),
        };
    };
    if !expected.admits(token.as_bytes()) {
        return ProxyError::TokenRefused {
            backend: backend.into(),
        };
    }
    let location = match redirect {
        None => "/".to_owned(),
        Some(raw) => match percent_decode(raw).filter(|path| is_local_path(path)) {
            Some(path) => path,
            None => {
                return ProxyError::BadRequest("redirect must be a path on this host, like /doc")
            }
        },
    };
    let mut cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        cookie.push_str("; Secure");
    }
    ProxyError::TokenAccepted {
        location: location.into_boxed_str(),
        cookie: TokenCookie::new(cookie),
    }
}

/// A path on this host: one `/`, then visible ASCII (no `//host` or `/\host`, which browsers
/// take as another host; nothing that could end a header line).
fn is_local_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|&b| (0x21..0x7f).contains(&b))
}

/// `%XX` decoding (and `+` as space), or `None` for a malformed escape or bytes that are not
/// UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    #[test]
    fn finds_the_token_in_bearer_or_cookie() {
        let bearer = [header("Authorization", b"Bearer  abc123 ")];
        assert_eq!(presented(&bearer[..]), Some(&b"abc123"[..]));
        let lower = [header("authorization", b"bearer abc")];
        assert_eq!(presented(&lower[..]), Some(&b"abc"[..]));
        let basic = [header("Authorization", b"Basic dXNlcjpwYXNz")];
        assert_eq!(presented(&basic[..]), None);
        let cookie = [header("Cookie", b"theme=dark; plane_token=t0k; x=1")];
        assert_eq!(presented(&cookie[..]), Some(&b"t0k"[..]));
        let lookalike = [header("Cookie", b"not_plane_token=zzz; plane_tokenx=1")];
        assert_eq!(presented(&lookalike[..]), None);
        let both = [
            header("Cookie", b"plane_token=from-cookie"),
            header("Authorization", b"Bearer from-header"),
        ];
        assert_eq!(presented(&both[..]), Some(&b"from-header"[..]));
        assert_eq!(presented(&[header("Authorization", b"Bearer ")][..]), None);
    }

    #[test]
    fn a_sleeping_backend_is_shown_the_token_of_the_auth_path_too() {
        let none: &[Header<'_>] = &[];
        assert_eq!(
            presented_at(none, "/_plane_auth?redirect=%2F&token=t0k"),
            Some(&b"t0k"[..])
        );
        assert_eq!(presented_at(none, "/_plane_auth?token="), None);
        assert_eq!(presented_at(none, "/other?token=t0k"), None);
        let bearer = [Header {
            name: "Authorization",
            value: b"Bearer b3arer",
        }];
        assert_eq!(
            presented_at(&bearer[..], "/_plane_auth?token=t0k"),
            Some(&b"b3arer"[..])
        );
    }

    #[test]
    fn admits_only_the_right_token() {
        let secret = TokenDigest::of(b"secret");
        let right = [header("Authorization", b"Bearer secret")];
        let wrong = [header("Authorization", b"Bearer secreT")];
        assert!(admit(&right[..], &secret, "b").is_ok());
        assert_eq!(
            admit(&wrong[..], &secret, "b").expect_err("wrong").status(),
            http::StatusCode::FORBIDDEN
        );
        assert_eq!(
            admit(&[][..], &secret, "b").expect_err("none").status(),
            http::StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn strips_only_the_token_cookie() {
        let mut out = Vec::new();
        assert!(without_token_cookie(b"a=1; plane_token=x;b=2", &mut out));
        assert_eq!(out, b"a=1; b=2");
        out.clear();
        assert!(!without_token_cookie(b" plane_token=x ", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn the_auth_path_sets_the_cookie_and_redirects_only_on_this_host() {
        let secret = &TokenDigest::of(b"secret");
        let accepted =
            exchange_for_cookie("token=secret&redirect=%2Fdoc%3Fid%3D42", secret, "b", true);
        let ProxyError::TokenAccepted { location, cookie } = &accepted else {
            panic!("{accepted:?}");
        };
        assert_eq!(&**location, "/doc?id=42");
        assert_eq!(
            cookie.as_str(),
            "plane_token=secret; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(
            !format!("{accepted:?}").contains("secret"),
            "the token is not in Debug output"
        );
        assert_eq!(accepted.status(), http::StatusCode::SEE_OTHER);
        let plain = exchange_for_cookie("token=secret", secret, "b", false);
        assert!(
            matches!(&plain, ProxyError::TokenAccepted { location, cookie } if &**location == "/" && !cookie.as_str().contains("Secure"))
        );
        for redirect in [
            "https://evil.example/",
            "//evil.example/",
            "/%5Cevil.example",
            "%2F%2Fevil",
            "/a%0d%0aSet-Cookie:%20x=1",
            "relative",
            "%zz",
        ] {
            let refused = exchange_for_cookie(
                &format!("token=secret&redirect={redirect}"),
                secret,
                "b",
                false,
            );
            assert_eq!(
                refused.status(),
                http::StatusCode::BAD_REQUEST,
                "{redirect}: {refused:?}"
            );
        }
        assert_eq!(
            exchange_for_cookie("token=wrong&redirect=/", secret, "b", false).status(),
            http::StatusCode::FORBIDDEN
        );
        assert_eq!(
            exchange_for_cookie("redirect=/", secret, "b", false).status(),
            http::StatusCode::UNAUTHORIZED
        );
    }
}
