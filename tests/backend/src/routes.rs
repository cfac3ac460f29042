//! The HTTP endpoints. Each request is logged to stdout as one line (`PEER METHOD URI`) so tests
//! can see what reached the backend; bad query values get 400, never a panic.

use bytes::Bytes;
use futures::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Chunks sent by `/stream` without `chunks=`.
pub const DEFAULT_STREAM_CHUNKS: u32 = 5;
/// Pause between `/stream` chunks without `interval_ms=`.
pub const DEFAULT_STREAM_INTERVAL_MS: u64 = 200;

pub type Body = BoxBody<Bytes, Infallible>;

/// What a request handler knows about its connection.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub backend_id: Arc<str>,
    /// Set by `/exit`; the connection task exits the process with it once the connection ends.
    pub exit_code: Arc<OnceLock<u8>>,
}

/// Routes one request. Never fails: every problem is an HTTP status.
pub async fn handle(request: Request<Incoming>, conn: Conn) -> Result<Response<Body>, Infallible> {
    println!("{} {} {}", conn.peer, request.method(), request.uri());
    let query = request.uri().query();
    let response = match (request.method(), request.uri().path()) {
        // `/info` answers any method: reporting the method is part of its job.
        (_, "/info") => info(&request, conn.peer),
        (&Method::GET, "/") => text(StatusCode::OK, format!("hello from {}\n", conn.backend_id)),
        (&Method::GET, "/stream") => stream_chunks(query),
        (&Method::GET, "/exit") => exit(query, &conn.exit_code),
        (&Method::GET, "/alloc") => alloc(query),
        (&Method::GET, "/spin") => spin(query).await,
        (&Method::GET, "/print") => print(query),
        (&Method::GET, "/ws") => crate::ws::upgrade(request),
        (&Method::GET, "/page") => page(),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// A page for real browsers: it opens a WebSocket to `/ws` on its own origin, sends a message,
/// and writes what came back with the protocol the page itself arrived over into
/// `<pre id="result">` as JSON (or `{"error": ...}`), for a test to read from the DOM.
fn page() -> Response<Body> {
    const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>plane test page</title></head>
<body><pre id="result">pending</pre>
<script>
const show = (value) => { document.getElementById("result").textContent = JSON.stringify(value); };
const navigation = performance.getEntriesByType("navigation")[0];
const protocol = navigation ? navigation.nextHopProtocol : "unknown";
try {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => ws.send("hello from the browser");
  ws.onmessage = (event) => { show({ echo: event.data, protocol }); ws.close(); };
  ws.onerror = () => show({ error: "websocket failed", protocol });
} catch (error) {
  show({ error: String(error), protocol });
}
</script></body></html>
"#;
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn info(request: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(key, value)| {
            (
                key.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": headers,
        "env": env,
        "peer": peer.to_string(),
    });
    let mut response = text(StatusCode::OK, format!("{body}\n"));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn stream_chunks(query: Option<&str>) -> Response<Body> {
    let parsed = query_param(query, "chunks", DEFAULT_STREAM_CHUNKS).and_then(|chunks| {
        Ok((
            chunks,
            query_param(query, "interval_ms", DEFAULT_STREAM_INTERVAL_MS)?,
        ))
    });
    let (chunks, interval_ms) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return text(StatusCode::BAD_REQUEST, error),
    };
    let interval = Duration::from_millis(interval_ms);
    // No length is known, so hyper sends the body chunked, one chunk per frame as it is produced.
    let frames = stream::unfold(0, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok(frame), i + 1))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn exit(query: Option<&str>, exit_code: &OnceLock<u8>) -> Response<Body> {
    let code = match query_param(query, "code", 0u8) {
        Ok(code) => code,
        Err(error) => return text(StatusCode::BAD_REQUEST, error),
    };
    let _ = exit_code.set(code);
    let mut response = text(StatusCode::OK, format!("exiting with {code}\n"));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Most memory `/alloc` takes in one request.
const MAX_ALLOC_MIB: usize = 4096;

/// Memory `/alloc` took and keeps for the life of the process.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// `/alloc?mib=N`: takes N MiB, touches every page and keeps it, so that a memory limit below
/// that gets the process killed (the OOM test).
fn alloc(query: Option<&str>) -> Response<Body> {
    let mib = match query_param(query, "mib", 0usize) {
        Ok(mib) if mib <= MAX_ALLOC_MIB => mib,
        Ok(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_ALLOC_MIB} MiB\n"),
            )
        }
        Err(error) => return text(StatusCode::BAD_REQUEST, error),
    };
    for _ in 0..mib {
        // Non-zero bytes: the pages are really written, not left to the zero page.
        let block = vec![1u8; 1 << 20];
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(block);
    }
    text(StatusCode::OK, format!("holding {mib} MiB more\n"))
}

/// Writes `text` (percent-decoded, so any byte can be written) and a newline to stdout, or to
/// stderr with `stream=stderr`: output for log tests.
fn print(query: Option<&str>) -> Response<Body> {
    let mut said = None;
    let mut to_stderr = false;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("text", value)) => said = percent_decode(value),
            Some(("stream", "stderr")) => to_stderr = true,
            _ => {}
        }
    }
    let Some(mut bytes) = said else {
        return text(
            StatusCode::BAD_REQUEST,
            "text=... (percent-encoded) is required\n",
        );
    };
    bytes.push(b'\n');
    use std::io::Write;
    let written = if to_stderr {
        std::io::stderr().write_all(&bytes)
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes).and_then(|()| out.flush())
    };
    match written {
        Ok(()) => text(StatusCode::OK, "printed\n"),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// `%XX` decoding to bytes; `None` for a malformed escape.
fn percent_decode(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Most CPU time `/spin` burns in one request.
const MAX_SPIN_MS: u64 = 60_000;

/// Keeps one core busy for `ms` milliseconds (on a blocking thread), then answers: CPU use that
/// a resource sampler must see.
async fn spin(query: Option<&str>) -> Response<Body> {
    let ms = match query_param(query, "ms", 0u64) {
        Ok(ms) if ms <= MAX_SPIN_MS => ms,
        Ok(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_SPIN_MS} ms\n"),
            )
        }
        Err(error) => return text(StatusCode::BAD_REQUEST, error),
    };
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let spun = tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        while std::time::Instant::now() < until {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        n
    })
    .await;
    match spun {
        Ok(_) => text(StatusCode::OK, format!("spun {ms} ms\n")),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// The value of `name` in a query string, parsed; `default` when absent, an error message (for a
/// 400) when present but malformed.
fn query_param<T: std::str::FromStr>(
    query: Option<&str>,
    name: &str,
    default: T,
) -> Result<T, String> {
    let pairs = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty());
    match pairs
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
    {
        Some((_, value)) => value
            .parse()
            .map_err(|_| format!("invalid {name}={value:?}\n")),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn query_params() {
        assert_eq!(query_param(None, "chunks", 5u32), Ok(5));
        assert_eq!(query_param(Some(""), "chunks", 5u32), Ok(5));
        assert_eq!(
            query_param(Some("interval_ms=3&chunks=7"), "chunks", 5u32),
            Ok(7)
        );
        assert_eq!(query_param(Some("chunks=7&&x"), "interval_ms", 9u64), Ok(9));
        assert!(query_param(Some("chunks=seven"), "chunks", 5u32).is_err());
        assert!(query_param(Some("chunks"), "chunks", 5u32).is_err());
        assert!(query_param(Some("code=300"), "code", 0u8).is_err());
    }
}
