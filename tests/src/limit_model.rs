//! The limit model end to end (README "Plugin configuration", `rate_limits`):
//! one plugin document and the checks every gateway and store must pass, so
//! that Envoy in local mode, a fleet of Envoys on Redis and Kong's engine
//! are held to the same answers. Each check takes the ports of the gateways
//! (one, or the replicas of a fleet, used round-robin).
//!
//! - a plan with a burst limit and a monthly quota; a tenant overriding the
//!   plan's limit by name; a daily quota reporting the seconds to midnight UTC;
//! - a per-user counter inside a tenant next to the tenant's own limit: a
//!   request one limit refuses consumes nothing from the others;
//! - the same under concurrency, and the per-key table of a tenant full.
//!
//! In a fleet a lease can hold a slot another replica needs for up to a
//! second (idle slots go back), so counts that must end exact are polled to
//! their end value, and must never pass it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::config::set_json;
use crate::expect::assert_problem;
use crate::failure::fail;
use crate::http::{self, Response};
use crate::wait::wait_until;

pub const TENANT: &str = "x-tenant-id";
pub const USER: &str = "x-user-id";
pub const API_KEY: &str = "x-api-key";
const SETTLE: Duration = Duration::from_secs(20);

/// The plugin document of the checks, with `store` as its `store` section.
pub fn config(store: Value) -> Value {
    json!({
        "version": 1,
        "revision": "limit-model",
        "tenant": { "trust_header_without_jwt": true, "user_header": USER },
        "metrics": true,
        "store": store,
        "plans": {
            "gold": { "rate_limits": [
                { "name": "burst", "requests": 4, "per_seconds": 3600 },
                { "name": "month", "requests": 1_000_000, "per": "month" }
            ] }
        },
        "tenants": {
            "acme": { "plan": "gold" },
            "bigger": { "plan": "gold", "rate_limits": [
                { "name": "burst", "requests": 6, "per_seconds": 3600 }
            ] },
            "trial": { "plan": "gold", "rate_limits": [
                { "name": "day", "requests": 3, "per": "day" }
            ] },
            "users": { "rate_limits": [
                { "name": "user", "requests": 2, "per": "hour", "key": "user" },
                { "name": "all", "requests": 5, "per": "hour" }
            ] },
            "race": { "rate_limits": [
                { "name": "all", "requests": 20, "per": "hour" },
                { "name": "user", "requests": 8, "per": "hour", "key": "user" }
            ] },
            "keys": { "rate_limits": [
                { "name": "per-key", "requests": 1, "per": "hour",
                  "key": { "header": API_KEY }, "on_missing": "tenant" }
            ] }
        }
    })
}

/// `GET path` for `tenant` (and `extra` headers) on the `n`-th gateway, round-robin.
pub fn get(ports: &[u16], n: usize, path: &str, tenant: &str, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![(TENANT, tenant)];
    headers.extend_from_slice(extra);
    let port = ports.get(n % ports.len().max(1)).copied().unwrap_or(0);
    http::get(port, path, &headers)
}

/// `(name, integer parameters)` of each item of a structured-field list
/// (`"a";q=1;w=2, "b";q=3`).
pub fn items(value: &str) -> Vec<(String, Vec<(String, u64)>)> {
    value
        .split(',')
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim().trim_matches('"');
            let params = parts
                .filter_map(|p| p.split_once('='))
                .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
                .collect();
            (name.to_owned(), params)
        })
        .collect()
}

fn param(params: &[(String, u64)], key: &str) -> Option<u64> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// The `RateLimit` header's policy name and `r`.
pub fn headline(response: &Response) -> (String, u64) {
    let value = response.header_once("ratelimit");
    let mut all = items(value);
    assert_eq!(all.len(), 1, "RateLimit names one policy: {value:?}");
    let (name, params) = all.remove(0);
    let remaining = param(&params, "r").unwrap_or_else(|| fail(format!("no r in {value:?}")));
    (name, remaining)
}

/// Seconds until the next midnight UTC.
pub fn seconds_to_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    86_400 - now % 86_400
}

