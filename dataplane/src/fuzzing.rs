//! Entry points and oracles for the fuzz targets in `fuzz/`, public (and hidden from the docs)
//! so that the targets and the seed-corpus tests (`tests/fuzz_corpus.rs`) share them. Each
//! panics when an invariant breaks; that is how a fuzzer reports.

use std::io::{Read, Write};
use std::time::Duration;

use crate::access;
use crate::framing::BodyProgress;
use crate::head::{header_slots, Framing, RequestHead, ResponseHead};
use crate::headers::{self, Credentials, Forwarded};
use crate::{RouteTable, TokenDigest};

/// The cluster the fuzzed heads are routed in; `a` is its one backend.
pub const CLUSTER: &str = "plane.localhost";

/// The table the request-head oracle routes with.
pub fn table() -> RouteTable {
    let table = RouteTable::new(CLUSTER);
    table.set_ready("a", std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
    table
}

const FORWARDED: Forwarded<'static> = Forwarded {
    client_ip: b"192.0.2.1",
    proto: b"http",
};

/// Arbitrary bytes as what a client sends: a request head and what follows it. Returns the
/// backend the request routes to, if it is accepted and routed.
///
/// Oracle: no panic; an accepted head's framing is unambiguous (never both `Content-Length`
/// and `Transfer-Encoding`, one `Host` at most); the head the backend would get parses again,
/// to the same method, framing and host, with the proxy's `X-Forwarded-For` once and no
/// hop-by-hop field; and the body's end is found at the same place whether its bytes come
/// whole or split in two.
pub fn request_head(data: &[u8], table: &RouteTable) -> Option<String> {
    let mut slots = header_slots();
    let head = RequestHead::parse(data, &mut slots).ok()??;
    let count = |name: &str| {
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert!(count("host") <= 1, "two Hosts accepted");
    assert!(
        count("content-length") == 0 || count("transfer-encoding") == 0,
        "CL and TE accepted together"
    );
    let host = head.authority()?;
    let host_str = std::str::from_utf8(host).ok()?;

    let mut out = Vec::new();
    headers::write_request_head(&mut out, &head, host, &FORWARDED, Credentials::Pass);
    out.extend_from_slice(&data[head.len..]);
    let mut again_slots = header_slots();
    // What the backend gets must fit every slot there is, no more.
    let again = RequestHead::parse_leaving(&out, &mut again_slots, 0)
        .unwrap_or_else(|e| panic!("rewritten head does not parse: {e}"))
        .expect("rewritten head is complete");
    assert_eq!(again.method, head.method);
    assert_eq!(
        again.framing, head.framing,
        "the backend would frame the body differently"
    );
    assert_eq!(again.host, Some(host), "the backend would see another host");
    assert_eq!(again.websocket, head.websocket);
    for header in again.headers {
        let name = header.name.to_ascii_lowercase();
        assert!(
            !matches!(
                name.as_str(),
                "keep-alive" | "proxy-connection" | "proxy-authorization" | "proxy-authenticate"
            ),
            "hop-by-hop {name} forwarded"
        );
        if name == "connection" || name == "upgrade" {
            assert!(head.websocket, "{name} forwarded on a plain request");
        }
    }
    let forwarded_for: Vec<&[u8]> = again
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|h| h.value)
        .collect();
    assert_eq!(forwarded_for, [FORWARDED.client_ip]);

    body_split_invariant(head.framing, &data[head.len..]);

    let key = table.route_key(host_str).ok()?;
    table.lookup(key).map(|route| route.backend().to_owned())
}

/// The body's end, found from `body` whole and from every two-piece split, agrees.
fn body_split_invariant(framing: Framing, body: &[u8]) {
    let whole = {
        let mut progress = BodyProgress::new(framing);
        progress.advance(body).map(|n| (n, progress.is_done()))
    };
    for at in [1, body.len() / 2, body.len().saturating_sub(1)] {
        if at == 0 || at >= body.len() {
            continue;
        }
        let mut progress = BodyProgress::new(framing);
        let split = progress.advance(&body[..at]).and_then(|first| {
            if progress.is_done() {
                return Ok((first, true));
            }
            let second = progress.advance(&body[at..])?;
            Ok((first + second, progress.is_done()))
        });
        assert_eq!(
            split.is_ok(),
            whole.is_ok(),
            "split at {at} changes validity"
        );
        if let (Ok(split), Ok(whole)) = (split, &whole) {
            assert_eq!(split, *whole, "split at {at} moves the body's end");
        }
    }
}

