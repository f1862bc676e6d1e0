//! Kinds of invalid settings value, each one row that turns a valid set
//! ([`write_base`]) invalid, with what the finding must say: who (scope,
//! tenant, route, key) and why. Collected from the sync tests (postgres.rs,
//! cli.rs), the settings unit tests and the settings-level kinds of the
//! schema parity corpus, so that every path that writes or delivers settings
//! can be held to the same list.

use serde_json::{json, Value};

use super::{limit, TestDb};

/// The actor every case is written as.
pub const ACTOR: &str = "mallory";

/// One invalid row and the fragments its finding must contain.
#[derive(Debug, Clone)]
pub struct InvalidCase {
    pub what: &'static str,
    /// `@global`, `@plan:NAME`, `TENANT` or `TENANT/ROUTE` (the `settings` CLI's TARGET).
    pub target: &'static str,
    pub key: &'static str,
    pub value: Value,
    pub expect: Vec<String>,
}

impl InvalidCase {
    /// `(scope, tenant, route)` of the target, as the `tg_settings` columns hold it.
    pub fn columns(&self) -> (&'static str, &'static str, &'static str) {
        if let Some(plan) = self.target.strip_prefix("@plan:") {
            return ("plan", plan, "");
        }
        match self.target.split_once('/') {
            _ if self.target == "@global" => ("global", "", ""),
            Some((tenant, route)) => ("route", tenant, route),
            None => ("tenant", self.target, ""),
        }
    }
}

/// The valid set every case is added to: header mode ([`TestDb::new`]), the
/// tenant header `x-id` and `acme` limited to 100 per minute.
pub async fn write_base(db: &TestDb) {
    db.set_global("gateway.tenant.header", json!("x-id"), "alice")
        .await;
    db.set_tenant_limit("acme", 100, "alice").await;
}

