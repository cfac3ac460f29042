//! Where the certificate is kept on the drone, and how it is written so that a reader never sees
//! half a file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a certificate file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The certificate chain and key files the TLS listener serves.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// The files the refresher keeps in `dir` (the drone's state for its cluster).
    pub fn in_dir(dir: &Path) -> Self {
        let tls = dir.join("tls");
        CertificateFiles {
            cert: tls.join("cert.pem"),
            key: tls.join("key.pem"),
        }
    }

    /// Writes both, each atomically (temp file + rename), the key first: the listener serves a
    /// pair only once key and certificate match, so it never serves a mismatched one.
    pub fn write(&self, chain_pem: &str, key_pem: &str) -> Result<(), FileError> {
        write_atomically(&self.key, key_pem.as_bytes(), 0o600)?;
        write_atomically(&self.cert, chain_pem.as_bytes(), 0o644)
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`, so that `path` holds either the old or the new content, never a mix; the directory
/// is created (private to the drone's user) when missing.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let failed = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(failed)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let aside = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&aside)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&aside, path)?;
        // The rename itself is durable once the directory is.
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&aside);
    }
    written.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = CertificateFiles::in_dir(dir.path());
        files.write("chain one", "key one").expect("written");
        files.write("chain two", "key two").expect("written again");
        assert_eq!(fs::read_to_string(&files.cert).expect("cert"), "chain two");
        assert_eq!(fs::read_to_string(&files.key).expect("key"), "key two");
        let mode = fs::metadata(&files.key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("tls"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }
}
