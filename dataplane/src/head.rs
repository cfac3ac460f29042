//! Request and response heads, parsed in place from a connection's buffer (httparse) and checked
//! for everything that could make the proxy and a backend disagree about where a message ends:
//! request smuggling is a disagreement about framing, so any doubt about framing is refused.
//!
//! What forwarding needs (framing, keep-alive, upgrade, host) is worked out here, once; the
//! rewrite (`headers.rs`) then copies the fields it keeps straight from the same buffer.

use httparse::{Header, Status};

use crate::limits::MAX_REQUEST_HEADERS;

/// The header slots one parse uses (on the stack): heads with more fields are refused.
pub(crate) const HEADER_SLOTS: usize = MAX_REQUEST_HEADERS;

/// Fields the proxy may add to a request it forwards (`X-Forwarded-{For,Proto,Host}`, and a
/// WebSocket handshake's `Connection` and `Upgrade`): a client head may have that many fewer
/// than there are slots, so the head the backend gets never has more fields than the proxy
/// itself accepts.
pub(crate) const FIELDS_ADDED_BY_PROXY: usize = 5;

/// An empty set of header slots to parse into.
pub(crate) const fn header_slots<'b>() -> [Header<'b>; HEADER_SLOTS] {
    [httparse::EMPTY_HEADER; HEADER_SLOTS]
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, ending with the zero-size chunk and trailers.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

/// Why a head could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// Not valid HTTP/1.x, or framed ambiguously.
    #[error("{0}")]
    Malformed(&'static str),
    /// More header fields than there are slots.
    #[error("too many header fields")]
    TooManyHeaders,
}

/// The target of a request, split so that the backend always gets origin form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target<'b> {
    /// The authority of an absolute-form target (`GET http://host/path`), which overrides
    /// `Host` (RFC 9112 §3.2.2).
    pub(crate) authority: Option<&'b str>,
    /// The path and query to send on; empty means `/` (an absolute-form target without a path).
    pub(crate) path: &'b str,
}

/// A parsed, checked request head. Borrows the connection's buffer.
#[derive(Debug)]
pub(crate) struct RequestHead<'h, 'b> {
    pub(crate) method: &'b str,
    pub(crate) target: Target<'b>,
    /// HTTP/1.`minor`: 0 or 1.
    pub(crate) minor: u8,
    pub(crate) headers: &'h [Header<'b>],
    /// The one `Host` value, if any.
    pub(crate) host: Option<&'b [u8]>,
    pub(crate) framing: Framing,
    /// The client allows another request on this connection after this one.
    pub(crate) keep_alive: bool,
    /// A WebSocket upgrade handshake (the only upgrade the proxy relays).
    pub(crate) websocket: bool,
    /// `Connection` names fields beyond the fixed hop-by-hop set; they must be removed.
    pub(crate) connection_names_fields: bool,
    /// Length of the head in bytes, up to and including the blank line.
    pub(crate) len: usize,
}

impl<'h, 'b> RequestHead<'h, 'b> {
    /// Parses a request head from a client at the start of `buf`: `Ok(None)` if it is not
    /// complete yet. Leaves room for the fields the proxy adds ([`FIELDS_ADDED_BY_PROXY`]).
    pub(crate) fn parse(
        buf: &'b [u8],
        slots: &'h mut [Header<'b>],
    ) -> Result<Option<RequestHead<'h, 'b>>, HeadError> {
        Self::parse_leaving(buf, slots, FIELDS_ADDED_BY_PROXY)
    }

    /// [`parse`](Self::parse), refusing heads that leave fewer than `room` slots free.
    pub(crate) fn parse_leaving(
        buf: &'b [u8],
        slots: &'h mut [Header<'b>],
        room: usize,
    ) -> Result<Option<RequestHead<'h, 'b>>, HeadError> {
        let slots_len = slots.len();
        let mut req = httparse::Request::new(slots);
        let len = match req.parse(buf) {
            Ok(Status::Complete(len)) => len,
            Ok(Status::Partial) => return Ok(None),
            Err(error) => return Err(parse_error(error)),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed("incomplete request line"));
        };
        let headers: &'h [Header<'b>] = req.headers;
        if headers.len() + room > slots_len {
            return Err(HeadError::TooManyHeaders);
        }
        let target = parse_target(path)?;
        let fields = Fields::scan(headers)?;
        if fields.hosts > 1 {
            return Err(HeadError::Malformed("more than one Host header"));
        }
        let framing = match (fields.transfer_encoding, fields.content_length) {
            (Some(_), Some(_)) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ))
            }
            (Some(_), None) if minor == 0 => {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ))
            }
            (Some(Coding::Chunked), None) => Framing::Chunked,
            (Some(Coding::Other), None) => {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding does not end with chunked",
                ))
            }
            (None, Some(0)) | (None, None) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        };
        let websocket = method == "GET"
            && fields.upgrade_websocket
            && fields.upgrades == 1
            && fields.connection_upgrade;
        Ok(Some(RequestHead {
            method,
            target,
            minor,
            headers,
            host: fields.host,
            framing,
            keep_alive: minor == 1 && !fields.connection_close,
            websocket,
            connection_names_fields: fields.connection_names_fields,
            len,
        }))
    }

    /// The host the request is for: an absolute-form target's authority, else `Host`.
    pub(crate) fn authority(&self) -> Option<&'b [u8]> {
        match self.target.authority {
            Some(authority) => Some(authority.as_bytes()),
            None => self.host,
        }
    }
}

