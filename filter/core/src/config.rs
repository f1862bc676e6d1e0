//! The plugin configuration document (README "Plugin configuration"): its typed form, its
//! validation, and its compiled form that the request path reads.
//!
//! Parse, validate, compile: [`parse`] turns bytes into a [`CompiledConfig`] or
//! a [`ConfigError`] whose `path` names the offending field. Nothing half-valid
//! is ever returned, so the host can keep serving the previous config.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::idempotency::IdempotencyConfig;
use crate::jwt::{self, CompiledJwt, JwtConfig, TokenCache};
use crate::ratelimit::RateParams;

/// The only document version this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// The JSON Schema of the document (draft 4, so Kong can use it as `config_schema`).
pub const CONFIG_SCHEMA: &str = include_str!("../../schema/tenant-guard.schema.json");

const MAX_REQUESTS: u64 = 1_000_000_000;
const MAX_PER_SECONDS: u64 = 31_536_000;
const MAX_CAS_RETRIES: u32 = 1_000;
const MAX_REVISION_LEN: usize = 128;
const MAX_IDEMPOTENCY_BUCKETS: u32 = 65_536;
const MAX_UNKNOWN_TENANT_SLOTS: u32 = 1 << 20;
const MAX_IDEMPOTENCY_TTL: u64 = 30 * 86_400;
const MAX_IDEMPOTENCY_BODY: u64 = 16 * 1024 * 1024;
const MAX_IN_FLIGHT_TIMEOUT: u64 = 3_600;

/// The plugin configuration as delivered by the sidecar (or written by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default)]
    pub tenant: TenantConfig,
    #[serde(default)]
    pub correlation: CorrelationConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
    /// Routes where a missing `If-Match` is answered 428.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub if_match: Vec<IfMatchRule>,
    /// Define and count the `tenant_guard_*` metrics. Kong before 3.9 traps on
    /// the proxy-wasm metric calls: set `false` there.
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Informational headers the filter adds (both on by default).
    #[serde(default)]
    pub headers: HeadersConfig,
    /// How request paths are read (`crate::path`).
    #[serde(default, skip_serializing_if = "PathsConfig::is_default")]
    pub paths: PathsConfig,
}

/// Request path handling; the normalisation itself is not configurable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Accept `%2F`, `%5C` and `\` in the path (as data, not as separators)
    /// instead of answering 400 `invalid-path`.
    pub allow_encoded_slashes: bool,
}

impl PathsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_true() -> bool {
    true
}

/// Informational headers: each costs a host call per request, so operators who
/// do not read them can turn them off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Send `x-tenant-guard-revision` (the serving config revision) upstream.
    pub revision: bool,
    /// Which responses carry `RateLimit-Policy` and `RateLimit`.
    pub rate_limit: RateLimitHeaders,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            revision: true,
            rate_limit: RateLimitHeaders::Always,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitHeaders {
    /// Every response to a rate-limited request (allowed, shadowed and 429).
    Always,
    /// Only the 429 (with `Retry-After`).
    OnReject,
}

/// Requests matching `prefix` with one of `methods` must carry `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IfMatchRule {
    pub prefix: String,
    #[serde(default = "default_if_match_methods")]
    pub methods: Vec<String>,
}

fn default_if_match_methods() -> Vec<String> {
    ["PUT", "PATCH", "DELETE"].map(str::to_owned).to_vec()
}

