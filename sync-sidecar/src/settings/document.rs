//! Rendering, phase 2: emits the plugin document from the placed rows
//! ([`super::resolve`]) as a typed [`Document`] — tenants with their routes
//! ordered most specific first, every route's rate limit resolved (route, else
//! tenant, else global) — and records which row produced each value
//! ([`Rendered`]), so that a finding of the schema or of the filter's parser
//! names the row to fix.
//!
//! The values stay JSON: they are what the rows say, checked afterwards.
//! [`Rendered::document`] is the serialised [`Document`] (object keys sorted),
//! whose compact text is what gets hashed and delivered.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::resolve::{Resolved, RouteDraft, Section, Slot, Sourced, TenantDraft};
use super::{Issue, Origin};

/// Global keys of one section: field → value.
type Fields = BTreeMap<&'static str, Value>;

/// The plugin document, without `revision`.
#[derive(Debug, Serialize)]
struct Document {
    version: u32,
    /// Always present: `trust_header_without_jwt` defaults to `false`.
    tenant: Fields,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    correlation: Fields,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    store: Fields,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    defaults: Fields,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: Fields,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    host: Fields,
    #[serde(skip_serializing_if = "Option::is_none")]
    if_match: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method_override: Option<Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    plans: BTreeMap<String, PlanDocument>,
    tenants: BTreeMap<String, TenantDocument>,
}

#[derive(Debug, Default, Serialize)]
struct PlanDocument {
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<Value>,
}