/// A parsed, checked response head from a backend. Borrows the backend connection's buffer.
#[derive(Debug)]
pub(crate) struct ResponseHead<'h, 'b> {
    pub(crate) code: u16,
    pub(crate) reason: &'b str,
    pub(crate) headers: &'h [Header<'b>],
    pub(crate) framing: Framing,
    /// The backend keeps the connection open after this response.
    pub(crate) keep_alive: bool,
    /// A 101 switching to WebSocket.
    pub(crate) websocket: bool,
    pub(crate) connection_names_fields: bool,
    pub(crate) len: usize,
}

impl<'h, 'b> ResponseHead<'h, 'b> {
    /// Parses a response head from the start of `buf` (the answer to a request whose method was
    /// `HEAD` if `head_request`): `Ok(None)` if it is not complete yet.
    pub(crate) fn parse(
        buf: &'b [u8],
        slots: &'h mut [Header<'b>],
        head_request: bool,
    ) -> Result<Option<ResponseHead<'h, 'b>>, HeadError> {
        let mut res = httparse::Response::new(slots);
        let len = match res.parse(buf) {
            Ok(Status::Complete(len)) => len,
            Ok(Status::Partial) => return Ok(None),
            Err(error) => return Err(parse_error(error)),
        };
        let (Some(code), Some(minor)) = (res.code, res.version) else {
            return Err(HeadError::Malformed("incomplete status line"));
        };
        if !(100..=599).contains(&code) {
            return Err(HeadError::Malformed("status code out of range"));
        }
        let headers: &'h [Header<'b>] = res.headers;
        let fields = Fields::scan(headers)?;
        let bodiless = head_request || (100..200).contains(&code) || code == 204 || code == 304;
        let framing = match (fields.transfer_encoding, fields.content_length) {
            _ if bodiless => Framing::Empty,
            (Some(_), Some(_)) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ))
            }
            (Some(Coding::Chunked), None) if minor == 1 => Framing::Chunked,
            (Some(_), None) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        };
        Ok(Some(ResponseHead {
            code,
            reason: res.reason.unwrap_or(""),
            headers,
            framing,
            keep_alive: minor == 1 && !fields.connection_close && framing != Framing::UntilClose,
            websocket: code == 101
                && fields.upgrade_websocket
                && fields.upgrades == 1
                && fields.connection_upgrade,
            connection_names_fields: fields.connection_names_fields,
            len,
        }))
    }
}

/// What a `Transfer-Encoding` amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// `chunked` is the last coding, and appears once.
    Chunked,
    /// Anything else: the length cannot be known from the codings.
    Other,
}

/// The framing- and connection-relevant fields of one head, gathered in one pass.
#[derive(Default)]
struct Fields<'b> {
    hosts: usize,
    host: Option<&'b [u8]>,
    content_length: Option<u64>,
    transfer_encoding: Option<Coding>,
    connection_close: bool,
    connection_upgrade: bool,
    connection_names_fields: bool,
    upgrades: usize,
    upgrade_websocket: bool,
}

impl<'b> Fields<'b> {
    fn scan(headers: &[Header<'b>]) -> Result<Fields<'b>, HeadError> {
        let mut fields = Fields::default();
        let mut chunked_seen = 0usize;
        let mut last_coding_chunked = false;
        for header in headers {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("host") {
                fields.hosts += 1;
                fields.host = Some(value);
            } else if name.eq_ignore_ascii_case("content-length") {
                let length = parse_content_length(value)?;
                match fields.content_length {
                    // Repeated identical values are one length (RFC 9110 §8.6); differing ones
                    // are exactly the ambiguity smuggling needs.
                    Some(seen) if seen != length => {
                        return Err(HeadError::Malformed("conflicting Content-Length headers"))
                    }
                    _ => fields.content_length = Some(length),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in tokens(value) {
                    let chunked = coding.eq_ignore_ascii_case(b"chunked");
                    chunked_seen += usize::from(chunked);
                    last_coding_chunked = chunked;
                }
                fields.transfer_encoding = Some(Coding::Other);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        fields.connection_close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        fields.connection_upgrade = true;
                    } else if !crate::headers::is_fixed_hop_by_hop(token) {
                        fields.connection_names_fields = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                for protocol in tokens(value) {
                    fields.upgrades += 1;
                    fields.upgrade_websocket = protocol.eq_ignore_ascii_case(b"websocket");
                }
            }
        }
        if fields.transfer_encoding.is_some() && chunked_seen == 1 && last_coding_chunked {
            fields.transfer_encoding = Some(Coding::Chunked);
        }
        Ok(fields)
    }
}

/// The comma-separated, whitespace-trimmed, non-empty tokens of a list-valued field.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// `Content-Length`: one run of decimal digits, nothing else (no sign, no spaces inside, no
/// list), small enough for a u64.
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    const BAD: HeadError = HeadError::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 {
        return Err(BAD);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            Ok(n * 10 + u64::from(b - b'0'))
        } else {
            Err(BAD)
        }
    })
}

fn parse_target(target: &str) -> Result<Target<'_>, HeadError> {
    if target.starts_with('/') || target == "*" {
        return Ok(Target {
            authority: None,
            path: target,
        });
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(HeadError::Malformed("invalid request target"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(HeadError::Malformed("empty authority in request target"));
    }
    if authority.contains('@') {
        return Err(HeadError::Malformed("userinfo in request target"));
    }
    if path.starts_with('#') {
        return Err(HeadError::Malformed("fragment in request target"));
    }
    Ok(Target {
        authority: Some(authority),
        path,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_error(error: httparse::Error) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
        httparse::Error::Version => HeadError::Malformed("unsupported HTTP version"),
    }
}

#[cfg(test)]
mod tests;