/// Where the tenant identity comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Request header carrying the tenant id; forwarded upstream under this name.
    pub header: String,
    /// Without a tenant the request is rejected (400 problem+json).
    pub required: bool,
    /// Accept the tenant header as identity when no JWT identifies the caller.
    /// Without `jwt` this must be `true` (there is no other identity source).
    pub trust_header_without_jwt: bool,
    /// What happens to a tenant that has no entry under `tenants`.
    pub unknown: UnknownTenant,
    /// Verified-JWT identity: the tenant (and user/org) come from token claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Upstream header for the token's user claim (overwritten, or removed when absent).
    pub user_header: String,
    /// Upstream header for the token's org claim (overwritten, or removed when absent).
    pub org_header: String,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            header: "x-tenant-id".to_owned(),
            required: true,
            trust_header_without_jwt: false,
            unknown: UnknownTenant::Defaults,
            jwt: None,
            user_header: "x-user-id".to_owned(),
            org_header: "x-org-id".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTenant {
    /// Apply `defaults` (each unknown tenant still gets its own bucket).
    Defaults,
    /// Reject with 403.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    pub header: String,
    pub generate: IdGenerator,
    /// Echo the id on every response (local replies always carry it).
    pub echo: bool,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self {
            header: "x-correlation-id".to_owned(),
            generate: IdGenerator::Uuidv7,
            echo: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdGenerator {
    Uuidv7,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    pub mode: Mode,
}

/// `requests` per `per_seconds` sustained, at most `burst` back to back
/// (a GCRA token bucket; `burst` defaults to `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u64,
    pub per_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Count and report, never reject.
    Shadow,
}

/// How the shared-data compare-and-swap loop behaves under contention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub max_cas_retries: u32,
    /// Outcome when retries run out or the store fails.
    pub on_exhausted: OnExhausted,
    /// Idempotency buckets; each holds 8 records, so this bounds stored records and bytes.
    pub idempotency_buckets: u32,
    /// Percent of all idempotency records (`idempotency_buckets × 8`) one tenant
    /// may hold; a tenant at its share gets 503 for its own new keys only.
    pub idempotency_tenant_share_percent: u8,
    /// Rate-limit state of tenants not under `tenants` lives in a fixed table of
    /// this many keys, so clients sending new tenant ids cannot grow the store.
    pub unknown_tenant_slots: u32,
    /// Prefix `<namespace>/` on every shared-data key. Kong stores such keys in
    /// the `nginx_wasm_shm_kv_<namespace>` zone (needed before Kong 3.7, which
    /// has no default zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_cas_retries: 64,
            on_exhausted: OnExhausted::Reject,
            idempotency_buckets: 512,
            idempotency_tenant_share_percent: 25,
            unknown_tenant_slots: 8192,
            namespace: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// 503 problem+json with `Retry-After: 1`.
    Reject,
    /// Let the request through, logged and counted.
    Allow,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// A limit for one path prefix (and optionally one method). The first matching
/// route wins and replaces the tenant-wide limit for that request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub rate_limit: RateLimit,
}

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

/// One limit as the request path uses it: a name (for headers and the storage key) and rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    pub name: String,
    pub rate: RateParams,
    /// The `RateLimit-Policy` value, built once.
    pub policy_header: String,
}

/// A tenant's route limit (by index) or its tenant-wide limit (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRef(Option<usize>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRoute {
    pub prefix: String,
    pub method: Option<String>,
    pub policy: LimitPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledTenant {
    pub tenant_wide: Option<LimitPolicy>,
    pub routes: Vec<CompiledRoute>,
    pub mode: Mode,
    pub idempotency: Option<IdempotencyConfig>,
}

/// The validated configuration the request path reads; built once per `on_configure`.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    /// Keys decoded once; `None` when the tenant comes from the header only.
    pub jwt: Option<Arc<CompiledJwt>>,
    /// Verified tokens of this worker (one VM per worker, so uncontended).
    pub token_cache: Arc<Mutex<TokenCache>>,
    pub revision: String,
    pub tenant: TenantConfig,
    pub correlation: CorrelationConfig,
    pub store: StoreConfig,
    pub defaults: CompiledTenant,
    pub tenants: HashMap<String, CompiledTenant>,
    pub if_match: Vec<IfMatchRule>,
    /// Any tenant (or the defaults) uses Idempotency-Key; computed once.
    pub idempotency_enabled: bool,
    /// Some rule looks at the method or path (routes, If-Match, idempotency);
    /// otherwise the host need not read them.
    pub reads_method_and_path: bool,
    pub metrics: bool,
    pub headers: HeadersConfig,
    pub paths: PathsConfig,
}

impl CompiledConfig {
    /// The log line for an accepted document.
    pub fn accepted_message(&self) -> String {
        format!(
            "configuration accepted (revision `{}`, {} tenants)",
            self.revision,
            self.tenants.len()
        )
    }

    /// The settings for a tenant, `None` when it is unknown and unknown tenants are rejected.
    pub fn tenant_settings(&self, tenant: &str) -> Option<&CompiledTenant> {
        match self.tenants.get(tenant) {
            Some(settings) => Some(settings),
            None => match self.tenant.unknown {
                UnknownTenant::Defaults => Some(&self.defaults),
                UnknownTenant::Reject => None,
            },
        }
    }
}

