//! Effective settings: resolves the scoped rows of `tg_settings` (global →
//! tenant → route) into the plugin configuration document (README "Plugin configuration"), and
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
//! | global | `gateway.if_match`                   | `if_match` (routes needing If-Match)   |
//! | global | `gateway.metrics`                    | `metrics` (`false` for Kong < 3.9)     |
//! | global | `gateway.headers.{revision,rate_limit}` | `headers.*` (informational headers)  |
//! | global | `gateway.rate_limit`                 | `defaults.rate_limit`                  |
//! | global | `gateway.mode`                       | `defaults.mode`                        |
//! | global | `gateway.idempotency`                | `defaults.idempotency`                 |
//! | tenant | `gateway.rate_limit`                 | `tenants.<t>.rate_limit`               |
//! | tenant | `gateway.mode`                       | `tenants.<t>.mode`                     |
//! | tenant | `gateway.idempotency`                | `tenants.<t>.idempotency` (replaces the global one) |
//! | tenant | `gateway.enabled`                    | `false` drops the tenant (and its routes) |
//! | route  | `gateway.route.prefix` (required)    | `tenants.<t>.routes[i].prefix`         |
//! | route  | `gateway.route.method`               | `tenants.<t>.routes[i].method`         |
//! | route  | `gateway.rate_limit`                 | `tenants.<t>.routes[i].rate_limit` (else the tenant's, else the global one) |
//!
//! `gateway.idempotency` is the schema's `idempotency` object, e.g.
//! `{"methods": ["POST"], "required": false, "ttl_seconds": 86400,
//! "max_body_bytes": 65536, "in_flight_timeout_seconds": 60}` (omitted fields take
//! the filter's defaults).
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

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

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
}

