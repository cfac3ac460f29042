//! A real `nats-server -js` per test: its own port and its own store directory, killed on drop,
//! so tests never share state and never depend on a server someone left running. The server
//! picks its port itself (`-p -1`) and writes it to a ports file: choosing a free port first
//! and passing it races with every other process binding ports at the same time.

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
    /// A configuration file (authorization, TLS) the server is started with.
    config: Option<tempfile::NamedTempFile>,
    /// `tls` when the server requires TLS.
    scheme: &'static str,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a temporary store directory and waits until
    /// it accepts connections. Fails with an install hint when `nats-server` is not installed.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_config("")
    }

    /// [`NatsServer::start`] with a configuration file holding `config` (an `authorization`
    /// block, say); the port, address and store still come from the command line.
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        Self::start_inner(config, "nats")
    }

    /// [`NatsServer::start_with_config`] for a server whose `config` requires TLS: its URL is
    /// `tls://`, and it is probed as ready by a TCP connect only.
    pub fn start_tls(config: &str) -> anyhow::Result<Self> {
        Self::start_inner(config, "tls")
    }

    fn start_inner(config_text: &str, scheme: &'static str) -> anyhow::Result<Self> {
        let store = tempfile::tempdir().context("creating a JetStream store directory")?;
        let ports_dir = tempfile::tempdir().context("creating a ports file directory")?;
        let config = if config_text.is_empty() {
            None
        } else {
            let mut file = tempfile::Builder::new()
                .suffix(".conf")
                .tempfile()
                .context("creating a nats-server configuration file")?;
            std::io::Write::write_all(&mut file, config_text.as_bytes())?;
            Some(file)
        };
        let config_path = config.as_ref().map(|f| f.path().to_path_buf());
        let mut child = spawn(
            None,
            store.path(),
            Some(ports_dir.path()),
            config_path.as_deref(),
        )?;
        let port = match read_port(&mut child, ports_dir.path()) {
            Ok(port) => port,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
        };
        let mut server = NatsServer {
            child: Some(child),
            port,
            store,
            config,
            scheme,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The client address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
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
        let config = self.config.as_ref().map(|f| f.path().to_path_buf());
        self.child = Some(spawn(
            Some(self.port),
            self.store.path(),
            None,
            config.as_deref(),
        )?);
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

/// Waits for the ports file nats-server writes once it listens, and reads the client port.
fn read_port(child: &mut Child, dir: &Path) -> anyhow::Result<u16> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited before it listened: {status}");
        }
        // The file appears once the server listens; a half-written one does not parse yet.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(port) = client_port(&text) {
                return Ok(port);
            }
        }
        if Instant::now() > deadline {
            bail!("nats-server wrote no ports file within {START_TIMEOUT:?}");
        }
        // A file appearing offers no event short of inotify; poll briefly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The port of `{"nats":["nats://127.0.0.1:PORT"]}` (`tls://` on a TLS-only server).
fn client_port(ports_file: &str) -> Option<u16> {
    let start = ports_file.find("://")? + "://".len();
    let rest = &ports_file[start..];
    let end = rest.find('"')?;
    let (_, port) = rest[..end].rsplit_once(':')?;
    port.parse().ok()
}

/// The `nats-server` the tests run: `PLANE_TEST_NATS_SERVER` names another one (CI runs the
/// NATS suites once more against a current release).
pub fn server_binary() -> String {
    std::env::var("PLANE_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string())
}

fn spawn(
    port: Option<u16>,
    store: &Path,
    ports_dir: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<Child> {
    let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    let mut command = Command::new(server_binary());
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
        .arg(store);
    if let Some(dir) = ports_dir {
        command.arg("--ports_file_dir").arg(dir);
    }
    command
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_client_port() {
        assert_eq!(
            client_port(r#"{"nats":["nats://127.0.0.1:46853"]}"#),
            Some(46853)
        );
        assert_eq!(client_port(r#"{"nats":["nats://127.0.0.1:"#), None);
        assert_eq!(client_port(""), None);
    }

    #[test]
    fn starts_restarts_and_stops() -> anyhow::Result<()> {
        let mut server = NatsServer::start()?;
        TcpStream::connect(("127.0.0.1", server.port))?;
        server.restart()?;
        TcpStream::connect(("127.0.0.1", server.port))?;
        let port = server.port;
        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        Ok(())
    }
}