impl CompiledConfig {
    /// Whether this request must carry `If-Match`.
    pub fn requires_if_match(&self, method: &str, path: &str) -> bool {
        self.if_match.iter().any(|rule| {
            path.starts_with(rule.prefix.as_str()) && rule.methods.iter().any(|m| m == method)
        })
    }

    /// Whether any tenant uses idempotency (the host then reads the header and runs the reclaim tick).
    pub fn uses_idempotency(&self) -> bool {
        self.idempotency_enabled
    }
}

impl CompiledTenant {
    /// The one limit that applies to this request: first matching route, else tenant-wide.
    pub fn policy_for(&self, method: &str, path: &str) -> Option<&LimitPolicy> {
        self.limit_for(method, path)
            .and_then(|limit| self.limit(limit))
    }

    /// Which limit applies, as a handle that outlives the borrow of the config
    /// (a request keeps it across a store call that answers later).
    pub fn limit_for(&self, method: &str, path: &str) -> Option<LimitRef> {
        let route = self.routes.iter().position(|route| {
            path.starts_with(route.prefix.as_str())
                && route.method.as_deref().is_none_or(|m| m == method)
        });
        match route {
            Some(index) => Some(LimitRef(Some(index))),
            None => self.tenant_wide.as_ref().map(|_| LimitRef(None)),
        }
    }