impl Scope {
    /// Parses the `scope` column.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "global" => Some(Self::Global),
            "tenant" => Some(Self::Tenant),
            "route" => Some(Self::Route),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Tenant => "tenant",
            Self::Route => "route",
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
    /// `acme/gateway.rate_limit`, `acme/orders/gateway.rate_limit`.
    pub fn identity(&self) -> String {
        match self.scope {
            Scope::Global => self.key.clone(),
            Scope::Tenant => format!("{}/{}", self.tenant, self.key),
            Scope::Route => format!("{}/{}/{}", self.tenant, self.route, self.key),
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

/// A rendered document (without `revision`) and where each of its values came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub document: Value,
    provenance: Vec<(Vec<String>, Origin)>,
}

impl Rendered {
    /// A document of unknown origin (e.g. a recorded revision being restored).
    pub fn from_document(document: Value) -> Self {
        Self {
            document,
            provenance: Vec::new(),
        }
    }

    /// Hex sha256 of the canonical document bytes (keys sorted, no revision).
    pub fn content_hash(&self) -> String {
        crate::envoy::sha256_hex(self.document.to_string().as_bytes())
    }

    /// The document with `revision` set, as compact JSON text.
    pub fn with_revision(&self, revision: &str) -> String {
        let mut document = self.document.clone();
        if let Value::Object(map) = &mut document {
            map.insert("revision".to_owned(), Value::String(revision.to_owned()));
        }
        document.to_string()
    }

    /// The row that produced the value at `segments` (longest matching prefix),
    /// or, for an error about a container, the single row below it.
    fn origin_of(&self, segments: &[String]) -> Option<Origin> {
        let best = self
            .provenance
            .iter()
            .filter(|(path, _)| segments.starts_with(path))
            .max_by_key(|(path, _)| path.len());
        if let Some((_, origin)) = best {
            return Some(origin.clone());
        }
        let mut below = self
            .provenance
            .iter()
            .filter(|(path, _)| path.starts_with(segments));
        let first = below.next()?;
        below
            .all(|(_, origin)| origin == &first.1)
            .then(|| first.1.clone())
    }

    /// Like [`Self::origin_of`] for a dotted path as the filter's parser reports it.
    fn origin_of_dotted(&self, dotted: &str) -> Option<Origin> {
        let best = self
            .provenance
            .iter()
            .filter(|(path, _)| {
                let joined = path.join(".");
                dotted == joined || dotted.starts_with(&format!("{joined}."))
            })
            .max_by_key(|(path, _)| path.len());
        best.map(|(_, origin)| origin.clone())
    }
}

fn seg(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

struct RouteDraft {
    name: String,
    prefix: Option<(Value, Origin)>,
    method: Option<(Value, Origin)>,
    rate_limit: Option<(Value, Origin)>,
}

#[derive(Default)]
struct TenantDraft {
    rate_limit: Option<(Value, Origin)>,
    mode: Option<(Value, Origin)>,
    idempotency: Option<(Value, Origin)>,
    enabled: bool,
    routes: BTreeMap<String, RouteDraft>,
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
/// valid rows would change.
pub fn render_parts(rows: &[SettingRow], max_value_bytes: usize) -> (Rendered, Vec<Issue>) {
    let mut document = Map::new();
    document.insert(
        "version".to_owned(),
        json!(tenant_guard_core::config::CONFIG_VERSION),
    );
    let mut provenance = Vec::new();
    let mut global_limit: Option<(Value, Origin)> = None;
    let mut tenants: BTreeMap<String, TenantDraft> = BTreeMap::new();
    let mut issues = Vec::new();

    // Safe by default: the header is an identity only when a setting says so.
    set_path(
        &mut document,
        &["tenant", "trust_header_without_jwt"],
        json!(false),
    );
    let mut identity_source = false;

    for row in rows.iter().filter(|r| r.key.starts_with(KEY_PREFIX)) {
        let origin = row.origin();
        if row.scope == Scope::Global
            && (row.key == JWT_KEY || (row.key == TRUST_KEY && row.value != json!(false)))
        {
            // Present (even if invalid or oversized): its own finding says what is wrong.
            identity_source = true;
        }
        let oversized = row.oversized_bytes.or_else(|| {
            let size = json_len(&row.value);
            (size > max_value_bytes).then(|| u64::try_from(size).unwrap_or(u64::MAX))
        });
        if let Some(size) = oversized {
            issues.push(Issue {
                origin: Some(origin),
                path: String::new(),
                message: format!(
                    "value is {size} bytes, over the limit of {max_value_bytes} bytes per value (--max-value-bytes)"
                ),
                check: "settings",
            });
            continue;
        }
        let wrong_scope = |allowed: &str| Issue {
            origin: Some(origin.clone()),
            path: String::new(),
            message: format!(
                "key is not allowed at {} scope ({allowed})",
                row.scope.as_str()
            ),
            check: "settings",
        };
        match row.scope {
            Scope::Global => {
                let target = GLOBAL_KEYS
                    .iter()
                    .find(|(key, _)| *key == row.key)
                    .map(|(_, path)| *path);
                match target {
                    Some(path) => {
                        set_path(&mut document, path, row.value.clone());
                        provenance.push((seg(path), origin.clone()));
                        if row.key == "gateway.rate_limit" {
                            global_limit = Some((row.value.clone(), origin));
                        }
                    }
                    None if is_known_key(&row.key) => {
                        issues.push(wrong_scope("tenant or route scope only"));
                    }
                    None => issues.push(unknown_key(origin)),
                }
            }
            Scope::Tenant | Scope::Route => {
                if !tenant_guard_core::config::is_valid_tenant_id(&row.tenant) {
                    issues.push(Issue {
                        origin: Some(origin),
                        path: String::new(),
                        message: "tenant id must be 1-128 characters of [A-Za-z0-9._-]".to_owned(),
                        check: "settings",
                    });
                    continue;
                }
                let tenant = tenants
                    .entry(row.tenant.clone())
                    .or_insert_with(|| TenantDraft {
                        enabled: true,
                        ..TenantDraft::default()
                    });
                let entry = Some((row.value.clone(), origin.clone()));
                if row.scope == Scope::Tenant {
                    match row.key.as_str() {
                        "gateway.rate_limit" => tenant.rate_limit = entry,
                        "gateway.mode" => tenant.mode = entry,
                        "gateway.idempotency" => tenant.idempotency = entry,
                        "gateway.enabled" => match row.value {
                            Value::Bool(enabled) => tenant.enabled = enabled,
                            _ => issues.push(Issue {
                                origin: Some(origin),
                                path: String::new(),
                                message: format!("must be true or false, got {}", row.value),
                                check: "settings",
                            }),
                        },
                        key if is_known_key(key) => {
                            issues.push(wrong_scope("see the key table in the docs"));
                        }
                        _ => issues.push(unknown_key(origin)),
                    }
                } else {
                    let route =
                        tenant
                            .routes
                            .entry(row.route.clone())
                            .or_insert_with(|| RouteDraft {
                                name: row.route.clone(),
                                prefix: None,
                                method: None,
                                rate_limit: None,
                            });
                    match row.key.as_str() {
                        "gateway.route.prefix" => route.prefix = entry,
                        "gateway.route.method" => route.method = entry,
                        "gateway.rate_limit" => route.rate_limit = entry,
                        key if is_known_key(key) => {
                            issues.push(wrong_scope("see the key table in the docs"));
                        }
                        _ => issues.push(unknown_key(origin)),
                    }
                }
            }
        }
    }

    let mut tenants_json = Map::new();
    for (id, tenant) in tenants.into_iter().filter(|(_, t)| t.enabled) {
        let mut settings = Map::new();
        let base = ["tenants", id.as_str()];
        if let Some((value, origin)) = &tenant.rate_limit {
            settings.insert("rate_limit".to_owned(), value.clone());
            provenance.push((seg(&[base[0], base[1], "rate_limit"]), origin.clone()));
        }
        if let Some((value, origin)) = &tenant.mode {
            settings.insert("mode".to_owned(), value.clone());
            provenance.push((seg(&[base[0], base[1], "mode"]), origin.clone()));
        }
        if let Some((value, origin)) = &tenant.idempotency {
            settings.insert("idempotency".to_owned(), value.clone());
            provenance.push((seg(&[base[0], base[1], "idempotency"]), origin.clone()));
        }
        let mut routes: Vec<&RouteDraft> = tenant.routes.values().collect();
        routes.sort_by(|a, b| {
            let len = |r: &RouteDraft| {
                r.prefix
                    .as_ref()
                    .and_then(|(v, _)| v.as_str().map(str::len))
                    .unwrap_or(0)
            };
            len(b)
                .cmp(&len(a))
                .then(b.method.is_some().cmp(&a.method.is_some()))
                .then(a.name.cmp(&b.name))
        });
        let mut routes_json = Vec::new();
        for (index, route) in routes.into_iter().enumerate() {
            let index_text = index.to_string();
            let path = |field: &str| seg(&[base[0], base[1], "routes", index_text.as_str(), field]);
            let mut route_json = Map::new();
            route_json.insert("name".to_owned(), Value::String(route.name.clone()));
            let Some((prefix, prefix_origin)) = &route.prefix else {
                let origin = route
                    .method
                    .as_ref()
                    .or(route.rate_limit.as_ref())
                    .map(|(_, o)| o.clone());
                issues.push(Issue {
                    origin,
                    path: String::new(),
                    message: format!(
                        "route `{}` of tenant `{id}` has no `gateway.route.prefix`",
                        route.name
                    ),
                    check: "settings",
                });
                continue;
            };
            route_json.insert("prefix".to_owned(), prefix.clone());
            provenance.push((path("prefix"), prefix_origin.clone()));
            // The route's name is its `route` column: blame the prefix row.
            provenance.push((path("name"), prefix_origin.clone()));
            if let Some((method, origin)) = &route.method {
                route_json.insert("method".to_owned(), method.clone());
                provenance.push((path("method"), origin.clone()));
            }
            let limit = route
                .rate_limit
                .as_ref()
                .or(tenant.rate_limit.as_ref())
                .or(global_limit.as_ref());
            match limit {
                Some((value, origin)) => {
                    route_json.insert("rate_limit".to_owned(), value.clone());
                    provenance.push((path("rate_limit"), origin.clone()));
                }
                None => issues.push(Issue {
                    origin: Some(prefix_origin.clone()),
                    path: String::new(),
                    message: format!(
                        "route `{}` has no rate limit at route, tenant or global scope",
                        route.name
                    ),
                    check: "settings",
                }),
            }
            routes_json.push(Value::Object(route_json));
        }
        if !routes_json.is_empty() {
            settings.insert("routes".to_owned(), Value::Array(routes_json));
        }
        tenants_json.insert(id, Value::Object(settings));
    }
    document.insert("tenants".to_owned(), Value::Object(tenants_json));
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
    (
        Rendered {
            document: Value::Object(document),
            provenance,
        },
        issues,
    )
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

fn unknown_key(origin: Origin) -> Issue {
    Issue {
        origin: Some(origin),
        path: String::new(),
        message: "unknown setting key".to_owned(),
        check: "settings",
    }
}

/// Global keys and the document path each one sets.
const GLOBAL_KEYS: &[(&str, &[&str])] = &[
    ("gateway.tenant.header", &["tenant", "header"]),
    ("gateway.tenant.required", &["tenant", "required"]),
    (
        "gateway.tenant.trust_header_without_jwt",
        &["tenant", "trust_header_without_jwt"],
    ),
    ("gateway.tenant.unknown", &["tenant", "unknown"]),
    ("gateway.tenant.jwt", &["tenant", "jwt"]),
    ("gateway.tenant.user_header", &["tenant", "user_header"]),
    ("gateway.tenant.org_header", &["tenant", "org_header"]),
    ("gateway.correlation.header", &["correlation", "header"]),
    ("gateway.correlation.generate", &["correlation", "generate"]),
    ("gateway.correlation.echo", &["correlation", "echo"]),
    (
        "gateway.store.max_cas_retries",
        &["store", "max_cas_retries"],
    ),
    ("gateway.store.on_exhausted", &["store", "on_exhausted"]),
    (
        "gateway.store.idempotency_buckets",
        &["store", "idempotency_buckets"],
    ),
    ("gateway.store.namespace", &["store", "namespace"]),
    (
        "gateway.store.idempotency_tenant_share_percent",
        &["store", "idempotency_tenant_share_percent"],
    ),
    ("gateway.rate_limit", &["defaults", "rate_limit"]),
    ("gateway.mode", &["defaults", "mode"]),
    ("gateway.idempotency", &["defaults", "idempotency"]),
    ("gateway.if_match", &["if_match"]),
    ("gateway.headers.revision", &["headers", "revision"]),
    ("gateway.headers.rate_limit", &["headers", "rate_limit"]),
    ("gateway.metrics", &["metrics"]),
];

/// Keys valid only at tenant or route scope.
const SCOPED_KEYS: &[&str] = &[
    "gateway.enabled",
    "gateway.route.prefix",
    "gateway.route.method",
];

fn is_known_key(key: &str) -> bool {
    GLOBAL_KEYS.iter().any(|(known, _)| *known == key) || SCOPED_KEYS.contains(&key)
}

fn set_path(document: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = document;
    for part in parents {
        let entry = current
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert((*last).to_owned(), value);
}

/// The compiled draft-4 validator of the filter's published schema.
#[derive(Debug)]
pub struct Validator {
    schema: jsonschema::Validator,
}

impl Validator {
    pub fn new() -> Result<Self, SettingsError> {
        let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA)
            .map_err(|e| SettingsError::Schema(e.to_string()))?;
        let schema =
            jsonschema::draft4::new(&schema).map_err(|e| SettingsError::Schema(e.to_string()))?;
        Ok(Self { schema })
    }

    /// Validates `document_text` (the exact bytes to deliver) with the JSON
    /// Schema and then with the filter's parser; issues name the settings rows.
    pub fn validate(&self, rendered: &Rendered, document_text: &str) -> Result<(), SettingsError> {
        self.validate_with(rendered, document_text, Vec::new())
    }

    /// [`Self::validate`] adding the schema's findings to `issues` (those of
    /// [`render_parts`]), so one pass reports them all; the filter's parser,
    /// which stops at its first finding, runs only when there is none.
    pub fn validate_with(
        &self,
        rendered: &Rendered,
        document_text: &str,
        mut issues: Vec<Issue>,
    ) -> Result<(), SettingsError> {
        let instance: Value = serde_json::from_str(document_text).map_err(|e| {
            SettingsError::one(None, "", format!("rendered document is not JSON: {e}"))
        })?;
        issues.extend(self.schema.iter_errors(&instance).map(|error| {
            let segments = pointer_segments(error.instance_path.as_str());
            Issue {
                origin: rendered.origin_of(&segments),
                path: segments.join("."),
                message: error.to_string(),
                check: "schema",
            }
        }));
        if !issues.is_empty() {
            return Err(SettingsError::Invalid(issues));
        }
        tenant_guard_core::config::parse(document_text.as_bytes()).map_err(|error| {
            SettingsError::Invalid(vec![Issue {
                origin: rendered.origin_of_dotted(&error.path),
                path: error.path.clone(),
                message: error.message.clone(),
                check: "filter",
            }])
        })?;
        Ok(())
    }
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: Scope, tenant: &str, route: &str, key: &str, value: Value) -> SettingRow {
        SettingRow::new(scope, tenant, route, key, value, "alice")
    }

    /// Header mode, explicitly (the default trusts no header).
    fn header_mode() -> SettingRow {
        SettingRow::global(TRUST_KEY, json!(true), "alice")
    }

    fn messages(error: &SettingsError) -> Vec<String> {
        error.lines()
    }

    #[test]
    fn the_header_is_not_trusted_by_default() -> Result<(), SettingsError> {
        let rows = vec![row(
            Scope::Tenant,
            "acme",
            "",
            "gateway.rate_limit",
            json!({"requests": 1, "per_seconds": 60}),
        )];
        let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
        assert_eq!(
            rendered.document["tenant"]["trust_header_without_jwt"],
            json!(false)
        );
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].message.contains("no tenant identity source"));
        // Explicit header mode: valid, with a warning while unknown tenants get defaults.
        let mut rows = rows;
        rows.push(header_mode());
        let rendered = render(&rows)?;
        Validator::new()?.validate(&rendered, &rendered.with_revision("r1"))?;
        let warnings = warnings(&rendered);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("gateway.tenant.unknown"),
            "{warnings:?}"
        );
        rows.push(SettingRow::global(
            "gateway.tenant.unknown",
            json!("reject"),
            "alice",
        ));
        assert!(super::warnings(&render(&rows)?).is_empty());
        Ok(())
    }

    #[test]
    fn every_finding_is_reported_in_one_pass() -> Result<(), SettingsError> {
        let rows = vec![
            header_mode(),
            row(Scope::Tenant, "acme", "", "gateway.rate_limt", json!(1)),
            row(Scope::Tenant, "acme", "", "gateway.mode", json!("loud")),
            row(
                Scope::Tenant,
                "beta",
                "",
                "gateway.rate_limit",
                json!({"requests": 0, "per_seconds": 60}),
            ),
            row(Scope::Tenant, "gamma", "", "gateway.enabled", json!("yes")),
        ];
        let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
        let error = Validator::new()?
            .validate_with(&rendered, &rendered.with_revision("r1"), issues)
            .expect_err("invalid");
        let lines = messages(&error);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        for expected in [
            "tenant `acme` setting `gateway.rate_limt`",
            "tenant `acme` setting `gateway.mode`",
            "tenant `beta` setting `gateway.rate_limit`",
            "tenant `gamma` setting `gateway.enabled`",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "{expected} missing in {lines:#?}"
            );
        }
        Ok(())
    }

