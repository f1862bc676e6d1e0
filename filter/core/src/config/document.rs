//! The document as written: the serde types of every section, with their defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::idempotency::IdempotencyConfig;
use crate::jwt::JwtConfig;

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
    /// Named limit sets tenants subscribe to (`tenants.<t>.plan`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, PlanSettings>,
    /// What a method-override header (`X-HTTP-Method-Override`,
    /// `X-HTTP-Method`, `X-Method-Override`) does where a rule looks at the method.
    #[serde(default, skip_serializing_if = "MethodOverride::is_default")]
    pub method_override: MethodOverride,
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
    /// What the gateway running the filter allows it to do.
    #[serde(default, skip_serializing_if = "HostConfig::is_default")]
    pub host: HostConfig,
}

/// Capabilities of the gateway that the filter cannot find out itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration` is `true`
    /// (Envoy ≥ 1.35): the filter may hold an idempotent request's headers
    /// while it reads the body, so replays, 422s and 413s are answered before
    /// anything reaches the upstream. Set it only together with Envoy's field:
    /// without it Envoy withholds the body from a filter that holds the
    /// headers, and such a request would wait for its timeout.
    pub allow_on_headers_stop_iteration: bool,
}

impl HostConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
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

pub(super) fn default_true() -> bool {
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

pub(super) fn default_if_match_methods() -> Vec<String> {
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

/// Method-override headers, which frameworks (Rails, Express, ASP.NET) honour:
/// never passed through unseen where a rule looks at the method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// 400 problem+json `method-override-refused`.
    #[default]
    Reject,
    /// The header's method is the request's method for every rule.
    Honor,
}

impl MethodOverride {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Limits of tenants without a plan (each named; see [`RateLimitPolicy`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    pub mode: Mode,
    /// In-flight caps of tenants without a plan or caps of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<MaxInFlight>,
}

/// `requests` per `per_seconds` (or `per` a named window) sustained, at most
/// `burst` back to back (a GCRA token bucket; `burst` defaults to
/// `requests`); `per: day|week|month` is a calendar quota instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A named window: `second`, `minute`, `hour` are GCRA rates; `day`,
/// `week`, `month` calendar quotas (UTC; a week starts on Monday, a month
/// on the 1st) that reset at the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// One named limit of a scope: a window (`requests` per `per_seconds` or
/// `per`), counted per tenant or per a key inside it (`key`), applying to
/// every request or those matching `methods` / `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Names the limit in `RateLimit-Policy`, metrics and storage; a lower
    /// scope's limit of the same name replaces it (tenant over plan over defaults).
    pub name: String,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What is counted: the tenant (default), or each user, org or header
    /// value inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<LimitKey>,
    /// A request without the key: refused (400), or counted as the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing: Option<OnMissingKey>,
    /// Only requests with one of these methods (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Only requests whose normalised path starts with this (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// What one admitted request takes from this limit (default: the
    /// matching route's `cost`, else 1); at most the limit's burst (a rate)
    /// or `requests` (a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// A response header in which the upstream reports what the request
    /// really used (e.g. tokens): after the response, what it reports beyond
    /// the cost taken at admission is taken too, and the header is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_header: Option<String>,
    /// The largest usage a response may report (default 1 000 000 000, at
    /// most 2^53); a larger or malformed value is ignored and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_max: Option<u64>,
}

/// Caps on the requests of a tenant (or of one user, org or header value of
/// it) that are in flight at once: an integer (the tenant's cap) or a list
/// of caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxInFlight(pub Vec<InFlightCap>);

/// One cap of [`MaxInFlight`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlightCap {
    pub max: u32,
    /// What is capped: the tenant (default), or each user, org or header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<LimitKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing: Option<OnMissingKey>,
    /// A slot not given back within this long (its worker's VM died) is
    /// free again (default 300 s); a request running longer stops counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl Serialize for MaxInFlight {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [only]
                if only.key.is_none()
                    && only.on_missing.is_none()
                    && only.timeout_seconds.is_none() =>
            {
                serializer.serialize_u32(only.max)
            }
            caps => caps.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for MaxInFlight {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = r#"an integer (the tenant's cap) or a list of {"max": N, "key"?, "on_missing"?, "timeout_seconds"?}"#;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(number) => number
                .as_u64()
                .and_then(|max| u32::try_from(max).ok())
                .map(|max| {
                    Self(vec![InFlightCap {
                        max,
                        key: None,
                        on_missing: None,
                        timeout_seconds: None,
                    }])
                })
                .ok_or_else(|| serde::de::Error::custom(format!("expected {EXPECTED}"))),
            list @ serde_json::Value::Array(_) => {
                serde_json::from_value(list).map(Self).map_err(|err| {
                    serde::de::Error::custom(crate::headers::truncated(&err.to_string(), 200))
                })
            }
            _ => Err(serde::de::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

/// What one limit counts: `"tenant"`, `"user"`, `"org"` or `{"header": NAME}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Tenant,
    /// The JWT user claim; in header mode the request's `tenant.user_header`.
    User,
    /// The JWT org claim; in header mode the request's `tenant.org_header`.
    Org,
    /// A request header's value.
    Header(String),
}

impl Serialize for LimitKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Tenant => serializer.serialize_str("tenant"),
            Self::User => serializer.serialize_str("user"),
            Self::Org => serializer.serialize_str("org"),
            Self::Header(name) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("header", name)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = r#""tenant", "user", "org" or {"header": NAME}"#;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(kind) => match kind.as_str() {
                "tenant" => Ok(Self::Tenant),
                "user" => Ok(Self::User),
                "org" => Ok(Self::Org),
                _ => Err(serde::de::Error::custom(format!(
                    "unknown key kind `{}`: expected {EXPECTED}",
                    crate::headers::truncated(&kind, 40)
                ))),
            },
            serde_json::Value::Object(map) => match (map.len(), map.get("header")) {
                (1, Some(serde_json::Value::String(name))) => Ok(Self::Header(name.clone())),
                _ => Err(serde::de::Error::custom(format!(
                    "a key object is {{\"header\": NAME}}: expected {EXPECTED}"
                ))),
            },
            _ => Err(serde::de::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

/// A request that lacks a limit's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingKey {
    /// 400 problem+json `rate-limit-key-missing`.
    Reject,
    /// Counted against the tenant as a whole.
    Tenant,
}

/// A named set of limits tenants subscribe to with `plan`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<MaxInFlight>,
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
    /// Counters kept per key inside a tenant (`key: user|org|{"header": …}`)
    /// live in a fixed table of this many shared-data keys per tenant, so
    /// clients sending new keys cannot grow the store.
    pub key_slots: u32,
    /// Prefix `<namespace>/` on every shared-data key. Kong stores such keys in
    /// the `nginx_wasm_shm_kv_<namespace>` zone (needed before Kong 3.7, which
    /// has no default zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where rate-limit state and idempotency records live: this gateway's
    /// shared data (`local`), or Redis behind the store sidecar (`cluster`),
    /// shared by every replica.
    #[serde(skip_serializing_if = "StoreBackend::is_local")]
    pub backend: StoreBackend,
    /// How the filter reaches the store sidecar; only with `backend: cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStoreConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Local,
    Cluster,
}

impl StoreBackend {
    pub fn is_local(&self) -> bool {
        *self == StoreBackend::Local
    }
}

/// The store sidecar as the filter calls it, and what happens when it is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterStoreConfig {
    /// Envoy: the name of the cluster that points at the sidecar's
    /// `--store-addr`. Kong: that address as `host:port`.
    pub upstream: String,
    /// Per store call; after it the call counts as failed and the fallback answers.
    pub timeout_ms: u64,
    /// The most emission slots one lease takes from Redis at once (a batch
    /// is sized from what the gateway spends, within this and a quarter of
    /// the burst).
    pub lease_max: u64,
    /// Unused slots of a lease lapse after this long.
    pub lease_ttl_ms: u64,
    /// Rate limits while the store is away.
    pub rate_limit_fallback: RateLimitFallback,
    /// The share of each limit one gateway enforces alone while the store is
    /// away (e.g. 100 / replicas).
    pub fallback_share_percent: u8,
    /// Idempotency while the store is away.
    pub idempotency_fallback: IdempotencyFallback,
    /// While the store is away, one request per interval tries it again.
    pub probe_interval_ms: u64,
}

