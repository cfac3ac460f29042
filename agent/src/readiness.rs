//! When a started backend counts as ready. A process's port is bound by the backend itself, so
//! an accepted connection proves it listens. A container's published port is bound by Docker's
//! `docker-proxy`, which accepts at once even when nothing listens inside: there only an HTTP
//! answer proves the backend serves. A spawn's `ready_path` asks for more: a 2xx or 3xx answer
//! on that path, whatever the executor.
//!
//! There is no event for "a server started listening", so both probe, backing off from
//! [`READY_PROBE_MIN`] to [`READY_PROBE_MAX`].

use crate::limits::{READY_PROBE_ATTEMPT_TIMEOUT, READY_PROBE_MAX, READY_PROBE_MIN};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a backend must do to be ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadyCheck {
    /// Accept a TCP connection.
    Accepts,
    /// Answer an HTTP request for `/` with any status.
    Answers,
    /// Answer an HTTP request for this path with 2xx or 3xx.
    Succeeds(String),
}

impl ReadyCheck {
    /// What the log and a `timed_out` message say was awaited.
    pub fn describe(&self) -> String {
        match self {
            ReadyCheck::Accepts => "accept connections".to_string(),
            ReadyCheck::Answers => "answer HTTP".to_string(),
            ReadyCheck::Succeeds(path) => format!("answer 2xx or 3xx on {path}"),
        }
    }

    /// Resolves once the backend at `address` passes. Cancel safe.
    pub async fn passed(&self, address: SocketAddr) {
        let mut pause = READY_PROBE_MIN;
        loop {
            let passed = match self {
                ReadyCheck::Accepts => TcpStream::connect(address).await.is_ok(),
                ReadyCheck::Answers => http_status(address, "/").await.is_some(),
                ReadyCheck::Succeeds(path) => {
                    matches!(http_status(address, path).await, Some(200..=399))
                }
            };
            if passed {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(READY_PROBE_MAX);
        }
    }
}

/// The status of one `GET path` at `address`, if an HTTP answer came within
/// [`READY_PROBE_ATTEMPT_TIMEOUT`].
async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: plane-readiness\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        // The status line fits here; a closed connection before it means no answer.
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
            if len >= 12 {
                break;
            }
        }
        status_of(&buf[..len])
    };
    tokio::time::timeout(READY_PROBE_ATTEMPT_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

/// The status code of a response that starts `HTTP/1.x NNN`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 2"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_of(b""), None);
    }

    /// A server that accepts and answers each connection with `answer` (or closes at once when
    /// it is empty).
    async fn server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            }
        });
        address
    }

    async fn passes(check: ReadyCheck, address: SocketAddr) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(600), check.passed(address))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_accepting_socket_that_never_answers_is_not_an_http_answer() {
        let silent = server(b"").await;
        assert!(passes(ReadyCheck::Accepts, silent).await);
        assert!(!passes(ReadyCheck::Answers, silent).await);
    }

    #[tokio::test]
    async fn any_status_answers_but_a_ready_path_needs_success() {
        let failing = server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        assert!(passes(ReadyCheck::Answers, failing).await);
        assert!(!passes(ReadyCheck::Succeeds("/healthz".into()), failing).await);
        let redirecting = server(b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n").await;
        assert!(passes(ReadyCheck::Succeeds("/healthz".into()), redirecting).await);
    }
}