fn case(
    what: &'static str,
    target: &'static str,
    key: &'static str,
    value: Value,
    expect: &[&str],
) -> InvalidCase {
    InvalidCase {
        what,
        target,
        key,
        value,
        expect: expect.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// All kinds (29).
pub fn cases() -> Vec<InvalidCase> {
    let acme = |key: &str| format!("tenant `acme` setting `{key}` (updated by {ACTOR})");
    let orders =
        |key: &str| format!("tenant `acme` route `orders` setting `{key}` (updated by {ACTOR})");
    let global = |key: &str| format!("global setting `{key}` (updated by {ACTOR})");
    let gold = |key: &str| format!("plan `gold` setting `{key}` (updated by {ACTOR})");
    let with = |mut case: InvalidCase, who: String| {
        case.expect.insert(0, who);
        case
    };
    vec![
        with(
            case(
                "requests 0",
                "acme",
                "gateway.rate_limit",
                json!({"requests": 0, "per_seconds": 60}),
                &["`tenants.acme.rate_limit.requests` 0 is less than the minimum of 1"],
            ),
            acme("gateway.rate_limit"),
        ),
        with(
            case(
                "unknown mode",
                "acme",
                "gateway.mode",
                json!("loud"),
                &["`tenants.acme.mode` \"loud\" is not one of"],
            ),
            acme("gateway.mode"),
        ),
        with(
            case(
                "unknown key",
                "acme",
                "gateway.rate_limt",
                json!(1),
                &["unknown setting key"],
            ),
            acme("gateway.rate_limt"),
        ),
        with(
            case(
                "tenant key at route scope",
                "acme/orders",
                "gateway.idempotency",
                json!({"methods": ["POST"]}),
                &["not allowed at route scope"],
            ),
            orders("gateway.idempotency"),
        ),
        with(
            case(
                "tenant key at global scope",
                "@global",
                "gateway.enabled",
                json!(false),
                &["not allowed at global scope"],
            ),
            global("gateway.enabled"),
        ),
        with(
            case(
                "route key at tenant scope",
                "acme",
                "gateway.route.prefix",
                json!("/x"),
                &["not allowed at tenant scope"],
            ),
            acme("gateway.route.prefix"),
        ),
        with(
            case(
                "enabled not a boolean",
                "acme",
                "gateway.enabled",
                json!("yes"),
                &["must be true or false, got \"yes\""],
            ),
            acme("gateway.enabled"),
        ),
        case(
            "tenant id with a space",
            "bad tenant",
            "gateway.rate_limit",
            limit(1),
            &[
                "tenant `bad tenant` setting `gateway.rate_limit` (updated by mallory)",
                "tenant id must be 1-128 characters",
            ],
        ),
        with(
            case(
                "value over the size limit",
                "acme",
                "gateway.mode",
                json!("x".repeat(70_000)),
                &["value is 70002 bytes, over the limit of 65536 bytes"],
            ),
            acme("gateway.mode"),
        ),
        with(
            case(
                "route without a prefix",
                "acme/orders",
                "gateway.route.method",
                json!("POST"),
                &["route `orders` of tenant `acme` has no `gateway.route.prefix`"],
            ),
            orders("gateway.route.method"),
        ),
        case(
            "route without any rate limit",
            "beta/x",
            "gateway.route.prefix",
            json!("/x"),
            &[
                "tenant `beta` route `x` setting `gateway.route.prefix` (updated by mallory)",
                "has no rate limit at route, tenant or global scope",
            ],
        ),
        case(
            "no tenant identity source",
            "@global",
            "gateway.tenant.trust_header_without_jwt",
            json!(false),
            &[
                "no tenant identity source",
                "`gateway.tenant.trust_header_without_jwt` to true",
            ],
        ),
        with(
            case(
                "idempotency ttl 0",
                "acme",
                "gateway.idempotency",
                json!({"methods": ["POST"], "ttl_seconds": 0}),
                &["`tenants.acme.idempotency.ttl_seconds` 0 is less than the minimum of 1"],
            ),
            acme("gateway.idempotency"),
        ),
        with(
            case(
                "JWKS with private key material",
                "@global",
                "gateway.tenant.jwt",
                json!({"issuers": [{"iss": "x", "audiences": ["a"],
                       "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "d": "private"}]}}]}),
                &["`tenant.jwt.issuers.0.jwks.keys.0`"],
            ),
            global("gateway.tenant.jwt"),
        ),
        with(
            case(
                "correlation header = tenant header (filter parser)",
                "@global",
                "gateway.correlation.header",
                json!("x-id"),
                &["`correlation.header` must differ from tenant.header [filter]"],
            ),
            global("gateway.correlation.header"),
        ),
        with(
            case(
                "relative route prefix",
                "acme/orders",
                "gateway.route.prefix",
                json!("orders"),
                &["`tenants.acme.routes.0.prefix` \"orders\" does not match"],
            ),
            orders("gateway.route.prefix"),
        ),
        with(
            case(
                "unknown-tenant policy",
                "@global",
                "gateway.tenant.unknown",
                json!("maybe"),
                &["`tenant.unknown` \"maybe\" is not one of [\"defaults\",\"reject\"]"],
            ),
            global("gateway.tenant.unknown"),
        ),
        with(
            case(
                "lower-case If-Match method",
                "@global",
                "gateway.if_match",
                json!([{"prefix": "/orders", "methods": ["put"]}]),
                &["`if_match.0.methods.0` \"put\" does not match"],
            ),
            global("gateway.if_match"),
        ),
        with(
            case(
                "rate limit without per_seconds or per",
                "@global",
                "gateway.rate_limit",
                json!({"requests": 10}),
                &["`defaults.rate_limit` set exactly one of `per_seconds` and `per`"],
            ),
            global("gateway.rate_limit"),
        ),
        with(
            case(
                "store cluster without the cluster backend",
                "@global",
                "gateway.store.cluster",
                json!({"lease_max": 8}),
                &["`store.cluster` is only allowed with global `gateway.store.backend` = \"cluster\""],
            ),
            global("gateway.store.cluster"),
        ),
        with(
            case(
                "unknown store backend",
                "@global",
                "gateway.store.backend",
                json!("redis"),
                &["`store.backend` \"redis\" is not one of [\"local\",\"cluster\"]"],
            ),
            global("gateway.store.backend"),
        ),
        with(
            case(
                "tenant naming a plan nobody defined",
                "acme",
                "gateway.plan",
                json!("platinum"),
                &["`tenants.acme.plan`", "platinum"],
            ),
            acme("gateway.plan"),
        ),
        with(
            case(
                "plan limit with zero requests",
                "@plan:gold",
                "gateway.rate_limits",
                json!([{"name": "month", "requests": 0, "per": "month"}]),
                &["`plans.gold.rate_limits.0.requests` 0 is less than the minimum of 1"],
            ),
            gold("gateway.rate_limits"),
        ),
        with(
            case(
                "two limits of one name in a scope",
                "acme",
                "gateway.rate_limits",
                json!([{"name": "x", "requests": 1, "per": "second"},
                       {"name": "x", "requests": 9, "per": "day"}]),
                &["`tenants.acme.rate_limits.1.name` limit name `x` is used twice"],
            ),
            acme("gateway.rate_limits"),
        ),
        with(
            case(
                "limit key header that is not an HTTP token",
                "acme",
                "gateway.rate_limits",
                json!([{"name": "k", "requests": 1, "per": "second", "key": {"header": "x key"}}]),
                &["`tenants.acme.rate_limits.0.key"],
            ),
            acme("gateway.rate_limits"),
        ),
        with(
            case(
                "calendar window with a burst",
                "@global",
                "gateway.rate_limits",
                json!([{"name": "m", "requests": 5, "per": "month", "burst": 9}]),
                &["`defaults.rate_limits.0"],
            ),
            global("gateway.rate_limits"),
        ),
        with(
            case(
                "no requests may be in flight",
                "acme",
                "gateway.max_in_flight",
                json!(0),
                &["`tenants.acme.max_in_flight`"],
            ),
            acme("gateway.max_in_flight"),
        ),
        with(
            case(
                "usage reported in a header the filter trusts",
                "@global",
                "gateway.rate_limits",
                json!([{"name": "t", "requests": 9, "per": "day", "usage_header": "x-correlation-id"}]),
                &["`defaults.rate_limits.0.usage_header`", "trusts or sets"],
            ),
            global("gateway.rate_limits"),
        ),
        with(
            case(
                "unknown method-override policy",
                "@global",
                "gateway.method_override",
                json!("sometimes"),
                &["`method_override`", "sometimes"],
            ),
            global("gateway.method_override"),
        ),
    ]
}
