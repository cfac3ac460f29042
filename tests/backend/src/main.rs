//! The backend Plane's end-to-end tests run: a small HTTP/1.1 and WebSocket server that reports
//! what it received and can be told to stream, echo or exit, so tests can drive every lifecycle
//! path of a real backend. Pure Rust with no runtime files, so it also runs statically linked in a
//! `FROM scratch` image.

mod config;
mod routes;
mod ws;

use config::{Config, Flags};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Exit code for a malformed command line or environment.
const USAGE_EXIT_CODE: u8 = 2;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(flags) => flags,
        Err(error) => return usage_error(&error),
    };
    if let Some(code) = flags.exit_code {
        eprintln!("exiting with {code} as asked by --exit-code");
        return ExitCode::from(code);
    }
    let config = match Config::from_env(flags, |name| std::env::var_os(name)) {
        Ok(config) => config,
        Err(error) => return usage_error(&error),
    };
    if config.ignore_sigterm {
        // SAFETY: setting a signal disposition to SIG_IGN installs no handler code; it is done
        // before any other thread exists.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(never) => match never {},
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(error: &str) -> ExitCode {
    eprintln!("error: {error}\n{}", config::USAGE);
    ExitCode::from(USAGE_EXIT_CODE)
}

/// Binds after the configured delay and serves until the process is killed or asked to exit.
async fn run(config: Config) -> std::io::Result<std::convert::Infallible> {
    tokio::time::sleep(config.ready_delay).await;
    let listener = TcpListener::bind(config.addr).await.map_err(|error| {
        std::io::Error::new(error.kind(), format!("binding {}: {error}", config.addr))
    })?;
    println!("listening on {}", listener.local_addr()?);
    let backend_id: Arc<str> = config.backend_id.into();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, backend_id.clone()));
            }
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, backend_id: Arc<str>) {
    // `/exit` records its code here and answers with `Connection: close`, so hyper ends the
    // connection once the response is flushed; only then does the process exit.
    let exit_code = Arc::new(OnceLock::new());
    let conn = routes::Conn {
        peer,
        backend_id,
        exit_code: exit_code.clone(),
    };
    let service = service_fn(move |request| routes::handle(request, conn.clone()));
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        eprintln!("connection from {peer}: {error}");
    }
    if let Some(&code) = exit_code.get() {
        println!("exiting with {code}");
        std::process::exit(i32::from(code));
    }
}
