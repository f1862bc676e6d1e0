//! The JSON Schema Kong validates the filter config with (`config_schema` in
//! `kong/tenant_guard.meta.json`, draft 4) against the filter's own parser: one
//! corpus of invalid documents must be refused by both, so a config Kong
//! accepts cannot fail the filter's `on_configure` (which, at nginx start,
//! makes every worker exit). The few rules draft 4 cannot express are listed in
//! [`GAPS`]: the filter and the sidecar (which runs the filter's parser before
//! delivering) refuse them, the schema does not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};

fn kong_schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kong/tenant_guard.meta.json"
    );
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft4::new(&meta["config_schema"]).expect("a draft-4 schema")
}

fn filter_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA).unwrap();
    jsonschema::draft4::new(&schema).unwrap()
}

/// A valid base document with `patch` merged in (objects merge, `null` deletes).
fn doc(patch: Value) -> Value {
    let mut base = json!({"version": 1, "tenant": {"trust_header_without_jwt": true}});
    merge(&mut base, patch);
    base
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

fn limit() -> Value {
    json!({"requests": 1, "per_seconds": 1})
}

fn route(field: &str, value: Value) -> Value {
    let mut route = json!({"prefix": "/orders", "rate_limit": limit()});
    route[field] = value;
    doc(json!({"tenants": {"acme": {"routes": [route]}}}))
}

fn idempotency(field: &str, value: Value) -> Value {
    let mut settings = serde_json::Map::new();
    settings.insert(field.to_owned(), value);
    doc(json!({"defaults": {"idempotency": settings}}))
}

/// A 32-byte HS256 secret, base64url.
const HS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
/// A P-256 public point, base64url.
const EC_X: &str = "t77kwLw5mylfL8Gz7INnx2p0w04bnPkmkfpqWcFmxT8";
const EC_Y: &str = "6wjgIZ_Qf9168P5Lvh98VC2uKRl3btgwHG6YsLC1X1Q";

/// `store.backend: cluster` with one field of `store.cluster` set.
fn cluster(field: &str, value: Value) -> Value {
    let mut settings = serde_json::Map::new();
    settings.insert(field.to_owned(), value);
    doc(json!({"store": {"backend": "cluster", "cluster": settings}}))
}

fn jwt(key: Value) -> Value {
    json!({"version": 1, "tenant": {"jwt": {"issuers": [
        {"iss": "https://idp", "audiences": ["api"], "jwks": {"keys": [key]}}]}}})
}

fn jwt_with(patch: Value) -> Value {
    let mut document = jwt(json!({"kty": "oct", "kid": "hs", "k": HS_KEY}));
    merge(&mut document, json!({"tenant": {"jwt": patch}}));
    document
}

/// Documents both the schema and the parser must accept.
fn valid() -> Vec<Value> {
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../envoy/sample-config.json"
        ))
        .unwrap(),
    )
    .unwrap();
    vec![
        doc(json!({})),
        sample,
        doc(
            json!({"revision": "r-2024-01-01T00:00:00Z abc", "metrics": false,
            "store": {"namespace": "tenant_guard", "idempotency_tenant_share_percent": 100, "unknown_tenant_slots": 1048576,
                      "idempotency_buckets": 65536, "max_cas_retries": 1000, "on_exhausted": "allow"},
            "headers": {"revision": false, "rate_limit": "on_reject"},
            "paths": {"allow_encoded_slashes": true},
            "tenant": {"header": "x-org", "unknown": "reject"},
            "correlation": {"header": "x-request-id", "echo": false}}),
        ),
        doc(json!({"correlation": {"header": "x-tenant-id"}, "tenant": {"header": "x-other"}})),
        route("prefix", json!("/")),
        route("prefix", json!("/a/b/")),
        route("prefix", json!("/a.b/...c/..d/.e")),
        route("prefix", json!("/a%2F%20%C3%A9/~x")),
        route("name", json!("orders.v2")),
        doc(json!({"if_match": [{"prefix": "/orders", "methods": ["PUT"]}]})),
        idempotency("methods", json!(["POST", "PUT"])),
        jwt(
            json!({"kty": "oct", "kid": "hs", "alg": "HS256", "use": "sig",
                   "key_ops": ["verify", "sign"], "k": HS_KEY}),
        ),
        jwt(json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "x": EC_X, "y": EC_Y})),
        jwt_with(json!({"user_claim": "sub", "leeway_seconds": 3600, "cache_entries": 0})),
        doc(json!({"store": {"backend": "local"}})),
        doc(json!({"store": {"backend": "cluster"}})),
        doc(json!({"store": {"backend": "cluster", "cluster": {}}})),
        doc(json!({"store": {"backend": "cluster", "cluster": {
            "upstream": "store.internal:9912", "timeout_ms": 10000, "lease_max": 1000,
            "lease_ttl_ms": 60000, "rate_limit_fallback": "unlimited", "fallback_share_percent": 100,
            "idempotency_fallback": "local", "probe_interval_ms": 60000}}})),
        doc(json!({"store": {"backend": "cluster", "cluster": {
            "upstream": "u".repeat(255), "timeout_ms": 1, "lease_max": 1, "lease_ttl_ms": 1,
            "rate_limit_fallback": "share", "fallback_share_percent": 1,
            "idempotency_fallback": "reject", "probe_interval_ms": 1}}})),
        cluster("upstream", json!("tenant-guard-store.ns.svc.cluster.local")),
        // The limit model: windows, keys, plans, routes' own limits.
        doc(json!({"defaults": {"rate_limit": {"requests": 50, "per": "day"}}})),
        doc(json!({"defaults": {"rate_limits": [
            {"name": "burst", "requests": 50, "per": "second", "burst": 100},
            {"name": "month", "requests": 1_000_000, "per": "month"},
            {"name": "per-user", "requests": 5, "per_seconds": 1, "key": "user", "on_missing": "tenant"},
            {"name": "per-org", "requests": 5, "per": "minute", "key": "org"},
            {"name": "per-client", "requests": 5, "per": "hour", "key": {"header": "x-client-id"},
             "methods": ["POST"], "prefix": "/reports"}]}})),
        doc(
            json!({"plans": {"gold": {"rate_limits": [{"name": "week", "requests": 9, "per": "week"}],
                                      "mode": "shadow", "idempotency": {"methods": ["POST"]}}},
                   "tenants": {"acme": {"plan": "gold", "rate_limits": [
                       {"name": "week", "requests": 10, "per": "week"}]}}}),
        ),
        doc(
            json!({"tenants": {"a": {"routes": [{"prefix": "/r", "rate_limits": [
            {"name": "r-day", "requests": 1, "per": "day", "methods": ["GET"]}]}]}}}),
        ),
        doc(json!({"method_override": "honor", "store": {"key_slots": 1}})),
        // Cost, reported usage, in-flight caps.
        named(
            json!({"cost": 5, "usage_header": "x-usage-units", "usage_max": 9_007_199_254_740_992_u64}),
        ),
        doc(
            json!({"tenants": {"a": {"rate_limits": [{"name": "tokens", "requests": 100_000, "per": "month",
            "usage_header": "x-tokens"}], "routes": [{"prefix": "/reports", "method": "POST", "cost": 20}]}}}),
        ),
        doc(json!({"defaults": {"max_in_flight": 10},
                   "plans": {"gold": {"max_in_flight": [{"max": 1000, "timeout_seconds": 86400},
                                                         {"max": 2, "key": "user", "on_missing": "tenant"}]}},
                   "tenants": {"a": {"plan": "gold", "max_in_flight": [{"max": 1}]}}})),
    ]
}

