use super::*;

fn request(raw: &[u8]) -> Result<Option<(Framing, bool, bool)>, HeadError> {
    let mut slots = header_slots();
    RequestHead::parse(raw, &mut slots)
        .map(|head| head.map(|h| (h.framing, h.keep_alive, h.websocket)))
}

#[test]
fn a_plain_get_has_no_body_and_keeps_alive() {
    assert_eq!(
        request(b"GET /x?y HTTP/1.1\r\nHost: a.c\r\n\r\n"),
        Ok(Some((Framing::Empty, true, false)))
    );
    assert_eq!(
        request(b"GET / HTTP/1.1\r\nHost: a.c\r\nConnection: keep-alive, close\r\n\r\n"),
        Ok(Some((Framing::Empty, false, false)))
    );
    assert_eq!(
        request(b"GET / HTTP/1.0\r\nHost: a.c\r\n\r\n"),
        Ok(Some((Framing::Empty, false, false)))
    );
    assert_eq!(request(b"GET / HTTP/1.1\r\nHost: a.c\r\n"), Ok(None));
}

#[test]
fn bodies_are_framed_by_length_or_chunked() {
    assert_eq!(
        request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
        Ok(Some((Framing::Length(12), true, false)))
    );
    assert_eq!(
        request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        Ok(Some((Framing::Empty, true, false)))
    );
    assert_eq!(
        request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        Ok(Some((Framing::Length(5), true, false)))
    );
    assert_eq!(
        request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
        Ok(Some((Framing::Chunked, true, false)))
    );
}

#[test]
fn ambiguous_framing_is_refused() {
    for raw in [
        // CL + TE, either order.
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        // Two different lengths, a list, signs and junk.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        // Obfuscated or non-final chunked.
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Folding, bare CR, NUL.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n",
        // Two hosts; bad targets and versions.
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    ] {
        assert!(
            matches!(request(raw), Err(HeadError::Malformed(_))),
            "{:?} -> {:?}",
            String::from_utf8_lossy(raw),
            request(raw)
        );
    }
}

#[test]
fn too_many_fields_are_refused() {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=HEADER_SLOTS - FIELDS_ADDED_BY_PROXY {
        raw.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_eq!(request(&raw), Err(HeadError::TooManyHeaders));
    // One fewer fits, with room for what the proxy adds.
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..HEADER_SLOTS - FIELDS_ADDED_BY_PROXY {
        raw.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_eq!(request(&raw), Ok(Some((Framing::Empty, true, false))));
}

#[test]
fn websocket_needs_get_upgrade_and_connection() {
    let ws = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
    assert_eq!(request(ws), Ok(Some((Framing::Empty, true, true))));
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    ] {
        assert_eq!(request(raw).map(|h| h.map(|h| h.2)), Ok(Some(false)));
    }
}

#[test]
fn targets_and_authorities() {
    let mut slots = header_slots();
    let head = RequestHead::parse(
        b"GET HTTP://A.c:80?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        &mut slots,
    )
    .expect("valid")
    .expect("complete");
    assert_eq!(head.target.authority, Some("A.c:80"));
    assert_eq!(head.target.path, "?q=1");
    assert_eq!(head.authority(), Some(&b"A.c:80"[..]));
    let mut slots = header_slots();
    let head = RequestHead::parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &mut slots)
        .expect("valid")
        .expect("complete");
    assert_eq!(head.target.path, "*");
    assert_eq!(head.authority(), Some(&b"h"[..]));
}

/// What a response head amounts to: status, framing, keep-alive.
type Summary = (u16, Framing, bool);

fn response(raw: &[u8], head_request: bool) -> Result<Option<Summary>, HeadError> {
    let mut slots = header_slots();
    ResponseHead::parse(raw, &mut slots, head_request)
        .map(|head| head.map(|h| (h.code, h.framing, h.keep_alive)))
}

#[test]
fn response_framing() {
    let cases: [(&[u8], bool, Summary); 8] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            false,
            (200, Framing::Length(3), true),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            true,
            (200, Framing::Empty, true),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            (200, Framing::Chunked, true),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            (200, Framing::UntilClose, false),
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n",
            false,
            (200, Framing::UntilClose, false),
        ),
        (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            false,
            (204, Framing::Empty, true),
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            (304, Framing::Empty, true),
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            false,
            (200, Framing::Length(1), false),
        ),
    ];
    for (raw, head_request, expected) in cases {
        assert_eq!(
            response(raw, head_request),
            Ok(Some(expected)),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        assert!(
            response(bad, false).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
