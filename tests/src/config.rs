//! Builders for the plugin configuration JSON (the contract in
//! `filter/schema/tenant-guard.schema.json`).

use serde_json::{json, Value};

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
        self.0["tenant"]["unknown"] = json!(policy);
        self
    }

    /// Sets the default rate limit.
    pub fn default_limit(mut self, requests: u64, per_seconds: u64) -> Self {
        self.0["defaults"]["rate_limit"] =
            json!({ "requests": requests, "per_seconds": per_seconds });
        self
    }

    /// Sets tenant `name`'s limit to `requests` per `per_seconds` (burst = requests).
    pub fn tenant_limit(mut self, name: &str, requests: u64, per_seconds: u64) -> Self {
        self.tenant_entry(name)["rate_limit"] =
            json!({ "requests": requests, "per_seconds": per_seconds });
        self
    }

    /// Sets tenant `name`'s mode (`"enforce"` or `"shadow"`).
    pub fn tenant_mode(mut self, name: &str, mode: &str) -> Self {
        self.tenant_entry(name)["mode"] = json!(mode);
        self
    }

    /// Sets an arbitrary top-level key (for invalid-config tests).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.0[key] = value;
        self
    }

    fn tenant_entry(&mut self, name: &str) -> &mut Value {
        let tenants = &mut self.0["tenants"];
        if tenants.get(name).is_none() {
            tenants[name] = json!({});
        }
        &mut tenants[name]
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
