//! Hostile HTTP/2 clients, written as raw frames (no HTTP/2 library would send them): a
//! rapid-reset flood (streams opened and reset at once, CVE-2023-44487) and a CONTINUATION
//! flood (a header block that never ends). Each speaks prior-knowledge h2c to a plain
//! listener and reports whether the server cut it off.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET http://{authority}/`, literal fields without indexing.
fn request_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.push(0x01); // :authority: literal without indexing, indexed name 1
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

/// `streams` requests opened and reset at once.
pub fn rapid_reset(authority: &str, streams: u32) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(4, 0, 0, &[])); // SETTINGS
    for i in 0..streams {
        let id = 1 + 2 * i;
        bytes.extend(frame(1, 0x4 | 0x1, id, &request_block(authority))); // END_HEADERS|END_STREAM
        bytes.extend(frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    bytes
}

/// A header block of about `bytes` that never ends: HEADERS without END_HEADERS, then
/// CONTINUATION frames, none with END_HEADERS.
pub fn endless_continuation(authority: &str, bytes: usize) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x1, 1, &request_block(authority)));
    let mut filler = Vec::new();
    let mut i = 0;
    while filler.len() < bytes {
        // Literal header field without indexing, new name: x-fill-N with 200 bytes.
        let name = format!("x-fill-{i}");
        filler.push(0x00);
        filler.push(name.len() as u8);
        filler.extend_from_slice(name.as_bytes());
        filler.push(0x7f);
        filler.push(200 - 127);
        filler.extend(std::iter::repeat_n(b'v', 200));
        i += 1;
    }
    for piece in filler.chunks(1000) {
        out.extend(frame(9, 0, 1, piece));
    }
    out
}

/// Sends `attack` and reads until the server closes the connection or sends GOAWAY: `true`
/// if it did either before the connection went quiet for `quiet`.
pub async fn is_cut_off(stream: &mut TcpStream, attack: &[u8], quiet: std::time::Duration) -> bool {
    // The server may close before taking all of it: a failed write is a cut too.
    if stream.write_all(attack).await.is_err() {
        return true;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        let mut at = 0;
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if got[at + 3] == 7 {
                return true; // GOAWAY
            }
            at += 9 + len;
        }
    }
}
