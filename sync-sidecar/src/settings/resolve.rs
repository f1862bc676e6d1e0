//! Rendering, phase 1: sorts the settings rows by scope into the places of
//! the plugin document — global keys into their [`Slot`], tenant and route
//! keys into per-tenant drafts — keeping with every value the row it came
//! from, and reports the rows that cannot be placed (unknown key, wrong
//! scope, oversized value, invalid tenant id).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{json_len, Issue, Origin, Scope, SettingRow, JWT_KEY, KEY_PREFIX, TRUST_KEY};

/// A section of the document holding global keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Tenant,
    Correlation,
    Store,
    Defaults,
    Headers,
    Host,
}

impl Section {
    /// Its field in the document.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Correlation => "correlation",
            Self::Store => "store",
            Self::Defaults => "defaults",
            Self::Headers => "headers",
            Self::Host => "host",
        }
    }
}

/// Where a global key lands in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// `<section>.<field>`.
    In(Section, &'static str),
    /// `if_match` (routes needing If-Match).
    IfMatch,
    /// `metrics`.
    Metrics,
    /// `method_override`.
    MethodOverride,
}

impl Slot {
    /// The document path, as provenance records it.
    pub fn path(self) -> Vec<String> {
        match self {
            Self::In(section, field) => vec![section.name().to_owned(), field.to_owned()],
            Self::IfMatch => vec!["if_match".to_owned()],
            Self::Metrics => vec!["metrics".to_owned()],
            Self::MethodOverride => vec!["method_override".to_owned()],
        }
    }
}

/// Global keys and where each one goes.
pub(super) const GLOBAL_KEYS: &[(&str, Slot)] = {
    use Section::*;
    use Slot::In;
    &[
        ("gateway.tenant.header", In(Tenant, "header")),
        ("gateway.tenant.required", In(Tenant, "required")),
        (TRUST_KEY, In(Tenant, "trust_header_without_jwt")),
        ("gateway.tenant.unknown", In(Tenant, "unknown")),
        (JWT_KEY, In(Tenant, "jwt")),
        ("gateway.tenant.user_header", In(Tenant, "user_header")),
        ("gateway.tenant.org_header", In(Tenant, "org_header")),
        ("gateway.correlation.header", In(Correlation, "header")),
        ("gateway.correlation.generate", In(Correlation, "generate")),
        ("gateway.correlation.echo", In(Correlation, "echo")),
        (
            "gateway.store.max_cas_retries",
            In(Store, "max_cas_retries"),
        ),
        ("gateway.store.on_exhausted", In(Store, "on_exhausted")),
        (
            "gateway.store.idempotency_buckets",
            In(Store, "idempotency_buckets"),
        ),
        ("gateway.store.namespace", In(Store, "namespace")),
        (
            "gateway.store.idempotency_tenant_share_percent",
            In(Store, "idempotency_tenant_share_percent"),
        ),
        (BACKEND_KEY, In(Store, "backend")),
        (CLUSTER_KEY, In(Store, "cluster")),
        ("gateway.rate_limit", In(Defaults, "rate_limit")),
        ("gateway.rate_limits", In(Defaults, "rate_limits")),
        ("gateway.store.key_slots", In(Store, "key_slots")),
        ("gateway.method_override", Slot::MethodOverride),
        ("gateway.max_in_flight", In(Defaults, "max_in_flight")),
        ("gateway.mode", In(Defaults, "mode")),
        ("gateway.idempotency", In(Defaults, "idempotency")),
        ("gateway.if_match", Slot::IfMatch),
        ("gateway.headers.revision", In(Headers, "revision")),
        ("gateway.headers.rate_limit", In(Headers, "rate_limit")),
        (
            "gateway.host.allow_on_headers_stop_iteration",
            In(Host, "allow_on_headers_stop_iteration"),
        ),
        ("gateway.metrics", Slot::Metrics),
    ]
};

/// `store.backend`: `"local"` (default) or `"cluster"`.
const BACKEND_KEY: &str = "gateway.store.backend";
/// `store.cluster`, one object; only with `gateway.store.backend` = `"cluster"`.
const CLUSTER_KEY: &str = "gateway.store.cluster";

/// Keys valid only at tenant, route or plan scope.
const SCOPED_KEYS: &[&str] = &[
    "gateway.enabled",
    "gateway.route.prefix",
    "gateway.route.method",
    "gateway.route.cost",
    "gateway.plan",
];

