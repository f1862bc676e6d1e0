//! End-to-end tests of the tenant-guard filter in a real Envoy (static and ECDS
//! bootstraps from `envoy/`), against an in-process upstream. Every wait is a
//! poll with a deadline; nothing synchronises on a fixed sleep.
#![cfg(test)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{json, Value};
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::envoy::{ECDS_FAIL_STAT, ECDS_VERSION_STAT};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::wait::{wait_for, wait_until};
use tenant_guard_e2e::{Envoy, Upstream};

const CORRELATION: &str = "x-correlation-id";
const TENANT: &str = "x-tenant-id";
const PROBLEM_JSON: &str = "application/problem+json";

/// Lower-case UUIDv7 (8-4-4-4-12 hex, version nibble 7, RFC 9562 variant).
fn is_uuidv7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'7'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// The upstream's JSON echo of a proxied request.
fn upstream_echo(response: &Response) -> Value {
    assert_eq!(
        response.status,
        200,
        "expected an upstream 200, got {response:?} body {}",
        response.text()
    );
    let body = response.json();
    assert!(
        body.get("headers").is_some(),
        "not an upstream echo: {body}"
    );
    body
}

/// Values of request header `name` the upstream received (one entry per header line).
fn upstream_header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["header_list"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|pair| pair[0] == name)
                .filter_map(|pair| pair[1].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts an RFC 9457 problem response; returns its body.
fn assert_problem(response: &Response, status: u16, problem_type: &str) -> Value {
    assert_eq!(
        response.status,
        status,
        "unexpected status; headers {:?} body {}",
        response.headers,
        response.text()
    );
    let content_type = response.header_once("content-type");
    assert!(
        content_type.starts_with(PROBLEM_JSON),
        "content-type {content_type:?}"
    );
    let body = response.json();
    assert_eq!(body["type"], problem_type, "problem body {body}");
    assert_eq!(body["status"], status, "problem body {body}");
    for field in ["title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem body lacks `{field}`: {body}"
        );
    }
    let echoed = response.header_once(CORRELATION);
    assert_eq!(
        body["correlation_id"], echoed,
        "problem correlation_id must equal the {CORRELATION} header"
    );
    body
}

/// Parses `"name";r=1;t=2` / `"name";q=3;w=4` into (name, params).
fn parse_structured(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let name = parts
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches('"')
        .to_string();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (name, params)
}

fn param(params: &[(String, String)], key: &str) -> Option<u64> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Asserts the RateLimit-Policy / RateLimit headers; returns (remaining, reset).
fn assert_ratelimit_headers(
    response: &Response,
    name: &str,
    quota: u64,
    window: u64,
) -> (u64, u64) {
    let policy = response.header_once("ratelimit-policy");
    let (policy_name, policy_params) = parse_structured(policy);
    assert_eq!(policy_name, name, "ratelimit-policy {policy:?}");
    assert_eq!(
        param(&policy_params, "q"),
        Some(quota),
        "ratelimit-policy {policy:?}"
    );
    assert_eq!(
        param(&policy_params, "w"),
        Some(window),
        "ratelimit-policy {policy:?}"
    );
    let limit = response.header_once("ratelimit");
    let (limit_name, limit_params) = parse_structured(limit);
    assert_eq!(limit_name, name, "ratelimit {limit:?}");
    let remaining =
        param(&limit_params, "r").unwrap_or_else(|| panic!("ratelimit {limit:?}: no r"));
    let reset = param(&limit_params, "t").unwrap_or_else(|| panic!("ratelimit {limit:?}: no t"));
    (remaining, reset)
}

