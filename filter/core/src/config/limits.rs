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

/// The request headers limits count by, collected while compiling.
#[derive(Debug, Default)]
pub(super) struct KeyHeaders(pub Vec<String>);

impl KeyHeaders {
    fn index_of(&mut self, path: &str, name: &str) -> Result<u8, ConfigError> {
        if let Some(index) = self.0.iter().position(|known| known == name) {
            return u8::try_from(index).map_err(|_| invalid(path, "too many key headers"));
        }
        if self.0.len() >= MAX_KEY_HEADERS {
            return Err(invalid(
                path,
                format!("limits may count by at most {MAX_KEY_HEADERS} distinct headers"),
            ));
        }
        self.0.push(name.to_owned());
        u8::try_from(self.0.len() - 1).map_err(|_| invalid(path, "too many key headers"))
    }
}

/// What a compiled limit needs to know of the document beyond itself.
pub(super) struct Context<'a> {
    pub tenant: &'a TenantConfig,
    pub key_headers: &'a mut KeyHeaders,
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
    let key_path = format!("{path}.key");
    let key = match limit.key.as_ref().unwrap_or(&LimitKey::Tenant) {
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
    let on_missing = match (limit.on_missing, key) {
        (None, _) => OnMissingKey::Reject,
        (Some(_), KeyKind::Tenant) => {
            return Err(invalid(
                format!("{path}.on_missing"),
                "applies only to a limit counted by `user`, `org` or a header",
            ))
        }
        (Some(on_missing), _) => on_missing,
    };
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
    Ok(policy(
        &limit.name,
        window,
        key,
        on_missing,
        methods,
        limit.prefix.clone(),
    ))
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
        compiled.insert(
            name.clone(),
            CompiledPlan {
                policies,
                idempotency: plan.idempotency.clone(),
                mode: plan.mode,
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
        }
    }

    #[test]
    fn a_lower_scope_replaces_limits_by_name_and_keeps_the_rest() {
        let tenant = TenantConfig {
            trust_header_without_jwt: true,
            ..TenantConfig::default()
        };
        let mut headers = KeyHeaders::default();
        let mut context = Context {
            tenant: &tenant,
            key_headers: &mut headers,
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