fn is_known_key(key: &str) -> bool {
    GLOBAL_KEYS.iter().any(|(known, _)| *known == key) || SCOPED_KEYS.contains(&key)
}

/// A plan name as the plugin document allows it (`plans.<name>`).
fn is_valid_plan_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A value and the row it came from.
#[derive(Debug, Clone)]
pub(super) struct Sourced {
    pub value: Value,
    pub origin: Origin,
}

#[derive(Debug)]
pub(super) struct RouteDraft {
    /// The `route` column.
    pub name: String,
    pub prefix: Option<Sourced>,
    pub method: Option<Sourced>,
    pub rate_limit: Option<Sourced>,
    pub rate_limits: Option<Sourced>,
    pub cost: Option<Sourced>,
}

impl RouteDraft {
    /// Length of a string prefix (0 for none or a non-string): longer first.
    pub fn prefix_len(&self) -> usize {
        self.prefix
            .as_ref()
            .and_then(|p| p.value.as_str().map(str::len))
            .unwrap_or(0)
    }
}

/// A plan's rows (scope `plan`).
#[derive(Debug, Default)]
pub(super) struct PlanDraft {
    pub rate_limits: Option<Sourced>,
    pub idempotency: Option<Sourced>,
    pub mode: Option<Sourced>,
    pub max_in_flight: Option<Sourced>,
}

#[derive(Debug)]
pub(super) struct TenantDraft {
    pub plan: Option<Sourced>,
    pub rate_limit: Option<Sourced>,
    pub rate_limits: Option<Sourced>,
    pub mode: Option<Sourced>,
    pub idempotency: Option<Sourced>,
    pub max_in_flight: Option<Sourced>,
    /// `gateway.enabled` (default true): a disabled tenant is left out with its routes.
    pub enabled: bool,
    pub routes: BTreeMap<String, RouteDraft>,
}

impl Default for TenantDraft {
    fn default() -> Self {
        Self {
            plan: None,
            rate_limit: None,
            rate_limits: None,
            mode: None,
            idempotency: None,
            max_in_flight: None,
            enabled: true,
            routes: BTreeMap::new(),
        }
    }
}

/// The rows, placed.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    /// Global keys, in row order.
    pub globals: Vec<(Slot, Sourced)>,
    /// Global `gateway.rate_limit`: the limit of routes that have none of their own.
    pub global_limit: Option<Sourced>,
    pub tenants: BTreeMap<String, TenantDraft>,
    pub plans: BTreeMap<String, PlanDraft>,
    /// A global row names a tenant identity source (JWT, or header mode not
    /// `false`); it counts even when invalid: its own finding says what is wrong.
    pub identity_source: bool,
}

/// Places the `gateway.` rows of `rows`; findings in row order.
pub(super) fn resolve(rows: &[SettingRow], max_value_bytes: usize) -> (Resolved, Vec<Issue>) {
    let mut resolved = Resolved::default();
    let mut issues = Vec::new();
    for row in rows.iter().filter(|r| r.key.starts_with(KEY_PREFIX)) {
        if row.scope == Scope::Global
            && (row.key == JWT_KEY || (row.key == TRUST_KEY && row.value != json!(false)))
        {
            resolved.identity_source = true;
        }
        issues.extend(place(&mut resolved, row, max_value_bytes));
    }
    issues.extend(cluster_without_cluster_backend(&mut resolved));
    (resolved, issues)
}

/// `gateway.store.cluster` is refused (and left out) unless
/// `gateway.store.backend` says `"cluster"`: the filter would refuse the
/// document, and the schema's finding could not name the row.
fn cluster_without_cluster_backend(resolved: &mut Resolved) -> Option<Issue> {
    let position = |key: &str| {
        resolved
            .globals
            .iter()
            .position(|(_, sourced)| sourced.origin.key == key)
    };
    let cluster = position(CLUSTER_KEY)?;
    let backend = resolved
        .globals
        .iter()
        .find(|(_, sourced)| sourced.origin.key == BACKEND_KEY)
        .map(|(_, sourced)| sourced.value.clone());
    if backend == Some(json!("cluster")) {
        return None;
    }
    let (_, Sourced { origin, .. }) = resolved.globals.remove(cluster);
    let backend = backend.map_or_else(|| "not set (`local`)".to_owned(), |v| v.to_string());
    Some(Issue {
        origin: Some(origin),
        path: "store.cluster".to_owned(),
        message: format!(
            "is only allowed with global `{BACKEND_KEY}` = \"cluster\" (`{BACKEND_KEY}` is \
             {backend}): set it to \"cluster\" or remove this row"
        ),
        check: "settings",
    })
}

