//! The limit model's compilation: every `rate_limit` / `rate_limits` of the
//! defaults, the plans, the tenants and their routes checked (each failure
//! naming its path) and compiled into [`LimitPolicy`]s; scopes merged by name
//! (a tenant's limit replaces its plan's, or the defaults', of that name).

use std::collections::BTreeMap;

use crate::idempotency::IdempotencyConfig;
use crate::ratelimit::RateParams;

use super::compile::{
    is_valid_policy_name, validate_header_name, validate_method, validate_prefix, MAX_PER_SECONDS,
    MAX_REQUESTS,
};
use super::*;

/// Limits one scope may have (a tenant, merged with its plan: twice that).
pub const MAX_LIMITS_PER_SCOPE: usize = 16;
/// Distinct request headers limits may count by (`key: {"header": …}`,
/// and `user`/`org` in header mode).
pub const MAX_KEY_HEADERS: usize = 8;
/// The name of the limit a `rate_limit` stands for (what a route's
/// `rate_limit` replaces).
pub const TENANT_LIMIT: &str = "tenant";

/// Distinct header names collected while compiling, each known by its
/// index: the request headers limits count by, the response headers usage
/// is reported in.
#[derive(Debug)]
pub(super) struct HeaderNames {
    pub names: Vec<String>,
    most: usize,
    what: &'static str,
}

impl HeaderNames {
    /// The request headers limits count by (at most [`MAX_KEY_HEADERS`]).
    pub fn keys() -> Self {
        Self {
            names: Vec::new(),
            most: MAX_KEY_HEADERS,
            what: "limits may count by at most",
        }
    }

    /// The response headers usage is reported in (at most [`MAX_USAGE_HEADERS`]).
    pub fn usage() -> Self {
        Self {
            names: Vec::new(),
            most: MAX_USAGE_HEADERS,
            what: "usage may be reported in at most",
        }
    }

    fn index_of(&mut self, path: &str, name: &str) -> Result<u8, ConfigError> {
        let index = match self.names.iter().position(|known| known == name) {
            Some(index) => index,
            None if self.names.len() >= self.most => {
                return Err(invalid(
                    path,
                    format!("{} {} distinct headers", self.what, self.most),
                ))
            }
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        };
        u8::try_from(index).map_err(|_| invalid(path, "too many headers"))
    }
}

/// Distinct response headers upstreams may report usage in.
pub const MAX_USAGE_HEADERS: usize = 4;
/// The largest usage a response may report (JSON numbers stay exact below it).
pub const MAX_USAGE: u64 = 1 << 53;
/// `usage_max` when a limit does not say.
pub const DEFAULT_USAGE_MAX: u64 = 1_000_000_000;
/// The largest in-flight cap (its slots are kept in one shared-data value).
pub const MAX_IN_FLIGHT: u32 = 1000;
/// Caps one scope may have.
pub const MAX_IN_FLIGHT_CAPS: usize = 4;
/// A slot's default deadline (`timeout_seconds`), and the largest allowed.
pub const DEFAULT_IN_FLIGHT_TIMEOUT_SECONDS: u64 = 300;
pub const MAX_IN_FLIGHT_TIMEOUT_SECONDS: u64 = 86_400;

/// What a compiled limit needs to know of the document beyond itself.
pub(super) struct Context<'a> {
    pub tenant: &'a TenantConfig,
    pub correlation_header: &'a str,
    pub key_headers: &'a mut HeaderNames,
    pub usage_headers: &'a mut HeaderNames,
}

/// A `rate_limit`: the limit named [`TENANT_LIMIT`] (or a route's name),
/// counted per tenant, for every request it is attached to.
pub(super) fn compile_rate_limit(
    path: &str,
    name: &str,
    limit: &RateLimit,
) -> Result<LimitPolicy, ConfigError> {
    let window = compile_window(
        path,
        limit.requests,
        limit.per_seconds,
        limit.per,
        limit.burst,
    )?;
    Ok(policy(
        name,
        window,
        KeyKind::Tenant,
        OnMissingKey::Reject,
        Vec::new(),
        None,
    ))
}