#[test]
fn correlation_id_is_kept_generated_forwarded_and_echoed_once() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-corr").tenant_limit("acme", 1, 3600);
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());

    // A valid incoming id is kept, forwarded once and echoed once.
    let max_len = "a".repeat(128);
    for valid in ["abc-123.X:y_z", "0", max_len.as_str()] {
        let response = envoy.get("/corr", &[(TENANT, "globex"), (CORRELATION, valid)]);
        assert_eq!(response.header_once(CORRELATION), valid);
        let echo = upstream_echo(&response);
        assert_eq!(
            upstream_header_values(&echo, CORRELATION),
            vec![valid.to_string()]
        );
    }

    // Invalid ids are replaced by a generated UUIDv7, forwarded and echoed once.
    let too_long = "a".repeat(129);
    let way_too_long = "b".repeat(200);
    for invalid in [
        too_long.as_str(),
        way_too_long.as_str(),
        "has space",
        "slash/inside",
        "semi;colon",
    ] {
        let response = envoy.get("/corr", &[(TENANT, "globex"), (CORRELATION, invalid)]);
        let echoed = response.header_once(CORRELATION).to_string();
        assert!(
            is_uuidv7(&echoed),
            "{invalid:?} replaced by {echoed:?}, not a UUIDv7"
        );
        let echo = upstream_echo(&response);
        assert_eq!(upstream_header_values(&echo, CORRELATION), vec![echoed]);
    }

    // Missing: generated, and different per request.
    let mut generated = Vec::new();
    for _ in 0..3 {
        let response = envoy.get("/corr", &[(TENANT, "globex")]);
        let echoed = response.header_once(CORRELATION).to_string();
        assert!(is_uuidv7(&echoed), "generated {echoed:?} is not a UUIDv7");
        let echo = upstream_echo(&response);
        assert_eq!(
            upstream_header_values(&echo, CORRELATION),
            vec![echoed.clone()]
        );
        assert!(
            !generated.contains(&echoed),
            "duplicate generated id {echoed}"
        );
        generated.push(echoed);
    }

    // Local replies carry it too: 429 with a kept id ...
    let first = envoy.get("/corr", &[(TENANT, "acme")]);
    assert_eq!(first.status, 200);
    let limited = envoy.get("/corr", &[(TENANT, "acme"), (CORRELATION, "corr-429")]);
    assert_eq!(limited.header_once(CORRELATION), "corr-429");
    let body = assert_problem(&limited, 429, "urn:tenant-guard:problem:rate-limited");
    assert_eq!(body["correlation_id"], "corr-429");

    // ... 429 with a generated id ...
    let limited = envoy.get("/corr", &[(TENANT, "acme"), (CORRELATION, "bad id")]);
    assert!(is_uuidv7(limited.header_once(CORRELATION)));
    assert_problem(&limited, 429, "urn:tenant-guard:problem:rate-limited");

    // ... and 400 with a generated and with a kept id.
    let missing = envoy.get("/corr", &[]);
    assert!(is_uuidv7(missing.header_once(CORRELATION)));
    assert_problem(&missing, 400, "urn:tenant-guard:problem:tenant-required");
    let missing = envoy.get("/corr", &[(CORRELATION, "corr-400")]);
    assert_eq!(missing.header_once(CORRELATION), "corr-400");
    let body = assert_problem(&missing, 400, "urn:tenant-guard:problem:tenant-required");
    assert_eq!(body["correlation_id"], "corr-400");
}