/// Places one row, or returns the finding that keeps it out.
fn place(resolved: &mut Resolved, row: &SettingRow, max_value_bytes: usize) -> Option<Issue> {
    let origin = row.origin();
    let issue = |message: String| Issue {
        origin: Some(origin.clone()),
        path: String::new(),
        message,
        check: "settings",
    };
    let oversized = row.oversized_bytes.or_else(|| {
        let size = json_len(&row.value);
        (size > max_value_bytes).then(|| u64::try_from(size).unwrap_or(u64::MAX))
    });
    if let Some(size) = oversized {
        return Some(issue(format!(
            "value is {size} bytes, over the limit of {max_value_bytes} bytes per value (--max-value-bytes)"
        )));
    }
    let wrong_scope = |allowed: &str| {
        issue(format!(
            "key is not allowed at {} scope ({allowed})",
            row.scope.as_str()
        ))
    };
    let unknown_key = || issue("unknown setting key".to_owned());
    let sourced = || {
        Some(Sourced {
            value: row.value.clone(),
            origin: origin.clone(),
        })
    };
    if row.scope == Scope::Global {
        return match GLOBAL_KEYS.iter().find(|(key, _)| *key == row.key) {
            Some((_, slot)) => {
                if row.key == "gateway.rate_limit" {
                    resolved.global_limit = sourced();
                }
                resolved.globals.extend(sourced().map(|s| (*slot, s)));
                None
            }
            None if is_known_key(&row.key) => Some(wrong_scope("tenant or route scope only")),
            None => Some(unknown_key()),
        };
    }
    if row.scope == Scope::Plan {
        if !is_valid_plan_name(&row.tenant) {
            return Some(issue(
                "plan name must be 1-64 characters of [A-Za-z0-9._-]".to_owned(),
            ));
        }
        let plan = resolved.plans.entry(row.tenant.clone()).or_default();
        let slot = match row.key.as_str() {
            "gateway.rate_limits" => &mut plan.rate_limits,
            "gateway.idempotency" => &mut plan.idempotency,
            "gateway.mode" => &mut plan.mode,
            "gateway.max_in_flight" => &mut plan.max_in_flight,
            key if is_known_key(key) => {
                return Some(wrong_scope(
                    "a plan takes gateway.rate_limits, gateway.idempotency, gateway.mode and gateway.max_in_flight",
                ))
            }
            _ => return Some(unknown_key()),
        };
        *slot = sourced();
        return None;
    }
    if !tenant_guard_core::config::is_valid_tenant_id(&row.tenant) {
        return Some(issue(
            "tenant id must be 1-128 characters of [A-Za-z0-9._-]".to_owned(),
        ));
    }
    let tenant = resolved.tenants.entry(row.tenant.clone()).or_default();
    let slot = if row.scope == Scope::Tenant {
        match row.key.as_str() {
            "gateway.plan" => &mut tenant.plan,
            "gateway.rate_limit" => &mut tenant.rate_limit,
            "gateway.rate_limits" => &mut tenant.rate_limits,
            "gateway.mode" => &mut tenant.mode,
            "gateway.idempotency" => &mut tenant.idempotency,
            "gateway.max_in_flight" => &mut tenant.max_in_flight,
            "gateway.enabled" => {
                return match row.value {
                    Value::Bool(enabled) => {
                        tenant.enabled = enabled;
                        None
                    }
                    _ => Some(issue(format!("must be true or false, got {}", row.value))),
                }
            }
            key if is_known_key(key) => return Some(wrong_scope("see the key table in the docs")),
            _ => return Some(unknown_key()),
        }
    } else {
        let route = tenant
            .routes
            .entry(row.route.clone())
            .or_insert_with(|| RouteDraft {
                name: row.route.clone(),
                prefix: None,
                method: None,
                rate_limit: None,
                rate_limits: None,
                cost: None,
            });
        match row.key.as_str() {
            "gateway.route.prefix" => &mut route.prefix,
            "gateway.route.method" => &mut route.method,
            "gateway.rate_limit" => &mut route.rate_limit,
            "gateway.rate_limits" => &mut route.rate_limits,
            "gateway.route.cost" => &mut route.cost,
            key if is_known_key(key) => return Some(wrong_scope("see the key table in the docs")),
            _ => return Some(unknown_key()),
        }
    };
    *slot = sourced();
    None
}
