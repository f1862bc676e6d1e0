//! The plugin configuration document (README "Plugin configuration"): its typed form, its
//! validation, and its compiled form that the request path reads.
//!
//! Parse, validate, compile: [`parse`] turns bytes into a [`CompiledConfig`] or
//! a [`ConfigError`] whose `path` names the offending field. Nothing half-valid
//! is ever returned, so the host can keep serving the previous config.

mod compile;
mod compiled;
mod document;
mod limits;

#[allow(unused_imports)]
use self::{compile::*, compiled::*};
/// Tenant ids as they may appear in headers, storage keys and config ([`crate::tenant`]).
pub use crate::tenant::is_valid as is_valid_tenant_id;
pub use compile::compile;
pub use compiled::{
    Applied, Calendar, CompiledConfig, CompiledRoute, CompiledTenant, InFlightPolicy, KeyKind,
    LimitPolicy, UsageReport, Window,
};
pub use document::*;
pub use limits::{
    MAX_IN_FLIGHT, MAX_KEY_HEADERS, MAX_LIMITS_PER_SCOPE, MAX_USAGE, MAX_USAGE_HEADERS,
    TENANT_LIMIT,
};

use std::fmt;

/// The only document version this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// The JSON Schema of the document (draft 4, so Kong can use it as `config_schema`).
pub const CONFIG_SCHEMA: &str = include_str!("../../../schema/tenant-guard.schema.json");

/// A rejected document, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "invalid plugin configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid plugin configuration at `{}`: {}",
                self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// The log line for a rejected document (the previous configuration keeps serving).
pub fn rejected_message(err: &ConfigError) -> String {
    format!("rejected configuration, keeping the previous one: {err}")
}

/// Parse, validate and compile a configuration document.
pub fn parse(bytes: &[u8]) -> Result<CompiledConfig, ConfigError> {
    let document = parse_document(bytes)?;
    compile(&document)
}

/// Whether a (possibly invalid) document leaves metrics on, so a rejected
/// config can still be counted without touching metric calls it switched off.
pub fn metrics_requested(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|document| document.get("metrics").and_then(serde_json::Value::as_bool))
        .unwrap_or(true)
}

/// `a.b[0].c` as `a.b.0.c`: every path of a [`ConfigError`] is dotted.
fn dotted(path: &str) -> String {
    path.replace('[', ".").replace(']', "")
}

/// Parse into the typed document only (no semantic validation).
pub fn parse_document(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    if bytes.is_empty() {
        return Err(invalid("", "configuration is empty"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let document: PluginConfig = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| invalid(dotted(&err.path().to_string()), err.inner().to_string()))?;
    deserializer
        .end()
        .map_err(|err| invalid("", format!("trailing characters: {err}")))?;
    Ok(document)
}