#[test]
fn tenant_is_forwarded_required_and_unknown_rejected() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-tenant-7")
        .unknown_tenants("reject")
        .tenant_limit("acme", 1000, 60)
        .tenant_limit("globex", 1000, 60);
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());

    // Known tenant: forwarded upstream (once), with the config revision.
    let response = envoy.get("/orders/1?x=1", &[(TENANT, "acme")]);
    let echo = upstream_echo(&response);
    assert_eq!(
        upstream_header_values(&echo, TENANT),
        vec!["acme".to_string()]
    );
    assert_eq!(
        upstream_header_values(&echo, "x-tenant-guard-revision"),
        vec!["r-tenant-7".to_string()]
    );
    assert_eq!(echo["path"], "/orders/1?x=1");
    assert_eq!(echo["method"], "GET");
    let hits = upstream.hits();
    assert_eq!(hits, 1);

    // Missing tenant → 400, upstream not called.
    let missing = envoy.get("/orders", &[]);
    assert_problem(&missing, 400, "urn:tenant-guard:problem:tenant-required");

    // Malformed tenant → 400.
    for malformed in ["acme/evil", "has space", &"t".repeat(129)] {
        let response = envoy.get("/orders", &[(TENANT, malformed)]);
        assert_problem(&response, 400, "urn:tenant-guard:problem:invalid-tenant");
    }

    // Unknown tenant with `unknown: reject` → 403.
    let unknown = envoy.get("/orders", &[(TENANT, "initech")]);
    assert_problem(&unknown, 403, "urn:tenant-guard:problem:unknown-tenant");
    assert_eq!(
        upstream.hits(),
        hits,
        "rejected requests must not reach upstream"
    );

    // A duplicated tenant or correlation header cannot smuggle a second value
    // upstream: the filter replaces the header with the one value it decided on.
    let response = envoy.get(
        "/orders",
        &[
            (TENANT, "acme"),
            (TENANT, "globex"),
            (CORRELATION, "first-id"),
            (CORRELATION, "second-id"),
        ],
    );
    let echo = upstream_echo(&response);
    assert_eq!(
        upstream_header_values(&echo, TENANT),
        vec!["acme".to_string()]
    );
    assert_eq!(
        upstream_header_values(&echo, CORRELATION),
        vec!["first-id".to_string()]
    );

    // A POST with a body is forwarded too.
    let response = envoy.request("POST", "/orders", &[(TENANT, "globex")], b"{\"n\":1}");
    let echo = upstream_echo(&response);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 7);
    assert_eq!(
        upstream_header_values(&echo, TENANT),
        vec!["globex".to_string()]
    );
}

#[test]
fn tenant_a_is_rate_limited_while_tenant_b_is_not() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-limit")
        .tenant_limit("alpha", 3, 3600)
        .tenant_limit("beta", 1000, 3600);
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());
    let mut conn = envoy.conn();

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = conn.get("/a", &[(TENANT, "alpha")]);
        upstream_echo(&response);
        let (r, t) = assert_ratelimit_headers(&response, "tenant", 3, 3600);
        assert!(t <= 3600, "reset {t} beyond the window");
        remaining.push(r);
    }
    assert_eq!(
        remaining,
        vec![2, 1, 0],
        "remaining quota on allowed responses"
    );

    for _ in 0..2 {
        let limited = conn.get("/a", &[(TENANT, "alpha")]);
        let body = assert_problem(&limited, 429, "urn:tenant-guard:problem:rate-limited");
        assert_eq!(body["status"], json!(429));
        let retry_after: u64 = limited
            .header_once("retry-after")
            .parse()
            .unwrap_or_else(|e| panic!("retry-after {:?}: {e}", limited.header("retry-after")));
        assert!(
            (1..=3600).contains(&retry_after),
            "retry-after {retry_after} out of range"
        );
        let (r, t) = assert_ratelimit_headers(&limited, "tenant", 3, 3600);
        assert_eq!(r, 0);
        assert!((1..=3600).contains(&t), "ratelimit t={t}");

        // Beta is unaffected, on the same connection and on a new one.
        let response = conn.get("/b", &[(TENANT, "beta")]);
        upstream_echo(&response);
        let (r, _) = assert_ratelimit_headers(&response, "tenant", 1000, 3600);
        assert!(r >= 990, "beta remaining {r}");
        upstream_echo(&envoy.get("/b", &[(TENANT, "beta")]));
    }
    assert_eq!(
        upstream.hits(),
        3 + 4,
        "only admitted requests reach upstream"
    );
}

