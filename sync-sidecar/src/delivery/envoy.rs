//! Envoy delivery: the ECDS resource file that Envoy's `config_discovery`
//! watches (rendered here, replaced atomically), the filter module it names
//! ([`super::wasm`]: checked, then published content-addressed), and reading
//! back the plugin document a file carries (for `sync --dry-run`).

use std::fs;
use std::path::{Path, PathBuf};

use super::wasm::{self, ModuleError};
use super::{Delivery, DeliveryError};
use crate::files::{self, FileError};
use crate::sync::SetupError;

// The e2e harness writes and hashes ECDS files with the same helpers.
pub use crate::files::{sha256_hex, write_atomically};

/// The ECDS resource name; the Envoy bootstrap's `config_discovery` names the same.
pub const ECDS_RESOURCE_NAME: &str = "tenant-guard";
/// File name of the watched ECDS resource inside the watched directory.
pub const ECDS_FILE_NAME: &str = "tenant-guard.ecds.json";
/// `tg_revisions.target` of Envoy deliveries.
pub const TARGET_ENVOY: &str = "envoy";

#[derive(Debug, thiserror::Error)]
pub enum EnvoyDeliveryError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot render the ECDS resource")]
    Render(#[from] serde_json::Error),
    /// The module given with `--wasm` failed the check: nothing is delivered.
    #[error(transparent)]
    Module(#[from] ModuleError),
}

/// Upper bound of an ECDS file read back: a larger file is not one this sidecar wrote.
const MAX_ECDS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Where and how the Envoy target is delivered.
#[derive(Debug, Clone)]
pub struct EnvoyTarget {
    /// The directory Envoy watches; the ECDS file is [`ECDS_FILE_NAME`] in it.
    pub ecds_dir: PathBuf,
    /// The `.wasm` path referenced by the ECDS resource.
    pub wasm_path: PathBuf,
    /// Set when the `--wasm` module failed the check: every delivery is refused.
    refused: Option<ModuleError>,
}

impl EnvoyTarget {
    /// `wasm` given: check it and publish it content-addressed into
    /// `ecds_dir`, then reference that copy; otherwise reference `wasm_path`
    /// as is (it may be a path only Envoy can read). A module that fails the
    /// check is not published: the target then refuses every delivery, so
    /// each sync records a failed revision saying why.
    pub fn prepare(
        ecds_dir: &Path,
        wasm: Option<&Path>,
        wasm_path: Option<&Path>,
    ) -> Result<Self, SetupError> {
        if !ecds_dir.is_dir() {
            return Err(SetupError::EcdsDir {
                path: ecds_dir.to_path_buf(),
                message: "not a directory".to_owned(),
            });
        }
        let mut refused = None;
        let wasm_path = match (wasm, wasm_path) {
            (Some(module), _) => {
                let bytes = fs::read(module).map_err(|source| SetupError::ReadWasm {
                    path: module.to_path_buf(),
                    source,
                })?;
                match wasm::check_module(module, &bytes) {
                    Ok(()) => {
                        let published = wasm::publish(ecds_dir, &bytes)?;
                        tracing::info!(path = %published.display(), "published the filter module");
                        published
                    }
                    Err(error) => {
                        tracing::error!(%error, "refusing the filter module: nothing will be delivered");
                        refused = Some(error);
                        module.to_path_buf()
                    }
                }
            }
            (None, Some(path)) => path.to_path_buf(),
            (None, None) => {
                return Err(SetupError::EcdsDir {
                    path: ecds_dir.to_path_buf(),
                    message: "give --wasm (a module to publish) or --wasm-path".to_owned(),
                })
            }
        };
        Ok(Self {
            ecds_dir: ecds_dir.to_path_buf(),
            wasm_path,
            refused,
        })
    }

    pub fn ecds_file(&self) -> PathBuf {
        self.ecds_dir.join(ECDS_FILE_NAME)
    }

    /// Writes the ECDS file unless it already holds exactly these bytes.
    /// Returns whether it wrote.
    fn write(&self, document: &str, revision: &str) -> Result<bool, EnvoyDeliveryError> {
        self.check()?;
        let resource = render_ecds_resource(document, &self.wasm_path, revision)?;
        Ok(files::write_if_changed(
            &self.ecds_file(),
            resource.as_bytes(),
        )?)
    }

    fn check(&self) -> Result<(), EnvoyDeliveryError> {
        match &self.refused {
            Some(error) => Err(error.clone().into()),
            None => Ok(()),
        }
    }
}

impl Delivery for EnvoyTarget {
    fn name(&self) -> &'static str {
        TARGET_ENVOY
    }

    fn preflight(&self) -> Result<(), DeliveryError> {
        Ok(self.check()?)
    }

    async fn deliver(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        Ok(self.write(document, revision)?)
    }

    async fn ensure(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        Ok(self.write(document, revision)?)
    }
}

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

/// Renders the ECDS `DiscoveryResponse` carrying the Wasm filter with
/// `plugin_config` (JSON text). Envoy's `allow_on_headers_stop_iteration`
/// follows the document's `host.allow_on_headers_stop_iteration`, so the two
/// never disagree (the filter holds headers only where Envoy still delivers
/// the body).
pub fn render_ecds_resource(
    plugin_config: &str,
    wasm_path: &Path,
    version_info: &str,
) -> Result<String, EnvoyDeliveryError> {
    let holds_headers = serde_json::from_str::<serde_json::Value>(plugin_config)
        .ok()
        .and_then(|document| {
            document
                .pointer("/host/allow_on_headers_stop_iteration")
                .and_then(serde_json::Value::as_bool)
        })
        .unwrap_or(false);
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
                    "failure_policy": "FAIL_RELOAD",
                    "allow_on_headers_stop_iteration": holds_headers
                }
            }
        }]
    });
    Ok(serde_json::to_string_pretty(&resource)?)
}