fn named(fields: Value) -> Value {
    let mut limit = json!({"name": "x", "requests": 5, "per": "hour"});
    merge(&mut limit, fields);
    doc(json!({"defaults": {"rate_limits": [limit]}}))
}

/// Documents both must refuse, each with what is wrong.
fn invalid() -> Vec<(&'static str, Value)> {
    let long = "a".repeat(129);
    vec![
        (
            "no version",
            json!({"tenant": {"trust_header_without_jwt": true}}),
        ),
        ("version 2", doc(json!({"version": 2}))),
        ("no identity source", json!({"version": 1})),
        (
            "header trust off without jwt",
            doc(json!({"tenant": {"trust_header_without_jwt": false}})),
        ),
        ("unknown top-level field", doc(json!({"surprise": 1}))),
        ("unknown tenant field", doc(json!({"tenant": {"extra": 1}}))),
        ("unknown store field", doc(json!({"store": {"buckets": 1}}))),
        (
            "unknown paths field",
            doc(json!({"paths": {"merge": true}})),
        ),
        ("revision too long", doc(json!({"revision": long}))),
        (
            "revision with a control character",
            doc(json!({"revision": "r\u{1}"})),
        ),
        (
            "revision over 128 bytes",
            doc(json!({"revision": "é".repeat(65)})),
        ),
        (
            "upper-case tenant header",
            doc(json!({"tenant": {"header": "X-Tenant"}})),
        ),
        ("pseudo-header", doc(json!({"tenant": {"header": ":path"}}))),
        ("empty header", doc(json!({"correlation": {"header": ""}}))),
        (
            "65-byte header",
            doc(json!({"tenant": {"user_header": "h".repeat(65)}})),
        ),
        (
            "correlation header = default tenant header",
            doc(json!({"correlation": {"header": "x-tenant-id"}})),
        ),
        (
            "tenant header = default correlation header",
            doc(json!({"tenant": {"header": "x-correlation-id"}})),
        ),
        (
            "tenant.unknown",
            doc(json!({"tenant": {"unknown": "maybe"}})),
        ),
        (
            "generator",
            doc(json!({"correlation": {"generate": "uuidv4"}})),
        ),
        (
            "echo not a boolean",
            doc(json!({"correlation": {"echo": "yes"}})),
        ),
        (
            "requests 0",
            doc(json!({"defaults": {"rate_limit": {"requests": 0, "per_seconds": 1}}})),
        ),
        (
            "requests negative",
            doc(json!({"defaults": {"rate_limit": {"requests": -1, "per_seconds": 1}}})),
        ),
        (
            "requests too large",
            doc(
                json!({"defaults": {"rate_limit": {"requests": 1_000_000_001u64, "per_seconds": 1}}}),
            ),
        ),
        (
            "requests as text",
            doc(json!({"defaults": {"rate_limit": {"requests": "3", "per_seconds": 1}}})),
        ),
        (
            "requests fractional",
            doc(json!({"defaults": {"rate_limit": {"requests": 1.5, "per_seconds": 1}}})),
        ),
        (
            "per_seconds over a year",
            doc(json!({"defaults": {"rate_limit": {"requests": 1, "per_seconds": 31_536_001}}})),
        ),
        (
            "burst 0",
            doc(json!({"defaults": {"rate_limit": {"requests": 1, "per_seconds": 1, "burst": 0}}})),
        ),
        (
            "per_seconds missing",
            doc(json!({"defaults": {"rate_limit": {"requests": 1}}})),
        ),
        (
            "per and per_seconds",
            doc(
                json!({"defaults": {"rate_limit": {"requests": 1, "per": "day", "per_seconds": 1}}}),
            ),
        ),
        (
            "unknown window",
            doc(json!({"defaults": {"rate_limit": {"requests": 1, "per": "fortnight"}}})),
        ),
        (
            "burst of a calendar quota",
            doc(json!({"defaults": {"rate_limit": {"requests": 1, "per": "month", "burst": 2}}})),
        ),
        ("named: no window", named(json!({"per": null}))),
        ("named: no name", named(json!({"name": null}))),
        ("named: bad name", named(json!({"name": "a b"}))),
        ("named: burst 0", named(json!({"burst": 0}))),
        (
            "named: calendar burst",
            named(json!({"per": "day", "burst": 9})),
        ),
        ("named: unknown key kind", named(json!({"key": "ip"}))),
        (
            "named: key object without header",
            named(json!({"key": {"cookie": "x"}})),
        ),
        (
            "named: key header not a token",
            named(json!({"key": {"header": "X Client"}})),
        ),
        (
            "named: on_missing without a key",
            named(json!({"on_missing": "tenant"})),
        ),
        (
            "named: on_missing of the tenant",
            named(json!({"key": "tenant", "on_missing": "reject"})),
        ),
        (
            "named: on_missing unknown",
            named(json!({"key": "user", "on_missing": "skip"})),
        ),
        ("named: no methods", named(json!({"methods": []}))),
        (
            "named: lower-case method",
            named(json!({"methods": ["post"]})),
        ),
        (
            "named: prefix without slash",
            named(json!({"prefix": "orders"})),
        ),
        ("named: unknown field", named(json!({"costs": 3}))),
        ("named: cost 0", named(json!({"cost": 0}))),
        (
            "named: cost over 10^9",
            named(json!({"cost": 1_000_000_001_u64})),
        ),
        (
            "named: usage header not a token",
            named(json!({"usage_header": "X Usage"})),
        ),
        (
            "named: usage_max over 2^53",
            named(json!({"usage_header": "x-u", "usage_max": 9_007_199_254_740_993_u64})),
        ),
        (
            "named: usage_max 0",
            named(json!({"usage_header": "x-u", "usage_max": 0})),
        ),
        (
            "named: usage_max without usage_header",
            named(json!({"usage_max": 10})),
        ),
        (
            "route cost 0",
            doc(json!({"tenants": {"a": {"routes": [{"prefix": "/r", "cost": 0}]}}})),
        ),
        (
            "route without limits or cost",
            doc(json!({"tenants": {"a": {"routes": [{"prefix": "/r"}]}}})),
        ),
        (
            "max_in_flight 0",
            doc(json!({"defaults": {"max_in_flight": 0}})),
        ),
        (
            "max_in_flight 1001",
            doc(json!({"defaults": {"max_in_flight": 1001}})),
        ),
        (
            "max_in_flight no caps",
            doc(json!({"defaults": {"max_in_flight": []}})),
        ),
        (
            "max_in_flight 5 caps",
            doc(
                json!({"defaults": {"max_in_flight": [{"max": 1}, {"max": 1, "key": "user"},
                {"max": 1, "key": "org"}, {"max": 1, "key": {"header": "x-a"}},
                {"max": 1, "key": {"header": "x-b"}}]}}),
            ),
        ),
        (
            "in-flight cap without max",
            doc(json!({"tenants": {"a": {"max_in_flight": [{"key": "user"}]}}})),
        ),
        (
            "in-flight cap unknown field",
            doc(json!({"plans": {"p": {"max_in_flight": [{"max": 1, "per": "user"}]}}})),
        ),
        (
            "in-flight timeout 0",
            doc(json!({"defaults": {"max_in_flight": [{"max": 1, "timeout_seconds": 0}]}})),
        ),
        (
            "in-flight on_missing without a key",
            doc(json!({"defaults": {"max_in_flight": [{"max": 1, "on_missing": "tenant"}]}})),
        ),
        (
            "max_in_flight a string",
            doc(json!({"defaults": {"max_in_flight": "10"}})),
        ),
        (
            "17 limits in one scope",
            doc(json!({"defaults": {"rate_limits": (0..17)
                .map(|n| json!({"name": format!("l{n}"), "requests": 1, "per": "hour"}))
                .collect::<Vec<_>>()}})),
        ),
        ("plan with a bad name", doc(json!({"plans": {"a b": {}}}))),
        (
            "plan with an unknown field",
            doc(json!({"plans": {"gold": {"rate_limit": limit()}}})),
        ),
        (
            "tenant plan not a name",
            doc(json!({"tenants": {"a": {"plan": ""}}})),
        ),
        (
            "route without any limit",
            doc(json!({"tenants": {"a": {"routes": [{"prefix": "/r"}]}}})),
        ),
        (
            "route limit with its own prefix",
            doc(
                json!({"tenants": {"a": {"routes": [{"prefix": "/r", "rate_limits": [
                {"name": "x", "requests": 1, "per": "day", "prefix": "/q"}]}]}}}),
            ),
        ),
        (
            "method_override unknown",
            doc(json!({"method_override": "maybe"})),
        ),
        ("key_slots 0", doc(json!({"store": {"key_slots": 0}}))),
        (
            "key_slots too many",
            doc(json!({"store": {"key_slots": 1_048_577}})),
        ),
        ("mode", doc(json!({"defaults": {"mode": "loud"}}))),
        (
            "tenant id with a space",
            doc(json!({"tenants": {"bad id": {}}})),
        ),
        ("tenant id too long", {
            let mut tenants = serde_json::Map::new();
            tenants.insert(long.clone(), json!({}));
            doc(json!({"tenants": tenants}))
        }),
        (
            "tenant id not ASCII",
            doc(json!({"tenants": {"ümlaut": {}}})),
        ),
        ("relative prefix", route("prefix", json!("orders"))),
        ("prefix with //", route("prefix", json!("/orders//x"))),
        (
            "prefix with a dot segment",
            route("prefix", json!("/./orders")),
        ),
        ("prefix ending in ..", route("prefix", json!("/a/.."))),
        ("prefix ending in .", route("prefix", json!("/a/."))),
        (
            "prefix with an encoded unreserved byte",
            route("prefix", json!("/%6Frders")),
        ),
        (
            "prefix with lower-case hex",
            route("prefix", json!("/a%2f")),
        ),
        ("prefix with a bad escape", route("prefix", json!("/a%zz"))),
        ("prefix with a query", route("prefix", json!("/a?b"))),
        ("prefix with a fragment", route("prefix", json!("/a#b"))),
        ("prefix with a space", route("prefix", json!("/a b"))),
        ("prefix not ASCII", route("prefix", json!("/é"))),
        ("lower-case method", route("method", json!("post"))),
        ("empty method", route("method", json!(""))),
        ("17-letter method", route("method", json!("M".repeat(17)))),
        ("route named tenant", route("name", json!("tenant"))),
        ("route name with a space", route("name", json!("bad name"))),
        (
            "route without a limit",
            doc(json!({"tenants": {"a": {"routes": [{"prefix": "/o"}]}}})),
        ),
        (
            "if_match without methods",
            doc(json!({"if_match": [{"prefix": "/o", "methods": []}]})),
        ),
        (
            "if_match relative prefix",
            doc(json!({"if_match": [{"prefix": "o"}]})),
        ),
        (
            "if_match lower-case method",
            doc(json!({"if_match": [{"prefix": "/o", "methods": ["put"]}]})),
        ),
        (
            "idempotency without methods",
            idempotency("methods", json!([])),
        ),
        (
            "idempotency lower-case method",
            idempotency("methods", json!(["post"])),
        ),
        ("ttl 0", idempotency("ttl_seconds", json!(0))),
        (
            "ttl over 30 days",
            idempotency("ttl_seconds", json!(2_592_001)),
        ),
        ("max_body_bytes 0", idempotency("max_body_bytes", json!(0))),
        (
            "max_body_bytes over 16 MiB",
            idempotency("max_body_bytes", json!(16_777_217)),
        ),
        (
            "in-flight timeout 0",
            idempotency("in_flight_timeout_seconds", json!(0)),
        ),
        (
            "in-flight timeout over an hour",
            idempotency("in_flight_timeout_seconds", json!(3601)),
        ),
        (
            "unknown idempotency field",
            idempotency("retries", json!(1)),
        ),
        (
            "max_cas_retries 0",
            doc(json!({"store": {"max_cas_retries": 0}})),
        ),
        (
            "max_cas_retries 1001",
            doc(json!({"store": {"max_cas_retries": 1001}})),
        ),
        (
            "buckets 0",
            doc(json!({"store": {"idempotency_buckets": 0}})),
        ),
        (
            "buckets 65537",
            doc(json!({"store": {"idempotency_buckets": 65537}})),
        ),
        (
            "unknown-tenant table of 0 keys",
            doc(json!({"store": {"unknown_tenant_slots": 0}})),
        ),
        (
            "unknown-tenant table over 2^20 keys",
            doc(json!({"store": {"unknown_tenant_slots": 1_048_577}})),
        ),
        (
            "tenant share 0",
            doc(json!({"store": {"idempotency_tenant_share_percent": 0}})),
        ),
        (
            "tenant share 101",
            doc(json!({"store": {"idempotency_tenant_share_percent": 101}})),
        ),
        (
            "namespace with a slash",
            doc(json!({"store": {"namespace": "Bad/Zone"}})),
        ),
        ("empty namespace", doc(json!({"store": {"namespace": ""}}))),
        (
            "namespace too long",
            doc(json!({"store": {"namespace": "n".repeat(33)}})),
        ),
        (
            "on_exhausted",
            doc(json!({"store": {"on_exhausted": "maybe"}})),
        ),
        (
            "unknown backend",
            doc(json!({"store": {"backend": "redis"}})),
        ),
        (
            "backend not a string",
            doc(json!({"store": {"backend": true}})),
        ),
        (
            "cluster with backend local",
            doc(json!({"store": {"backend": "local", "cluster": {}}})),
        ),
        (
            "cluster without backend",
            doc(json!({"store": {"cluster": {"timeout_ms": 100}}})),
        ),
        (
            "cluster not an object",
            doc(json!({"store": {"backend": "cluster", "cluster": "redis:6379"}})),
        ),
        (
            "unknown cluster field",
            cluster("redis_url", json!("redis://x")),
        ),
        ("empty upstream", cluster("upstream", json!(""))),
        (
            "upstream too long",
            cluster("upstream", json!("u".repeat(256))),
        ),
        (
            "upstream with a slash",
            cluster("upstream", json!("http://store")),
        ),
        (
            "upstream with a space",
            cluster("upstream", json!("store sidecar")),
        ),
        ("upstream not a string", cluster("upstream", json!(9912))),
        ("store timeout 0", cluster("timeout_ms", json!(0))),
        (
            "store timeout over 10 s",
            cluster("timeout_ms", json!(10_001)),
        ),
        ("lease_max 0", cluster("lease_max", json!(0))),
        ("lease_max 1001", cluster("lease_max", json!(1001))),
        ("lease ttl 0", cluster("lease_ttl_ms", json!(0))),
        (
            "lease ttl over a minute",
            cluster("lease_ttl_ms", json!(60_001)),
        ),
        ("lease ttl negative", cluster("lease_ttl_ms", json!(-1))),
        ("probe interval 0", cluster("probe_interval_ms", json!(0))),
        (
            "probe interval over a minute",
            cluster("probe_interval_ms", json!(60_001)),
        ),
        (
            "rate-limit fallback",
            cluster("rate_limit_fallback", json!("local")),
        ),
        (
            "fallback share 0",
            cluster("fallback_share_percent", json!(0)),
        ),
        (
            "fallback share 101",
            cluster("fallback_share_percent", json!(101)),
        ),
        (
            "fallback share fractional",
            cluster("fallback_share_percent", json!(50.5)),
        ),
        (
            "idempotency fallback",
            cluster("idempotency_fallback", json!("allow")),
        ),
        (
            "rate-limit headers",
            doc(json!({"headers": {"rate_limit": "sometimes"}})),
        ),
        (
            "revision header not a boolean",
            doc(json!({"headers": {"revision": "yes"}})),
        ),
        ("metrics not a boolean", doc(json!({"metrics": "no"}))),
        (
            "encoded slashes not a boolean",
            doc(json!({"paths": {"allow_encoded_slashes": "yes"}})),
        ),
        ("no issuers", jwt_with(json!({"issuers": []}))),
        (
            "empty iss",
            jwt(json!({"kty": "oct", "k": HS_KEY})).pipe(|mut d| {
                d["tenant"]["jwt"]["issuers"][0]["iss"] = json!("");
                d
            }),
        ),
        (
            "no audiences",
            jwt(json!({"kty": "oct", "k": HS_KEY})).pipe(|mut d| {
                d["tenant"]["jwt"]["issuers"][0]["audiences"] = json!([]);
                d
            }),
        ),
        (
            "no keys",
            jwt(json!({"kty": "oct", "k": HS_KEY})).pipe(|mut d| {
                d["tenant"]["jwt"]["issuers"][0]["jwks"]["keys"] = json!([]);
                d
            }),
        ),
        ("key type DSA", jwt(json!({"kty": "DSA", "k": HS_KEY}))),
        (
            "private key material",
            jwt(json!({"kty": "oct", "k": HS_KEY, "d": "secret"})),
        ),
        (
            "use enc",
            jwt(json!({"kty": "oct", "k": HS_KEY, "use": "enc"})),
        ),
        (
            "key_ops without verify",
            jwt(json!({"kty": "oct", "k": HS_KEY, "key_ops": ["sign"]})),
        ),
        (
            "empty kid",
            jwt(json!({"kty": "oct", "k": HS_KEY, "kid": ""})),
        ),
        (
            "HS256 secret under 32 bytes",
            jwt(json!({"kty": "oct", "k": "c2hvcnQ"})),
        ),
        (
            "secret not base64url",
            jwt(json!({"kty": "oct", "k": "!".repeat(44)})),
        ),
        ("oct key without k", jwt(json!({"kty": "oct"}))),
        (
            "oct key with EC members",
            jwt(json!({"kty": "oct", "k": HS_KEY, "x": EC_X})),
        ),
        (
            "oct key for RS256",
            jwt(json!({"kty": "oct", "k": HS_KEY, "alg": "RS256"})),
        ),
        (
            "EC curve P-384",
            jwt(json!({"kty": "EC", "crv": "P-384", "x": EC_X, "y": EC_Y})),
        ),
        (
            "EC key without y",
            jwt(json!({"kty": "EC", "crv": "P-256", "x": EC_X})),
        ),
        (
            "EC x of 31 bytes",
            jwt(json!({"kty": "EC", "crv": "P-256", "x": &EC_X[..42], "y": EC_Y})),
        ),
        (
            "OKP curve X25519",
            jwt(json!({"kty": "OKP", "crv": "X25519", "x": EC_X})),
        ),
        (
            "RSA exponent 3",
            jwt(json!({"kty": "RSA", "n": "A".repeat(342), "e": "Aw"})),
        ),
        (
            "RSA modulus of 1024 bits",
            jwt(json!({"kty": "RSA", "n": "q".repeat(171), "e": "AQAB"})),
        ),
        (
            "leeway over an hour",
            jwt_with(json!({"leeway_seconds": 3601})),
        ),
        (
            "token cache too large",
            jwt_with(json!({"cache_entries": 65537})),
        ),
        ("empty user claim", jwt_with(json!({"user_claim": ""}))),
        (
            "user claim over 256 bytes",
            jwt_with(json!({"user_claim": "c".repeat(257)})),
        ),
        ("unknown jwt field", jwt_with(json!({"audience": "api"}))),
    ]
}

