//! Validation and compilation: every rule a document must satisfy, each
//! failure a [`ConfigError`] naming the offending path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::limits::{
    self, compile_in_flight, compile_plans, compile_scope, merge, replaceable, Context,
    HeaderNames, Plans,
};
use super::*;
use crate::idempotency::IdempotencyConfig;
use crate::jwt::{self, TokenCache};

pub(super) const MAX_REQUESTS: u64 = 1_000_000_000;
pub(super) const MAX_PER_SECONDS: u64 = 31_536_000;
pub(super) const MAX_CAS_RETRIES: u32 = 1_000;
pub(super) const MAX_REVISION_LEN: usize = 128;
pub(super) const MAX_IDEMPOTENCY_BUCKETS: u32 = 65_536;
pub(super) const MAX_UNKNOWN_TENANT_SLOTS: u32 = 1 << 20;
pub(super) const MAX_IDEMPOTENCY_TTL: u64 = 30 * 86_400;
pub(super) const MAX_IDEMPOTENCY_BODY: u64 = 16 * 1024 * 1024;
pub(super) const MAX_IN_FLIGHT_TIMEOUT: u64 = 3_600;
pub(super) const MAX_KEY_SLOTS: u32 = 1 << 20;

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
    validate_store_backend(&document.store)?;
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
    if !(1..=MAX_KEY_SLOTS).contains(&document.store.key_slots) {
        return Err(invalid(
            "store.key_slots",
            format!("must be between 1 and {MAX_KEY_SLOTS}"),
        ));
    }

    let mut key_headers = HeaderNames::keys();
    let mut usage_headers = HeaderNames::usage();
    let mut context = Context {
        tenant: &document.tenant,
        correlation_header: &document.correlation.header,
        key_headers: &mut key_headers,
        usage_headers: &mut usage_headers,
    };
    let defaults_policies = merge(
        &[],
        compile_scope(
            "defaults",
            document.defaults.rate_limit.as_ref(),
            &document.defaults.rate_limits,
            &mut context,
        )?,
    );
    let defaults_in_flight = document
        .defaults
        .max_in_flight
        .as_ref()
        .map(|caps| compile_in_flight("defaults", caps, &mut context))
        .transpose()?
        .unwrap_or_default();
    let defaults = CompiledTenant {
        replaceable: replaceable(&defaults_policies),
        policies: defaults_policies,
        routes: Vec::new(),
        mode: document.defaults.mode,
        idempotency: document.defaults.idempotency.clone(),
        in_flight: defaults_in_flight,
    };
    let plans = compile_plans(&document.plans, &mut context)?;

    let mut tenants = HashMap::with_capacity(document.tenants.len());
    for (id, settings) in &document.tenants {
        let base = format!("tenants.{id}");
        if !is_valid_tenant_id(id) {
            return Err(invalid(
                base,
                format!("tenant id must be {}", crate::tenant::RULE),
            ));
        }
        let tenant = compile_tenant(&base, settings, &defaults, &plans, &mut context)?;
        tenants.insert(id.clone(), tenant);
    }

    let idempotency_enabled = defaults.idempotency.is_some()
        || tenants.values().any(|tenant| tenant.idempotency.is_some());
    let narrowed = |tenant: &CompiledTenant| {
        !tenant.routes.is_empty()
            || tenant
                .policies
                .iter()
                .any(|policy| !policy.methods.is_empty() || policy.prefix.is_some())
    };
    let reads_method_and_path = idempotency_enabled
        || !document.if_match.is_empty()
        || narrowed(&defaults)
        || tenants.values().any(narrowed);
    let token_cache = TokenCache::new(
        compiled_jwt
            .as_ref()
            .map_or(0, |compiled| compiled.cache_entries()),
    );
    let mut tenant_ids: Vec<String> = tenants.keys().cloned().collect();
    tenant_ids.sort_unstable();
    Ok(CompiledConfig {
        tenant_ids,
        plan_names: plans.keys().cloned().collect(),
        tenant_plans: document
            .tenants
            .iter()
            .filter_map(|(id, settings)| Some((id.clone(), settings.plan.clone()?)))
            .collect(),
        jwt: compiled_jwt,
        token_cache: Arc::new(Mutex::new(token_cache)),
        revision,
        tenant: document.tenant.clone(),
        correlation: document.correlation.clone(),
        store: StoreConfig {
            cluster: match document.store.backend {
                StoreBackend::Local => None,
                StoreBackend::Cluster => Some(document.store.cluster.clone().unwrap_or_default()),
            },
            ..document.store.clone()
        },
        defaults,
        tenants,
        key_headers: key_headers.names,
        usage_headers: usage_headers.names,
        usage_ignored_logged: Arc::default(),
        if_match: document.if_match.clone(),
        idempotency_enabled,
        reads_method_and_path,
        method_override: document.method_override,
        metrics: document.metrics,
        headers: document.headers,
        paths: document.paths,
        host: document.host,
    })
}

