//! The compiled form the request path reads: limits with their header text
//! built once, route and tenant lookups, the JWT keys decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::idempotency::IdempotencyConfig;
use crate::jwt::{CompiledJwt, TokenCache};
use crate::ratelimit::RateParams;

use super::*;

/// How one limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// GCRA: `requests` per `per_seconds` sustained, `burst` back to back.
    Rate(RateParams),
    /// `requests` per calendar period (UTC), reset at the boundary.
    Calendar { period: Calendar, requests: u64 },
}

/// A calendar period (UTC): a day, a week from Monday, a month from the 1st.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendar {
    Day,
    Week,
    Month,
}

/// What one limit counts: the tenant, or each value of a key inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    Tenant,
    User,
    Org,
    /// The request header `CompiledConfig::key_headers[i]`.
    Header(u8),
}

/// One limit as the request path uses it: its name (headers, storage), its
/// window, what it counts and which requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    pub name: String,
    pub window: Window,
    pub key: KeyKind,
    pub on_missing: OnMissingKey,
    /// Upper-case methods it applies to; empty: all.
    pub methods: Vec<String>,
    /// The normalised path prefix it applies to; `None`: all.
    pub prefix: Option<String>,
    /// Names its state in a stored value of several limits (name, window kind).
    pub id: u32,
    /// The `RateLimit-Policy` item, built once (a month's `w` is added per request).
    pub policy_header: String,
    /// What an admitted request takes (`None`: the route's cost, else 1).
    pub cost: Option<u64>,
    /// Usage the upstream reports for it after the response.
    pub usage: Option<UsageReport>,
}

/// Where a limit's usage is reported: the `index`-th of
/// [`CompiledConfig::usage_headers`], at most `max` per response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageReport {
    pub header: u8,
    pub max: u64,
}

/// A cap on the requests in flight at once of a tenant, or of each value of
/// a key inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightPolicy {
    pub max: u32,
    pub key: KeyKind,
    pub on_missing: OnMissingKey,
    /// A slot not given back within this long is free again.
    pub timeout_ns: u64,
    /// Names the cap in problem details (`in-flight`, `in-flight per user`, …).
    pub name: String,
}

impl LimitPolicy {
    /// Requests per window (the quota `q`).
    pub fn requests(&self) -> u64 {
        match self.window {
            Window::Rate(rate) => rate.requests,
            Window::Calendar { requests, .. } => requests,
        }
    }

    /// The GCRA parameters of a rate limit; `None` for a calendar quota.
    pub fn rate(&self) -> Option<RateParams> {
        match self.window {
            Window::Rate(rate) => Some(rate),
            Window::Calendar { .. } => None,
        }
    }

    /// Whether it applies to a request with this method and normalised path.
    pub fn applies(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self
                .prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
    }
}

/// The limits that apply to one request, as indexes into its tenant's
/// [`CompiledTenant::policies`] and its route's: `Copy`, so a request holds
/// it across a store call without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bit `i`: `policies[i]` applies.
    pub tenant: u32,
    /// The first matching route, and which of its `policies` apply (bit `i`).
    pub route: Option<(u16, u32)>,
    /// The route's `rate_limit` replaces the tenant's replaceable limit.
    pub replaced: bool,
    /// What the request takes from each limit without a `cost` of its own:
    /// the matching route's `cost`, else 1.
    pub cost: u64,
}

impl Default for Applied {
    fn default() -> Self {
        Self {
            tenant: 0,
            route: None,
            replaced: false,
            cost: 1,
        }
    }
}

impl Applied {
    /// What the request takes from `policy`.
    pub fn cost_of(&self, policy: &LimitPolicy) -> u64 {
        policy.cost.unwrap_or(self.cost)
    }