/// Rules draft 4 cannot express (equality between two fields, uniqueness of a
/// member across array items, key mathematics) and raw-JSON shapes a Kong
/// re-encoding never produces. The parser and the sidecar refuse them.
fn gaps() -> Vec<(&'static str, String)> {
    let equal_headers =
        doc(json!({"tenant": {"header": "x-id"}, "correlation": {"header": "x-id"}}));
    let duplicate_routes = doc(json!({"tenants": {"a": {"routes": [
        {"prefix": "/a", "name": "x", "rate_limit": limit()},
        {"prefix": "/b", "name": "x", "rate_limit": limit()}]}}}));
    let mut duplicate_iss = jwt(json!({"kty": "oct", "k": HS_KEY}));
    let issuer = duplicate_iss["tenant"]["jwt"]["issuers"][0].clone();
    duplicate_iss["tenant"]["jwt"]["issuers"] = json!([issuer.clone(), issuer]);
    let mut duplicate_kid = jwt(json!({"kty": "oct", "kid": "k", "k": HS_KEY}));
    let key = duplicate_kid["tenant"]["jwt"]["issuers"][0]["jwks"]["keys"][0].clone();
    duplicate_kid["tenant"]["jwt"]["issuers"][0]["jwks"]["keys"] = json!([key.clone(), key]);
    let zeros = "A".repeat(43);
    vec![
        ("two equal explicit header names", equal_headers.to_string()),
        ("two routes with one name", duplicate_routes.to_string()),
        ("one issuer twice", duplicate_iss.to_string()),
        ("one kid twice", duplicate_kid.to_string()),
        (
            "EC point not on the curve",
            jwt(json!({"kty": "EC", "crv": "P-256", "x": zeros, "y": zeros})).to_string(),
        ),
        (
            "RSA modulus with leading zero bits",
            jwt(json!({"kty": "RSA", "n": "A".repeat(342), "e": "AQAB"})).to_string(),
        ),
        (
            "a member twice in the raw JSON",
            r#"{"version":1,"version":1,"tenant":{"trust_header_without_jwt":true}}"#.to_owned(),
        ),
        (
            "two limits with one name in a scope",
            doc(json!({"defaults": {"rate_limits": [
                {"name": "x", "requests": 1, "per": "hour"},
                {"name": "x", "requests": 2, "per": "day"}]}}))
            .to_string(),
        ),
        (
            "`rate_limit` and a limit named `tenant` in one scope",
            doc(json!({"defaults": {"rate_limit": limit(), "rate_limits": [
                {"name": "tenant", "requests": 2, "per": "day"}]}}))
            .to_string(),
        ),
        (
            "a tenant naming a missing plan",
            doc(json!({"tenants": {"a": {"plan": "gold"}}})).to_string(),
        ),
        (
            "a route limit named like a tenant limit",
            doc(json!({"tenants": {"a": {"rate_limits": [{"name": "x", "requests": 1, "per": "hour"}],
                "routes": [{"prefix": "/r", "rate_limits": [{"name": "x", "requests": 1, "per": "day"}]}]}}}))
            .to_string(),
        ),
        (
            "counting by an identity header",
            named(json!({"key": {"header": "x-tenant-id"}})).to_string(),
        ),
        (
            "counting by user with a token that has no user claim",
            jwt(json!({"kty": "oct", "k": HS_KEY}))
                .pipe(|mut d| {
                    d["defaults"] = json!({"rate_limits": [
                        {"name": "x", "requests": 1, "per": "hour", "key": "user"}]});
                    d
                })
                .to_string(),
        ),
        (
            "a cost over what its limit admits at once",
            named(json!({"requests": 5, "cost": 6})).to_string(),
        ),
        (
            "a route cost over what a tenant limit admits at once",
            doc(json!({"tenants": {"a": {"rate_limit": {"requests": 5, "per_seconds": 60},
                "routes": [{"prefix": "/r", "cost": 6}]}}}))
            .to_string(),
        ),
        (
            "a usage header the filter trusts",
            named(json!({"usage_header": "x-tenant-id"})).to_string(),
        ),
        (
            "two in-flight caps counting the same thing",
            doc(json!({"defaults": {"max_in_flight": [{"max": 1}, {"max": 2, "key": "tenant"}]}}))
                .to_string(),
        ),
        (
            "more than 4 usage headers",
            doc(json!({"defaults": {"rate_limits": (0..5)
                .map(|n| json!({"name": format!("u{n}"), "requests": 1, "per": "hour",
                                "usage_header": format!("x-u{n}")}))
                .collect::<Vec<_>>()}}))
            .to_string(),
        ),
        (
            "more than 8 key headers",
            doc(json!({"defaults": {"rate_limits": (0..9)
                .map(|n| json!({"name": format!("h{n}"), "requests": 1, "per": "hour",
                                "key": {"header": format!("x-k{n}")}}))
                .collect::<Vec<_>>()}}))
            .to_string(),
        ),
    ]
}