pub(super) fn compile_tenant(
    base: &str,
    settings: &TenantSettings,
    defaults: &CompiledTenant,
    plans: &Plans,
    context: &mut Context<'_>,
) -> Result<CompiledTenant, ConfigError> {
    let plan = match &settings.plan {
        None => None,
        Some(name) => Some(plans.get(name).ok_or_else(|| {
            let known: Vec<&str> = plans.keys().map(String::as_str).collect();
            invalid(
                format!("{base}.plan"),
                format!(
                    "unknown plan `{name}`: {}",
                    if known.is_empty() {
                        "no plans are configured (`plans`)".to_owned()
                    } else {
                        format!("the plans are {}", known.join(", "))
                    }
                ),
            )
        })?),
    };
    let inherited = plan.map_or(&defaults.policies, |plan| &plan.policies);
    let own = compile_scope(
        base,
        settings.rate_limit.as_ref(),
        &settings.rate_limits,
        context,
    )?;
    let policies = merge(inherited, own);
    let mut names: Vec<String> = policies.iter().map(|policy| policy.name.clone()).collect();
    let mut routes = Vec::with_capacity(settings.routes.len());
    for (index, route) in settings.routes.iter().enumerate() {
        routes.push(compile_route(
            &format!("{base}.routes.{index}"),
            index,
            route,
            &mut names,
            context,
        )?);
    }
    for (index, route) in routes.iter().enumerate() {
        validate_route_cost(&format!("{base}.routes.{index}.cost"), route, &policies)?;
    }
    let idempotency = match &settings.idempotency {
        Some(idempotency) => {
            validate_idempotency(&format!("{base}.idempotency"), idempotency)?;
            Some(idempotency.clone())
        }
        None => plan
            .and_then(|plan| plan.idempotency.clone())
            .or_else(|| defaults.idempotency.clone()),
    };
    let in_flight = match &settings.max_in_flight {
        Some(caps) => compile_in_flight(base, caps, context)?,
        None => plan
            .and_then(|plan| plan.in_flight.clone())
            .unwrap_or_else(|| defaults.in_flight.clone()),
    };
    Ok(CompiledTenant {
        replaceable: replaceable(&policies),
        policies,
        routes,
        mode: settings
            .mode
            .or(plan.and_then(|plan| plan.mode))
            .unwrap_or(defaults.mode),
        idempotency,
        in_flight,
    })
}

/// A route's `cost` must fit every limit a matching request may take it
/// from (the tenant's and the route's, unless they have a cost of their
/// own): a larger cost could never be admitted.
fn validate_route_cost(
    path: &str,
    route: &CompiledRoute,
    tenant: &[LimitPolicy],
) -> Result<(), ConfigError> {
    if route.cost == 0 || route.cost > MAX_REQUESTS {
        return Err(invalid(
            path,
            format!("must be between 1 and {MAX_REQUESTS}"),
        ));
    }
    let limits = tenant
        .iter()
        .chain(route.policy.iter())
        .chain(route.policies.iter())
        .filter(|policy| policy.cost.is_none());
    for policy in limits {
        let most = limits::capacity(&policy.window);
        if route.cost > most {
            return Err(invalid(
                path,
                format!(
                    "{} is more than limit `{}` admits at once ({most}): no request of this route could pass",
                    route.cost, policy.name
                ),
            ));
        }
    }
    Ok(())
}

