//! The filter module Envoy loads (`--wasm`): read once at start-up, checked to
//! be a well-formed WebAssembly module (every section parsed and validated by
//! `wasmparser`), and only then published content-addressed next to the ECDS
//! file. A module that fails the check is never published nor referenced:
//! Envoy would refuse it (`FAIL_RELOAD` keeps the old one) and the sidecar
//! would report a delivery that did not happen.

use std::path::{Path, PathBuf};

use crate::files::{self, FileError};

/// Upper bound of the reason quoted from the validator.
const MAX_REASON_BYTES: usize = 300;

/// A module that is not valid WebAssembly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the filter module {} is not a valid WebAssembly module: {reason}", path.display())]
pub struct ModuleError {
    pub path: PathBuf,
    /// What the validator found first, bounded.
    pub reason: String,
}

/// Checks that `bytes` (read from `path`) are a module Envoy can compile: the
/// `\0asm` header, version 1, and every section parsed and validated.
pub fn check_module(path: &Path, bytes: &[u8]) -> Result<(), ModuleError> {
    let refused = |reason: String| ModuleError {
        path: path.to_path_buf(),
        reason: crate::text::bounded_to(&reason, MAX_REASON_BYTES).into_owned(),
    };
    if !bytes.starts_with(b"\0asm") {
        return Err(refused(format!(
            "it does not start with the WebAssembly magic `\\0asm` ({} bytes)",
            bytes.len()
        )));
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(refused(
            "it is not a core module of version 1 (a component or an unknown version)".to_owned(),
        ));
    }
    wasmparser::Validator::new()
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|error| refused(error.to_string()))
}

/// Publishes the filter code content-addressed into `dir`, so a new build gets
/// a new path (and a new VM) and the old one stays valid until switched.
/// Returns the published path; an existing copy is kept as is.
pub fn publish(dir: &Path, wasm: &[u8]) -> Result<PathBuf, FileError> {
    let digest = files::sha256_hex(wasm);
    let short = digest.get(..16).unwrap_or(&digest);
    let target = dir.join(format!("tenant_guard_filter-{short}.wasm"));
    if !target.exists() {
        files::write_atomically(&target, wasm)?;
        files::write_atomically(
            &dir.join(format!("tenant_guard_filter-{short}.wasm.sha256")),
            format!("{digest}  tenant_guard_filter-{short}.wasm\n").as_bytes(),
        )?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_module_is_valid_and_truncated_or_foreign_bytes_are_not() {
        let path = Path::new("/m.wasm");
        assert_eq!(check_module(path, b"\0asm\x01\0\0\0"), Ok(()));
        let not_wasm = check_module(path, b"PK\x03\x04")
            .err()
            .map(|e| e.to_string());
        assert!(
            not_wasm
                .as_deref()
                .is_some_and(|e| e.contains("/m.wasm") && e.contains("magic")),
            "{not_wasm:?}"
        );
        // A type section that announces more bytes than there are.
        let truncated = check_module(path, b"\0asm\x01\0\0\0\x01\x05\x01\x60")
            .err()
            .map(|e| e.reason);
        assert!(truncated.is_some(), "a truncated section is refused");
    }
}