impl Default for ClusterStoreConfig {
    fn default() -> Self {
        Self {
            upstream: "tenant_guard_store".to_owned(),
            timeout_ms: 200,
            lease_max: 256,
            lease_ttl_ms: 2_000,
            rate_limit_fallback: RateLimitFallback::Share,
            fallback_share_percent: 50,
            idempotency_fallback: IdempotencyFallback::Reject,
            probe_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitFallback {
    /// The local exact limiter at `fallback_share_percent` of each limit.
    Share,
    /// Admit everything (logged and counted); only when the operator asks.
    Unlimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyFallback {
    /// 503 problem+json `idempotency-unavailable` with `Retry-After`.
    Reject,
    /// This gateway's own records (exactly once per gateway only).
    Local,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_cas_retries: 64,
            on_exhausted: OnExhausted::Reject,
            idempotency_buckets: 512,
            idempotency_tenant_share_percent: 25,
            unknown_tenant_slots: 8192,
            key_slots: 1024,
            namespace: None,
            backend: StoreBackend::Local,
            cluster: None,
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
    /// The plan (`plans.<name>`) whose limits, idempotency and mode this
    /// tenant takes, unless it sets its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Replaces its plan's (or the defaults') caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<MaxInFlight>,
}

/// Limits for one path prefix (and optionally one method). The first matching
/// route applies: its `rate_limit` replaces the tenant-wide `rate_limit` for
/// that request, its `rate_limits` apply on top of the tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitPolicy>,
    /// What a matching request takes from each of the tenant's limits
    /// (unless a limit has its own `cost`); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
}