#[test]
fn limit_is_exact_under_concurrency() {
    const LIMIT: u64 = 50;
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 4;
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-exact").tenant_limit("hammer", LIMIT, 3600);
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let port = envoy.port();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut conn = tenant_guard_e2e::Conn::new(port);
                barrier.wait();
                (0..PER_CLIENT)
                    .map(|_| {
                        conn.request("GET", "/hammer", &[(TENANT, "hammer")], b"")
                            .map(|r| r.status)
                            .unwrap_or_else(|e| panic!("request failed: {e}"))
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread panicked"))
        .collect();

    let total = statuses.len() as u64;
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    let rejected = statuses.iter().filter(|s| **s == 429).count() as u64;
    println!("exactness: admitted {admitted} of limit {LIMIT} from {total} requests ({CLIENTS} concurrent clients, 2 Envoy workers)");
    assert_eq!(
        admitted + rejected,
        total,
        "unexpected statuses: {statuses:?}"
    );
    assert_eq!(admitted, LIMIT, "admitted must equal the limit exactly");
    assert_eq!(upstream.hits(), LIMIT, "upstream hits must equal the limit");

    // The filter's own counters agree (custom Wasm metrics, prefix varies by host).
    let allowed_metric = envoy.wait_for_stat_suffix_sum("tenant_guard_allowed", LIMIT);
    let limited_metric = envoy.wait_for_stat_suffix_sum("tenant_guard_rate_limited", rejected);
    println!(
        "metrics: tenant_guard_allowed={allowed_metric} tenant_guard_rate_limited={limited_metric}"
    );
    assert_eq!(allowed_metric, LIMIT, "{:?}", envoy.stats("tenant_guard"));
    assert_eq!(
        limited_metric,
        rejected,
        "{:?}",
        envoy.stats("tenant_guard")
    );
}

#[test]
fn shadow_mode_reports_but_never_rejects() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-shadow")
        .tenant_limit("shade", 2, 3600)
        .tenant_mode("shade", "shadow");
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());

    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = envoy.get("/s", &[(TENANT, "shade")]);
        upstream_echo(&response);
        assert!(
            response.header("retry-after").is_none(),
            "shadow mode must not send retry-after"
        );
        let (r, _) = assert_ratelimit_headers(&response, "tenant", 2, 3600);
        remaining.push(r);
    }
    assert_eq!(remaining, vec![1, 0, 0, 0, 0], "ratelimit r in shadow mode");
    assert_eq!(upstream.hits(), 5);
    let over = envoy.wait_for_stat_suffix_sum("tenant_guard_shadow_over_limit", 3);
    assert_eq!(over, 3, "{:?}", envoy.stats("tenant_guard"));
}

