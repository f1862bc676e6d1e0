//! Effective settings: resolves the scoped rows of `tg_settings` (global →
//! plan → tenant → route) into the plugin configuration document (README "Plugin configuration"), and
//! validates the result twice — against the published JSON Schema (draft 4)
//! and with the filter's own parser — mapping every error back to the settings
//! row (scope, tenant, route, key) that produced the offending value.
//!
//! Keys (all under `gateway.`; rows with other keys are ignored):
//!
//! | scope  | key                                  | document path                          |
//! |--------|--------------------------------------|----------------------------------------|
//! | global | `gateway.tenant.header`              | `tenant.header`                        |
//! | global | `gateway.tenant.required`            | `tenant.required`                      |
//! | global | `gateway.tenant.trust_header_without_jwt` | `tenant.trust_header_without_jwt` (default `false`) |
//! | global | `gateway.tenant.unknown`             | `tenant.unknown` (`defaults`/`reject`) |
//! | global | `gateway.tenant.jwt`                 | `tenant.jwt` (issuers, JWKS, claims)   |
//! | global | `gateway.tenant.{user_header,org_header}` | `tenant.*`                        |
//! | global | `gateway.correlation.{header,generate,echo}` | `correlation.*`                |
//! | global | `gateway.store.{max_cas_retries,on_exhausted,idempotency_buckets,namespace,idempotency_tenant_share_percent}` | `store.*` |
//! | global | `gateway.store.backend`              | `store.backend` (`local`/`cluster`)    |
//! | global | `gateway.store.cluster`              | `store.cluster` (only with backend `cluster`) |
//! | global | `gateway.if_match`                   | `if_match` (routes needing If-Match)   |
//! | global | `gateway.metrics`                    | `metrics` (`false` for Kong < 3.9)     |
//! | global | `gateway.headers.{revision,rate_limit}` | `headers.*` (informational headers)  |
//! | global | `gateway.host.allow_on_headers_stop_iteration` | `host.*` (Envoy ≥ 1.35; the ECDS delivery sets Envoy's field to match) |
//! | global | `gateway.rate_limit`                 | `defaults.rate_limit`                  |
//! | global | `gateway.rate_limits`                | `defaults.rate_limits` (named limits of tenants without a plan) |
//! | global | `gateway.store.key_slots`            | `store.key_slots`                      |
//! | global | `gateway.method_override`            | `method_override` (`reject`/`honor`)   |
//! | global | `gateway.max_in_flight`              | `defaults.max_in_flight` (caps of tenants without their own) |
//! | plan   | `gateway.rate_limits`                | `plans.<p>.rate_limits`                |
//! | plan   | `gateway.idempotency`, `gateway.mode`, `gateway.max_in_flight` | `plans.<p>.idempotency`, `.mode`, `.max_in_flight` |
//! | tenant | `gateway.plan`                       | `tenants.<t>.plan` (a plan name)       |
//! | tenant | `gateway.rate_limits`                | `tenants.<t>.rate_limits` (over the plan's, by name) |
//! | global | `gateway.mode`                       | `defaults.mode`                        |
//! | global | `gateway.idempotency`                | `defaults.idempotency`                 |
//! | tenant | `gateway.rate_limit`                 | `tenants.<t>.rate_limit`               |
//! | tenant | `gateway.mode`                       | `tenants.<t>.mode`                     |
//! | tenant | `gateway.idempotency`                | `tenants.<t>.idempotency` (replaces the global one) |
//! | tenant | `gateway.max_in_flight`              | `tenants.<t>.max_in_flight` (replaces the plan's) |
//! | tenant | `gateway.enabled`                    | `false` drops the tenant (and its routes) |
//! | route  | `gateway.route.prefix` (required)    | `tenants.<t>.routes[i].prefix`         |
//! | route  | `gateway.route.method`               | `tenants.<t>.routes[i].method`         |
//! | route  | `gateway.rate_limit`                 | `tenants.<t>.routes[i].rate_limit` (else, without `rate_limits` or `cost`, the tenant's, else the global one) |
//! | route  | `gateway.rate_limits`                | `tenants.<t>.routes[i].rate_limits` (on top of the tenant's) |
//! | route  | `gateway.route.cost`                 | `tenants.<t>.routes[i].cost` (what a matching request takes from each limit) |
//!
//! Plan rows (scope `plan`, the plan's name in the `tenant` column; `settings
//! set @plan:gold …`) become `plans.<name>`; a tenant subscribes with
//! `gateway.plan`, so moving it to another plan is one row.
//!
//! `gateway.idempotency` is the schema's `idempotency` object, e.g.
//! `{"methods": ["POST"], "required": false, "ttl_seconds": 86400,
//! "max_body_bytes": 65536, "in_flight_timeout_seconds": 60}` (omitted fields take
//! the filter's defaults).
//!
//! `gateway.store.cluster` is the schema's `store.cluster` object, e.g.
//! `{"upstream": "tenant_guard_store", "timeout_ms": 200, "lease_max": 256,
//! "lease_ttl_ms": 2000, "rate_limit_fallback": "share", "fallback_share_percent": 50,
//! "idempotency_fallback": "reject", "probe_interval_ms": 1000}` (omitted fields
//! take the filter's defaults); a row of it without `gateway.store.backend` =
//! `"cluster"` is a finding and left out.
//!
//! A tenant appears in the document as soon as it has any tenant or route row.
//! Routes are ordered most specific first: longer prefix, then with a method.
//!
//! Safe by default: the tenant header is not trusted unless
//! `gateway.tenant.trust_header_without_jwt` says `true`, so settings with
//! neither that nor `gateway.tenant.jwt` are rejected (no identity source).
//! A value longer than the size limit ([`DEFAULT_MAX_VALUE_BYTES`]) is
//! rejected without being read. Every finding is reported in one pass
//! ([`render_parts`] + [`Validator::validate_with`]).
//!
//! Rendering has two phases: `resolve` places each row (and rejects the
//! ones that cannot be placed), `document` emits the typed document with the
//! provenance of every value; `validate` checks the result.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod document;
mod resolve;
mod validate;

