//! The API's bearer token. Every endpoint but `/healthz` requires `Authorization: Bearer
//! {token}` when a token is configured; the comparison takes the same time wherever the first
//! difference is (subtle's constant-time equality), so the token cannot be found byte by byte.

use super::ApiError;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_API_TOKEN_BYTES: usize = 16;

/// A secret that API callers must present. Never printed.
#[derive(Clone)]
pub struct ApiToken(Box<[u8]>);

/// Why a token is refused at start-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the API token is empty")]
    Empty,
    #[error("the API token is shorter than {MIN_API_TOKEN_BYTES} bytes")]
    TooShort,
    #[error("the API token must be visible ASCII (it travels in an HTTP header)")]
    NotVisibleAscii,
}

impl ApiToken {
    /// A token from its text; surrounding whitespace (a file's trailing newline) is ignored.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        if token.len() < MIN_API_TOKEN_BYTES {
            return Err(TokenError::TooShort);
        }
        Ok(ApiToken(token.as_bytes().into()))
    }

    /// Whether `presented` is this token, in constant time for tokens of its length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.ct_eq(presented))
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Lets the request through if no token is configured, or if it carries the token.
pub(super) async fn require_token(
    State(token): State<Option<ApiToken>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    let refusal = match presented {
        Some(presented) if token.matches(presented) => return next.run(request).await,
        Some(_) => "the API token is not valid",
        None => "this API requires a token: Authorization: Bearer TOKEN (the CLI sends the one in --api-token-file or PLANE_API_TOKEN)",
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, refusal).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_when_made_and_compared_exactly() {
        assert_eq!(ApiToken::new("  \n").map(|_| ()), Err(TokenError::Empty));
        assert_eq!(
            ApiToken::new("short").map(|_| ()),
            Err(TokenError::TooShort)
        );
        assert_eq!(
            ApiToken::new("sixteen bytes ok!").map(|_| ()),
            Err(TokenError::NotVisibleAscii)
        );
        let token = ApiToken::new("0123456789abcdef\n").expect("valid");
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcde"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert!(!token.matches(b""));
        assert_eq!(token.header_value(), "Bearer 0123456789abcdef");
        assert_eq!(format!("{token:?}"), "ApiToken(..)");
    }
}