/// The token of the backend the credentials oracle guards.
pub const TOKEN: &str = "s3cr3tT0ken";

/// Arbitrary bytes as a request head to a backend that requires [`TOKEN`]. Returns whether
/// the request would be admitted.
///
/// Oracle: no panic; a request is admitted only when it shows exactly the token; the head the
/// backend would get carries neither `Authorization` nor a `plane_token` cookie, and still
/// parses; `/_plane_auth` answers only ever send the browser to a path on the same host, with
/// nothing that could end a header line.
pub fn credentials(data: &[u8]) -> bool {
    let mut slots = header_slots();
    let Ok(Some(head)) = RequestHead::parse(data, &mut slots) else {
        return false;
    };
    let (path, query) = head
        .target
        .path
        .split_once('?')
        .unwrap_or((head.target.path, ""));
    let expected = TokenDigest::of(TOKEN.as_bytes());
    if path == access::AUTH_PATH {
        let answer = access::exchange_for_cookie(query, &expected, "a", true);
        if let Some(location) = answer.location() {
            let bytes = location.as_bytes();
            assert!(
                bytes.first() == Some(&b'/') && !matches!(bytes.get(1), Some(b'/' | b'\\')),
                "sent off-site: {location:?}"
            );
            assert!(
                bytes.iter().all(|&b| (0x21..0x7f).contains(&b)),
                "unsafe Location: {location:?}"
            );
        }
    }
    let admitted = access::admit(head.headers, &expected, "a").is_ok();
    if admitted {
        let shown = access::presented(head.headers).expect("admitted with a token");
        assert_eq!(shown, TOKEN.as_bytes(), "admitted with another token");
    }
    let Some(host) = head.authority() else {
        return admitted;
    };
    let mut out = Vec::new();
    headers::write_request_head(&mut out, &head, host, &FORWARDED, Credentials::Strip);
    let mut again_slots = header_slots();
    let again = RequestHead::parse_leaving(&out, &mut again_slots, 0)
        .unwrap_or_else(|e| panic!("rewritten head does not parse: {e}"))
        .expect("rewritten head is complete");
    for header in again.headers {
        assert!(
            !header.name.eq_ignore_ascii_case("authorization"),
            "Authorization reached the backend"
        );
        if header.name.eq_ignore_ascii_case("cookie") {
            assert!(
                access::cookie(header.value, access::COOKIE).is_none(),
                "plane_token reached the backend"
            );
        }
    }
    admitted
}

/// Arbitrary bytes as a backend's response head (the first byte picks whether it answers a
/// `HEAD` request and whether the client connection closes after it). Returns whether the
/// head was accepted and rewritten.
///
/// Oracle: no panic; the head the client would get parses again, to the same status and
/// framing, says `Connection: close` exactly when closing, and carries no hop-by-hop field
/// other than a WebSocket 101's handshake.
pub fn response_head(data: &[u8]) -> bool {
    let Some((&flags, raw)) = data.split_first() else {
        return false;
    };
    let head_request = flags & 1 != 0;
    let close = flags & 2 != 0;
    let mut slots = header_slots();
    let Ok(Some(head)) = ResponseHead::parse(raw, &mut slots, head_request) else {
        return false;
    };
    let mut out = Vec::new();
    headers::write_response_head(&mut out, &head, close);
    let mut again_slots = header_slots();
    let again = ResponseHead::parse(&out, &mut again_slots, head_request)
        .unwrap_or_else(|e| panic!("rewritten response does not parse: {e}"))
        .expect("rewritten response is complete");
    assert_eq!(again.code, head.code);
    if head.framing != Framing::UntilClose {
        assert_eq!(
            again.framing, head.framing,
            "the client would frame the body differently"
        );
    }
    let connection: Vec<String> = again
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        .collect();
    if head.websocket {
        assert_eq!(connection, ["upgrade"]);
    } else if close {
        assert_eq!(connection, ["close"]);
    } else {
        assert!(
            connection.is_empty(),
            "Connection forwarded: {connection:?}"
        );
    }
    for header in again.headers {
        assert!(
            !header.name.eq_ignore_ascii_case("keep-alive")
                && !header.name.eq_ignore_ascii_case("proxy-connection"),
            "hop-by-hop {} forwarded",
            header.name
        );
    }
    true
}

