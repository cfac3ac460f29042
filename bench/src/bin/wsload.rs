//! The WebSocket load generator of the benchmark: lean enough (its own minimal client framing,
//! one thread) that the proxies, not the generator, set the pace.
//!
//! ```text
//! wsload echo ADDR HOST CONNS SIZE SECS   # CONNS clients each send SIZE-byte binary messages
//!                                         # and wait for the echo; prints
//!                                         # "msgs_per_s p50_ms p99_ms"
//! wsload upgrade ADDR HOST CONNS SECS     # CONNS loops of connect, upgrade, close; prints
//!                                         # "upgrades_per_s p50_ms p99_ms"
//! wsload hold ADDR HOST CONNS             # opens CONNS WebSockets, prints "open CONNS", holds
//!                                         # them until a line arrives on stdin, then closes
//!                                         # them and prints "closed"
//! ```
//!
//! `GET /ws` with `Host: HOST` is what is upgraded (the bench backend's echo endpoint).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fixed `Sec-WebSocket-Key`: the generator does not check the accept value, only the 101.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

async fn upgrade(addr: SocketAddr, host: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(format!(
            "no upgrade: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(stream)
}

/// A masked binary frame carrying `size` bytes (a client must mask).
fn frame(size: usize) -> Vec<u8> {
    let mut out = vec![0x82];
    match size {
        0..=125 => out.push(0x80 | size as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    // Mask 0 leaves the payload as it is: valid, and no per-byte work for the generator.
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.resize(out.len() + size, b'x');
    out
}

/// Reads one unmasked server frame; returns its payload length.
async fn read_frame(stream: &mut TcpStream, scratch: &mut [u8]) -> io::Result<usize> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await?;
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await?;
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(scratch.len());
        stream.read_exact(&mut scratch[..n]).await?;
        left -= n;
    }
    Ok(len)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn report(count: usize, secs: f64, mut micros: Vec<u32>) {
    micros.sort_unstable();
    println!(
        "{:.0} {:.3} {:.3}",
        count as f64 / secs,
        percentile(&micros, 0.5),
        percentile(&micros, 0.99)
    );
}

/// Waits for every load task, then prints the rate and latency percentiles of all of them.
async fn collect_and_report(
    local: tokio::task::LocalSet,
    tasks: Vec<tokio::task::JoinHandle<io::Result<Vec<u32>>>>,
    started: Instant,
) -> io::Result<()> {
    let all = local
        .run_until(async {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.map_err(io::Error::other)??);
            }
            Ok::<_, io::Error>(all)
        })
        .await?;
    report(all.len(), started.elapsed().as_secs_f64(), all);
    Ok(())
}

async fn echo(
    addr: SocketAddr,
    host: Rc<str>,
    conns: usize,
    size: usize,
    secs: u64,
) -> io::Result<()> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(upgrade(addr, &host).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for mut stream in streams {
        tasks.push(local.spawn_local(async move {
            let message = frame(size);
            let mut scratch = vec![0u8; 64 * 1024];
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                stream.write_all(&message).await?;
                let got = read_frame(&mut stream, &mut scratch).await?;
                if got != size {
                    return Err(io::Error::other("echo of another size"));
                }
                micros.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok::<_, io::Error>(micros)
        }));
    }
    collect_and_report(local, tasks, started).await
}

async fn upgrades(addr: SocketAddr, host: Rc<str>, conns: usize, secs: u64) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let host = Rc::clone(&host);
        tasks.push(local.spawn_local(async move {
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                let mut stream = upgrade(addr, &host).await?;
                // A close frame, then the TCP close.
                stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await?;
                drop(stream);
                micros.push(began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok::<_, io::Error>(micros)
        }));
    }
    collect_and_report(local, tasks, started).await
}

async fn hold(addr: SocketAddr, host: Rc<str>, conns: usize) -> io::Result<()> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(upgrade(addr, &host).await?);
    }
    println!("open {}", streams.len());
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    drop(streams);
    println!("closed");
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: wsload echo ADDR HOST CONNS SIZE SECS | wsload upgrade ADDR HOST CONNS SECS | wsload hold ADDR HOST CONNS"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(mode), Some(addr), Some(host)) = (
        args.first(),
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).map(|h| Rc::<str>::from(h.as_str())),
    ) else {
        return usage();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsload: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (mode.as_str(), number(3), number(4), number(5)) {
        ("echo", Some(conns), Some(size), Some(secs)) => {
            runtime.block_on(echo(addr, host, conns as usize, size as usize, secs))
        }
        ("upgrade", Some(conns), Some(secs), _) => {
            runtime.block_on(upgrades(addr, host, conns as usize, secs))
        }
        ("hold", Some(conns), _, _) => runtime.block_on(hold(addr, host, conns as usize)),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsload: {error}");
            ExitCode::FAILURE
        }
    }
}
