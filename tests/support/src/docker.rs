//! The real Docker engine for the tests: the test image (`FROM scratch` around the statically
//! linked test backend, built by `scripts/test`), and what the tests read back from the engine
//! with the `docker` CLI. A machine without a reachable engine fails these tests with a message
//! that says so; they are never skipped.

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The tag of the test image.
pub const TEST_IMAGE: &str = "plane-test-backend:test";

/// The environment variable naming the statically linked test backend.
pub const STATIC_BACKEND_ENV: &str = "PLANE_TEST_BACKEND_STATIC";

/// Runs `docker ARGS`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("running the docker CLI (is Docker installed?)")?;
    if !output.status.success() {
        bail!(
            "docker {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails unless a Docker engine answers.
pub fn require_engine() -> anyhow::Result<()> {
    docker(&["version", "--format", "{{.Server.Version}}"]).context(
        "these tests need a running Docker engine that this user may use; none answered",
    )?;
    Ok(())
}

/// Builds the test image once per test process; returns its tag.
pub fn test_image() -> anyhow::Result<&'static str> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return Ok(TEST_IMAGE);
    }
    require_engine()?;
    let binary = static_backend()?;
    let context = tempfile::tempdir().context("a build context")?;
    std::fs::copy(&binary, context.path().join("plane-test-backend"))
        .with_context(|| format!("copying {}", binary.display()))?;
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY plane-test-backend /plane-test-backend\n\
         ENTRYPOINT [\"/plane-test-backend\"]\n",
    )?;
    let dir = context.path().display().to_string();
    docker(&["build", "-q", "-t", TEST_IMAGE, &dir]).context("building the test image")?;
    *built = true;
    Ok(TEST_IMAGE)
}

/// Builds `tag`: `base` plus a layer of its own (a file with `stamp` in it), so that once `tag`
/// is pushed and removed here, pulling it downloads a layer the engine does not have.
pub fn image_with_own_layer(base: &str, tag: &str, stamp: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let context = tempfile::tempdir().context("a build context")?;
    std::fs::write(context.path().join("stamp"), stamp.as_ref())?;
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY stamp /stamp\n"),
    )?;
    let dir = context.path().display().to_string();
    docker(&["build", "-q", "-t", tag, &dir]).with_context(|| format!("building {tag}"))?;
    Ok(())
}

/// The statically linked test backend `scripts/test` builds.
fn static_backend() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(STATIC_BACKEND_ENV)
        .map(PathBuf::from)
        .with_context(|| {
            format!(
            "{STATIC_BACKEND_ENV} is not set: run the tests with scripts/test, which builds the \
             statically linked test backend (cargo rustc -p plane-test-backend --release \
             --target <host> -- -C target-feature=+crt-static) and sets it"
        )
        })?;
    if !path.is_file() {
        bail!("{STATIC_BACKEND_ENV}={} does not exist", path.display());
    }
    Ok(path)
}

/// `docker inspect` of one container or image.
pub fn inspect(name: &str) -> anyhow::Result<Value> {
    let text = docker(&["inspect", name])?;
    let all: Value = serde_json::from_str(&text).context("docker inspect printed no JSON")?;
    all.get(0).cloned().context("docker inspect found nothing")
}

/// Names of every container (running or not) with this label (`key=value`).
pub fn containers_labelled(label: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label={label}");
    let names = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
    Ok(names.lines().map(str::to_string).collect())
}

/// Whether any container (running or not) has this exact name.
pub fn container_exists(name: &str) -> anyhow::Result<bool> {
    let filter = format!("name=^/{name}$");
    let names = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
    Ok(names.lines().any(|n| n == name))
}

/// Removes every container of these drones when dropped: what a failed test would otherwise
/// leave running (containers outlive their drone process by design).
pub struct RemoveContainersOnDrop {
    drones: Vec<String>,
}

impl RemoveContainersOnDrop {
    pub fn of_drones(drones: Vec<String>) -> RemoveContainersOnDrop {
        RemoveContainersOnDrop { drones }
    }
}

impl Drop for RemoveContainersOnDrop {
    fn drop(&mut self) {
        for drone in &self.drones {
            let Ok(names) = containers_labelled(&format!("dev.plane.drone={drone}")) else {
                continue;
            };
            if !names.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(names.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
    }
}

/// `len` bytes that do not compress (a layer pushed gzipped stays this large): xorshift output.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