/// Arbitrary bytes as a script for an upgraded connection between a client and a backend:
/// each step is a byte `op` and, for sends, a length byte. Ops (`op % 4`): 0 client sends,
/// 1 backend sends, 2 client closes its sending side, 3 backend closes its sending side. The
/// relay runs between real loopback sockets, with both carriers (`op / 4 % 2` of the first
/// byte picks which).
///
/// Oracle: every byte either side sent arrives at the other, in order; once both sides have
/// closed, the relay ends on its own, cleanly and without waiting out the half-close grace.
pub fn relay_script(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(relay_script_async(data));
}

async fn relay_script_async(data: &[u8]) {
    use tokio::net::{TcpListener, TcpStream};
    let carry = if data.first().is_some_and(|b| b / 4 % 2 == 1) {
        crate::Carry::Splice
    } else {
        crate::Carry::Copy
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pair = || async {
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    };
    let (client, client_near) = pair().await;
    let (backend_near, backend) = pair().await;
    let limits = crate::upgrade::RelayLimits {
        half_close_grace: Duration::from_secs(30),
        write_progress: Duration::from_secs(30),
        carry,
    };
    let relay =
        tokio::spawn(
            async move { crate::upgrade::relay_io(&client_near, &backend_near, limits).await },
        );

    // The peers are plain blocking sockets on threads, so the script runs exactly as written.
    let client = client.into_std().expect("std");
    let backend = backend.into_std().expect("std");
    client.set_nonblocking(false).expect("blocking");
    backend.set_nonblocking(false).expect("blocking");
    let script = data.to_vec();
    let peers = tokio::task::spawn_blocking(move || run_script(&script, client, backend));
    let (to_backend, to_client, got_at_backend, got_at_client) = peers.await.expect("script");
    assert_eq!(
        got_at_backend, to_backend,
        "bytes lost or reordered towards the backend"
    );
    assert_eq!(
        got_at_client, to_client,
        "bytes lost or reordered towards the client"
    );
    let relayed = tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay ends once both sides closed")
        .expect("relay task")
        .expect("a clean relay");
    assert!(!relayed.lingered);
    assert_eq!(relayed.to_backend, to_backend.len() as u64);
    assert_eq!(relayed.to_client, to_client.len() as u64);
}

/// Plays the script, then closes both sides and reads what each received.
fn run_script(
    script: &[u8],
    mut client: std::net::TcpStream,
    mut backend: std::net::TcpStream,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    use std::net::Shutdown;
    let (mut to_backend, mut to_client) = (Vec::new(), Vec::new());
    let (mut client_open, mut backend_open) = (true, true);
    // Readers drain each side concurrently so that no send can block on a full window.
    let mut client_reader = client.try_clone().expect("clone");
    let mut backend_reader = backend.try_clone().expect("clone");
    let at_client = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = client_reader.read_to_end(&mut got);
        got
    });
    let at_backend = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = backend_reader.read_to_end(&mut got);
        got
    });
    let mut steps = script.iter().copied();
    let mut counter = 0u8;
    while let Some(op) = steps.next() {
        match op % 4 {
            0 | 1 => {
                let len = usize::from(steps.next().unwrap_or(1)) * 37;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                if op % 4 == 0 && client_open {
                    client.write_all(&bytes).expect("client send");
                    to_backend.extend_from_slice(&bytes);
                } else if op % 4 == 1 && backend_open {
                    backend.write_all(&bytes).expect("backend send");
                    to_client.extend_from_slice(&bytes);
                }
            }
            2 if client_open => {
                client.shutdown(Shutdown::Write).expect("client close");
                client_open = false;
            }
            3 if backend_open => {
                backend.shutdown(Shutdown::Write).expect("backend close");
                backend_open = false;
            }
            _ => {}
        }
    }
    if client_open {
        client.shutdown(Shutdown::Write).expect("client close");
    }
    if backend_open {
        backend.shutdown(Shutdown::Write).expect("backend close");
    }
    let got_at_client = at_client.join().expect("client reader");
    let got_at_backend = at_backend.join().expect("backend reader");
    (to_backend, to_client, got_at_backend, got_at_client)
}
