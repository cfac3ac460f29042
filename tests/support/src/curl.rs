//! The real `curl` as a test client: what users run against Plane, with no client code of ours
//! between the test and the server.

use anyhow::{bail, Context};
use std::process::Command;
use std::time::Duration;

/// Default `--max-time` for every call, so a hung server fails the test instead of hanging it.
/// Pass `--max-time N` in `args` to override it (curl keeps the last value given).
pub const CURL_MAX_TIME: Duration = Duration::from_secs(10);

/// Written after the body by `-w`: a newline, then the status code, so the code is always the
/// last line whatever the body ends with.
const WRITE_OUT: &str = "\n%{http_code}";

/// A response as curl saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlResponse {
    /// HTTP status code of the last response (with `-L`, after redirects).
    pub status: u16,
    /// The body as text (lossy UTF-8); with `-i`, preceded by the response headers.
    pub body: String,
}

impl CurlResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body))
    }
}

/// Runs `curl -sS --noproxy '*' --max-time 10 -o - -w '\n%{http_code}' ARGS...` and returns the
/// status and body. Any HTTP status is a success; curl failing (connection refused, timeout,
/// ...) is an error carrying curl's message.
pub fn curl(args: &[&str]) -> anyhow::Result<CurlResponse> {
    let max_time = CURL_MAX_TIME.as_secs().to_string();
    let output = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--noproxy",
            "*",
            "--max-time",
            &max_time,
            "-o",
            "-",
            "-w",
            WRITE_OUT,
        ])
        .args(args)
        .output()
        .context("running curl: is it installed?")?;
    if !output.status.success() {
        bail!(
            "curl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_output(&output.stdout).with_context(|| format!("curl {}", args.join(" ")))
}

/// Splits curl's stdout into the body and the status code that [`WRITE_OUT`] appended.
fn parse_output(stdout: &[u8]) -> anyhow::Result<CurlResponse> {
    let Some(newline) = stdout.iter().rposition(|&byte| byte == b'\n') else {
        bail!(
            "no status line in curl output {:?}",
            String::from_utf8_lossy(stdout)
        );
    };
    let code = String::from_utf8_lossy(&stdout[newline + 1..]);
    let status = match code.trim().parse::<u16>() {
        Ok(status) if status != 0 => status,
        _ => bail!("curl reported no HTTP status (got {code:?})"),
    };
    Ok(CurlResponse {
        status,
        body: String::from_utf8_lossy(&stdout[..newline]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn parses_body_and_status() {
        let parsed = parse_output(b"hello\n\n200").unwrap();
        assert_eq!(
            parsed,
            CurlResponse {
                status: 200,
                body: "hello\n".into()
            }
        );
        let parsed = parse_output(b"\n404").unwrap();
        assert_eq!(
            parsed,
            CurlResponse {
                status: 404,
                body: String::new()
            }
        );
        let parsed = parse_output(b"no newline at end\n201").unwrap();
        assert_eq!(parsed.body, "no newline at end");
        assert!(parse_output(b"\n000").is_err());
        assert!(parse_output(b"200").is_err());
    }

    /// Answers one request on a free port with `response`, returning the port.
    fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before ending its request");
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn runs_real_curl() {
        let port = serve_once(
            "HTTP/1.1 418 I'm a teapot\r\nContent-Length: 6\r\nConnection: close\r\n\r\nshort\n",
        );
        let response = curl(&[&format!("http://127.0.0.1:{port}/")]).unwrap();
        assert_eq!(
            response,
            CurlResponse {
                status: 418,
                body: "short\n".into()
            }
        );
    }

    #[test]
    fn connection_refused_is_an_error() {
        let port = crate::free_port().unwrap();
        let error = curl(&[&format!("http://127.0.0.1:{port}/")]).unwrap_err();
        assert!(format!("{error:#}").contains("curl"), "{error:#}");
    }
}
