//! The Kong side of the plugin document: the declarative configuration
//! (`kong.yml`, DB-less and decK compatible) carrying the filter on a route,
//! the filter's `tenant_guard.meta.json` (its JSON Schema, so Kong validates
//! the config as JSON), and the files in `kong/` rendered from this code.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The filter's name in Kong: the module must be installed as
/// `<wasm_filters_path>/tenant_guard.wasm` with `tenant_guard.meta.json` next to it.
pub const FILTER_NAME: &str = "tenant_guard";
/// Tag put on every entity the sidecar renders, so operators can find them.
pub const TAG: &str = "tenant-guard";

/// Renders `tenant_guard.meta.json`: the filter's draft-4 JSON Schema as `config_schema`.
pub fn render_meta_json() -> Result<String, serde_json::Error> {
    let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA)?;
    let mut text = serde_json::to_string_pretty(&json!({ "config_schema": schema }))?;
    text.push('\n');
    Ok(text)
}

/// How the filter is attached to the route in the rendered declarative config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KongForm {
    /// `filter_chains: [{filters: [{name, config, enabled}]}]` (Kong 3.4–3.10).
    FilterChain,
    /// `plugins: [{name: tenant_guard, config}]` (Kong 3.9+ only).
    Plugin,
}

/// The service and route the filter is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KongLayout {
    pub service_name: String,
    /// Upstream URL of the service (DB-less renders own the whole Kong configuration).
    pub service_url: String,
    pub route_name: String,
    pub route_paths: Vec<String>,
    /// Name of the filter chain entity.
    pub chain_name: String,
    pub form: KongForm,
}

impl Default for KongLayout {
    fn default() -> Self {
        Self {
            service_name: "tenant-guard-upstream".to_owned(),
            service_url: "http://127.0.0.1:8080".to_owned(),
            route_name: "tenant-guard".to_owned(),
            route_paths: vec!["/".to_owned()],
            chain_name: "tenant-guard".to_owned(),
            form: KongForm::FilterChain,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KongRenderError {
    #[error("the plugin document is not JSON")]
    Document(#[from] serde_json::Error),
}

/// The `filters[]` entry carrying the plugin document.
pub(super) fn filter_entry(config: &Value) -> Value {
    json!({ "name": FILTER_NAME, "config": config, "enabled": true })
}

/// The declarative configuration (as a JSON value) for `plugin_config`, the
/// exact document the filter receives.
pub fn declarative(plugin_config: &str, layout: &KongLayout) -> Result<Value, KongRenderError> {
    let config: Value = serde_json::from_str(plugin_config)?;
    let mut route = json!({
        "name": layout.route_name,
        "paths": layout.route_paths,
        "tags": [TAG],
    });
    let attachment = match layout.form {
        KongForm::FilterChain => (
            "filter_chains",
            json!([{
                "name": layout.chain_name,
                "enabled": true,
                "filters": [filter_entry(&config)],
                "tags": [TAG],
            }]),
        ),
        KongForm::Plugin => (
            "plugins",
            json!([{
                "name": FILTER_NAME,
                "config": config,
                "enabled": true,
                "tags": [TAG],
            }]),
        ),
    };
    if let Value::Object(map) = &mut route {
        map.insert(attachment.0.to_owned(), attachment.1);
    }
    Ok(json!({
        "_format_version": "3.0",
        "services": [{
            "name": layout.service_name,
            "url": layout.service_url,
            "tags": [TAG],
            "routes": [route],
        }],
    }))
}

/// Renders `kong.yml` (declarative, DB-less and decK compatible) for `plugin_config`.
pub fn render(plugin_config: &str, layout: &KongLayout) -> Result<String, KongRenderError> {
    let value = declarative(plugin_config, layout)?;
    let mut out = String::from(
        "# Rendered by tenant-guard-sidecar from the tenant settings in PostgreSQL.\n\
         # Do not edit: the next sync overwrites it. See kong/README.md.\n",
    );
    yaml_block(&value, 0, &mut out);
    Ok(out)
}

/// Minimal YAML emitter for JSON values: block mappings and sequences, every
/// string double-quoted with JSON escapes (valid YAML 1.2), so the output is
/// unambiguous and round-trips to the same JSON value.
fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&" ".repeat(indent));
                out.push_str(&yaml_key(key));
                out.push(':');
                if is_inline(item) {
                    out.push(' ');
                    out.push_str(&yaml_inline(item));
                    out.push('\n');
                } else {
                    out.push('\n');
                    yaml_block(item, indent + 2, out);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                if is_inline(item) {
                    out.push_str(&yaml_inline(item));
                    out.push('\n');
                } else {
                    let mut nested = String::new();
                    yaml_block(item, indent + 2, &mut nested);
                    out.push_str(nested.get(indent + 2..).unwrap_or_default());
                }
            }
        }
        other => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&yaml_inline(other));
            out.push('\n');
        }
    }
}

fn is_inline(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => true,
    }
}

fn yaml_inline(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

/// Paths of the files in `kong/` that are rendered from the code (see the
/// `kong_files_are_rendered` test; `UPDATE_KONG_FILES=1` rewrites them).
pub fn committed_files(repo_root: &Path) -> [(PathBuf, &'static str); 3] {
    let kong = repo_root.join("kong");
    [
        (kong.join("tenant_guard.meta.json"), "meta"),
        (kong.join("kong.yml"), "filter-chain"),
        (kong.join("kong.plugin.yml"), "plugin"),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn yaml_round_trips_through_json_semantics() {
        let layout = KongLayout::default();
        let doc = r#"{"version":1,"tenants":{"a b":{"mode":"shadow"},"on":{}},"list":[[1,2],[],{"x":"q\"\n"}]}"#;
        let yaml = render(doc, &layout).unwrap();
        assert!(yaml.contains("_format_version: \"3.0\""));
        assert!(yaml.contains("\"a b\":"));
        assert!(yaml.contains("\"on\": {}"));
        assert!(yaml.contains("name: \"tenant_guard\"\n"));
        assert!(yaml.contains("- - 1\n"), "{yaml}");
    }
}
