//! The compiled form the request path reads: limits with their header text
//! built once, route and tenant lookups, the JWT keys decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::idempotency::IdempotencyConfig;
use crate::jwt::{CompiledJwt, TokenCache};
use crate::ratelimit::RateParams;

use super::*;

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
    /// The configured tenant ids, sorted (metric labels, `crate::metrics`).
    pub tenant_ids: Vec<String>,
    pub if_match: Vec<IfMatchRule>,
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
