//! The drone's state directory, which keeps its id across restarts: a drone that comes back
//! under the same id finds its containers by label, and the controller knows it as the drone it
//! was. `--id` overrides it; the first start makes one up and keeps it.

use anyhow::Context;
use plane_protocol::ids::DroneId;
use std::path::{Path, PathBuf};

/// `$XDG_STATE_HOME/plane`, else `~/.local/state/plane`.
pub fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(state).join("plane"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_STATE_HOME nor HOME is set: give --state-dir or --id")?;
    Ok(PathBuf::from(home).join(".local/state/plane"))
}

/// The drone's id: `given`, else the one kept for `cluster` under `state_dir`, else a new one,
/// kept there (written aside, then renamed into place, so a crash leaves no half-written id).
pub fn drone_id(given: Option<&str>, state_dir: &Path, cluster: &str) -> anyhow::Result<DroneId> {
    if let Some(id) = given {
        return DroneId::new(id).with_context(|| format!("--id {id:?}"));
    }
    let dir = state_dir.join(cluster);
    let file = dir.join("drone-id");
    match std::fs::read_to_string(&file) {
        Ok(kept) => {
            return DroneId::new(kept.trim())
                .with_context(|| format!("{} holds no valid drone id", file.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let id = DroneId::generate();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let aside = dir.join(format!("drone-id.{}.tmp", std::process::id()));
    std::fs::write(&aside, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&aside, &file))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_kept_per_cluster() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = drone_id(None, dir.path(), "a.test").expect("made");
        let again = drone_id(None, dir.path(), "a.test").expect("read");
        assert_eq!(first, again);
        let other = drone_id(None, dir.path(), "b.test").expect("made");
        assert_ne!(first, other, "one id per cluster");
        let given = drone_id(Some("drone-7"), dir.path(), "a.test").expect("given");
        assert_eq!(given.as_str(), "drone-7");
        std::fs::write(dir.path().join("a.test/drone-id"), "not an id!\n").expect("write");
        let error = drone_id(None, dir.path(), "a.test").expect_err("garbage is refused");
        assert!(error.to_string().contains("no valid drone id"), "{error}");
    }
}
