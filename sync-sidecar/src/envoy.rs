//! Envoy delivery: the ECDS resource file that Envoy's `config_discovery`
//! watches, the atomic write (temp file, fsync, rename) that Envoy reacts to,
//! and reading back the plugin document a file carries (for `sync --dry-run`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The ECDS resource name; the Envoy bootstrap's `config_discovery` names the same.
pub const ECDS_RESOURCE_NAME: &str = "tenant-guard";
/// File name of the watched ECDS resource inside the watched directory.
pub const ECDS_FILE_NAME: &str = "tenant-guard.ecds.json";

#[derive(Debug, thiserror::Error)]
pub enum EnvoyDeliveryError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the ECDS resource")]
    Render(#[from] serde_json::Error),
}

/// Upper bound of an ECDS file read back: a larger file is not one this sidecar wrote.
const MAX_ECDS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The plugin document carried by the ECDS file `file` (`Ok(None)`: there is no
/// file). `Err` says why the file is not a tenant-guard ECDS resource.
pub fn read_deployed(file: &Path) -> Result<Option<serde_json::Value>, String> {
    let size = match fs::metadata(file) {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", file.display())),
    };
    if size > MAX_ECDS_FILE_BYTES {
        return Err(format!(
            "{} is {size} bytes, more than any ECDS file the sidecar writes",
            file.display()
        ));
    }
    let text =
        fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let resource: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let value = resource
        .pointer("/resources/0/typed_config/config/configuration/value")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            format!(
                "{} carries no Wasm plugin configuration (resources[0].typed_config.config.configuration.value)",
                file.display()
            )
        })?;
    serde_json::from_str(value).map(Some).map_err(|e| {
        format!(
            "the plugin configuration in {} is not JSON: {e}",
            file.display()
        )
    })
}

/// Renders the ECDS `DiscoveryResponse` carrying the Wasm filter with `plugin_config` (JSON text).
pub fn render_ecds_resource(
    plugin_config: &str,
    wasm_path: &Path,
    version_info: &str,
) -> Result<String, EnvoyDeliveryError> {
    let resource = serde_json::json!({
        "version_info": version_info,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": ECDS_RESOURCE_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": ECDS_RESOURCE_NAME,
                    "root_id": ECDS_RESOURCE_NAME,
                    "vm_config": {
                        "vm_id": ECDS_RESOURCE_NAME,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": wasm_path.to_string_lossy() } }
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config
                    },
                    "failure_policy": "FAIL_RELOAD"
                }
            }
        }]
    });
    Ok(serde_json::to_string_pretty(&resource)?)
}

/// Writes `bytes` to `target` so that readers only ever see the old or the new
/// content: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), EnvoyDeliveryError> {
    let io_err = |source| EnvoyDeliveryError::Io {
        path: target.to_path_buf(),
        source,
    };
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
    result.map_err(io_err)
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publishes the filter code content-addressed next to the ECDS file, so a new
/// build gets a new path (and a new VM) and the old one stays valid until switched.
pub fn publish_wasm(dir: &Path, wasm: &[u8]) -> Result<PathBuf, EnvoyDeliveryError> {
    let digest = sha256_hex(wasm);
    let short = digest.get(..16).unwrap_or(&digest);
    let target = dir.join(format!("tenant_guard_filter-{short}.wasm"));
    if !target.exists() {
        write_atomically(&target, wasm)?;
        write_atomically(
            &dir.join(format!("tenant_guard_filter-{short}.wasm.sha256")),
            format!("{digest}  tenant_guard_filter-{short}.wasm\n").as_bytes(),
        )?;
    }
    Ok(target)
}