#[test]
fn informational_headers_can_be_turned_off() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-lean")
        .tenant_limit("acme", 1, 3600)
        .set(
            "headers",
            json!({ "revision": false, "rate_limit": "on_reject" }),
        );
    let envoy = Envoy::start_static(&config.to_json(), upstream.port());

    let allowed = envoy.get("/lean", &[(TENANT, "acme")]);
    let echo = upstream_echo(&allowed);
    assert!(upstream_header_values(&echo, "x-tenant-guard-revision").is_empty());
    assert_eq!(
        upstream_header_values(&echo, TENANT),
        vec!["acme".to_string()]
    );
    assert!(is_uuidv7(allowed.header_once(CORRELATION)));
    assert_eq!(allowed.header("ratelimit"), None);
    assert_eq!(allowed.header("ratelimit-policy"), None);

    // The 429 keeps the whole contract.
    let limited = envoy.get("/lean", &[(TENANT, "acme")]);
    assert_problem(&limited, 429, "urn:tenant-guard:problem:rate-limited");
    let (remaining, _) = assert_ratelimit_headers(&limited, "tenant", 1, 3600);
    assert_eq!(remaining, 0);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn ecds_updates_apply_without_restart_and_invalid_updates_are_rejected() {
    let upstream = Upstream::start();
    let v1 = PluginConfig::new("ecds-1").tenant_limit("acme", 1, 3600);
    let mut envoy = Envoy::start_ecds(&v1.to_json(), upstream.port());
    let pid = envoy.pid();
    let uptime_before = envoy.stat("server.uptime").expect("server.uptime");
    let fail_before = envoy.stat(ECDS_FAIL_STAT).unwrap_or_else(|| {
        panic!(
            "no {ECDS_FAIL_STAT}; ECDS stats: {:?}",
            envoy.stats("extension_config_discovery")
        )
    });

    // Revision 1 serves: acme is limited to 1, unknown tenants use the defaults.
    let mut conn = envoy.conn();
    let first = conn.get("/e", &[(TENANT, "acme")]);
    let echo = upstream_echo(&first);
    assert_eq!(
        upstream_header_values(&echo, "x-tenant-guard-revision"),
        vec!["ecds-1".to_string()]
    );
    assert_problem(
        &conn.get("/e", &[(TENANT, "acme")]),
        429,
        "urn:tenant-guard:problem:rate-limited",
    );
    upstream_echo(&envoy.get("/e", &[(TENANT, "globex")]));

    // Revision 2 raises acme to 100 and rejects unknown tenants.
    let v2 = PluginConfig::new("ecds-2")
        .tenant_limit("acme", 100, 3600)
        .unknown_tenants("reject");
    envoy.write_ecds(&v2.to_json(), "2");
    let mut last = None;
    let applied = wait_until(Duration::from_secs(10), || {
        let response = conn.get("/e", &[(TENANT, "acme")]);
        let ok = response.status == 200;
        last = Some(response);
        ok
    });
    assert!(
        applied,
        "acme never got 200 after the ECDS update raised its limit; last response: {:?} {}",
        last.as_ref().map(|r| (&r.status, &r.headers)),
        last.as_ref().map(|r| r.text()).unwrap_or_default()
    );
    let response = conn.get("/e", &[(TENANT, "acme")]);
    let echo = upstream_echo(&response);
    assert_eq!(
        upstream_header_values(&echo, "x-tenant-guard-revision"),
        vec!["ecds-2".to_string()]
    );
    assert_ratelimit_headers(&response, "tenant", 100, 3600);
    assert_problem(
        &envoy.get("/e", &[(TENANT, "globex")]),
        403,
        "urn:tenant-guard:problem:unknown-tenant",
    );
    assert_eq!(envoy.stat_text(ECDS_VERSION_STAT).as_deref(), Some("\"2\""));

    // An invalid config is rejected by Envoy (config_fail) and revision 2 keeps serving.
    let invalid = PluginConfig::new("ecds-bad")
        .tenant_limit("acme", 1, 3600)
        .set("version", json!(99));
    envoy.write_ecds(&invalid.to_json(), "3-invalid");
    let failed = wait_for(Duration::from_secs(10), || {
        envoy.stat(ECDS_FAIL_STAT).filter(|n| *n > fail_before)
    });
    assert!(
        failed.is_some(),
        "Envoy did not reject the invalid ECDS update; stats: {:?}\n{}",
        envoy.stats("extension_config_discovery"),
        envoy.log_tail(30)
    );
    // Also with negative requests.
    let fail_mid = envoy.stat(ECDS_FAIL_STAT).unwrap_or_default();
    let negative = v2.clone().set("revision", json!("ecds-negative")).set(
        "tenants",
        json!({"acme": {"rate_limit": {"requests": -5, "per_seconds": 60}}}),
    );
    envoy.write_ecds(&negative.to_json(), "4-invalid");
    assert!(
        wait_until(Duration::from_secs(10), || {
            envoy.stat(ECDS_FAIL_STAT).is_some_and(|n| n > fail_mid)
        }),
        "negative requests were not rejected"
    );

    for _ in 0..3 {
        let response = conn.get("/e", &[(TENANT, "acme")]);
        let echo = upstream_echo(&response);
        assert_eq!(
            upstream_header_values(&echo, "x-tenant-guard-revision"),
            vec!["ecds-2".to_string()],
            "the last good revision must keep serving"
        );
        assert_ratelimit_headers(&response, "tenant", 100, 3600);
        let fresh = envoy.get("/e", &[(TENANT, "acme")]);
        upstream_echo(&fresh);
    }
    assert_problem(
        &envoy.get("/e", &[(TENANT, "globex")]),
        403,
        "urn:tenant-guard:problem:unknown-tenant",
    );
    assert_eq!(envoy.stat_text(ECDS_VERSION_STAT).as_deref(), Some("\"2\""));

    // Same Envoy process throughout: no restart happened.
    assert!(envoy.is_running(), "Envoy exited");
    assert_eq!(envoy.pid(), pid);
    let uptime_after = envoy.stat("server.uptime").expect("server.uptime");
    assert!(
        uptime_after >= uptime_before,
        "uptime went back: {uptime_before} → {uptime_after}"
    );
    let reloads = envoy.stat("wasm.tenant-guard.vm_reload").unwrap_or(0);
    println!(
        "ecds: config_fail={:?} vm_reload={reloads}",
        envoy.stat(ECDS_FAIL_STAT)
    );
}
