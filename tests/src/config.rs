//! Builders for the plugin configuration JSON (the contract in
//! `filter/schema/tenant-guard.schema.json`).

use serde_json::{json, Map, Value};

/// A plugin configuration under construction.
#[derive(Debug, Clone)]
pub struct PluginConfig(Value);

impl PluginConfig {
    /// `version: 1`, the given `revision`, header-trusted tenants (no JWT yet),
    /// unknown tenants fall back to the defaults, UUIDv7 correlation ids, and a
    /// generous default limit (10000 per 60 s).
    pub fn new(revision: &str) -> Self {
        Self(json!({
            "version": 1,
            "revision": revision,
            "tenant": {
                "header": "x-tenant-id",
                "required": true,
                "trust_header_without_jwt": true,
                "unknown": "defaults"
            },
            "correlation": { "header": "x-correlation-id", "generate": "uuidv7", "echo": true },
            "defaults": {
                "rate_limit": { "requests": 10000, "per_seconds": 60 },
                "mode": "enforce"
            },
            "tenants": {}
        }))
    }

    /// Sets `tenant.unknown` (`"defaults"` or `"reject"`).
    pub fn unknown_tenants(mut self, policy: &str) -> Self {
        set_json(&mut self.0, &["tenant", "unknown"], json!(policy));
        self
    }

    /// Sets the default rate limit.
    pub fn default_limit(mut self, requests: u64, per_seconds: u64) -> Self {
        set_json(
            &mut self.0,
            &["defaults", "rate_limit"],
            json!({ "requests": requests, "per_seconds": per_seconds }),
        );
        self
    }

    /// Sets tenant `name`'s limit to `requests` per `per_seconds` (burst = requests).
    pub fn tenant_limit(mut self, name: &str, requests: u64, per_seconds: u64) -> Self {
        set_json(
            &mut self.0,
            &["tenants", name, "rate_limit"],
            json!({ "requests": requests, "per_seconds": per_seconds }),
        );
        self
    }

    /// Sets tenant `name`'s mode (`"enforce"` or `"shadow"`).
    pub fn tenant_mode(mut self, name: &str, mode: &str) -> Self {
        set_json(&mut self.0, &["tenants", name, "mode"], json!(mode));
        self
    }

    /// Sets an arbitrary top-level key (for invalid-config tests).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        set_json(&mut self.0, &[key], value);
        self
    }

    /// The JSON value.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The JSON text the filter receives.
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }
}

/// Sets `value` at `path` (object keys) inside `target`, creating the objects on
/// the way like `target["a"]["b"] = value` does; unlike indexing, a non-object on
/// the way is replaced by an object instead of panicking.
pub fn set_json(target: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *target = value;
        return;
    };
    let mut node = target;
    for key in parents {
        let Some(map) = object(node) else { return };
        node = map.entry(*key).or_insert_with(|| json!({}));
    }
    if let Some(map) = object(node) {
        map.insert((*last).to_owned(), value);
    }
}

/// `value` as an object, turning it into an empty one first if it is not (so
/// this is always `Some`).
fn object(value: &mut Value) -> Option<&mut Map<String, Value>> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut()
}
