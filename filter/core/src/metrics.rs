//! Which counter each request outcome feeds. Every outcome is counted once,
//! under the tenant it concerns: a tenant named in the configuration by its
//! id, every other request (no tenant, an unknown one) under [`OTHER_TENANT`],
//! so the label set is bounded by the configuration, not by what clients send.
//!
//! Names carry their labels as dot-separated pairs after the base name
//! (`tenant_guard_rate_limited.tenant.acme`,
//! `tenant_guard_rejected.reason.invalid_tenant.tenant._other_`): Envoy's
//! `stats_tags` (in the shipped bootstraps) turn them into Prometheus labels,
//! Kong exposes them in the metric name.

use crate::config::CompiledConfig;
use crate::engine::Outcome;
use crate::problem::ProblemKind;

/// The tenant label of every request not from a tenant named in the configuration.
pub const OTHER_TENANT: &str = "_other_";

/// The base names, one per kind of outcome (also the totals' names: summing a
/// base name over its labels gives the total).
pub const OUTCOME_COUNTERS: [&str; 6] = [
    "tenant_guard_allowed",
    "tenant_guard_rate_limited",
    "tenant_guard_shadow_over_limit",
    "tenant_guard_allowed_without_limit",
    "tenant_guard_rejected",
    "tenant_guard_idempotent_replayed",
];

/// One counter: an outcome of one tenant (by its place in the configuration;
/// one past the last tenant is [`OTHER_TENANT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey {
    tenant: u32,
    outcome: Outcome,
}

/// The counter `outcome` of `tenant` feeds.
pub fn counter_key(config: &CompiledConfig, tenant: Option<&str>, outcome: Outcome) -> CounterKey {
    let other = u32::try_from(config.tenant_ids.len()).unwrap_or(u32::MAX);
    let tenant = tenant
        .and_then(|tenant| {
            config
                .tenant_ids
                .binary_search_by(|id| id.as_str().cmp(tenant))
                .ok()
        })
        .and_then(|index| u32::try_from(index).ok())
        .unwrap_or(other);
    CounterKey { tenant, outcome }
}

/// The counter's name, labels included.
pub fn counter_name(config: &CompiledConfig, key: CounterKey) -> String {
    let tenant = usize::try_from(key.tenant)
        .ok()
        .and_then(|index| config.tenant_ids.get(index))
        .map_or(OTHER_TENANT, String::as_str);
    let base = OUTCOME_COUNTERS
        .get(outcome_slot(key.outcome))
        .copied()
        .unwrap_or("tenant_guard_rejected");
    match key.outcome {
        Outcome::Rejected(kind) if kind != ProblemKind::RateLimited => {
            format!("{base}.reason.{}.tenant.{tenant}", reason_label(kind))
        }
        _ => format!("{base}.tenant.{tenant}"),
    }
}

/// The gauges of a configured tenant's calendar quota: what it used and its
/// size, labelled with the limit, the tenant's plan (`_none_` without one)
/// and the tenant (`tenant_guard_quota_used.limit.month.plan.gold.tenant.acme`).
/// Only configured tenants have them, so the label set is the configuration's.
pub fn quota_gauge_names(config: &CompiledConfig, tenant: &str, limit: &str) -> [String; 2] {
    let plan = config
        .tenant_plans
        .get(tenant)
        .map_or("_none_", String::as_str);
    let label = |value: &str| value.replace('.', "_");
    let labels = format!(
        "limit.{}.plan.{}.tenant.{tenant}",
        label(limit),
        label(plan)
    );
    [
        format!("tenant_guard_quota_used.{labels}"),
        format!("tenant_guard_quota_limit.{labels}"),
    ]
}

/// Every outcome a request can have: the glue defines their `_other_`
/// counters up front, so every series a dashboard names exists from the start.
pub fn every_outcome() -> impl Iterator<Item = Outcome> {
    [
        Outcome::Allowed,
        Outcome::ShadowOverLimit,
        Outcome::AllowedWithoutLimit,
        Outcome::Replayed,
    ]
    .into_iter()
    .chain(ProblemKind::ALL.into_iter().map(Outcome::Rejected))
}