/// A plan's two windows, a tenant overriding one by name, a daily quota.
pub fn plan_windows(ports: &[u16], backend: &Backend) {
    for n in 0..4 {
        let response = get(ports, n, "/plan", "acme", &[]);
        assert_eq!(response.status, 200, "acme #{n}: {response:?}");
        let policies = items(response.header_once("ratelimit-policy"));
        let names: Vec<&str> = policies.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["burst", "month"], "{response:?}");
        let params: Vec<_> = policies
            .iter()
            .map(|(_, params)| params.as_slice())
            .collect();
        assert_eq!(params.first().and_then(|p| param(p, "q")), Some(4));
        assert_eq!(params.first().and_then(|p| param(p, "w")), Some(3600));
        assert_eq!(params.get(1).and_then(|p| param(p, "q")), Some(1_000_000));
        let month = params.get(1).and_then(|p| param(p, "w")).unwrap_or(0);
        assert!(
            (28..=31).any(|days| month == days * 86_400),
            "w of a month is this month's length: {month}"
        );
        let (name, remaining) = headline(&response);
        assert_eq!(
            name, "burst",
            "the limit closest to exhaustion: {response:?}"
        );
        assert!(remaining < 4, "{response:?}");
    }
    let refused = get(ports, 4, "/plan", "acme", &[]);
    assert_problem(&refused, 429, "rate-limited");
    assert_eq!(headline(&refused), ("burst".to_owned(), 0));
    let retry: u64 = refused.header_once("retry-after").parse().unwrap_or(0);
    assert!(
        (1..=900).contains(&retry),
        "one emission at most: {refused:?}"
    );
    assert_eq!(backend.completed("/plan"), 4);

    // `bigger` replaces the plan's burst by name and keeps its month.
    for n in 0..6 {
        assert_eq!(get(ports, n, "/bigger", "bigger", &[]).status, 200, "#{n}");
    }
    assert_problem(
        &get(ports, 6, "/bigger", "bigger", &[]),
        429,
        "rate-limited",
    );

    // `trial` adds a daily quota: 3, then refused until midnight UTC.
    for n in 0..3 {
        let response = get(ports, n, "/trial", "trial", &[]);
        assert_eq!(response.status, 200, "trial #{n}: {response:?}");
        let policy = response.header_once("ratelimit-policy");
        let names: Vec<String> = items(policy).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["burst", "month", "day"], "{policy}");
    }
    let refused = get(ports, 3, "/trial", "trial", &[]);
    assert_problem(&refused, 429, "rate-limited");
    assert_eq!(headline(&refused).0, "day");
    let retry: u64 = refused.header_once("retry-after").parse().unwrap_or(0);
    let midnight = seconds_to_midnight();
    assert!(
        retry.abs_diff(midnight) <= 5 || midnight < 10,
        "Retry-After {retry} s, midnight UTC in {midnight} s"
    );
    assert_eq!(backend.completed("/trial"), 3);
}

/// A per-user counter next to the tenant's own limit: refusals by one limit
/// take nothing from the other; a request without the user is refused.
pub fn per_user(ports: &[u16], backend: &Backend) {
    let user = |n: usize, id: &str| get(ports, n, "/users", "users", &[(USER, id)]);
    for n in 0..2 {
        assert_eq!(user(n, "u1").status, 200, "u1 #{n}");
    }
    for n in 2..12 {
        let refused = user(n, "u1");
        assert_problem(&refused, 429, "rate-limited");
        assert_eq!(headline(&refused).0, "user", "{refused:?}");
    }
    // Ten refusals of u1 took nothing from `all` (5): u2 and u3 get 3.
    for (n, id) in ["u2", "u2", "u3"].into_iter().enumerate() {
        assert_eq!(user(n, id).status, 200, "{id} #{n}");
    }
    let refused = user(3, "u3");
    assert_problem(&refused, 429, "rate-limited");
    assert_eq!(headline(&refused).0, "all", "{refused:?}");
    assert_eq!(backend.completed("/users"), 5);
    let missing = get(ports, 0, "/users", "users", &[]);
    let body = assert_problem(&missing, 400, "rate-limit-key-missing");
    assert!(
        body.get("detail")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .contains(USER),
        "the detail names the header: {body}"
    );
}