pub use document::Rendered;
pub use validate::Validator;

/// Prefix of every key this sidecar owns.
pub const KEY_PREFIX: &str = "gateway.";

/// Default upper bound of one settings value (its JSON text), in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024;

const TRUST_KEY: &str = "gateway.tenant.trust_header_without_jwt";
const JWT_KEY: &str = "gateway.tenant.jwt";

/// Scope of a settings row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Global,
    Tenant,
    Route,
    /// A plan: its name in the `tenant` column.
    Plan,
}

impl Scope {
    /// Parses the `scope` column.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "global" => Some(Self::Global),
            "tenant" => Some(Self::Tenant),
            "route" => Some(Self::Route),
            "plan" => Some(Self::Plan),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Tenant => "tenant",
            Self::Route => "route",
            Self::Plan => "plan",
        }
    }
}

/// One row of `tg_settings` (`tenant`/`route` are empty when not applicable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRow {
    pub scope: Scope,
    pub tenant: String,
    pub route: String,
    pub key: String,
    pub value: Value,
    pub updated_by: String,
    pub updated_at: String,
    /// Set when the value was over the size limit: its size in bytes (the
    /// value itself was not loaded and is `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversized_bytes: Option<u64>,
}

impl SettingRow {
    /// A row as `updated_by` would write it (no `updated_at`: rows built in
    /// code, for tools and tests, have not been stored yet).
    pub fn new(
        scope: Scope,
        tenant: &str,
        route: &str,
        key: &str,
        value: Value,
        updated_by: &str,
    ) -> Self {
        Self {
            scope,
            tenant: tenant.to_owned(),
            route: route.to_owned(),
            key: key.to_owned(),
            value,
            updated_by: updated_by.to_owned(),
            updated_at: String::new(),
            oversized_bytes: None,
        }
    }

    /// A global-scope row.
    pub fn global(key: &str, value: Value, updated_by: &str) -> Self {
        Self::new(Scope::Global, "", "", key, value, updated_by)
    }

    /// Stable identity of the row, used in audit records: `gateway.mode`,
    /// `acme/gateway.rate_limit`, `acme/orders/gateway.rate_limit`,
    /// `@plan:gold/gateway.rate_limits`.
    pub fn identity(&self) -> String {
        match self.scope {
            Scope::Global => self.key.clone(),
            Scope::Tenant => format!("{}/{}", self.tenant, self.key),
            Scope::Route => format!("{}/{}/{}", self.tenant, self.route, self.key),
            Scope::Plan => format!("@plan:{}/{}", self.tenant, self.key),
        }
    }

    fn origin(&self) -> Origin {
        Origin {
            scope: self.scope,
            tenant: self.tenant.clone(),
            route: self.route.clone(),
            key: self.key.clone(),
            updated_by: self.updated_by.clone(),
        }
    }
}

/// The settings row a value of the document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scope: Scope,
    pub tenant: String,
    pub route: String,
    pub key: String,
    pub updated_by: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Global => write!(f, "global setting `{}`", self.key)?,
            Scope::Tenant => write!(f, "tenant `{}` setting `{}`", self.tenant, self.key)?,
            Scope::Plan => write!(f, "plan `{}` setting `{}`", self.tenant, self.key)?,
            Scope::Route => write!(
                f,
                "tenant `{}` route `{}` setting `{}`",
                self.tenant, self.route, self.key
            )?,
        }
        if !self.updated_by.is_empty() {
            write!(f, " (updated by {})", self.updated_by)?;
        }
        Ok(())
    }
}