/// One route: its `rate_limit` (named after the route, replacing the
/// tenant's) and its `rate_limits` (on top); every name new to the tenant.
fn compile_route(
    path: &str,
    index: usize,
    route: &RouteLimit,
    names: &mut Vec<String>,
    context: &mut Context<'_>,
) -> Result<CompiledRoute, ConfigError> {
    validate_prefix(&format!("{path}.prefix"), &route.prefix)?;
    if let Some(method) = &route.method {
        validate_method(&format!("{path}.method"), method)?;
    }
    if route.rate_limit.is_none() && route.rate_limits.is_empty() && route.cost.is_none() {
        return Err(invalid(
            path,
            "a route needs `rate_limit`, `rate_limits` or `cost`",
        ));
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
    let mut claim = |name: &str, at: String| {
        if name == limits::TENANT_LIMIT || names.iter().any(|known| known == name) {
            return Err(invalid(at, format!("limit name `{name}` is used twice")));
        }
        names.push(name.to_owned());
        Ok(())
    };
    let policy = match &route.rate_limit {
        Some(limit) => {
            claim(&name, format!("{path}.name"))?;
            Some(limits::compile_rate_limit(
                &format!("{path}.rate_limit"),
                &name,
                limit,
            )?)
        }
        None => None,
    };
    let policies = compile_scope(path, None, &route.rate_limits, context)?;
    for (position, policy) in policies.iter().enumerate() {
        let at = format!("{path}.rate_limits.{position}");
        if policy.prefix.is_some() {
            return Err(invalid(
                format!("{at}.prefix"),
                "a route's limits apply to the route's prefix: leave `prefix` out",
            ));
        }
        claim(&policy.name, format!("{at}.name"))?;
    }
    Ok(CompiledRoute {
        prefix: route.prefix.clone(),
        method: route.method.clone(),
        policy,
        policies: merge(&[], policies),
        cost: route.cost.unwrap_or(1),
    })
}

/// Prefixes are compared with normalised request paths, so they must be normal
/// themselves (a prefix `/a//b` could never match).
pub(super) fn validate_prefix(path: &str, prefix: &str) -> Result<(), ConfigError> {
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

pub(super) fn validate_method(path: &str, method: &str) -> Result<(), ConfigError> {
    if !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            path,
            "must be an upper-case HTTP method such as POST",
        ))
    }
}

pub(super) fn validate_idempotency(
    path: &str,
    config: &IdempotencyConfig,
) -> Result<(), ConfigError> {
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

pub(super) fn validate_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
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

pub(super) fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) const MAX_STORE_TIMEOUT_MS: u64 = 10_000;
pub(super) const MAX_LEASE: u64 = 1_000;
pub(super) const MAX_LEASE_TTL_MS: u64 = 60_000;
pub(super) const MAX_UPSTREAM_LEN: usize = 255;

/// `store.backend` and `store.cluster` agree, and every cluster bound is sane.
fn validate_store_backend(store: &StoreConfig) -> Result<(), ConfigError> {
    let cluster = match (store.backend, &store.cluster) {
        (StoreBackend::Local, None) => return Ok(()),
        (StoreBackend::Local, Some(_)) => {
            return Err(invalid(
                "store.cluster",
                "is set but store.backend is `local`: set store.backend to `cluster` or remove store.cluster",
            ))
        }
        (StoreBackend::Cluster, cluster) => cluster.clone().unwrap_or_default(),
    };
    let upstream = &cluster.upstream;
    if upstream.is_empty()
        || upstream.len() > MAX_UPSTREAM_LEN
        || !upstream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(invalid(
            "store.cluster.upstream",
            format!("must be an Envoy cluster name or host:port of at most {MAX_UPSTREAM_LEN} characters (letters, digits, `.`, `_`, `-`, `:`)"),
        ));
    }
    let bounded = [
        ("timeout_ms", cluster.timeout_ms, MAX_STORE_TIMEOUT_MS),
        ("lease_max", cluster.lease_max, MAX_LEASE),
        ("lease_ttl_ms", cluster.lease_ttl_ms, MAX_LEASE_TTL_MS),
        (
            "probe_interval_ms",
            cluster.probe_interval_ms,
            MAX_LEASE_TTL_MS,
        ),
    ];
    for (field, value, max) in bounded {
        if !(1..=max).contains(&value) {
            return Err(invalid(
                format!("store.cluster.{field}"),
                format!("must be between 1 and {max}"),
            ));
        }
    }
    if !(1..=100).contains(&cluster.fallback_share_percent) {
        return Err(invalid(
            "store.cluster.fallback_share_percent",
            "must be between 1 and 100",
        ));
    }
    Ok(())
}