/// Where an outcome's base name sits in [`OUTCOME_COUNTERS`].
pub fn outcome_slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => 0,
        Outcome::Rejected(ProblemKind::RateLimited) => 1,
        Outcome::ShadowOverLimit => 2,
        Outcome::AllowedWithoutLimit => 3,
        Outcome::Rejected(_) => 4,
        Outcome::Replayed => 5,
    }
}

/// A problem kind as a label value (`[a-z_]`, safe in any metric name).
fn reason_label(kind: ProblemKind) -> String {
    kind.slug().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config() -> CompiledConfig {
        crate::config::parse(
            br#"{"version":1,"tenant":{"trust_header_without_jwt":true},
                "tenants":{"acme":{},"beta.eu":{}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn named_tenants_get_their_own_label_and_everyone_else_one() {
        let config = config();
        let name = |tenant, outcome| counter_name(&config, counter_key(&config, tenant, outcome));
        assert_eq!(
            name(Some("acme"), Outcome::Allowed),
            "tenant_guard_allowed.tenant.acme"
        );
        assert_eq!(
            name(Some("beta.eu"), Outcome::Rejected(ProblemKind::RateLimited)),
            "tenant_guard_rate_limited.tenant.beta.eu"
        );
        assert_eq!(
            name(Some("mallory-1"), Outcome::Replayed),
            "tenant_guard_idempotent_replayed.tenant._other_"
        );
        assert_eq!(
            name(None, Outcome::Rejected(ProblemKind::InvalidTenant)),
            "tenant_guard_rejected.reason.invalid_tenant.tenant._other_"
        );
        // Unknown tenants share one counter, whatever ids clients invent.
        assert_eq!(
            counter_key(&config, Some("x1"), Outcome::Allowed),
            counter_key(&config, Some("x2"), Outcome::Allowed)
        );
        assert_ne!(
            counter_key(&config, Some("acme"), Outcome::Allowed),
            counter_key(&config, Some("x2"), Outcome::Allowed)
        );
    }
}

#[cfg(test)]
mod completeness {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_outcome_is_listed_once() {
        let listed: Vec<Outcome> = every_outcome().collect();
        // An exhaustive match: a new kind fails to compile here until it is listed.
        for kind in ProblemKind::ALL {
            match kind {
                ProblemKind::TenantRequired
                | ProblemKind::InvalidTenant
                | ProblemKind::InvalidPath
                | ProblemKind::UnknownTenant
                | ProblemKind::Unauthenticated
                | ProblemKind::TenantMismatch
                | ProblemKind::RateLimited
                | ProblemKind::RateLimitUnavailable
                | ProblemKind::PreconditionRequired
                | ProblemKind::IdempotencyKeyMissing
                | ProblemKind::IdempotencyKeyMalformed
                | ProblemKind::IdempotencyKeyReused
                | ProblemKind::IdempotencyInFlight
                | ProblemKind::IdempotencyNotReplayable
                | ProblemKind::IdempotencyUnavailable
                | ProblemKind::BodyTooLarge
                | ProblemKind::RateLimitKeyMissing
                | ProblemKind::InvalidRateLimitKey
                | ProblemKind::RateLimitKeysExhausted
                | ProblemKind::MethodOverrideRefused
                | ProblemKind::Concurrency => {}
            }
        }
        let distinct: std::collections::HashSet<_> = listed.iter().collect();
        assert_eq!(distinct.len(), listed.len());
        assert_eq!(listed.len(), 4 + ProblemKind::ALL.len());
        let slugs: std::collections::HashSet<_> =
            ProblemKind::ALL.iter().map(|kind| kind.slug()).collect();
        assert_eq!(
            slugs.len(),
            ProblemKind::ALL.len(),
            "ALL lists each kind once"
        );
    }
}