/// One `rate_limits` entry.
fn compile_named(
    path: &str,
    limit: &RateLimitPolicy,
    context: &mut Context<'_>,
) -> Result<LimitPolicy, ConfigError> {
    if !is_valid_policy_name(&limit.name) {
        return Err(invalid(
            format!("{path}.name"),
            "must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let window = compile_window(
        path,
        limit.requests,
        limit.per_seconds,
        limit.per,
        limit.burst,
    )?;
    let (key, on_missing) = compile_key(path, limit.key.as_ref(), limit.on_missing, context)?;
    let methods = match &limit.methods {
        None => Vec::new(),
        Some(methods) if methods.is_empty() => {
            return Err(invalid(
                format!("{path}.methods"),
                "must name at least one method (leave it out for all)",
            ))
        }
        Some(methods) => {
            for (index, method) in methods.iter().enumerate() {
                validate_method(&format!("{path}.methods.{index}"), method)?;
            }
            methods.clone()
        }
    };
    if let Some(prefix) = &limit.prefix {
        validate_prefix(&format!("{path}.prefix"), prefix)?;
    }
    if let Some(cost) = limit.cost {
        validate_cost(&format!("{path}.cost"), cost, &window, &limit.name)?;
    }
    let usage = compile_usage(path, limit, context)?;
    let mut compiled = policy(
        &limit.name,
        window,
        key,
        on_missing,
        methods,
        limit.prefix.clone(),
    );
    compiled.cost = limit.cost;
    compiled.usage = usage;
    Ok(compiled)
}

/// What one request may take at most from a limit: its burst (a rate) or
/// its requests (a quota); a larger cost could never be admitted.
pub(super) fn capacity(window: &Window) -> u64 {
    match window {
        Window::Rate(rate) => rate.burst,
        Window::Calendar { requests, .. } => *requests,
    }
}

pub(super) fn validate_cost(
    path: &str,
    cost: u64,
    window: &Window,
    name: &str,
) -> Result<(), ConfigError> {
    let most = capacity(window);
    if cost == 0 || cost > most {
        return Err(invalid(
            path,
            format!("must be between 1 and what limit `{name}` admits at once ({most})"),
        ));
    }
    Ok(())
}

/// A limit's `usage_header` / `usage_max`: a response header that is an
/// HTTP token and none of the request headers the filter trusts or sets.
fn compile_usage(
    path: &str,
    limit: &RateLimitPolicy,
    context: &mut Context<'_>,
) -> Result<Option<UsageReport>, ConfigError> {
    let Some(header) = &limit.usage_header else {
        return match limit.usage_max {
            Some(_) => Err(invalid(
                format!("{path}.usage_max"),
                "applies only with `usage_header`",
            )),
            None => Ok(None),
        };
    };
    let header_path = format!("{path}.usage_header");
    validate_header_name(&header_path, header)?;
    let trusted = [
        context.tenant.header.as_str(),
        context.tenant.user_header.as_str(),
        context.tenant.org_header.as_str(),
        context.correlation_header,
        "authorization",
        crate::idempotency::KEY_HEADER,
        "x-tenant-guard-revision",
    ];
    if trusted.contains(&header.as_str()) || header.starts_with("ratelimit") {
        return Err(invalid(
            header_path,
            format!("`{header}` is a header the filter trusts or sets: name the upstream's own usage header"),
        ));
    }
    let max = limit.usage_max.unwrap_or(DEFAULT_USAGE_MAX);
    if max == 0 || max > MAX_USAGE {
        return Err(invalid(
            format!("{path}.usage_max"),
            format!("must be between 1 and {MAX_USAGE} (2^53)"),
        ));
    }
    Ok(Some(UsageReport {
        header: context.usage_headers.index_of(&header_path, header)?,
        max,
    }))
}

/// One scope's `max_in_flight`: at most [`MAX_IN_FLIGHT_CAPS`] caps, each
/// of 1–[`MAX_IN_FLIGHT`], counting distinct things.
pub(super) fn compile_in_flight(
    path: &str,
    caps: &MaxInFlight,
    context: &mut Context<'_>,
) -> Result<Vec<InFlightPolicy>, ConfigError> {
    let path = format!("{path}.max_in_flight");
    if caps.0.is_empty() || caps.0.len() > MAX_IN_FLIGHT_CAPS {
        return Err(invalid(
            path,
            format!("give 1 to {MAX_IN_FLIGHT_CAPS} caps"),
        ));
    }
    let mut compiled: Vec<InFlightPolicy> = Vec::with_capacity(caps.0.len());
    for (index, cap) in caps.0.iter().enumerate() {
        let at = if caps.0.len() == 1 && cap.key.is_none() {
            path.clone()
        } else {
            format!("{path}.{index}")
        };
        if cap.max == 0 || cap.max > MAX_IN_FLIGHT {
            let field = if at == path {
                at.clone()
            } else {
                format!("{at}.max")
            };
            return Err(invalid(
                field,
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        let timeout = cap
            .timeout_seconds
            .unwrap_or(DEFAULT_IN_FLIGHT_TIMEOUT_SECONDS);
        if timeout == 0 || timeout > MAX_IN_FLIGHT_TIMEOUT_SECONDS {
            return Err(invalid(
                format!("{at}.timeout_seconds"),
                format!("must be between 1 and {MAX_IN_FLIGHT_TIMEOUT_SECONDS}"),
            ));
        }
        let (key, on_missing) = compile_key(&at, cap.key.as_ref(), cap.on_missing, context)?;
        if compiled.iter().any(|known| known.key == key) {
            return Err(invalid(
                format!("{at}.key"),
                "two caps of one scope count the same thing",
            ));
        }
        let name = match key {
            KeyKind::Tenant => "in-flight".to_owned(),
            KeyKind::User => "in-flight per user".to_owned(),
            KeyKind::Org => "in-flight per org".to_owned(),
            KeyKind::Header(index) => format!(
                "in-flight per `{}`",
                context
                    .key_headers
                    .names
                    .get(usize::from(index))
                    .map_or("", String::as_str)
            ),
        };
        compiled.push(InFlightPolicy {
            max: cap.max,
            key,
            on_missing,
            timeout_ns: timeout.saturating_mul(1_000_000_000),
            name,
        });
    }
    compiled.sort_by_key(|cap| cap.key);
    Ok(compiled)
}

/// What a limit or cap counts (`key`) and what a request without it gets
/// (`on_missing`), checked against the document's identity headers.
fn compile_key(
    path: &str,
    key: Option<&LimitKey>,
    on_missing: Option<OnMissingKey>,
    context: &mut Context<'_>,
) -> Result<(KeyKind, OnMissingKey), ConfigError> {
    let key_path = format!("{path}.key");
    let key = match key.unwrap_or(&LimitKey::Tenant) {
        LimitKey::Tenant => KeyKind::Tenant,
        LimitKey::User => {
            identity_key(&key_path, context, "user", |jwt| jwt.user_claim.is_some())?;
            KeyKind::User
        }
        LimitKey::Org => {
            identity_key(&key_path, context, "org", |jwt| jwt.org_claim.is_some())?;
            KeyKind::Org
        }
        LimitKey::Header(name) => {
            let header_path = format!("{key_path}.header");
            validate_header_name(&header_path, name)?;
            if [
                &context.tenant.header,
                &context.tenant.user_header,
                &context.tenant.org_header,
            ]
            .contains(&name)
            {
                return Err(invalid(
                    header_path,
                    format!("`{name}` is an identity header: count by `user`, `org` or the tenant instead"),
                ));
            }
            KeyKind::Header(context.key_headers.index_of(&header_path, name)?)
        }
    };
    let on_missing = match (on_missing, key) {
        (None, _) => OnMissingKey::Reject,
        (Some(_), KeyKind::Tenant) => {
            return Err(invalid(
                format!("{path}.on_missing"),
                "applies only to a limit counted by `user`, `org` or a header",
            ))
        }
        (Some(on_missing), _) => on_missing,
    };
    Ok((key, on_missing))
}

/// `user`/`org` come from the token's claim, or in header mode from the
/// request's `tenant.user_header` / `org_header`: one of them must exist.
fn identity_key(
    path: &str,
    context: &mut Context<'_>,
    what: &str,
    claimed: impl Fn(&crate::jwt::JwtConfig) -> bool,
) -> Result<(), ConfigError> {
    match &context.tenant.jwt {
        Some(jwt) if claimed(jwt) => Ok(()),
        Some(_) => Err(invalid(
            path,
            format!("counting by `{what}` needs `tenant.jwt.{what}_claim`"),
        )),
        None => {
            let header = if what == "user" {
                &context.tenant.user_header
            } else {
                &context.tenant.org_header
            };
            context.key_headers.index_of(path, header).map(|_| ())
        }
    }
}

fn compile_window(
    path: &str,
    requests: u64,
    per_seconds: Option<u64>,
    per: Option<Per>,
    burst: Option<u64>,
) -> Result<Window, ConfigError> {
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(invalid(
            format!("{path}.requests"),
            format!("must be between 1 and {MAX_REQUESTS}"),
        ));
    }
    let calendar = |period| {
        if burst.is_some() {
            return Err(invalid(
                format!("{path}.burst"),
                "a calendar quota (`per` day, week or month) has no burst",
            ));
        }
        Ok(Window::Calendar { period, requests })
    };
    let per_seconds = match (per_seconds, per) {
        (Some(_), Some(_)) | (None, None) => return Err(invalid(
            path,
            "set exactly one of `per_seconds` and `per` (second, minute, hour, day, week, month)",
        )),
        (Some(seconds), None) => {
            if seconds == 0 || seconds > MAX_PER_SECONDS {
                return Err(invalid(
                    format!("{path}.per_seconds"),
                    format!("must be between 1 and {MAX_PER_SECONDS}"),
                ));
            }
            seconds
        }
        (None, Some(Per::Second)) => 1,
        (None, Some(Per::Minute)) => 60,
        (None, Some(Per::Hour)) => 3600,
        (None, Some(Per::Day)) => return calendar(Calendar::Day),
        (None, Some(Per::Week)) => return calendar(Calendar::Week),
        (None, Some(Per::Month)) => return calendar(Calendar::Month),
    };
    if let Some(burst) = burst {
        if burst == 0 || burst > MAX_REQUESTS {
            return Err(invalid(
                format!("{path}.burst"),
                format!("must be between 1 and {MAX_REQUESTS}"),
            ));
        }
    }
    Ok(Window::Rate(RateParams::new(
        requests,
        per_seconds,
        burst.unwrap_or(requests),
    )))
}

fn policy(
    name: &str,
    window: Window,
    key: KeyKind,
    on_missing: OnMissingKey,
    methods: Vec<String>,
    prefix: Option<String>,
) -> LimitPolicy {
    let policy_header = match window {
        Window::Rate(rate) if rate.burst != rate.requests => format!(
            "\"{name}\";q={};w={};burst={}",
            rate.requests, rate.per_seconds, rate.burst
        ),
        Window::Rate(rate) => format!("\"{name}\";q={};w={}", rate.requests, rate.per_seconds),
        Window::Calendar { requests, .. } => format!("\"{name}\";q={requests}"),
    };
    let kind = match window {
        Window::Rate(_) => "rate",
        Window::Calendar {
            period: Calendar::Day,
            ..
        } => "day",
        Window::Calendar {
            period: Calendar::Week,
            ..
        } => "week",
        Window::Calendar {
            period: Calendar::Month,
            ..
        } => "month",
    };
    let digest = crate::store::key_tag(&format!("{name}\u{0}{kind}"));
    LimitPolicy {
        name: name.to_owned(),
        window,
        key,
        on_missing,
        methods,
        prefix,
        id: u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]),
        policy_header,
        cost: None,
        usage: None,
    }
}

/// One scope's limits: its `rate_limit` (as [`TENANT_LIMIT`]) and its
/// `rate_limits`, names unique, at most [`MAX_LIMITS_PER_SCOPE`].
pub(super) fn compile_scope(
    path: &str,
    rate_limit: Option<&RateLimit>,
    rate_limits: &[RateLimitPolicy],
    context: &mut Context<'_>,
) -> Result<Vec<LimitPolicy>, ConfigError> {
    if rate_limits.len() > MAX_LIMITS_PER_SCOPE {
        return Err(invalid(
            format!("{path}.rate_limits"),
            format!("at most {MAX_LIMITS_PER_SCOPE} limits per scope"),
        ));
    }
    let mut policies = Vec::with_capacity(rate_limits.len() + 1);
    if let Some(limit) = rate_limit {
        policies.push(compile_rate_limit(
            &format!("{path}.rate_limit"),
            TENANT_LIMIT,
            limit,
        )?);
    }
    for (index, limit) in rate_limits.iter().enumerate() {
        let limit_path = format!("{path}.rate_limits.{index}");
        if policies.iter().any(|known| known.name == limit.name) {
            return Err(invalid(
                format!("{limit_path}.name"),
                format!(
                    "limit name `{}` is used twice in this scope{}",
                    limit.name,
                    if limit.name == TENANT_LIMIT && rate_limit.is_some() {
                        " (`rate_limit` is the limit named `tenant`)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        policies.push(compile_named(&limit_path, limit, context)?);
    }
    Ok(policies)
}

/// `base` with `own` over it: a limit of `own` replaces the one of `base`
/// with its name, the rest are added; ordered by what they count (the tenant
/// first), so a request's keys are always taken in one order.
pub(super) fn merge(base: &[LimitPolicy], own: Vec<LimitPolicy>) -> Vec<LimitPolicy> {
    let mut merged: Vec<LimitPolicy> = base
        .iter()
        .filter(|limit| !own.iter().any(|mine| mine.name == limit.name))
        .cloned()
        .collect();
    merged.extend(own);
    merged.sort_by_key(|limit| limit.key);
    merged
}

/// The plans, compiled: name → (limits, idempotency, mode).
pub(super) type Plans = BTreeMap<String, CompiledPlan>;

#[derive(Debug, Clone)]
pub(super) struct CompiledPlan {
    pub policies: Vec<LimitPolicy>,
    pub idempotency: Option<IdempotencyConfig>,
    pub mode: Option<Mode>,
    pub in_flight: Option<Vec<InFlightPolicy>>,
}

pub(super) fn compile_plans(
    plans: &BTreeMap<String, PlanSettings>,
    context: &mut Context<'_>,
) -> Result<Plans, ConfigError> {
    let mut compiled = Plans::new();
    for (name, plan) in plans {
        let path = format!("plans.{name}");
        if !is_valid_policy_name(name) {
            return Err(invalid(
                path,
                "a plan name must be 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        if let Some(idempotency) = &plan.idempotency {
            super::compile::validate_idempotency(&format!("{path}.idempotency"), idempotency)?;
        }
        let mut policies = compile_scope(&path, None, &plan.rate_limits, context)?;
        policies.sort_by_key(|limit| limit.key);
        let in_flight = plan
            .max_in_flight
            .as_ref()
            .map(|caps| compile_in_flight(&path, caps, context))
            .transpose()?;
        compiled.insert(
            name.clone(),
            CompiledPlan {
                policies,
                idempotency: plan.idempotency.clone(),
                mode: plan.mode,
                in_flight,
            },
        );
    }
    Ok(compiled)
}

/// The position of the limit a route's `rate_limit` replaces.
pub(super) fn replaceable(policies: &[LimitPolicy]) -> Option<usize> {
    policies
        .iter()
        .position(|limit| limit.name == TENANT_LIMIT && limit.key == KeyKind::Tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn written(name: &str, requests: u64) -> RateLimitPolicy {
        RateLimitPolicy {
            name: name.to_owned(),
            requests,
            per_seconds: Some(60),
            per: None,
            burst: None,
            key: None,
            on_missing: None,
            methods: None,
            prefix: None,
            cost: None,
            usage_header: None,
            usage_max: None,
        }
    }

    #[test]
    fn a_lower_scope_replaces_limits_by_name_and_keeps_the_rest() {
        let tenant = TenantConfig {
            trust_header_without_jwt: true,
            ..TenantConfig::default()
        };
        let mut headers = HeaderNames::keys();
        let mut usage = HeaderNames::usage();
        let mut context = Context {
            tenant: &tenant,
            correlation_header: "x-correlation-id",
            key_headers: &mut headers,
            usage_headers: &mut usage,
        };
        let base = compile_scope(
            "plans.gold",
            None,
            &[written("burst", 10), written("month", 100)],
            &mut context,
        )
        .unwrap();
        let own = compile_scope(
            "tenants.a",
            None,
            &[written("month", 500), written("extra", 1)],
            &mut context,
        )
        .unwrap();
        let merged = merge(&base, own);
        let names: Vec<(&str, u64)> = merged
            .iter()
            .map(|l| (l.name.as_str(), l.requests()))
            .collect();
        assert_eq!(names, [("burst", 10), ("month", 500), ("extra", 1)]);
    }

    #[test]
    fn named_windows_compile_to_rates_or_calendar_quotas() {
        let rate = |per| compile_window("x", 10, None, Some(per), None).unwrap();
        assert_eq!(rate(Per::Minute), Window::Rate(RateParams::new(10, 60, 10)));
        assert_eq!(
            rate(Per::Month),
            Window::Calendar {
                period: Calendar::Month,
                requests: 10
            }
        );
        let errors = [
            (compile_window("x", 10, Some(1), Some(Per::Day), None), "x"),
            (compile_window("x", 10, None, None, None), "x"),
            (
                compile_window("x", 10, None, Some(Per::Day), Some(5)),
                "x.burst",
            ),
            (compile_window("x", 10, Some(1), None, Some(0)), "x.burst"),
            (compile_window("x", 0, Some(1), None, None), "x.requests"),
        ];
        for (result, path) in errors {
            assert_eq!(result.map_err(|err| err.path), Err(path.to_owned()));
        }
    }
}