trait Pipe: Sized {
    fn pipe(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
}
impl Pipe for Value {}

fn parses(document: &str) -> Result<(), String> {
    tenant_guard_core::config::parse(document.as_bytes())
        .map(|_| ())
        .map_err(|err| err.to_string())
}

#[test]
fn kong_schema_is_the_filter_schema() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kong/tenant_guard.meta.json"
    );
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA).unwrap();
    assert_eq!(
        meta["config_schema"], schema,
        "regenerate kong/*.json (kong/README.md)"
    );
}

#[test]
fn valid_documents_pass_both() {
    let schema = kong_schema();
    for document in valid() {
        let text = document.to_string();
        assert!(
            parses(&text).is_ok(),
            "parser refused {text}: {:?}",
            parses(&text)
        );
        let errors: Vec<String> = schema
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "schema refused {text}: {errors:?}");
    }
}

#[test]
fn every_document_the_parser_refuses_the_schema_refuses() {
    let kong = kong_schema();
    let filter = filter_schema();
    let corpus = invalid();
    assert!(corpus.len() > 90, "{}", corpus.len());
    for (what, document) in corpus {
        let text = document.to_string();
        assert!(parses(&text).is_err(), "{what}: the parser accepted {text}");
        assert!(
            !kong.is_valid(&document),
            "{what}: Kong's config_schema accepted {text}"
        );
        assert!(
            !filter.is_valid(&document),
            "{what}: the schema accepted {text}"
        );
    }
}

#[test]
fn the_gaps_are_exactly_these() {
    let schema = kong_schema();
    for (what, text) in gaps() {
        assert!(parses(&text).is_err(), "{what}: the parser accepts it now");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(
            schema.is_valid(&value),
            "{what}: the schema refuses it now: move it to the invalid corpus"
        );
    }
}