impl Document {
    fn new() -> Self {
        Self {
            version: tenant_guard_core::config::CONFIG_VERSION,
            // Safe by default: the header is an identity only when a setting says so.
            tenant: Fields::from([("trust_header_without_jwt", Value::Bool(false))]),
            correlation: Fields::new(),
            store: Fields::new(),
            defaults: Fields::new(),
            headers: Fields::new(),
            host: Fields::new(),
            if_match: None,
            metrics: None,
            method_override: None,
            plans: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }

    fn set(&mut self, slot: Slot, value: Value) {
        match slot {
            Slot::In(section, field) => {
                let fields = match section {
                    Section::Tenant => &mut self.tenant,
                    Section::Correlation => &mut self.correlation,
                    Section::Store => &mut self.store,
                    Section::Defaults => &mut self.defaults,
                    Section::Headers => &mut self.headers,
                    Section::Host => &mut self.host,
                };
                fields.insert(field, value);
            }
            Slot::IfMatch => self.if_match = Some(value),
            Slot::Metrics => self.metrics = Some(value),
            Slot::MethodOverride => self.method_override = Some(value),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct TenantDocument {
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteDocument>,
}

#[derive(Debug, Serialize)]
struct RouteDocument {
    name: String,
    prefix: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Value>,
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
        crate::files::sha256_hex(self.document.to_string().as_bytes())
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
    pub(super) fn origin_of(&self, segments: &[String]) -> Option<Origin> {
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
    pub(super) fn origin_of_dotted(&self, dotted: &str) -> Option<Origin> {
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

/// Emits the document of `resolved`; the routes that cannot be emitted (no
/// prefix, no rate limit anywhere) are left out and added to `issues`.
pub(super) fn emit(resolved: Resolved, issues: &mut Vec<Issue>) -> Rendered {
    let mut document = Document::new();
    let mut provenance = Vec::new();
    for (slot, Sourced { value, origin }) in resolved.globals {
        document.set(slot, value);
        provenance.push((slot.path(), origin));
    }
    for (name, plan) in resolved.plans {
        let mut take = |field: &'static str, source: Option<Sourced>| {
            source.map(|Sourced { value, origin }| {
                provenance.push((
                    vec!["plans".to_owned(), name.clone(), field.to_owned()],
                    origin,
                ));
                value
            })
        };
        let emitted = PlanDocument {
            rate_limits: take("rate_limits", plan.rate_limits),
            idempotency: take("idempotency", plan.idempotency),
            mode: take("mode", plan.mode),
            max_in_flight: take("max_in_flight", plan.max_in_flight),
        };
        document.plans.insert(name, emitted);
    }
    let global_limit = resolved.global_limit.as_ref();
    for (id, tenant) in resolved.tenants.into_iter().filter(|(_, t)| t.enabled) {
        let emitted = emit_tenant(&id, &tenant, global_limit, &mut provenance, issues);
        document.tenants.insert(id, emitted);
    }
    let document = serde_json::to_value(&document).unwrap_or_else(|error| {
        // Unreachable with string keys and JSON values; reported, not hidden.
        issues.push(Issue {
            origin: None,
            path: String::new(),
            message: format!("cannot emit the plugin document: {error}"),
            check: "settings",
        });
        Value::Null
    });
    Rendered {
        document,
        provenance,
    }
}

fn emit_tenant(
    id: &str,
    tenant: &TenantDraft,
    global_limit: Option<&Sourced>,
    provenance: &mut Vec<(Vec<String>, Origin)>,
    issues: &mut Vec<Issue>,
) -> TenantDocument {
    let path = |tail: &[&str]| {
        ["tenants", id]
            .iter()
            .chain(tail)
            .map(|part| (*part).to_owned())
            .collect::<Vec<_>>()
    };
    let mut emitted = TenantDocument::default();
    let mut take = |field: &'static str, source: &Option<Sourced>| {
        source.as_ref().map(|Sourced { value, origin }| {
            provenance.push((path(&[field]), origin.clone()));
            value.clone()
        })
    };
    emitted.plan = take("plan", &tenant.plan);
    emitted.rate_limit = take("rate_limit", &tenant.rate_limit);
    emitted.rate_limits = take("rate_limits", &tenant.rate_limits);
    emitted.mode = take("mode", &tenant.mode);
    emitted.idempotency = take("idempotency", &tenant.idempotency);
    emitted.max_in_flight = take("max_in_flight", &tenant.max_in_flight);

    let mut routes: Vec<&RouteDraft> = tenant.routes.values().collect();
    routes.sort_by(|a, b| {
        b.prefix_len()
            .cmp(&a.prefix_len())
            .then(b.method.is_some().cmp(&a.method.is_some()))
            .then(a.name.cmp(&b.name))
    });
    // The index counts every route, emitted or not: provenance paths are
    // numbered as before routes without a prefix were left out.
    for (index, route) in routes.into_iter().enumerate() {
        let index = index.to_string();
        let route_path = |field: &str| path(&["routes", &index, field]);
        let Some(prefix) = &route.prefix else {
            issues.push(Issue {
                origin: route
                    .method
                    .as_ref()
                    .or(route.rate_limit.as_ref())
                    .map(|s| s.origin.clone()),
                path: String::new(),
                message: format!(
                    "route `{}` of tenant `{id}` has no `gateway.route.prefix`",
                    route.name
                ),
                check: "settings",
            });
            continue;
        };
        provenance.push((route_path("prefix"), prefix.origin.clone()));
        // The route's name is its `route` column: blame the prefix row.
        provenance.push((route_path("name"), prefix.origin.clone()));
        let mut emitted_route = RouteDocument {
            name: route.name.clone(),
            prefix: prefix.value.clone(),
            method: None,
            rate_limit: None,
            rate_limits: None,
            cost: None,
        };
        if let Some(method) = &route.method {
            emitted_route.method = Some(method.value.clone());
            provenance.push((route_path("method"), method.origin.clone()));
        }
        if let Some(limits) = &route.rate_limits {
            emitted_route.rate_limits = Some(limits.value.clone());
            provenance.push((route_path("rate_limits"), limits.origin.clone()));
        }
        if let Some(cost) = &route.cost {
            emitted_route.cost = Some(cost.value.clone());
            provenance.push((route_path("cost"), cost.origin.clone()));
        }
        // A route's own `rate_limit`, else (for a route without `rate_limits`
        // or `cost`, as before they existed) the tenant's, else the global one.
        let inherited = || {
            (route.rate_limits.is_none() && route.cost.is_none())
                .then(|| tenant.rate_limit.as_ref().or(global_limit))
                .flatten()
        };
        let limit = route.rate_limit.as_ref().or_else(inherited);
        match limit {
            Some(limit) => {
                emitted_route.rate_limit = Some(limit.value.clone());
                provenance.push((route_path("rate_limit"), limit.origin.clone()));
            }
            // Its own `rate_limits` (or a cost on the tenant's limits) are enough.
            None if route.rate_limits.is_some() || route.cost.is_some() => {}
            None => issues.push(Issue {
                origin: Some(prefix.origin.clone()),
                path: String::new(),
                message: format!(
                    "route `{}` has no rate limit at route, tenant or global scope",
                    route.name
                ),
                check: "settings",
            }),
        }
        emitted.routes.push(emitted_route);
    }
    emitted
}
