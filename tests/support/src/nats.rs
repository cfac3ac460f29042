//! A real `nats-server -js` per test: its own port and its own store directory, killed on drop,
//! so tests never share state and never depend on a server someone left running.

use anyhow::{bail, Context};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh nats-server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nats-server` with JetStream, stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a temporary store directory and waits until
    /// it accepts connections. Fails with an install hint when `nats-server` is not installed.
    pub fn start() -> anyhow::Result<Self> {
        let store = tempfile::tempdir().context("creating a JetStream store directory")?;
        let port = crate::free_port()?;
        let child = spawn(port, store.path())?;
        let mut server = NatsServer {
            child: Some(child),
            port,
            store,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would), keeping its store directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, after [`NatsServer::kill`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Some(spawn(self.port, self.store.path())?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("nats-server exited before accepting connections: {status}");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on port {} within {START_TIMEOUT:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn(port: u16, store: &Path) -> anyhow::Result<Child> {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "starting nats-server: is it installed? (`apt-get install -y nats-server`, or run \
             scripts/test which installs it)",
        )
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