    /// The limit a [`LimitRef`] from [`Self::limit_for`] names.
    pub fn limit(&self, limit: LimitRef) -> Option<&LimitPolicy> {
        match limit.0 {
            Some(index) => self.routes.get(index).map(|route| &route.policy),
            None => self.tenant_wide.as_ref(),
        }
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

/// Parse into the typed document only (no semantic validation).
pub fn parse_document(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    if bytes.is_empty() {
        return Err(invalid("", "configuration is empty"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let document: PluginConfig = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| invalid(err.path().to_string(), err.inner().to_string()))?;
    deserializer
        .end()
        .map_err(|err| invalid("", format!("trailing characters: {err}")))?;
    Ok(document)
}

/// Validate a typed document and build its compiled form.
pub fn compile(document: &PluginConfig) -> Result<CompiledConfig, ConfigError> {
    if document.version != CONFIG_VERSION {
        return Err(invalid(
            "version",
            format!(
                "unsupported version {}, this filter understands {CONFIG_VERSION}",
                document.version
            ),
        ));
    }
    let revision = document.revision.clone().unwrap_or_default();
    if revision.len() > MAX_REVISION_LEN || revision.chars().any(|c| c.is_control()) {
        return Err(invalid(
            "revision",
            format!("must be at most {MAX_REVISION_LEN} printable characters"),
        ));
    }
    validate_header_name("tenant.header", &document.tenant.header)?;
    validate_header_name("correlation.header", &document.correlation.header)?;
    if document.tenant.header == document.correlation.header {
        return Err(invalid(
            "correlation.header",
            "must differ from tenant.header",
        ));
    }
    validate_header_name("tenant.user_header", &document.tenant.user_header)?;
    validate_header_name("tenant.org_header", &document.tenant.org_header)?;
    let compiled_jwt = match &document.tenant.jwt {
        Some(config) => Some(Arc::new(jwt::compile(config).map_err(|err| {
            invalid(format!("tenant.jwt.{}", err.path), err.message)
        })?)),
        None if !document.tenant.trust_header_without_jwt => {
            return Err(invalid(
                "tenant.trust_header_without_jwt",
                "no tenant identity source is configured: configure tenant.jwt, or set this to true to take the tenant from the header",
            ))
        }
        None => None,
    };
    if document.store.max_cas_retries == 0 || document.store.max_cas_retries > MAX_CAS_RETRIES {
        return Err(invalid(
            "store.max_cas_retries",
            format!("must be between 1 and {MAX_CAS_RETRIES}"),
        ));
    }
    if let Some(namespace) = &document.store.namespace {
        let valid = !namespace.is_empty()
            && namespace.len() <= 32
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(invalid(
                "store.namespace",
                "must be 1-32 characters of [a-z0-9_]",
            ));
        }
    }
    if !(1..=MAX_IDEMPOTENCY_BUCKETS).contains(&document.store.idempotency_buckets) {
        return Err(invalid(
            "store.idempotency_buckets",
            format!("must be between 1 and {MAX_IDEMPOTENCY_BUCKETS}"),
        ));
    }
    if !(1..=MAX_UNKNOWN_TENANT_SLOTS).contains(&document.store.unknown_tenant_slots) {
        return Err(invalid(
            "store.unknown_tenant_slots",
            format!("must be between 1 and {MAX_UNKNOWN_TENANT_SLOTS}"),
        ));
    }
    if !(1..=100).contains(&document.store.idempotency_tenant_share_percent) {
        return Err(invalid(
            "store.idempotency_tenant_share_percent",
            "must be between 1 and 100",
        ));
    }
    for (index, rule) in document.if_match.iter().enumerate() {
        validate_prefix(&format!("if_match.{index}.prefix"), &rule.prefix)?;
        if rule.methods.is_empty() {
            return Err(invalid(
                format!("if_match.{index}.methods"),
                "must name at least one method",
            ));
        }
        for (m, method) in rule.methods.iter().enumerate() {
            validate_method(&format!("if_match.{index}.methods.{m}"), method)?;
        }
    }
    if let Some(idempotency) = &document.defaults.idempotency {
        validate_idempotency("defaults.idempotency", idempotency)?;
    }

    let defaults = CompiledTenant {
        tenant_wide: document
            .defaults
            .rate_limit
            .map(|limit| compile_policy("defaults.rate_limit", "tenant", &limit))
            .transpose()?,
        routes: Vec::new(),
        mode: document.defaults.mode,
        idempotency: document.defaults.idempotency.clone(),
    };

    let mut tenants = HashMap::with_capacity(document.tenants.len());
    for (id, settings) in &document.tenants {
        let base = format!("tenants.{id}");
        if !is_valid_tenant_id(id) {
            return Err(invalid(
                base,
                format!("tenant id must be {}", crate::tenant::RULE),
            ));
        }
        tenants.insert(id.clone(), compile_tenant(&base, settings, &defaults)?);
    }

    let idempotency_enabled = defaults.idempotency.is_some()
        || tenants.values().any(|tenant| tenant.idempotency.is_some());
    let reads_method_and_path = idempotency_enabled
        || !document.if_match.is_empty()
        || tenants.values().any(|tenant| !tenant.routes.is_empty());
    let token_cache = TokenCache::new(
        compiled_jwt
            .as_ref()
            .map_or(0, |compiled| compiled.cache_entries()),
    );
    Ok(CompiledConfig {
        jwt: compiled_jwt,
        token_cache: Arc::new(Mutex::new(token_cache)),
        revision,
        tenant: document.tenant.clone(),
        correlation: document.correlation.clone(),
        store: document.store.clone(),
        defaults,
        tenants,
        if_match: document.if_match.clone(),
        idempotency_enabled,
        reads_method_and_path,
        metrics: document.metrics,
        headers: document.headers,
        paths: document.paths,
    })
}

fn compile_tenant(
    base: &str,
    settings: &TenantSettings,
    defaults: &CompiledTenant,
) -> Result<CompiledTenant, ConfigError> {
    let tenant_wide = match &settings.rate_limit {
        Some(limit) => Some(compile_policy(
            &format!("{base}.rate_limit"),
            "tenant",
            limit,
        )?),
        None => defaults.tenant_wide.clone(),
    };
    let mut routes = Vec::with_capacity(settings.routes.len());
    let mut names = Vec::with_capacity(settings.routes.len());
    for (index, route) in settings.routes.iter().enumerate() {
        let path = format!("{base}.routes.{index}");
        validate_prefix(&format!("{path}.prefix"), &route.prefix)?;
        if let Some(method) = &route.method {
            validate_method(&format!("{path}.method"), method)?;
        }
        let name = match &route.name {
            Some(name) => {
                if !is_valid_policy_name(name) {
                    return Err(invalid(
                        format!("{path}.name"),
                        "must be 1-64 characters of [A-Za-z0-9._-]",
                    ));
                }
                name.clone()
            }
            None => format!("route-{index}"),
        };
        if name == "tenant" || names.contains(&name) {
            return Err(invalid(
                format!("{path}.name"),
                format!("limit name `{name}` is used twice"),
            ));
        }
        names.push(name.clone());
        routes.push(CompiledRoute {
            prefix: route.prefix.clone(),
            method: route.method.clone(),
            policy: compile_policy(&format!("{path}.rate_limit"), &name, &route.rate_limit)?,
        });
    }
    let idempotency = match &settings.idempotency {
        Some(idempotency) => {
            validate_idempotency(&format!("{base}.idempotency"), idempotency)?;
            Some(idempotency.clone())
        }
        None => defaults.idempotency.clone(),
    };
    Ok(CompiledTenant {
        tenant_wide,
        routes,
        mode: settings.mode.unwrap_or(defaults.mode),
        idempotency,
    })
}

/// Prefixes are compared with normalised request paths, so they must be normal
/// themselves (a prefix `/a//b` could never match).
fn validate_prefix(path: &str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || prefix.chars().any(|c| c.is_ascii_control()) {
        return Err(invalid(
            path,
            "must start with `/` and contain no control characters",
        ));
    }
    match crate::path::normalize(prefix.as_bytes(), true) {
        Ok(normal) if normal.query.is_none() && normal.path == prefix => Ok(()),
        Ok(normal) if normal.query.is_none() => Err(invalid(
            path,
            format!(
                "must be a normalised path (no `//`, dot segments or encoded unreserved characters): write `{}`",
                normal.path
            ),
        )),
        _ => Err(invalid(
            path,
            "must be a normalised path of visible ASCII without `?` or `#`",
        )),
    }
}

fn validate_method(path: &str, method: &str) -> Result<(), ConfigError> {
    if !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            path,
            "must be an upper-case HTTP method such as POST",
        ))
    }
}