    #[test]
    fn oversized_values_are_named_and_left_out() {
        let big = "x".repeat(70_000);
        let mut rows = vec![
            header_mode(),
            row(Scope::Tenant, "acme", "", "gateway.mode", json!(big)),
        ];
        strip_oversized(&mut rows, DEFAULT_MAX_VALUE_BYTES);
        assert_eq!(rows[1].value, Value::Null);
        assert_eq!(rows[1].oversized_bytes, Some(70_002));
        let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
        assert_eq!(issues.len(), 1, "{issues:?}");
        let text = issues[0].to_string();
        assert!(
            text.contains("tenant `acme` setting `gateway.mode`")
                && text.contains("70002 bytes")
                && text.contains("65536"),
            "{text}"
        );
        assert!(text.len() < 300, "{text}");
        assert!(rendered.document.to_string().len() < 1000);
    }

    #[test]
    fn precedence_and_validation() -> Result<(), SettingsError> {
        let rows = vec![
            SettingRow::global(
                "gateway.rate_limit",
                json!({"requests": 100, "per_seconds": 60}),
                "alice",
            ),
            row(
                Scope::Tenant,
                "acme",
                "",
                "gateway.rate_limit",
                json!({"requests": 1000, "per_seconds": 60}),
            ),
            row(
                Scope::Route,
                "acme",
                "orders",
                "gateway.route.prefix",
                json!("/orders"),
            ),
            row(
                Scope::Route,
                "beta",
                "x",
                "gateway.route.prefix",
                json!("/x"),
            ),
            header_mode(),
        ];
        let rendered = render(&rows)?;
        let doc = &rendered.document;
        assert_eq!(
            doc["tenants"]["acme"]["routes"][0]["rate_limit"]["requests"],
            1000
        );
        assert_eq!(
            doc["tenants"]["beta"]["routes"][0]["rate_limit"]["requests"],
            100
        );
        Validator::new()?.validate(&rendered, &rendered.with_revision("r1-x"))?;
        Ok(())
    }

    #[test]
    fn schema_error_names_the_row() -> Result<(), SettingsError> {
        let rows = vec![
            row(
                Scope::Tenant,
                "acme",
                "",
                "gateway.rate_limit",
                json!({"requests": 0, "per_seconds": 60}),
            ),
            header_mode(),
        ];
        let rendered = render(&rows)?;
        let err = Validator::new()?
            .validate(&rendered, &rendered.with_revision("r1"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("tenant `acme` setting `gateway.rate_limit`"),
            "{err}"
        );
        assert!(err.contains("tenants.acme.rate_limit.requests"), "{err}");
        Ok(())
    }
}
