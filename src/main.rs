//! `plane`: the one binary. It parses arguments and wires the crates together; behaviour lives
//! in `plane-controlplane`, `plane-agent` and `plane-dataplane`.

mod cli;
mod client_commands;
mod memory;
mod secrets;
mod serve;
mod shutdown;
mod state_dir;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // A proxy's requests are served by its own threads (`--threads`, `plane_dataplane::
    // Listeners`), or on this one thread when one is asked for: then everything runs on the
    // thread that polls the sockets, with no hand-off and no work stealing to pay for.
    let mut builder = if cli.command.serves_proxy() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => serve::dev(args).await,
            Command::Controller(args) => serve::controller(args).await,
            Command::Drone(args) => serve::drone(args).await,
            Command::Proxy(args) => serve::proxy(args).await,
            Command::Spawn(args) => client_commands::spawn(args).await,
            Command::Connect(args) => client_commands::connect(args).await,
            Command::Status(args) => client_commands::status(args).await,
            Command::List(args) => client_commands::list(args).await,
            Command::Terminate(args) => client_commands::terminate(args).await,
            Command::SetIdle(args) => client_commands::set_idle(args).await,
            Command::Watch(args) => client_commands::watch(args).await,
            Command::Logs(args) => client_commands::logs(args).await,
            Command::Drones(args) => client_commands::drones(args).await,
            Command::Drain(args) => client_commands::drain(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Servers log at `info` (but the DNS library, which logs every query there, at `warn`), client
/// commands only at `warn`, unless `RUST_LOG` says otherwise.
fn init_logging(cli: &Cli) {
    let default = if cli.command.is_server() {
        "info,hickory_server=warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