/// One validation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The row responsible, when it can be named.
    pub origin: Option<Origin>,
    /// Path inside the plugin document (dotted).
    pub path: String,
    pub message: String,
    /// `schema` (JSON Schema) or `filter` (the filter's parser) or `settings`.
    pub check: &'static str,
}

impl fmt::Display for Issue {
    /// One finding, at most [`crate::text::MAX_ISSUE_BYTES`] long (a schema
    /// message may quote the offending value).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = match &self.origin {
            Some(origin) => format!("{origin}: "),
            None => "plugin configuration: ".to_owned(),
        };
        if !self.path.is_empty() {
            text.push_str(&format!("`{}` ", self.path));
        }
        text.push_str(&format!("{} [{}]", self.message, self.check));
        f.write_str(&crate::text::bounded_to(
            &text,
            crate::text::MAX_ISSUE_BYTES,
        ))
    }
}

/// Settings that cannot become a plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid settings: {}", join_issues(.0))]
    Invalid(Vec<Issue>),
    #[error("the published JSON Schema does not compile: {0}")]
    Schema(String),
}

fn join_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl SettingsError {
    /// The findings, one per line (all of them; for `sync --dry-run`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Invalid(issues) => issues.iter().map(ToString::to_string).collect(),
            Self::Schema(_) => vec![self.to_string()],
        }
    }

    fn one(origin: Option<Origin>, path: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![Issue {
            origin,
            path: path.to_owned(),
            message: message.into(),
            check: "settings",
        }])
    }
}

/// Resolves settings rows into the plugin document (without `revision`);
/// any finding is an error ([`render_parts`] keeps the document too).
pub fn render(rows: &[SettingRow]) -> Result<Rendered, SettingsError> {
    let (rendered, issues) = render_parts(rows, DEFAULT_MAX_VALUE_BYTES);
    if issues.is_empty() {
        Ok(rendered)
    } else {
        Err(SettingsError::Invalid(issues))
    }
}

/// Marks the values of `rows` longer than `max_value_bytes` as oversized
/// (value replaced by `null`, size kept), so that neither the document, nor an
/// error message, nor the revision's settings snapshot carries them.
pub fn strip_oversized(rows: &mut [SettingRow], max_value_bytes: usize) {
    for row in rows.iter_mut().filter(|r| r.oversized_bytes.is_none()) {
        let size = json_len(&row.value);
        if size > max_value_bytes {
            row.oversized_bytes = Some(u64::try_from(size).unwrap_or(u64::MAX));
            row.value = Value::Null;
        }
    }
}

/// Length of the compact JSON text of `value`, without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Resolves settings rows into the plugin document (without `revision`) and
/// every finding of the settings check. Rows with a finding (including values
/// over `max_value_bytes`) are left out of the document, so it shows what the
/// valid rows would change. Findings come in row order, then the routes', then
/// the missing identity source.
pub fn render_parts(rows: &[SettingRow], max_value_bytes: usize) -> (Rendered, Vec<Issue>) {
    let (resolved, mut issues) = resolve::resolve(rows, max_value_bytes);
    let identity_source = resolved.identity_source;
    let rendered = document::emit(resolved, &mut issues);
    if !identity_source {
        issues.push(Issue {
            origin: None,
            path: String::new(),
            message: format!(
                "no tenant identity source: set global `{JWT_KEY}` (verified tokens), or global \
                 `{TRUST_KEY}` to true (header mode: the tenant header is trusted as sent, \
                 for gateways behind something that already authenticated the caller)"
            ),
            check: "settings",
        });
    }
    (rendered, issues)
}

/// Warnings about a valid but risky document (printed by `sync`, logged on delivery).
pub fn warnings(rendered: &Rendered) -> Vec<String> {
    let tenant = rendered.document.get("tenant");
    let header_mode = tenant
        .and_then(|t| t.get("trust_header_without_jwt"))
        .and_then(Value::as_bool)
        == Some(true);
    let unknown_defaults = tenant
        .and_then(|t| t.get("unknown"))
        .and_then(Value::as_str)
        .unwrap_or("defaults")
        == "defaults";
    let mut out = Vec::new();
    if header_mode && unknown_defaults {
        out.push(format!(
            "header mode (`{TRUST_KEY}` = true) with `gateway.tenant.unknown` = \"defaults\": any \
             client that can set the tenant header picks its tenant, and every distinct value \
             gets its own rate-limit bucket; set `gateway.tenant.unknown` to \"reject\" or \
             configure `{JWT_KEY}`"
        ));
    }
    out
}

#[cfg(test)]
mod tests;