fn validate_idempotency(path: &str, config: &IdempotencyConfig) -> Result<(), ConfigError> {
    if config.methods.is_empty() {
        return Err(invalid(
            format!("{path}.methods"),
            "must name at least one method",
        ));
    }
    for (index, method) in config.methods.iter().enumerate() {
        validate_method(&format!("{path}.methods.{index}"), method)?;
    }
    let ranges = [
        ("ttl_seconds", config.ttl_seconds, MAX_IDEMPOTENCY_TTL),
        (
            "max_body_bytes",
            config.max_body_bytes,
            MAX_IDEMPOTENCY_BODY,
        ),
        (
            "in_flight_timeout_seconds",
            config.in_flight_timeout_seconds,
            MAX_IN_FLIGHT_TIMEOUT,
        ),
    ];
    for (field, value, max) in ranges {
        if value == 0 || value > max {
            return Err(invalid(
                format!("{path}.{field}"),
                format!("must be between 1 and {max}"),
            ));
        }
    }
    Ok(())
}

fn compile_policy(path: &str, name: &str, limit: &RateLimit) -> Result<LimitPolicy, ConfigError> {
    if limit.requests == 0 || limit.requests > MAX_REQUESTS {
        return Err(invalid(
            format!("{path}.requests"),
            format!("must be between 1 and {MAX_REQUESTS}"),
        ));
    }
    if limit.per_seconds == 0 || limit.per_seconds > MAX_PER_SECONDS {
        return Err(invalid(
            format!("{path}.per_seconds"),
            format!("must be between 1 and {MAX_PER_SECONDS}"),
        ));
    }
    if let Some(burst) = limit.burst {
        if burst == 0 || burst > MAX_REQUESTS {
            return Err(invalid(
                format!("{path}.burst"),
                format!("must be between 1 and {MAX_REQUESTS}"),
            ));
        }
    }
    let burst = limit.burst.unwrap_or(limit.requests);
    let mut policy_header = format!("\"{name}\";q={};w={}", limit.requests, limit.per_seconds);
    if burst != limit.requests {
        policy_header.push_str(&format!(";burst={burst}"));
    }
    Ok(LimitPolicy {
        name: name.to_owned(),
        rate: RateParams::new(limit.requests, limit.per_seconds, burst),
        policy_header,
    })
}

fn validate_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            path,
            "must be a lower-case header name of [a-z0-9_-], at most 64 characters",
        ))
    }
}

/// Tenant ids as they may appear in headers, storage keys and config ([`crate::tenant`]).
pub use crate::tenant::is_valid as is_valid_tenant_id;

fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
