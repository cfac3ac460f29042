//! A real image registry on loopback for the pull tests: Debian's `docker-registry` (the
//! reference registry), with htpasswd authentication when asked (`htpasswd` from
//! apache2-utils). The engine treats registries on 127.0.0.0/8 as insecure, so plain HTTP
//! works. The docker CLI's login for pushes goes to a configuration of the registry's own,
//! never the user's `~/.docker`.

use crate::docker::docker;
use crate::{curl, free_port, ChildGuard};
use anyhow::{bail, Context};
use std::process::Command;
use std::time::Duration;

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The user and password it accepts, when it checks.
    pub credentials: Option<(String, String)>,
    child: ChildGuard,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port; with `auth`, it asks for the user `plane-ci`
    /// and a random password.
    pub fn start(auth: bool) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut auth_section = String::new();
        let credentials = if auth {
            let user = "plane-ci".to_string();
            let password = format!("pw-{}", std::process::id() ^ port as u32);
            let htpasswd = dir.path().join("htpasswd");
            let output = Command::new("htpasswd")
                .args(["-Bbc", &htpasswd.display().to_string(), &user, &password])
                .output()
                .context("running htpasswd (apt-get install -y apache2-utils)")?;
            if !output.status.success() {
                bail!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            auth_section = format!(
                "auth:\n  htpasswd:\n    realm: plane-test\n    path: {}\n",
                htpasswd.display()
            );
            Some((user, password))
        } else {
            None
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth_section}",
                dir.path().join("data").display()
            ),
        )?;
        let mut command = Command::new("docker-registry");
        command.args(["serve", &config.display().to_string()]);
        let child = ChildGuard::spawn("registry", command)
            .context("starting docker-registry (apt-get install -y docker-registry)")?;
        let url = format!("http://{addr}/v2/");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // 200 without authentication, 401 with: either way it serves.
            if let Ok(answer) = curl(&["-m", "2", &url]) {
                if answer.status == 200 || answer.status == 401 {
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the registry did not answer on {addr}: {}",
                    child.output_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            addr,
            credentials,
            child,
            dir,
        })
    }

    /// Pushes the local image `local` as `{addr}/{name}` and untags it locally, so that the
    /// engine must pull it; returns the reference.
    pub fn push(&self, local: &str, name: &str) -> anyhow::Result<String> {
        let reference = format!("{}/{name}", self.addr);
        docker(&["tag", local, &reference])?;
        let config = self.dir.path().join("docker-config");
        std::fs::create_dir_all(&config)?;
        let config = config.display().to_string();
        if let Some((user, password)) = &self.credentials {
            let mut login = Command::new("docker");
            login
                .args(["--config", &config, "login", &self.addr, "-u", user])
                .arg("--password-stdin")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            let mut child = login.spawn().context("docker login")?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin.write_all(password.as_bytes())?;
            }
            let output = child.wait_with_output()?;
            if !output.status.success() {
                bail!("docker login: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        docker(&["--config", &config, "push", &reference])?;
        docker(&["rmi", &reference])?;
        Ok(reference)
    }

    /// How many times the registry served the manifest of `name:tag` so far (each pull fetches
    /// it once).
    pub fn manifest_fetches(&self, name: &str, tag: &str) -> usize {
        let needle = format!("/v2/{name}/manifests/{tag}");
        self.child
            .output_so_far()
            .lines()
            .filter(|line| {
                line.contains(&needle) && (line.contains("\"GET ") || line.contains("\"HEAD "))
            })
            .count()
    }

    /// Everything the registry logged.
    pub fn log(&self) -> String {
        self.child.output_so_far()
    }
}
