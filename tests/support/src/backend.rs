//! Where the test backend binary is. Cargo only gives `CARGO_BIN_EXE_*` to tests of the package
//! that owns the binary, so other packages' tests find it next to their own executable.

use anyhow::{bail, Context};
use std::path::PathBuf;

/// Name of the test backend binary (package `plane-test-backend`).
pub const TEST_BACKEND_BIN: &str = "plane-test-backend";

/// The `plane-test-backend` binary in the running test's target directory: a test runs as
/// `target/<profile>/deps/<test>-<hash>`, the binary is `target/<profile>/plane-test-backend`.
/// Fails (never skips) when it has not been built.
pub fn test_backend_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running test's executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir
            .parent()
            .with_context(|| format!("{} has no parent directory", dir.display()))?;
    }
    let path = dir.join(TEST_BACKEND_BIN);
    if !path.is_file() {
        bail!(
            "the test backend is not built: {} does not exist. Run `cargo build --workspace --bins` \
             (with the same profile and target as the tests) before running the tests.",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_binary_next_to_the_target_profile_dir() {
        match test_backend_path() {
            Ok(path) => {
                assert!(path.ends_with(TEST_BACKEND_BIN));
                assert_ne!(
                    path.parent().and_then(|dir| dir.file_name()),
                    Some("deps".as_ref())
                );
            }
            // Not built in this run: the error must say how to fix it.
            Err(error) => assert!(
                error.to_string().contains("cargo build --workspace --bins"),
                "{error}"
            ),
        }
    }
}