    pub fn is_empty(&self) -> bool {
        self.tenant == 0 && !self.replaced && self.route.is_none_or(|(_, mask)| mask == 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRoute {
    pub prefix: String,
    pub method: Option<String>,
    /// Its `rate_limit`: replaces the tenant's `rate_limit` (the limit at
    /// [`CompiledTenant::replaceable`]) for matching requests.
    pub policy: Option<LimitPolicy>,
    /// Its `rate_limits`: apply to matching requests on top of the tenant's.
    pub policies: Vec<LimitPolicy>,
    /// What a matching request takes from limits without their own cost.
    pub cost: u64,
}

impl CompiledRoute {
    fn matches(&self, method: &str, path: &str) -> bool {
        path.starts_with(self.prefix.as_str()) && self.method.as_deref().is_none_or(|m| m == method)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledTenant {
    /// Every limit the tenant has (its own, else its plan's, else the
    /// defaults', merged by name), ordered by what they count.
    pub policies: Vec<LimitPolicy>,
    /// Which of `policies` came from a `rate_limit` (named `tenant`): the one
    /// a matching route's `rate_limit` replaces.
    pub replaceable: Option<usize>,
    pub routes: Vec<CompiledRoute>,
    pub mode: Mode,
    pub idempotency: Option<IdempotencyConfig>,
    /// Caps on requests in flight at once (its own, else its plan's, else the defaults').
    pub in_flight: Vec<InFlightPolicy>,
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
    /// The configured tenant ids, sorted (metric labels, `crate::metrics`).
    pub tenant_ids: Vec<String>,
    /// The configured plan names, sorted.
    pub plan_names: Vec<String>,
    /// The plan each configured tenant names, if any (the quota gauges' label).
    pub tenant_plans: HashMap<String, String>,
    /// The request headers limits count by (`KeyKind::Header(i)` is the
    /// `i`-th; `user`/`org` in header mode are among them).
    pub key_headers: Vec<String>,
    /// The response headers upstreams report usage in (`UsageReport::header`
    /// is an index); empty: no response header is read.
    pub usage_headers: Vec<String>,
    pub method_override: MethodOverride,
    pub if_match: Vec<IfMatchRule>,
    /// A malformed usage header was logged under this document (logged
    /// once per document and worker; counted every time).
    pub usage_ignored_logged: Arc<std::sync::atomic::AtomicBool>,
    /// Any tenant (or the defaults) uses Idempotency-Key; computed once.
    pub idempotency_enabled: bool,
    /// Some rule looks at the method or path (routes, If-Match, idempotency);
    /// otherwise the host need not read them.
    pub reads_method_and_path: bool,
    pub metrics: bool,
    pub headers: HeadersConfig,
    pub paths: PathsConfig,
    pub host: HostConfig,
}

impl CompiledConfig {
    /// The log line for an accepted document (it says, when idempotency is
    /// on, whether a request with a body is decided before its headers go
    /// upstream).
    pub fn accepted_message(&self, host: crate::store::HostSemantics) -> String {
        let hold = self.host.allow_on_headers_stop_iteration;
        let idempotency = match (self.idempotency_enabled, host, hold) {
            (false, ..) => "",
            (true, crate::store::HostSemantics::Envoy, true) => {
                "; idempotent requests with a body are decided before their headers go upstream (host.allow_on_headers_stop_iteration)"
            }
            (true, crate::store::HostSemantics::Envoy, false) => {
                "; idempotent requests with a body: headers go upstream before the body is read, so a replay or 422 resets a started upstream request (set host.allow_on_headers_stop_iteration with Envoy's PluginConfig allow_on_headers_stop_iteration to avoid it)"
            }
            (true, crate::store::HostSemantics::NgxWasm, true) => {
                "; host.allow_on_headers_stop_iteration is ignored on ngx_wasm_module (holding request headers there withholds the body); nginx reads the whole body before it proxies (proxy_request_buffering on, Kong's default), so idempotent requests are decided before anything goes upstream"
            }
            (true, crate::store::HostSemantics::NgxWasm, false) => {
                "; nginx reads the whole body before it proxies (proxy_request_buffering on, Kong's default): idempotent requests are decided before anything goes upstream"
            }
        };
        format!(
            "configuration accepted (revision `{}`, {} tenants){idempotency}",
            self.revision,
            self.tenants.len()
        )
    }

    /// The warning logged once per accepted document whose calendar quotas
    /// live in this gateway's shared data (local mode): shared data dies
    /// with the gateway, so a restart starts every quota again. `None` in
    /// cluster mode or without calendar quotas.
    pub fn local_quota_warning(&self) -> Option<String> {
        if self.store.backend == StoreBackend::Cluster {
            return None;
        }
        let mut quotas: Vec<&str> = std::iter::once(("defaults", &self.defaults))
            .chain(self.tenants.iter().map(|(name, t)| (name.as_str(), t)))
            .filter(|(_, tenant)| {
                let routes = tenant
                    .routes
                    .iter()
                    .flat_map(|route| route.policy.iter().chain(route.policies.iter()));
                tenant
                    .policies
                    .iter()
                    .chain(routes)
                    .any(|policy| matches!(policy.window, Window::Calendar { .. }))
            })
            .map(|(name, _)| name)
            .collect();
        if quotas.is_empty() {
            return None;
        }
        quotas.sort_unstable();
        let more = if quotas.len() > 3 { ", …" } else { "" };
        Some(format!(
            "calendar quotas (day, week, month) of {} tenant(s) (`{}`{more}) are kept in this gateway's shared data (store.backend local): a restart of the gateway starts them again; for billing-grade quotas use store.backend \"cluster\" with Redis persistence (appendonly yes)",
            quotas.len(),
            quotas.iter().take(3).copied().collect::<Vec<_>>().join("`, `")
        ))
    }

    /// Whether a malformed usage header is to be logged now: only the first
    /// time under this document.
    pub fn note_usage_ignored(&self) -> bool {
        !self
            .usage_ignored_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
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

    /// How many request headers the glue reads for each request under this
    /// config: the tenant and correlation headers, the method, path and the
    /// method overrides where a rule looks at them, and each header only a
    /// configured feature needs (Idempotency-Key, Authorization, If-Match,
    /// the headers per-key limits count by).
    pub fn request_header_reads(&self) -> usize {
        let method_and_path = if self.reads_method_and_path {
            2 + crate::engine::METHOD_OVERRIDE_HEADERS.len()
        } else {
            0
        };
        2 + method_and_path
            + usize::from(self.idempotency_enabled)
            + usize::from(self.jwt.is_some())
            + usize::from(!self.if_match.is_empty())
            + self.key_headers.len()
    }

    /// Whether the glue reads a request's headers in one host call (the
    /// whole map) rather than one call per header: from
    /// [`crate::header_map::WHOLE_MAP_FROM_READS`] reads on.
    pub fn reads_whole_request_map(&self) -> bool {
        self.request_header_reads() >= crate::header_map::WHOLE_MAP_FROM_READS
    }
}

impl CompiledTenant {
    /// The limits that apply to a request with this method and normalised path.
    pub fn applied(&self, method: &str, path: &str) -> Applied {
        let route = self
            .routes
            .iter()
            .position(|route| route.matches(method, path));
        let replaced = route
            .and_then(|index| self.routes.get(index))
            .is_some_and(|route| route.policy.is_some());
        let mut tenant = mask(&self.policies, method, path);
        if let (true, Some(index)) = (replaced, self.replaceable) {
            tenant &= !(1u32 << index);
        }
        let matched = route.and_then(|index| self.routes.get(index));
        Applied {
            tenant,
            route: route.and_then(|index| {
                let route_mask = mask(&matched?.policies, method, path);
                Some((u16::try_from(index).ok()?, route_mask))
            }),
            replaced,
            cost: matched.map_or(1, |route| route.cost),
        }
    }

    /// The limits of `applied`, in the order they are decided and reported:
    /// the tenant's, the route's replacement, the route's own.
    pub fn applied_policies(&self, applied: Applied) -> impl Iterator<Item = &LimitPolicy> {
        let route = applied
            .route
            .and_then(|(index, mask)| Some((self.routes.get(usize::from(index))?, mask)));
        let tenant = selected(&self.policies, applied.tenant);
        let replacement = route
            .filter(|_| applied.replaced)
            .and_then(|(route, _)| route.policy.as_ref());
        let own = route
            .into_iter()
            .flat_map(|(route, mask)| selected(&route.policies, mask));
        tenant.chain(replacement).chain(own)
    }

    /// The one limit in the `rate_limit` slot for this request: the first
    /// matching route's `rate_limit`, else the tenant's (`None` when neither).
    pub fn policy_for(&self, method: &str, path: &str) -> Option<&LimitPolicy> {
        let applied = self.applied(method, path);
        if applied.replaced {
            let (index, _) = applied.route?;
            return self.routes.get(usize::from(index))?.policy.as_ref();
        }
        self.policies.get(self.replaceable?)
    }
}

/// Bit `i` set when `policies[i]` applies (at most 32 limits per scope).
fn mask(policies: &[LimitPolicy], method: &str, path: &str) -> u32 {
    policies
        .iter()
        .take(32)
        .enumerate()
        .filter(|(_, policy)| policy.applies(method, path))
        .fold(0, |mask, (index, _)| mask | (1u32 << index))
}

fn selected(policies: &[LimitPolicy], mask: u32) -> impl Iterator<Item = &LimitPolicy> {
    policies
        .iter()
        .take(32)
        .enumerate()
        .filter(move |(index, _)| mask & (1u32 << index) != 0)
        .map(|(_, policy)| policy)
}
