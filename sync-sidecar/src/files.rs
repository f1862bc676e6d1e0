//! Files the sidecar writes for gateways (the ECDS resource, the published
//! filter module, `kong.yml`): the atomic replace that watchers react to, the
//! "write only when different" rule, and the content hash used for module
//! names and revision labels.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `target` so that readers only ever see the old or the new
/// content: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| FileError::Io {
        path: target.to_path_buf(),
        source,
    })
}

/// [`write_atomically`] unless `target` already holds exactly `bytes`, so a
/// watcher sees no event for an unchanged file. Returns whether it wrote.
pub fn write_if_changed(target: &Path, bytes: &[u8]) -> Result<bool, FileError> {
    if fs::read(target).ok().as_deref() == Some(bytes) {
        return Ok(false);
    }
    write_atomically(target, bytes)?;
    Ok(true)
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