/// Three users storm a tenant with a tenant limit of 20 and a user limit of
/// 8 from six threads: exactly 20 admitted in the end, at most 8 per user,
/// never more.
const USERS: [&str; 3] = ["r1", "r2", "r3"];

fn user_of(n: usize) -> &'static str {
    USERS.get(n % USERS.len()).copied().unwrap_or("r1")
}

pub fn all_or_nothing_under_concurrency(ports: &[u16], backend: &Backend) {
    let threads: Vec<_> = (0..6)
        .map(|thread| {
            let ports = ports.to_vec();
            std::thread::spawn(move || {
                (0..10)
                    .map(|n| {
                        let id = user_of(thread + n);
                        let status = get(&ports, thread + n, "/race", "race", &[(USER, id)]).status;
                        (id, status)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<(&str, u16)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    // Slots a replica still holds come back within a second or two.
    let mut n = 0;
    let settled = wait_until(SETTLE, || {
        n += 1;
        let id = user_of(n);
        let status = get(ports, n, "/race", "race", &[(USER, id)]).status;
        seen.push((id, status));
        backend.completed("/race") >= 20
    });
    assert!(settled, "only {} admitted", backend.completed("/race"));
    for n in 0..6 {
        let id = user_of(n);
        seen.push((id, get(ports, n, "/race", "race", &[(USER, id)]).status));
    }
    assert!(seen.iter().all(|(_, s)| matches!(s, 200 | 429)), "{seen:?}");
    let admitted = |who: Option<&str>| {
        seen.iter()
            .filter(|(id, s)| *s == 200 && who.is_none_or(|w| w == *id))
            .count()
    };
    assert_eq!(admitted(None), 20, "{seen:?}");
    assert_eq!(backend.completed("/race"), 20);
    for id in USERS {
        assert!(admitted(Some(id)) <= 8, "{id}: {seen:?}");
    }
}

/// Local mode: a tenant's table of key values (`store.key_slots` = 1: one
/// entry and its three alternates) holds four live keys; a fifth is its own
/// 503; a known key is still counted; a request without the key counts for
/// the tenant (`on_missing: tenant`); other tenants' tables are untouched.
pub fn key_table_full(port: u16, backend: &Backend) {
    let ports = [port];
    let key = |id: &str| get(&ports, 0, "/keys", "keys", &[(API_KEY, id)]);
    for id in ["k1", "k2", "k3", "k4"] {
        assert_eq!(key(id).status, 200, "{id}");
    }
    let full = key("k5");
    let body = assert_problem(&full, 503, "rate-limit-keys-exhausted");
    assert!(full.header("retry-after").is_some(), "{full:?}");
    assert!(
        !body.to_string().contains("k5"),
        "no key value echoed: {body}"
    );
    assert_problem(&key("k1"), 429, "rate-limited");
    assert_eq!(get(&ports, 0, "/keys", "keys", &[]).status, 200);
    assert_problem(&get(&ports, 0, "/keys", "keys", &[]), 429, "rate-limited");
    assert_eq!(backend.completed("/keys"), 5);
    let other = get(&ports, 0, "/users", "users", &[(USER, "fresh")]);
    assert_ne!(other.status, 503, "{other:?}");
}

/// A plugin document where `if_match` guards PUT /orders, a route limit
/// counts PUTs only, and `method_override` is `policy` (`None`: the default).
pub fn method_override_config(policy: Option<&str>) -> Value {
    let mut config = json!({
        "version": 1,
        "revision": "method-override",
        "tenant": { "trust_header_without_jwt": true },
        "if_match": [{ "prefix": "/orders", "methods": ["PUT"] }],
        "tenants": {
            "acme": { "rate_limits": [
                { "name": "puts", "requests": 2, "per": "hour", "methods": ["PUT"] }
            ] }
        }
    });
    if let Some(policy) = policy {
        set_json(&mut config, &["method_override"], json!(policy));
    }
    config
}
